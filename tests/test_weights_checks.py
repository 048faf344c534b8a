"""Weights checked by content: a changed file is caught in every process, malformed records and model
descriptions are WeightsErrors naming the file and the fix, ``convert`` refuses a changed pickle, and
downloads end at their deadline without showing the secrets of their URL.

Families: model descriptions (JSON); sha256 records; content changes that keep size and mtime (same
process, forked process, new process); conversion of pickles; downloads (slow loris, failures with a
signed URL). Every server is real and on 127.0.0.1 (:class:`support.faults.FaultServer`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.faults import Fault, FaultServer, exception_texts, self_signed_cert

from xs2mask.exceptions import WeightsError, XS2MaskError
from xs2mask.models import Weights, hub, registry
from xs2mask.models.convert import convert_clouds2mask

PAYLOAD = bytes(range(256)) * 64
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
SECRETS = ("pw-S3CRET", "SIGS3CRET", "AMZS3CRET")


# Every test gets a private user cache, no model dir, online (conftest).
pytestmark = pytest.mark.usefixtures("isolated_dirs")


# --------------------------------------------------------------------------- model descriptions


def _description(**changes: Any) -> dict[str, Any]:
    """A valid model description (as training.train.export writes it), with fields changed or removed."""
    doc = {
        "name": "my-model",
        "bands": ["B02", "B03", "B04", "B08"],
        "classes": [0, 1, 2, 3],
        "mean": [0.1] * 4,
        "std": [0.2] * 4,
        "resolution_m": 10,
        "licence": "CC0",
        "architecture": {"arch": "unet", "encoder_name": "resnet18"},
        "sha256": {"onnx": DIGEST, "safetensors": DIGEST},
    }
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


def test_a_valid_description_and_a_run_config_are_read(tmp_path: Path) -> None:
    (tmp_path / "my-model.json").write_text(json.dumps(_description()))
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))  # not a model description
    specs = registry.shipped(tmp_path)
    assert [s.name for s in specs] == ["my-model", "my-model-torch"]
    assert specs[0].weights.filename == str(tmp_path / "my-model.onnx")


def _encoded(**changes: Any) -> bytes:
    return json.dumps(_description(**changes)).encode()


MALFORMED = {
    "not json": (b'{"name": "my-model", ', "not readable JSON"),
    "not utf-8": (b"\xff\xfe{}", "not readable JSON"),
    "a json array": (json.dumps([_description()]).encode(), "a JSON list"),
    "no name": (_encoded(name=None), "no name"),
    "bands not a list": (_encoded(bands="B02 B03"), "bands is not a list"),
    "class codes as text": (_encoded(classes=["clear"]), "classes is not a list"),
    "no mean": (_encoded(mean=None), "mean is not a list"),
    "mean of another length": (_encoded(mean=[0.1]), "same length"),
    "unknown class code": (_encoded(classes=[0, 1, 99]), "unknown class codes"),
    "no licence": (_encoded(licence=None), "missing or invalid licence"),
    "no architecture": (_encoded(architecture=None), "missing or invalid architecture"),
    "sha256 without onnx": (_encoded(sha256={"safetensors": DIGEST}), "missing or invalid sha256"),
    "sha256 not hex": (
        _encoded(sha256={"onnx": "z" * 64, "safetensors": DIGEST}),
        "missing or invalid sha256",
    ),
    "sha256 a string": (_encoded(sha256=DIGEST), "missing or invalid sha256"),
    "levels a string": (_encoded(levels="L2A"), "invalid levels"),
    "patch size as text": (_encoded(patch_size="512"), "invalid patch_size"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_model_description_is_a_weights_error(tmp_path: Path, case: str) -> None:
    content, expected = MALFORMED[case]
    path = tmp_path / "my-model.json"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        registry.shipped(tmp_path)
    message = str(info.value)
    assert type(info.value) is WeightsError
    assert str(path) in message and expected in message and "export the model again" in message


# --------------------------------------------------------------------------- sha256 records


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("", "''"),
        ("not-a-digest  w.bin\n", "'not-a-digest'"),
        (DIGEST[:-1], DIGEST[:-1]),
        ("\x00" * 64, "64 hex"),
    ],
)
def test_malformed_record_is_a_weights_error_naming_it(tmp_path: Path, record: str, expected: str) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD)
    hub.record_path(path).write_text(record)
    with pytest.raises(WeightsError) as info:
        Weights(str(path), None).verified_path()
    message = str(info.value)
    assert str(hub.record_path(path)) in message and expected in message and "download or convert" in message


def test_malformed_registered_sha256_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD)
    with pytest.raises(WeightsError, match=r"sha256 registered for w\.bin is not a sha256.*Weights\(sha256="):
        Weights(str(path), "md5:1234").verified_path()


# --------------------------------------------------------------------------- content changes


def _tamper_keeping_size_and_mtime(path: Path) -> None:
    """Change one byte and set the mtime back: size and mtime say nothing changed."""
    before = path.stat()
    time.sleep(0.05)  # past the file system clock's granularity, so that the write's ctime is new
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def _verified(path: str, queue) -> None:
    try:
        Weights(path, DIGEST).verified_path()
        queue.put("accepted")
    except WeightsError as err:
        queue.put(f"refused: {err}")


@pytest.fixture
def checked(tmp_path: Path) -> Path:
    """A weights file this process has already verified."""
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD)
    assert Weights(str(path), DIGEST).verified_path() == path
    return path


def test_change_keeping_size_and_mtime_is_caught_in_the_same_process(checked: Path) -> None:
    _tamper_keeping_size_and_mtime(checked)
    with pytest.raises(WeightsError, match="fails its checksum"):
        Weights(str(checked), DIGEST).verified_path()


def test_change_keeping_size_and_mtime_is_caught_in_a_forked_worker(checked: Path) -> None:
    """A forked process inherits what its parent checked; it must hash the file itself."""
    _tamper_keeping_size_and_mtime(checked)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_verified, args=(str(checked), queue))
    worker.start()
    answer = queue.get(timeout=60)
    worker.join(timeout=60)
    assert answer.startswith("refused") and "fails its checksum" in answer


def test_change_is_caught_in_a_new_process(checked: Path) -> None:
    _tamper_keeping_size_and_mtime(checked)
    code = (
        "import sys\nfrom xs2mask.models import Weights\nfrom xs2mask.exceptions import WeightsError\n"
        f"try:\n    Weights({str(checked)!r}, {DIGEST!r}).verified_path()\nexcept WeightsError as e:\n"
        "    print('refused', e)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "fails its checksum" in done.stdout


def test_replaced_file_with_same_size_and_mtime_is_caught(checked: Path) -> None:
    before = checked.stat()
    other = checked.with_name("other.bin")
    other.write_bytes(PAYLOAD[::-1])
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, checked)
    with pytest.raises(WeightsError, match="fails its checksum"):
        Weights(str(checked), DIGEST).verified_path()


def test_an_unchanged_file_is_hashed_once_per_process(checked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xs2mask.models import spec

    calls = []
    monkeypatch.setattr(spec, "sha256_file", lambda p: calls.append(p) or DIGEST)
    Weights(str(checked), DIGEST).verified_path()
    assert calls == []  # the fixture's check holds while nothing changed
    monkeypatch.setattr(spec.os, "getpid", lambda: -1)  # as if in another process
    Weights(str(checked), DIGEST).verified_path()
    assert calls == [checked]


# --------------------------------------------------------------------------- convert


PICKLE = "v3.44_regnety_006_4C_Dice_1_10m.pkl"


def test_convert_refuses_a_pickle_changed_since_its_download(tmp_path: Path) -> None:
    pkl = tmp_path / PICKLE
    pkl.write_bytes(PAYLOAD)
    hub.record_path(pkl).write_text(f"{DIGEST}  {PICKLE}\n")  # as hub.download records it
    pkl.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR." + PAYLOAD[34:])  # same size, other bytes
    with pytest.raises(WeightsError) as info:
        convert_clouds2mask(pkl, tmp_path / "out")
    message = str(info.value)
    assert "not the file xs2mask downloaded" in message and DIGEST in message
    assert "xs2mask models download clouds2mask-10m" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("record", [True, False], ids=["recorded and matching", "no record"])
def test_convert_goes_past_the_check_for_a_matching_or_unrecorded_pickle(
    tmp_path: Path, record: bool
) -> None:
    pkl = tmp_path / PICKLE
    pkl.write_bytes(PAYLOAD)
    if record:
        hub.record_path(pkl).write_text(f"{DIGEST}  {PICKLE}\n")
    # fastai is what comes after the check; without it the conversion stops there, before unpickling
    if importlib.util.find_spec("fastai") is not None:
        pytest.skip("fastai is installed: the next step would unpickle the test bytes")
    with pytest.raises(XS2MaskError, match="needs fastai"):
        convert_clouds2mask(pkl, tmp_path / "out")


def test_convert_refuses_a_malformed_record(tmp_path: Path) -> None:
    pkl = tmp_path / PICKLE
    pkl.write_bytes(PAYLOAD)
    hub.record_path(pkl).write_text("garbage\n")
    with pytest.raises(WeightsError, match="is not a sha256"):
        convert_clouds2mask(pkl, tmp_path / "out")


# --------------------------------------------------------------------------- downloads


def _signed(server: FaultServer, path: str) -> str:
    """A presigned URL (urllib, like most hosts of weights, takes no user:password@ in URLs)."""
    return f"{server.url}{path}?X-Amz-Credential=AK&X-Amz-Signature=AMZS3CRET&sig=SIGS3CRET"


def _assert_no_secret(err: BaseException) -> None:
    for text in exception_texts(err):
        assert not [s for s in SECRETS if s in text], text


SLOW = {
    "headers and body": Fault(PAYLOAD, content_type="application/octet-stream", drip_s=0.05),
    "body only": Fault(PAYLOAD, content_type="application/octet-stream", drip_s=0.05, drip_body_only=True),
    "silent": Fault(PAYLOAD, content_type="application/octet-stream", delay_s=3),
}


@pytest.mark.parametrize("case", SLOW)
def test_download_from_a_slow_loris_ends_at_its_deadline(isolated_dirs: Path, case: str) -> None:
    with FaultServer({"/w.bin": SLOW[case]}) as server:
        start = time.monotonic()
        with pytest.raises(WeightsError) as info:
            hub.fetch("w.bin", _signed(server, "/w.bin"), DIGEST, model="m", timeout=5, deadline=1)
        elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 2
    message = str(info.value)
    assert "did not finish within 1 s (deadline=)" in message and "w.bin" in message
    assert "X-Amz-Signature=***&sig=***" in message
    _assert_no_secret(info.value)
    assert not isolated_dirs.exists() or list(isolated_dirs.iterdir()) == []  # no partial file


FAILURES = {
    "404": (Fault(b"no such file", status=404, content_type="text/plain"), "404"),
    "html page": (Fault(b"<html>quota exceeded</html>", content_type="text/html"), "HTML page"),
    "other bytes": (Fault(PAYLOAD[::-1], content_type="application/octet-stream"), "fails its checksum"),
    "server error": (Fault(b"busy", status=503, content_type="text/plain"), "503"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_download_failure_hides_the_url_secrets(isolated_dirs: Path, case: str) -> None:
    fault, expected = FAILURES[case]
    with FaultServer({"/w.bin": fault}) as server, pytest.raises(WeightsError) as info:
        hub.fetch("w.bin", _signed(server, "/w.bin"), DIGEST, model="m", timeout=5, deadline=5)
    message = str(info.value)
    assert expected in message and "X-Amz-Signature=***" in message and str(isolated_dirs) in message
    _assert_no_secret(info.value)


def test_download_from_nowhere_hides_the_url_secrets(unreachable_url: str) -> None:
    url = unreachable_url + "/w.bin?sig=SIGS3CRET"
    with pytest.raises(WeightsError, match=r"failed: .*refused") as info:
        hub.fetch("w.bin", url, DIGEST, model="m", timeout=2, deadline=2)
    _assert_no_secret(info.value)


def test_offline_message_hides_the_url_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError, match=r"download http://\*\*\*@h/w\.bin\?sig=\*\*\* ") as info:
        hub.fetch("w.bin", "http://bob:pw-S3CRET@h/w.bin?sig=SIGS3CRET", DIGEST, model="m")
    _assert_no_secret(info.value)


def test_a_quick_download_is_not_cut_off(isolated_dirs: Path) -> None:
    with FaultServer(
        {"/w.bin": Fault(PAYLOAD, content_type="application/octet-stream", delay_s=0.2)}
    ) as server:
        path = hub.fetch("w.bin", _signed(server, "/w.bin"), DIGEST, model="m", timeout=5, deadline=1)
    assert path.read_bytes() == PAYLOAD


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A test certificate for 127.0.0.1, trusted by urllib (OpenSSL's default paths) for this test."""
    pytest.importorskip("cryptography")
    tls = self_signed_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))
    return tls


def test_https_download_and_its_deadline(isolated_dirs: Path, trusted: tuple[Path, Path]) -> None:
    routes = {
        "/w.bin": Fault(PAYLOAD, content_type="application/octet-stream"),
        "/slow.bin": SLOW["body only"],
    }
    with FaultServer(routes, tls=trusted) as server:
        assert (
            hub.fetch("w.bin", _signed(server, "/w.bin"), DIGEST, model="m", deadline=1).read_bytes()
            == PAYLOAD
        )
        start = time.monotonic()
        with pytest.raises(WeightsError, match="did not finish within 1 s") as info:
            hub.fetch("slow.bin", _signed(server, "/slow.bin"), DIGEST, model="m", timeout=5, deadline=1)
        assert 0.9 <= time.monotonic() - start < 2
    _assert_no_secret(info.value)
