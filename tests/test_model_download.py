"""Weights downloaded on first use (xs2mask.models.hub), against a real HTTP server on 127.0.0.1.

The server answers each path with a body, a content type, and optionally a lie about its length
followed by a closed connection (an interrupted download). No test reaches any other host.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

import xs2mask
from xs2mask.cli import main
from xs2mask.exceptions import WeightsError
from xs2mask.models import ModelSpec, Weights, hub, registry

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read blocks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str = "application/octet-stream"
    cut_at: int | None = None  # send this many bytes of a longer announced body, then close


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Answer]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        answer = self.answers.get(self.path)
        if answer is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body[: answer.cut_at])
        if answer.cut_at is not None:
            self.close_connection = True

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Answer], list[str]]]:
    """(base URL, answers by path, paths requested) of a server on 127.0.0.1."""
    answers: ClassVar[dict[str, Answer]] = {}
    hits: ClassVar[list[str]] = []
    handler = type("Handler", (_Handler,), {"answers": answers, "hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", answers, hits
    finally:
        httpd.shutdown()
        httpd.server_close()


# Every test gets a private user cache, no model dir, online (conftest).
pytestmark = pytest.mark.usefixtures("isolated_dirs")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_into_user_cache_then_reuse(server, isolated_dirs: Path) -> None:
    url, answers, hits = server
    answers["/w.safetensors"] = Answer(PAYLOAD)
    assert hub.cache_dir() == isolated_dirs
    path = hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m")
    assert path == isolated_dirs / "w.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert _files(isolated_dirs) == ["w.safetensors"]  # no temporary file left behind
    # found on the second call: no second request
    assert hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m") == path
    assert hits == ["/w.safetensors"]


def test_checksum_mismatch_leaves_no_file(server, isolated_dirs: Path) -> None:
    url, answers, _ = server
    answers["/w.safetensors"] = Answer(PAYLOAD[:-1] + b"x")
    with pytest.raises(WeightsError, match="fails its checksum") as err:
        hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m")
    assert DIGEST in str(err.value) and str(isolated_dirs) in str(err.value)
    assert _files(isolated_dirs) == []


def test_interrupted_download_leaves_no_file(server, isolated_dirs: Path) -> None:
    url, answers, _ = server
    answers["/w.safetensors"] = Answer(PAYLOAD, cut_at=300_000)
    with pytest.raises(WeightsError, match=r"download of .* (failed|was cut short)"):
        hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m")
    assert _files(isolated_dirs) == []
    # a later, complete answer succeeds
    answers["/w.safetensors"] = Answer(PAYLOAD)
    assert hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m").read_bytes() == PAYLOAD


def test_interrupt_while_writing_leaves_no_file(
    server, isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of the body: the partial file is removed, the interrupt goes on."""
    url, answers, _ = server
    answers["/w.safetensors"] = Answer(PAYLOAD)
    calls = []

    class Interrupting:
        def __init__(self) -> None:
            self._h = hashlib.sha256()

        def update(self, block: bytes) -> None:
            calls.append(len(block))
            if len(calls) == 2:
                raise KeyboardInterrupt
            self._h.update(block)

    monkeypatch.setattr(hub, "_BLOCK", 64 * 1024)
    monkeypatch.setattr(hub, "hashlib", SimpleNamespace(sha256=Interrupting))
    with pytest.raises(KeyboardInterrupt):
        hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="m")
    assert _files(isolated_dirs) == []


def test_html_answer_refused(server, isolated_dirs: Path) -> None:
    url, answers, _ = server
    answers["/uc"] = Answer(
        b"<html>Google Drive can't scan this file for viruses</html>", "text/html; charset=utf-8"
    )
    with pytest.raises(WeightsError, match="HTML page"):
        hub.fetch("v.pkl", f"{url}/uc", None, model="m")
    assert _files(isolated_dirs) == []


def test_offline_error_names_file_url_checksum_and_folder(
    server, isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, answers, hits = server
    answers["/w.safetensors"] = Answer(PAYLOAD)
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError) as err:
        hub.fetch("w.safetensors", f"{url}/w.safetensors", DIGEST, model="my-model")
    message = str(err.value)
    for part in ("'w.safetensors'", "my-model", f"{url}/w.safetensors", DIGEST, str(isolated_dirs),
                 hub.MODEL_DIR_ENV, "xs2mask models download my-model"):  # fmt: skip
        assert part in message
    assert hits == []


