"""benchmarks/bench_human.py (the human-label gate at several pixel sizes) and the reader of its new chips."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xs2mask.training import sources

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_human.py"


def test_cloud_cover_chips_more_reads_five_labelled_chips(shared_data: Path) -> None:
    chips = list(sources.cloud_cover_chips_more(shared_data))
    assert [c.name for c in chips] == [f"cloud_cover_chips_more/chip_{i}" for i in range(1, 6)]
    for chip in chips:
        assert chip.bands == ("B02", "B03", "B04", "B08")
        assert chip.reflectance.shape == (4, 512, 512) and chip.reflectance.dtype == np.float32
        assert (chip.level, chip.split, chip.licence) == ("L2A", "train", "CC BY 4.0")
        assert set(np.unique(chip.labels)) == {0, 1}
        assert 0 < np.nanmean(chip.reflectance) < 1  # DN / 10000
    assert "cloud_cover_chips_more" in sources.SOURCES  # trained on (labels and pixels)


def test_cloud_cover_chips_more_dn_zero_is_no_data(shared_data: Path, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    src = shared_data / "cloud_cover_chips_more" / "chip_3"
    chip = tmp_path / "cloud_cover_chips_more" / "chip_3"
    shutil.copytree(src, chip)
    with rasterio.open(chip / "B04.tif", "r+") as band:
        dn = band.read()
        dn[0, 10:20, 30:50] = 0
        band.write(dn)
    (scene,) = sources.cloud_cover_chips_more(tmp_path)
    assert scene.name == "cloud_cover_chips_more/chip_3"
    nan = np.isnan(scene.reflectance)
    assert nan[2, 10:20, 30:50].all() and nan.sum() == 200  # only B04's zeroed pixels
    assert scene.reflectance[2, 0, 0] == np.float32(dn[0, 0, 0]) / np.float32(10_000)


def test_simulated_sample_at_10_m_is_bench_accuracys(shared_data: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bench = importlib.import_module("bench_human")
    maker = bench.simulation(shared_data, Path("~/.cache/xs2mask/pseudo").expanduser())
    rng = np.random.default_rng((bench.SIM_SEED, 2**31, 1))
    refl, labels, _ = maker.simulated(rng, 256, maker.pools.clear_validation)  # bench_accuracy's sample 1
    at10 = bench.simulated_chip(maker, 1, 10)
    np.testing.assert_array_equal(at10.reflectance, refl)
    np.testing.assert_array_equal(at10.labels, labels)
    at60 = bench.simulated_chip(maker, 1, 60)
    assert at60.reflectance.shape == (4, 42, 42) and at60.labels.shape == (42, 42)


def _run_folder(folder: Path, name: str) -> Path:
    """A training run's folder holding the shipped xs2mask-4b's weights under another name."""
    weights = ROOT / "src" / "xs2mask" / "models" / "weights"
    folder.mkdir()
    meta = json.loads((weights / "xs2mask-4b.json").read_text())
    (folder / f"{name}.json").write_text(json.dumps({**meta, "name": name}))
    for suffix in (".onnx", ".safetensors"):
        shutil.copy(weights / f"xs2mask-4b{suffix}", folder / f"{name}{suffix}")
    return folder


def test_bench_human_scores_every_set_model_and_size(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "human.json"
    md = tmp_path / "human.md"
    run = _run_folder(tmp_path / "cand", "cand")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    args = ["--pixel-sizes", "10", "60", "--sim-samples", "2", "--models", "xs2mask-4b", "--run", str(run)]
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            str(shared_data),
            *args,
            "--json",
            str(out),
            "--out-md",
            str(md),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["setup"]["cs12_patches"] == {"cloudy": "cloudsen12/3014", "clear": "cloudsen12/3015"}
    sets = doc["sets"]
    main_figures = {
        "trusted": ["cloud"],
        "new-chips": ["cloud"],
        "cs12-rgbn": ["cloud", "thick", "thin", "shadow"],
        "sim-4b": ["cloud", "thick", "thin", "shadow"],
        "sim-4b-interior": ["cloud", "thick", "thin", "shadow"],
        "sim-4b-edges": ["cloud", "thick", "thin", "shadow"],
    }
    assert doc["setup"]["models"] == ["xs2mask-4b", "cand"]  # the run's ONNX model, not its -torch twin
    for name, keys in main_figures.items():
        assert set(sets[name]) == {"xs2mask-4b", "cand"}
        assert set(sets[name]["xs2mask-4b"]) == {"10", "60"}
        for figures in sets[name]["xs2mask-4b"].values():
            for key in keys:
                assert 0 <= figures[key] <= 100, (name, key, figures[key])
        assert sets[name]["cand"] == sets[name]["xs2mask-4b"]  # same weights, same samples: same figures
    for size in ("10", "60"):
        predicted = sets["cs12-fractions"]["xs2mask-4b"][size]
        labels = sets["cs12-fractions"]["labels"][size]
        assert sum(predicted.values()) == pytest.approx(100) and sum(labels.values()) == pytest.approx(100)
        assert labels["thick"] > 80  # the cloudy patch, not the clear city
        assert 0 <= sets["cs12-clear"]["xs2mask-4b"][size]["false_alarm"] <= 100
        assert 0 <= sets["clear-scenes"]["xs2mask-4b"][size]["false_alarm"] <= 100
        # interior and edge pixels split the simulated samples' pixels between them
        n = [
            sets[k]["xs2mask-4b"][size]["scores"]["n_pixels"]
            for k in ("sim-4b", "sim-4b-interior", "sim-4b-edges")
        ]
        assert n[0] == n[1] + n[2] and min(n) > 0
    # the no-data padding of the CloudSEN12 patch (its last 3 rows and columns) is not scored
    scores_10 = sets["cs12-rgbn"]["xs2mask-4b"]["10"]["scores"]
    assert scores_10["n_pixels"] == 509 * 509
    table = md.read_text()
    assert "| `xs2mask-4b` |" in table and "| model | 10 m | 60 m |" in table
    assert "30 m minus 10 m" not in proc.stdout  # no 30 m run: no difference to print
