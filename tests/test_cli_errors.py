"""The command line as users type it: every user error is one `xs2mask: error: ...` line, exit 2,
caught before any network request or computation; a traceback only with --debug."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xs2mask.checks import check_bbox, check_datetime
from xs2mask.cli import _in_cli_terms, build_parser, main
from xs2mask.exceptions import InputError, OptionError

GOOD = ["--bbox", "32.84", "-2.57", "32.89", "-2.52", "--datetime", "2024-06-01/2024-06-30"]


def _xs2mask(*args: str, cwd: Path | None = None, unprivileged: bool = False) -> subprocess.CompletedProcess:
    # Root writes anywhere: ``unprivileged`` runs the CLI as root without its capabilities (setpriv),
    # so that folder permissions apply to it as to any user.
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if unprivileged and os.geteuid() == 0 else []
    return subprocess.run(
        [*drop, sys.executable, "-m", "xs2mask.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _predict(url: str, out: str, *extra: str) -> list[str]:
    args = ["mask-stac", "--stac-url", url, "--collection", "sentinel-2-l2a", "--out", out]
    # Later occurrences win in argparse, so a case can override a good default.
    return [*args, *GOOD, *extra]


def _assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xs2mask: error: "), lines
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


PREDICT_CASES = {
    "datetime-word": (["--datetime", "yesterday"], ["--datetime", "2024-06-01/2024-06-30"]),
    "datetime-reversed": (["--datetime", "2024-06-30/2024-06-01"], ["start <= end"]),
    "datetime-month-13": (["--datetime", "2024-13"], ["--datetime"]),
    "datetime-open-both": (["--datetime", "../.."], ["--datetime"]),
    "tta-9": (["--tta", "9"], ["--tta", "at most 7"]),
    "tta-negative": (["--tta", "-1"], ["--tta", "at least 0"]),
    "tta-float": (["--tta", "1.5"], ["--tta", "whole number"]),
    "pixel-size-0": (["--pixel-size", "0"], ["--pixel-size", "above 0"]),
    "pixel-size-nan": (["--pixel-size", "nan"], ["--pixel-size", "finite"]),
    "read-retries-negative": (["--read-retries", "-1"], ["--read-retries"]),
    "read-timeout-0": (["--read-timeout", "0"], ["--read-timeout"]),
    "chunks-0": (["--chunks", "0"], ["--chunks", "at least 1"]),
    "batch-0": (["--batch", "0"], ["--batch"]),
    "block-0": (["--block", "0"], ["--block", "at least 1"]),
    "workers-negative": (["--workers", "-2"], ["--workers"]),
    "max-cloud-150": (["--max-cloud", "150"], ["--max-cloud", "at most 100"]),
    "processing-resolution-negative": (["--processing-resolution", "-20"], ["--processing-resolution"]),
    "former-resolution-negative": (["--resolution", "-20"], ["--resolution"]),
    "bbox-lat-95": (["--bbox", "32.84", "-2.57", "32.89", "95"], ["north 95.0", "-90..90"]),
    "bbox-south-above-north": (["--bbox", "32.84", "-2.52", "32.89", "-2.57"], ["below north"]),
    "bbox-lon-200": (["--bbox", "200", "-2.57", "201", "-2.52"], ["-180..180"]),
    "bbox-inf": (["--bbox", "inf", "-2.57", "32.89", "-2.52"], ["--bbox", "finite"]),
    "bbox-three-values": (["--bbox", "1", "2", "3", "--zarr-format", "2"], ["--bbox"]),
    "storage-option-no-equals": (["--storage-option", "anon"], ["--storage-option", "KEY=VALUE"]),
    "zarr-format-4": (["--zarr-format", "4"], ["--zarr-format"]),
    "harmonize-maybe": (["--harmonize", "maybe"], ["--harmonize"]),
    "workers-and-scheduler": (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers"]),
    "append-and-overwrite": (["--append", "--overwrite"], ["--append", "--overwrite"]),
    "unknown-flag": (["--max-clouds", "20"], ["--max-clouds"]),
}


@pytest.mark.parametrize("extra,words", PREDICT_CASES.values(), ids=PREDICT_CASES.keys())
def test_predict_user_errors_are_one_line_before_any_request(tmp_path, http_error_server, extra, words):
    result = _xs2mask(*_predict(http_error_server.url, str(tmp_path / "m.zarr"), *extra))
    _assert_one_line_error(result, *words)
    assert http_error_server.requests == 0, "the STAC API was asked before the arguments were checked"
    assert not (tmp_path / "m.zarr").exists()


def test_output_that_is_a_file_is_refused_before_any_request(tmp_path, http_error_server):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    result = _xs2mask(*_predict(http_error_server.url, str(mine)))
    _assert_one_line_error(result, str(mine), "is a file")
    assert http_error_server.requests == 0
    assert mine.read_text() == "my notes"


def test_output_under_a_file_is_refused(tmp_path, http_error_server):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    result = _xs2mask(*_predict(http_error_server.url, str(mine / "masks.zarr")))
    _assert_one_line_error(result, "is a file, not a folder")
    assert http_error_server.requests == 0


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="root writes anywhere: needs setpriv to run the CLI without root's capabilities",
)
def test_output_in_a_read_only_folder_is_refused(tmp_path, http_error_server):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = _xs2mask(*_predict(http_error_server.url, str(locked / "masks.zarr")), unprivileged=True)
    _assert_one_line_error(result, "not writable")


def test_stac_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, http_error_server):
    args = _predict(http_error_server.url, str(tmp_path / "m.zarr"), "--read-retries", "0")
    _assert_one_line_error(_xs2mask(*args), "STAC API")
    debug = _xs2mask(*args, "--debug")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "StacError" in debug.stderr


MASK_CASES = {
    "missing-input": (["nothere.SAFE", "-o", "m.tif"], ["nothere.SAFE", "does not exist"]),
    "output-is-folder": (["scene.tif", "-o", "."], ["-o", "is a folder"]),
    "output-is-input": (["scene.tif", "-o", "scene.tif", "--overwrite"], ["is the input itself"]),
    "output-exists": (["scene.tif", "-o", "old.tif"], ["--overwrite"]),
    "offset-huge": (["scene.tif", "-o", "m.tif", "--offset", "1e9"], ["--offset"]),
    "chunks-negative": (["scene.tif", "-o", "m.tif", "--chunks", "-5"], ["--chunks"]),
    "tta-8": (["scene.tif", "-o", "m.tif", "--tta", "8"], ["--tta"]),
    "unknown-model": (["scene.tif", "-o", "m.tif", "--model", "no-such-model"], ["no-such-model"]),
}


@pytest.mark.parametrize("args,words", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_mask_user_errors_are_one_line(tmp_path, args, words):
    from xs2mask.data import demo_path

    (tmp_path / "scene.tif").write_bytes(Path(demo_path()).read_bytes())
    (tmp_path / "old.tif").write_bytes(b"keep me")
    result = _xs2mask("mask", *args, cwd=tmp_path)
    _assert_one_line_error(result, *words)
    assert (tmp_path / "old.tif").read_bytes() == b"keep me"
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["models", "download", "no-such-model"], ["no-such-model"]),
        (["models", "convert", "clouds2mask", "/no/such/file.pkl"], ["/no/such/file.pkl"]),
        (["train", "--config", "/no/such/config.toml"], ["/no/such/config.toml"]),
        (["demo", "--model", "no-such-model"], ["no-such-model"]),
        (["demo", "--device", "quantum"], ["quantum"]),
        (["frobnicate"], ["frobnicate"]),
        ([], ["command"]),
    ],
    ids=["download-unknown", "convert-missing", "train-missing-config", "demo-unknown-model",
         "demo-bad-device", "unknown-command", "no-command"],
)  # fmt: skip
def test_other_commands_user_errors_are_one_line(tmp_path, args, words):
    _assert_one_line_error(_xs2mask(*args, cwd=tmp_path), *words)


@pytest.mark.parametrize(
    "former,current",
    [
        (["predict", "--resolution", "20"], ["mask-stac", "--processing-resolution", "20"]),
        (["mask", "scene.tif", "-o", "m.tif", "--resolution", "20"],
         ["mask", "scene.tif", "-o", "m.tif", "--processing-resolution", "20"]),
    ],
    ids=["predict", "mask"],
)  # fmt: skip
def test_former_names_still_work_and_name_their_successors(capsys, former, current):
    stac = ["--stac-url", "http://x", "--collection", "c", "--out", "m.zarr", *GOOD]
    extra = stac if current[0] == "mask-stac" else []
    old = vars(build_parser().parse_args([*former, *extra]))
    warning = capsys.readouterr().err
    new = vars(build_parser().parse_args([*current, *extra]))
    assert capsys.readouterr().err == ""
    assert old.pop("command") in ("predict", "mask") and new.pop("command") in ("mask-stac", "mask")
    assert old == new and new["processing_resolution"] == 20
    assert warning == (
        "xs2mask: warning: --resolution is now --processing-resolution (the resolution the model runs at; "
        "the masks keep the input's pixel size)\n"
    )


def test_mask_stac_flags_become_the_typed_job(monkeypatch, tmp_path, capsys):
    from xs2mask import pipeline
    from xs2mask.pipeline import Job, Load, Outcome, Predict, Search, Store

    jobs: list[Job] = []

    def run(job, *, progress):
        jobs.append(job)
        return Outcome(job.store.out, 1, 0, 1, 0, None)

    monkeypatch.setattr(pipeline, "run", run)
    out = str(tmp_path / "m.zarr")
    args = ["mask-stac", "--stac-url", "http://x", "--collection", "a", "--collection", "b", "--out", out,
            *GOOD, "--max-cloud", "40", "--pixel-size", "20", "--chunks", "512", "--harmonize", "false",
            "--read-retries", "5", "--read-timeout", "12", "--on-read-error", "nodata", "--append",
            "--zarr-format", "2", "--block", "2048", "--batch", "3", "--storage-option", "anon=true",
            "--model", "xs2mask-4b", "--tta", "2", "--processing-resolution", "60", "--device", "cpu",
            "--compile", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert jobs == [
        Job(
            Search("http://x", ("a", "b"), (32.84, -2.57, 32.89, -2.52), GOOD[-1], max_cloud=40),
            Store(out, mode="a", zarr_format=2, block=2048, batch=3, storage_options={"anon": "true"}),
            load=Load(pixel_size=20, chunks=512, harmonize=False, read_retries=5, read_timeout=12,
                      on_read_error="nodata"),
            predict=Predict("xs2mask-4b", tta=2, processing_resolution=60, device="cpu", compile=True),
        )
    ]  # fmt: skip
    assert "nothing to do" in capsys.readouterr().out


def test_library_advice_is_given_in_flags():
    message = "pass bands= without it, or harmonize=False, or mode='w' to replace, or device='cpu'"
    assert _in_cli_terms(message) == (
        "pass --bands without it, or --harmonize false, or --overwrite to replace, or --device cpu"
    )
    assert _in_cli_terms("pass allow_incomplete=True") == "pass allow_incomplete=True"
    said_twice = "Pass mode='a' (--append) to append them, or mode='w' (--overwrite) to replace it."
    assert _in_cli_terms(said_twice) == "Pass --append to append them, or --overwrite to replace it."
    assert _in_cli_terms("pass zarr_format=3 (--zarr-format 3)") == "pass --zarr-format 3"
    assert _in_cli_terms("or processing_resolution=20") == "or --processing-resolution 20"
    assert _in_cli_terms("or leave processing_resolution unset") == "or leave out --processing-resolution"
    assert _in_cli_terms("or leave patch_size unset") == "or leave patch_size unset"  # no such flag
    # a list is the flag's values, as the shell takes them
    listed = "pass bands= (4 names in file order, e.g. bands=['B02', 'B03', 'B04', 'B08'] for a 4-band file)"
    assert _in_cli_terms(listed) == (
        "pass --bands (4 names in file order, e.g. --bands B02 B03 B04 B08 for a 4-band file)"
    )


@pytest.mark.parametrize(
    "text", ["2024", "2024-06", "2024-06-01", "2024-06-01/2024-06-30", "../2024-06-30", "2024-06-01/..",
             "2024-06-01T10:00:00Z/2024-06-02T00:00:00+02:00", "2024-06/2024-06-15"],
)  # fmt: skip
def test_good_datetimes_pass(text):
    assert check_datetime(text) == text


@pytest.mark.parametrize(
    "text", ["", "..", "yesterday", "2024-6-1", "2024-06-32", "2024/2025/2026", "2025-01-01/2024-01-01",
             "2024-06-01T25:00:00Z"],
)  # fmt: skip
def test_bad_datetimes_are_refused(text):
    with pytest.raises(InputError, match="datetime"):
        check_datetime(text)


def test_bbox_across_the_antimeridian_is_allowed():
    assert check_bbox([179.5, -17, -179.5, -16]) == (179.5, -17.0, -179.5, -16.0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"datetime": "yesterday"}, InputError, "datetime 'yesterday'"),
        ({"bbox": [32.84, -2.57, 32.89, 95]}, InputError, "north 95.0"),
        ({"retries": -1}, OptionError, "retries"),
        ({"timeout": 0}, OptionError, "timeout"),
    ],
)
def test_search_checks_its_arguments_before_any_request(http_error_server, kwargs, error, match):
    from xs2mask import stac

    with pytest.raises(error, match=match):
        stac.search(http_error_server.url, collections="sentinel-2-l2a", **kwargs)
    assert http_error_server.requests == 0
