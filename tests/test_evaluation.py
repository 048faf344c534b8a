"""Tests of xs2mask.evaluation: hand-computed scores, reference schemes, no-data, lazy input, pooling."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xs2mask.evaluation import SCHEMES, ClassScores, Scores, combine, evaluate
from xs2mask.exceptions import InputError

# Ten pixels, four classes. Confusion (rows reference, columns predicted; clear, thick, thin, shadow):
#   clear  [2, 1, 0, 0]
#   thick  [0, 1, 1, 0]
#   thin   [1, 0, 1, 0]
#   shadow [1, 0, 0, 2]
REF_FULL = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3], dtype=np.uint8)
PRED_FULL = np.array([0, 0, 1, 1, 2, 2, 0, 3, 3, 0], dtype=np.uint8)
CONFUSION_FULL = [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 2]]

ONCLOUDN = {0: "not_cloud", 1: "cloud"}


def assert_scores(s: ClassScores, *, tpr, tnr, boa, precision, f1, support) -> None:
    """Exact comparison: every metric is one correctly rounded division, as is each expected fraction."""
    got = (s.tpr, s.tnr, s.boa, s.precision, s.f1, s.support)
    want = (tpr, tnr, boa, precision, f1, support)
    for name, g, w in zip(("tpr", "tnr", "boa", "precision", "f1", "support"), got, want, strict=True):
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), f"{s.name}.{name}: {g} != nan"
        else:
            assert g == w, f"{s.name}.{name}: {g} != {w}"


# ---------------------------------------------------------------------------------------------------
# Hand-computed metrics
# ---------------------------------------------------------------------------------------------------
def test_full_scheme_every_metric_by_hand():
    s = evaluate(PRED_FULL, REF_FULL)
    assert s.reference_scheme == "full"
    assert s.labels == ("clear", "thick_cloud", "thin_cloud", "cloud_shadow")
    assert s.confusion.tolist() == CONFUSION_FULL
    assert s.confusion.dtype == np.int64
    assert (s.n_pixels, s.n_ignored, s.overall_accuracy) == (10, 0, 0.6)
    assert list(s.per_class) == ["clear", "thick_cloud", "thin_cloud", "cloud", "cloud_shadow"]
    # clear: TP 2, FN 1, FP 2, TN 5
    assert_scores(s["clear"], tpr=2 / 3, tnr=5 / 7, boa=29 / 42, precision=1 / 2, f1=4 / 7, support=3)
    # thick: TP 1, FN 1, FP 1, TN 7
    assert_scores(s["thick_cloud"], tpr=1 / 2, tnr=7 / 8, boa=11 / 16, precision=1 / 2, f1=1 / 2, support=2)
    # thin: TP 1, FN 1, FP 1, TN 7
    assert_scores(s["thin_cloud"], tpr=1 / 2, tnr=7 / 8, boa=11 / 16, precision=1 / 2, f1=1 / 2, support=2)
    # shadow: TP 2, FN 1, FP 0, TN 7
    assert_scores(s["cloud_shadow"], tpr=2 / 3, tnr=1.0, boa=5 / 6, precision=1.0, f1=4 / 5, support=3)
    c = s["clear"]
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 2, 1, 5)
    assert c.producers_accuracy == c.tpr == c.recall and c.users_accuracy == c.precision


def test_merged_cloud_is_thick_plus_thin():
    s = evaluate(PRED_FULL, REF_FULL)
    # cloud = rows/cols thick+thin: TP 3 (thick<->thin swaps are right), FN 1, FP 1, TN 5
    assert_scores(s["cloud"], tpr=3 / 4, tnr=5 / 6, boa=19 / 24, precision=3 / 4, f1=3 / 4, support=4)
    c = s["cloud"]
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 1, 5)
    # The full confusion matrix is kept; merging only adds the "cloud" scores.
    assert s.confusion.shape == (4, 4)

    unmerged = evaluate(PRED_FULL, REF_FULL, merge_cloud=False)
    assert "cloud" not in unmerged.per_class
    assert unmerged["thin_cloud"] == s["thin_cloud"]
    with pytest.raises(KeyError, match="cloud"):
        unmerged["cloud"]

    only = evaluate(PRED_FULL, REF_FULL, classes=["cloud", "clear"])
    assert list(only.per_class) == ["cloud", "clear"]
    assert only["cloud"] == s["cloud"]


def test_binary_reference_maps_thin_to_cloud_and_shadow_to_not_cloud():
    ref = np.array([0, 0, 0, 0, 0, 1, 1, 1], dtype=np.uint8)
    pred = np.array([0, 3, 3, 2, 1, 2, 0, 1], dtype=np.uint8)
    s = evaluate(pred, ref)  # only codes 0 and 1: detected as the binary "cloud" scheme
    assert s.reference_scheme == "cloud"
    assert s.labels == ("not_cloud", "cloud")
    # predicted 0 and 3 are not cloud, 1 and 2 cloud
    assert s.confusion.tolist() == [[3, 2], [1, 2]]
    assert s.overall_accuracy == 5 / 8
    # cloud: TP 2, FN 1, FP 2, TN 3
    assert_scores(s["cloud"], tpr=2 / 3, tnr=3 / 5, boa=19 / 30, precision=1 / 2, f1=4 / 7, support=3)
    # not_cloud is the mirror image: TP 3, FN 2, FP 1, TN 2
    assert_scores(s["not_cloud"], tpr=3 / 5, tnr=2 / 3, boa=19 / 30, precision=3 / 4, f1=2 / 3, support=5)
    assert evaluate(pred, ref, reference_classes=ONCLOUDN) == s
    assert evaluate(pred, ref, reference_scheme="cloud") == s


def test_binary_reference_with_other_codes():
    # A label coding cloud as 255 and no-data as 99.
    ref = np.array([0, 0, 0, 0, 0, 255, 255, 255, 99], dtype=np.uint8)
    pred = np.array([0, 3, 3, 2, 1, 2, 0, 1, 1], dtype=np.uint8)
    s = evaluate(pred, ref, reference_classes={0: "not_cloud", 255: "cloud"}, ignore=(99,))
    assert s.confusion.tolist() == [[3, 2], [1, 2]]
    assert s.n_ignored == 1


def test_cloud_shadow_clear_reference():
    ref = np.array([0, 0, 1, 1, 1, 3, 3, 0], dtype=np.uint8)
    pred = np.array([0, 3, 1, 2, 0, 3, 2, 0], dtype=np.uint8)
    s = evaluate(pred, ref)  # code 3 but no 2: thin cloud merged into cloud
    assert s.reference_scheme == "cloud/shadow/clear"
    assert s.labels == ("clear", "cloud", "cloud_shadow")
    assert list(s.per_class) == ["clear", "cloud", "cloud_shadow"]
    assert s.confusion.tolist() == [[2, 0, 1], [1, 2, 0], [0, 1, 1]]
    assert s.overall_accuracy == 5 / 8
    assert_scores(s["clear"], tpr=2 / 3, tnr=4 / 5, boa=11 / 15, precision=2 / 3, f1=2 / 3, support=3)
    assert_scores(s["cloud"], tpr=2 / 3, tnr=4 / 5, boa=11 / 15, precision=2 / 3, f1=2 / 3, support=3)
    assert_scores(s["cloud_shadow"], tpr=1 / 2, tnr=5 / 6, boa=2 / 3, precision=1 / 2, f1=1 / 2, support=2)

    # The same label with its own codes (2 = shadow) through reference_classes.
    own = np.array([0, 0, 1, 1, 1, 2, 2, 0], dtype=np.uint8)
    mapped = evaluate(pred, own, reference_classes={0: "clear", 1: "cloud", 2: "cloud_shadow"})
    assert mapped == s


def test_coarser_scheme_is_a_coarsening_of_the_full_matrix():
    full = evaluate(PRED_FULL, REF_FULL)
    css = evaluate(PRED_FULL, REF_FULL, reference_scheme="cloud/shadow/clear")
    binary = evaluate(PRED_FULL, REF_FULL, reference_scheme="cloud")
    assert css.confusion.tolist() == [[2, 1, 0], [1, 3, 0], [1, 0, 2]]
    assert binary.confusion.tolist() == [[5, 1], [1, 3]]
    assert css["cloud"] == binary["cloud"] == full["cloud"]
    assert css["cloud_shadow"] == full["cloud_shadow"]
    # xs2mask codes as reference_classes values, coarsened to the scheme asked for.
    coded = evaluate(
        PRED_FULL, REF_FULL, reference_classes={0: 0, 1: 1, 2: 2, 3: 3}, reference_scheme="cloud"
    )
    assert coded == binary


def test_empty_classes_are_nan_without_warnings():
    ref = np.array([0, 0, 1, 1], dtype=np.uint8)
    pred = np.array([0, 1, 1, 1], dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = evaluate(pred, ref, reference_scheme="full")
        nan = math.nan
        # thin cloud: in neither reference nor prediction
        assert_scores(s["thin_cloud"], tpr=nan, tnr=1.0, boa=nan, precision=nan, f1=nan, support=0)
        # cloud shadow: same
        assert_scores(s["cloud_shadow"], tpr=nan, tnr=1.0, boa=nan, precision=nan, f1=nan, support=0)
        # predicted but absent from the reference: no TPR, precision 0, F1 0
        t = evaluate(np.array([0, 3]), np.array([0, 0]), reference_scheme="full")
        assert_scores(t["cloud_shadow"], tpr=nan, tnr=1 / 2, boa=nan, precision=0.0, f1=0.0, support=0)
        # a reference of one class only: no TNR, hence no BOA
        assert_scores(t["clear"], tpr=1 / 2, tnr=nan, boa=nan, precision=1.0, f1=2 / 3, support=2)
        # nothing valid at all
        empty = evaluate(np.array([255, 1]), np.array([0, 255]))
        assert (empty.n_pixels, empty.n_ignored) == (0, 2)
        assert math.isnan(empty.overall_accuracy)
        assert empty.confusion.sum() == 0


def test_classscores_from_counts():
    s = ClassScores.from_counts("cloud", tp=3, fp=1, fn=1, tn=5)
    assert_scores(s, tpr=3 / 4, tnr=5 / 6, boa=19 / 24, precision=3 / 4, f1=3 / 4, support=4)


# ---------------------------------------------------------------------------------------------------
# No-data and NaN
# ---------------------------------------------------------------------------------------------------
def test_nodata_and_nan_are_ignored_on_either_side():
    pred = np.concatenate([PRED_FULL, [255, 1, 2, 0]]).astype(np.float32)
    ref = np.concatenate([REF_FULL, [1, 255, 0, 3]]).astype(np.float64)
    pred[-2] = np.nan
    ref[-1] = np.nan
    s = evaluate(pred, ref)
    assert s.confusion.tolist() == CONFUSION_FULL
    assert (s.n_pixels, s.n_ignored) == (10, 4)
    assert dict(s.per_class) == dict(evaluate(PRED_FULL, REF_FULL).per_class)

    # A masked array's mask counts as no-data too.
    masked = np.ma.masked_array(np.concatenate([PRED_FULL, [1]]), mask=[False] * 10 + [True])
    m = evaluate(masked, np.concatenate([REF_FULL, [0]]))
    assert m.confusion.tolist() == CONFUSION_FULL and m.n_ignored == 1

    # Other no-data codes; ignore=() keeps 255 as a (then invalid) value.
    other = evaluate(np.array([0, 1, 7]), np.array([0, 1, 1]), ignore=(7,))
    assert (other.n_pixels, other.n_ignored) == (2, 1)
    with pytest.raises(InputError, match="255"):
        evaluate(np.array([0, 255]), np.array([0, 1]), ignore=())


# ---------------------------------------------------------------------------------------------------
# Lazy input
# ---------------------------------------------------------------------------------------------------
class _CountingScheduler:
    """A synchronous dask scheduler that records each compute, its graph size and its results."""

    def __init__(self) -> None:
        self.graph_sizes: list[int] = []
        self.results: list = []

    def __call__(self, dsk, keys, **kwargs):
        graph = dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk
        self.graph_sizes.append(len(graph))
        out = dask.get(dsk, keys, **kwargs)
        self.results.append(out)
        return out


def _random_masks(shape=(240, 300), seed=0):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, shape).astype(np.uint8)
    ref = rng.integers(0, 4, shape).astype(np.uint8)
    pred[rng.random(shape) < 0.05] = 255
    ref[rng.random(shape) < 0.05] = 255
    return pred, ref


def test_lazy_input_equals_numpy_with_one_small_compute():
    pred, ref = _random_masks()
    eager = evaluate(pred, ref)
    lazy_pred = xr.DataArray(da.from_array(pred, chunks=(60, 100)), dims=("y", "x"))
    lazy_ref = xr.DataArray(da.from_array(ref, chunks=(60, 100)), dims=("y", "x"))
    n_blocks = lazy_pred.data.npartitions  # 4 x 3

    counter = _CountingScheduler()
    with dask.config.set(scheduler=counter):
        lazy = evaluate(lazy_pred, lazy_ref)
    assert lazy == eager
    assert lazy.n_ignored == eager.n_ignored > 0
    assert len(counter.graph_sizes) == 1, "evaluate must compute exactly once"
    # Per block: two source chunks, one count, a handful of tree-reduction tasks; never the pixels back.
    assert counter.graph_sizes[0] <= 8 * n_blocks
    (result,) = counter.results[0]
    assert np.asarray(result).nbytes < 20_000 < pred.nbytes

    # Different chunks on each side, a numpy side, and a Dataset with a `mask` variable.
    mixed = evaluate(
        xr.Dataset({"mask": lazy_pred}), da.from_array(ref, chunks=(50, 70)), reference_scheme="full"
    )
    assert mixed == eager
    assert evaluate(pred, da.from_array(ref, chunks=100)) == eager


def test_large_arrays_are_counted_in_slabs(monkeypatch):
    from xs2mask import evaluation

    pred, ref = _random_masks((37, 23))
    whole = evaluate(pred, ref)
    monkeypatch.setattr(evaluation, "_SLAB", 100)  # 9 slabs, the last one partial
    assert evaluate(pred, ref) == whole
    assert evaluate(da.from_array(pred, chunks=(10, 23)), ref) == whole


def test_dataarrays_are_aligned_by_dims_and_checked_by_coords():
    pred, ref = _random_masks((20, 30))
    coords = {"y": np.arange(20) * -10.0 + 5e6, "x": np.arange(30) * 10.0 + 4e5}
    p = xr.DataArray(pred[None], dims=("time", "y", "x"), coords=coords)  # one date
    r = xr.DataArray(ref.T, dims=("x", "y"), coords=coords)  # transposed, 2-D
    assert evaluate(p, r) == evaluate(pred, ref)
    shifted = r.assign_coords(x=r.x + 10.0)
    with pytest.raises(InputError, match="'x' coordinates"):
        evaluate(p, shifted)
    with pytest.raises(InputError, match="dims"):
        evaluate(p, r.rename(x="lon"))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError, match=r"shape \(10,\) but reference has shape \(9,\)"):
        evaluate(PRED_FULL, REF_FULL[:-1])
    with pytest.raises(InputError, match="shape"):
        evaluate(da.zeros((4, 4), chunks=2), np.zeros((4, 5)))


def test_invalid_prediction_codes_are_reported():
    bad = PRED_FULL.copy()
    bad[:3] = 7
    with pytest.raises(InputError, match=r"7 \(3 px\)"):
        evaluate(bad, REF_FULL)
    with pytest.raises(InputError, match="not integers 0-255"):
        evaluate(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(InputError, match="not integers 0-255"):
        evaluate(np.array([-1, 1]), np.array([0, 1]))
    # also when lazy, and even where the reference is no-data
    with pytest.raises(InputError, match=r"7 \(1 px\)"):
        evaluate(da.from_array(np.array([0, 7, 1]), chunks=1), np.array([0, 255, 1]))
    with pytest.raises(InputError, match="dtype"):
        evaluate(np.array(["a", "b"]), np.array([0, 1]))


def test_invalid_reference_and_arguments_are_reported():
    with pytest.raises(InputError, match=r"9 \(1 px\).*reference_classes"):
        evaluate(np.array([0, 1]), np.array([0, 9]))
    with pytest.raises(InputError, match=r"missing from reference_classes.*3 \(1 px\)"):
        evaluate(np.array([0, 1]), np.array([0, 3]), reference_classes=ONCLOUDN)
    with pytest.raises(InputError, match="2 px that are not integer codes 0-255"):
        evaluate(np.array([0, 1, 1]), np.array([0, 256, 1000], dtype=np.uint16))
    with pytest.raises(InputError, match="reference_scheme must be one of"):
        evaluate(PRED_FULL, REF_FULL, reference_scheme="binary")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a class name"):
        evaluate(PRED_FULL, REF_FULL, reference_classes={0: "snow"})
    with pytest.raises(InputError, match="one scheme"):
        evaluate(PRED_FULL, REF_FULL, reference_classes={0: "not_cloud", 1: "thick_cloud"})
    with pytest.raises(InputError, match="finer 'full'"):
        evaluate(PRED_FULL, REF_FULL, reference_classes=ONCLOUDN, reference_scheme="full")
    with pytest.raises(InputError, match="not scored"):
        evaluate(PRED_FULL, REF_FULL, classes=["thick_cloud"], reference_scheme="cloud")
    with pytest.raises(InputError, match="not scored"):
        evaluate(PRED_FULL, REF_FULL, classes=["cloud"], merge_cloud=False)
    with pytest.raises(InputError, match="'mask' variable"):
        evaluate(xr.Dataset({"label": ("x", PRED_FULL)}), REF_FULL)


# ---------------------------------------------------------------------------------------------------
# Pooling and output
# ---------------------------------------------------------------------------------------------------
def test_combine_equals_evaluate_on_concatenated_arrays():
    parts = [_random_masks((30, 40), seed=i) for i in range(3)]
    pooled = combine([evaluate(p, r, reference_scheme="full") for p, r in parts])
    whole = evaluate(
        np.concatenate([p for p, _ in parts]), np.concatenate([r for _, r in parts]), reference_scheme="full"
    )
    assert pooled == whole
    assert pooled.n_ignored == whole.n_ignored
    assert pooled["cloud"] == whole["cloud"]
    assert list(pooled.per_class) == list(whole.per_class)


def test_combine_across_schemes_needs_a_scheme_and_coarsens():
    full = evaluate(PRED_FULL, REF_FULL)
    binary_ref = np.array([0, 1, 1, 0])
    binary_pred = np.array([3, 2, 0, 0])
    binary = evaluate(binary_pred, binary_ref)
    with pytest.raises(InputError, match="different reference schemes"):
        combine([full, binary])
    with pytest.raises(InputError, match="cannot be refined"):
        combine([full, binary], reference_scheme="full")
    pooled = combine([full, binary], reference_scheme="cloud")
    whole = evaluate(
        np.concatenate([PRED_FULL, binary_pred]),
        np.concatenate([REF_FULL, binary_ref]),
        reference_scheme="cloud",
    )
    assert pooled == whole
    with pytest.raises(InputError, match="at least one"):
        combine([])


def test_as_dict_is_json_and_table_and_frame():
    s = evaluate(np.array([0, 3]), np.array([0, 0]), reference_scheme="full")
    d = json.loads(json.dumps(s.as_dict(), allow_nan=False))
    assert d["confusion"][0] == [1, 0, 0, 1]
    assert d["classes"]["cloud_shadow"]["tpr"] is None
    assert d["classes"]["cloud_shadow"]["precision"] == 0.0
    assert d["reference_scheme"] == "full" and d["labels"] == list(SCHEMES["full"])

    text = s.table(digits=3)
    assert "| cloud_shadow | 0 | n/a | 0.500 | n/a | 0.000 | 0.000 |" in text
    assert "| clear | 1 | 0 | 0 | 1 |" in text

    pd = pytest.importorskip("pandas")
    frame = s.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == list(s.per_class)
    assert frame.loc["clear", "tpr"] == 0.5 and frame.loc["clear", "support"] == 2


def test_scores_are_frozen_and_picklable():
    s = evaluate(PRED_FULL, REF_FULL)
    again = pickle.loads(pickle.dumps(s))
    assert again == s and again["cloud"] == s["cloud"]
    assert not again.confusion.flags.writeable
    assert isinstance(s, Scores)
    with pytest.raises(ValueError):
        s.confusion[0, 0] = 5
    with pytest.raises(AttributeError):
        s.n_pixels = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.per_class["x"] = s["clear"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------
# Real labels: the trusted On Cloud N chips
# ---------------------------------------------------------------------------------------------------
def _trusted_labels(real_data: Path) -> dict[str, np.ndarray]:
    rasterio = pytest.importorskip("rasterio")
    folder = real_data / "cloud_cover_chips"
    chips = json.loads((folder / "chips.json").read_text())
    labels = {}
    for chip in chips:
        if chip["label_quality"] == "trusted":
            with rasterio.open(folder / chip["chip"] / "label.tif") as f:
                labels[chip["chip"]] = f.read(1)
    assert len(labels) == 6
    return labels


def test_real_labels_trivial_prediction_and_self(real_data: Path):
    labels = _trusted_labels(real_data)
    trivial, perfect = [], []
    for chip, label in labels.items():
        all_clear = evaluate(np.zeros_like(label), label, reference_classes=ONCLOUDN)
        itself = evaluate(label, label, reference_classes=ONCLOUDN)
        trivial.append(all_clear)
        perfect.append(itself)
        has_cloud, has_clear = bool((label == 1).any()), bool((label == 0).any())
        assert itself.overall_accuracy == 1.0
        if has_cloud and has_clear:
            # Never predicting cloud: TPR 0, TNR 1, so BOA exactly 0.5 however cloudy the chip.
            assert all_clear["cloud"].boa == 0.5, chip
            assert all_clear["cloud"].tpr == 0.0 and all_clear["cloud"].tnr == 1.0
            assert itself["cloud"].boa == 1.0, chip
        else:  # a single-class chip has no BOA of its own
            assert math.isnan(all_clear["cloud"].boa) and math.isnan(itself["cloud"].boa)
    assert combine(trivial)["cloud"].boa == 0.5
    pooled_self = combine(perfect)
    assert pooled_self["cloud"].boa == 1.0 and pooled_self["cloud"].f1 == 1.0
    assert pooled_self.n_pixels == sum(label.size for label in labels.values())


def test_real_label_lazy_through_xarray(real_data: Path):
    pytest.importorskip("rioxarray")
    import rioxarray

    path = real_data / "cloud_cover_chips" / "adwp" / "label.tif"
    label = rioxarray.open_rasterio(path, chunks={"y": 256, "x": 256})  # band, y, x; lazy
    counter = _CountingScheduler()
    with dask.config.set(scheduler=counter):
        s = evaluate(xr.zeros_like(label), label, reference_classes=ONCLOUDN)
    assert len(counter.graph_sizes) == 1
    assert s["cloud"].boa == 0.5
    assert s.n_pixels == 512 * 512