def test_model_dir_env_and_argument_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$XS2MASK_MODEL_DIR is searched before the cache; model_dir= is the only folder searched."""
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    for folder in (env_dir, arg_dir, hub.cache_dir()):
        folder.mkdir(parents=True)
        (folder / "w.bin").write_bytes(folder.name.encode())
    monkeypatch.setenv(hub.MODEL_DIR_ENV, str(env_dir))
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    assert hub.search_dirs() == [env_dir, hub.cache_dir()]
    assert hub.fetch("w.bin", None, None, model="m") == env_dir / "w.bin"
    assert hub.fetch("w.bin", None, None, model="m", model_dir=arg_dir) == arg_dir / "w.bin"
    (env_dir / "w.bin").unlink()
    assert hub.fetch("w.bin", None, None, model="m") == hub.cache_dir() / "w.bin"
    with pytest.raises(WeightsError, match=str(tmp_path / "empty")):
        hub.fetch("w.bin", None, None, model="m", model_dir=tmp_path / "empty")


def test_read_only_model_dir_is_used_without_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "w.bin").write_bytes(PAYLOAD)
    folder.chmod(0o555)
    try:
        weights = Weights("w.bin", DIGEST, url="http://127.0.0.1:9/never").with_model_dir(folder)
        assert weights.verified_path() == folder / "w.bin"
        assert weights.fetch("m") == folder / "w.bin"
    finally:
        folder.chmod(0o755)


def test_unpublished_checksum_is_recorded_and_enforced(server, isolated_dirs: Path) -> None:
    url, answers, _ = server
    answers["/v.pkl"] = Answer(PAYLOAD)
    weights = Weights("v.pkl", None, url=f"{url}/v.pkl")
    path = weights.fetch("m")
    assert hub.record_path(path).read_text().split()[0] == DIGEST
    assert weights.verified_path() == path
    path.write_bytes(PAYLOAD[:-1] + b"y")
    with pytest.raises(WeightsError, match="fails its checksum"):
        weights.verified_path()


def _registered_download_spec(url: str, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """omnicloudmask-v4's regnety member, served from the local server, under a test-only name."""
    member = xs2mask.models.get("omnicloudmask-v4-regnety_004")
    spec = replace(
        member,
        name="test-download-member",
        weights=replace(member.weights, filename="member.safetensors", sha256=DIGEST, url=f"{url}/member"),
    )
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return spec


def test_cli_download_to_model_dir(server, tmp_path: Path, monkeypatch, capsys) -> None:
    url, answers, _ = server
    answers["/member"] = Answer(PAYLOAD)
    spec = _registered_download_spec(url, monkeypatch)
    assert main(["models", "download", spec.name, "--model-dir", str(tmp_path / "dl")]) == 0
    assert (tmp_path / "dl" / "member.safetensors").read_bytes() == PAYLOAD
    assert "sha256 checked" in capsys.readouterr().out


def test_spec_fetch_downloads_on_first_use_and_offline_predict_fails_clearly(
    server, isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import xarray as xr

    url, answers, hits = server
    answers["/member"] = Answer(PAYLOAD)
    spec = _registered_download_spec(url, monkeypatch)
    cube = xr.DataArray(np.full((3, 64, 64), 0.1, np.float32), dims=("band", "y", "x"),
                        coords={"band": ["B04", "B03", "B8A"]})  # fmt: skip
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError, match=r"member\.safetensors"):
        xs2mask.predict(cube, model=spec.name)
    assert hits == []
    monkeypatch.delenv(hub.OFFLINE_ENV)
    assert spec.fetch() is spec and spec.is_available()
    assert (isolated_dirs / "member.safetensors").read_bytes() == PAYLOAD


def test_cli_download_clouds2mask_fetches_the_pickle_and_records_its_digest(
    server, tmp_path: Path, monkeypatch, capsys
) -> None:
    """CloudS2Mask: the pickle is downloaded (trusted on first use, digest recorded), not loaded."""
    from xs2mask.models import published

    url, answers, hits = server
    answers["/gdrive/1CSsyZz3AMqdNnDwSZ_HCJVp1lBSk9gzN"] = Answer(PAYLOAD)
    monkeypatch.setattr(published, "gdrive_url", lambda file_id: f"{url}/gdrive/{file_id}")
    out = tmp_path / "dl"
    assert main(["models", "download", "clouds2mask-10m", "--model-dir", str(out)]) == 0
    pickle = out / "v3.44_regnety_006_4C_Dice_1_10m.pkl"
    assert pickle.read_bytes() == PAYLOAD
    assert hub.record_path(pickle).read_text().split()[0] == DIGEST
    assert f"xs2mask models convert clouds2mask {out}" in capsys.readouterr().out
    assert hits == ["/gdrive/1CSsyZz3AMqdNnDwSZ_HCJVp1lBSk9gzN"]


def test_loading_in_a_worker_fetches_missing_weights(server, isolated_dirs: Path) -> None:
    """A Dask worker on another machine has no download of its own yet: loading fetches and checks it."""
    url, answers, hits = server
    answers["/w.safetensors"] = Answer(PAYLOAD)
    weights = Weights("w.safetensors", DIGEST, url=f"{url}/w.safetensors")
    assert not weights.is_available()
    assert weights.verified_path() == isolated_dirs / "w.safetensors"
    assert hits == ["/w.safetensors"]
