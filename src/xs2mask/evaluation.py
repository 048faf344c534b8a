"""Accuracy of a cloud mask against a reference label: per-class one-vs-rest scores and the confusion matrix.

:func:`evaluate` compares a predicted xs2mask mask (codes 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud
shadow, 255 no-data) with a reference label, on numpy arrays or (lazy, Dask-backed) xarray objects. The
confusion matrix is counted chunk by chunk and only a small vector of counts is ever computed, so a
continent-sized cube is evaluated without loading it. :func:`combine` pools the scores of several scenes by
summing their confusion matrices.

Reference schemes
-----------------
Labels come with fewer classes than xs2mask predicts. The *reference scheme* says how fine the reference
is, and BOTH sides are mapped onto it before counting (the same mapping, so a coarser scheme is exactly a
coarsening of the finer confusion matrix):

========================  ============================  ==============================================
scheme                    classes (confusion labels)    xs2mask code -> class (prediction and reference)
========================  ============================  ==============================================
``"full"``                clear, thick_cloud,           0 -> clear, 1 -> thick_cloud, 2 -> thin_cloud,
                          thin_cloud, cloud_shadow      3 -> cloud_shadow
``"cloud/shadow/clear"``  clear, cloud, cloud_shadow    0 -> clear, 1 and 2 -> cloud, 3 -> cloud_shadow
``"cloud"``               not_cloud, cloud              1 and 2 -> cloud, 0 and 3 -> not_cloud
========================  ============================  ==============================================

Without ``reference_scheme`` the scheme is the finest one the reference codes allow: ``"full"`` when the
reference holds code 2 (thin cloud), else ``"cloud/shadow/clear"`` when it holds code 3 (cloud shadow),
else ``"cloud"`` (codes 0 and 1 only, as in the On Cloud N chips, where 0 means "not cloud", shadows
included). A scene that merely lacks thin cloud is therefore scored on the coarser scheme: pass
``reference_scheme`` explicitly when evaluating many scenes of one data set, so that they can be pooled.

A reference with other codes is read through ``reference_classes``, a mapping from its codes to class
names of one scheme, e.g. ``{0: "not_cloud", 1: "cloud"}`` or, for a label where 2 means shadow,
``{0: "clear", 1: "cloud", 2: "cloud_shadow"}``. Use ``"not_cloud"`` (not ``"clear"``) for a binary label
whose 0 includes shadows: ``"clear"`` with ``"cloud"`` selects ``"cloud/shadow/clear"``, where a predicted
shadow on a reference-clear pixel is an error.

Merged cloud
------------
Following the CloudSEN12 protocol, thick and thin cloud are also scored together as ``"cloud"`` (one
against the rest: clear and shadow) when ``merge_cloud`` is true. On the two coarser schemes ``cloud`` is
a class of its own and always scored.

Metrics
-------
For each class, one against the rest, with TP, FN, FP, TN counted over the valid pixels:

- ``tpr`` (recall, producer's accuracy) = TP / (TP + FN)
- ``tnr`` (specificity) = TN / (TN + FP)
- ``boa`` (balanced overall accuracy) = (TPR + TNR) / 2
- ``precision`` (user's accuracy) = TP / (TP + FP)
- ``f1`` = 2 TP / (2 TP + FP + FN)

A ratio with a zero denominator is NaN (a class absent from the reference has no TPR; a reference made
of one class only has no TNR, hence no BOA), never a warning. Each metric is one division of two exact
integers, so it is the correctly rounded value of the exact fraction.

Examples
--------
>>> import numpy as np
>>> pred = np.array([[0, 1, 2], [3, 0, 255]], dtype=np.uint8)
>>> ref = np.array([[0, 1, 1], [3, 3, 0]], dtype=np.uint8)   # no code 2: cloud/shadow/clear
>>> scores = evaluate(pred, ref)
>>> scores.reference_scheme, scores.labels, scores.n_pixels, scores.n_ignored
('cloud/shadow/clear', ('clear', 'cloud', 'cloud_shadow'), 5, 1)
>>> scores["cloud"].boa, scores["cloud_shadow"].tpr, scores.overall_accuracy
(1.0, 0.5, 0.8)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import xarray as xr

from .classes import CLASS_NAMES, NODATA
from .exceptions import InputError

__all__ = ["SCHEMES", "ClassScores", "Scores", "coarsen", "coarsen_labels", "combine", "evaluate"]

Scheme = Literal["full", "cloud/shadow/clear", "cloud"]

#: Class names of each reference scheme, in confusion-matrix order.
SCHEMES: dict[str, tuple[str, ...]] = {
    "full": tuple(CLASS_NAMES.values()),
    "cloud/shadow/clear": ("clear", "cloud", "cloud_shadow"),
    "cloud": ("not_cloud", "cloud"),
}

# Index of the scheme class of each xs2mask code 0..3. Every scheme is a coarsening of the one before it,
# which is what lets one mapping serve prediction, reference and combine().
_CODE_TO_CLASS: dict[str, tuple[int, ...]] = {
    "full": (0, 1, 2, 3),
    "cloud/shadow/clear": (0, 1, 1, 2),
    "cloud": (0, 1, 1, 0),
}
_FINENESS = {"full": 0, "cloud/shadow/clear": 1, "cloud": 2}
# One xs2mask code standing for each class name, to carry a name into a coarser scheme.
_NAME_TO_CODE = {
    "clear": 0,
    "thick_cloud": 1,
    "thin_cloud": 2,
    "cloud_shadow": 3,
    "cloud": 1,
    "not_cloud": 0,
}
_N_CODES = len(CLASS_NAMES)  # xs2mask prediction codes are 0..3

# Per pixel, each side is reduced to a bucket: its integer code 0..255, or one of two special buckets.
# Counting buckets (not classes) lets the reference scheme be chosen and reference_classes applied AFTER
# the single pass over the data, on a small matrix.
_IGNORED = 256  # NaN or a value in `ignore`
_OTHER = 257  # not an integer in 0..255 (negative, too large, fractional, infinite)
_NB = 258
# Prediction side of the joint count: codes 0..3, then ignored, then anything else.
_P_IGNORED = _N_CODES
_P_INVALID = _N_CODES + 1
_NP = _N_CODES + 2
_LEN = _NB * _NP + _NB  # joint (reference bucket x prediction column), then the prediction's own histogram


# ------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------
def _ratio(num: int, den: int) -> float:
    # Python ints: exact products, and int / int is correctly rounded, so tests can compare exactly.
    return num / den if den else math.nan


@dataclass(frozen=True)
class ClassScores:
    """Scores of one class against all the others.

    Attributes
    ----------
    name : str
        Class name (``"clear"``, ``"thick_cloud"``, ``"thin_cloud"``, ``"cloud_shadow"``, ``"cloud"``,
        ``"not_cloud"``).
    tpr : float
        True positive rate, recall, producer's accuracy: TP / (TP + FN); NaN when ``support`` is 0.
    tnr : float
        True negative rate, specificity: TN / (TN + FP); NaN when every reference pixel is of this class.
    boa : float
        Balanced overall accuracy (TPR + TNR) / 2; NaN when either is NaN.
    precision : float
        Precision, user's accuracy: TP / (TP + FP); NaN when the class is never predicted.
    f1 : float
        2 TP / (2 TP + FP + FN): the harmonic mean of precision and recall, 0 when the class is missed
        entirely, NaN only when it is neither in the reference nor predicted.
    support : int
        Reference pixels of the class (TP + FN).
    tp, fp, fn, tn : int
        The one-vs-rest counts.

    Examples
    --------
    >>> s = ClassScores.from_counts("cloud", tp=3, fp=1, fn=1, tn=5)
    >>> s.tpr, s.tnr, s.boa, s.precision, s.f1, s.support
    (0.75, 0.8333333333333334, 0.7916666666666666, 0.75, 0.75, 4)
    >>> s.producers_accuracy == s.tpr and s.users_accuracy == s.precision
    True
    """

    name: str
    tpr: float
    tnr: float
    boa: float
    precision: float
    f1: float
    support: int
    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_counts(cls, name: str, *, tp: int, fp: int, fn: int, tn: int) -> ClassScores:
        """Scores from the one-vs-rest counts (see the module docstring for the formulas)."""
        tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)
        pos, neg = tp + fn, tn + fp
        # BOA as ONE division of exact integers rather than (tpr + tnr) / 2 of two rounded floats.
        boa = _ratio(tp * neg + tn * pos, 2 * pos * neg)
        return cls(
            name=name,
            tpr=_ratio(tp, pos),
            tnr=_ratio(tn, neg),
            boa=boa,
            precision=_ratio(tp, tp + fp),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            support=pos,
            tp=tp,
            fp=fp,
            fn=fn,
            tn=tn,
        )

    @property
    def producers_accuracy(self) -> float:
        """Producer's accuracy: the remote-sensing name of :attr:`tpr`."""
        return self.tpr

    @property
    def users_accuracy(self) -> float:
        """User's accuracy: the remote-sensing name of :attr:`precision`."""
        return self.precision

    @property
    def recall(self) -> float:
        """Recall: the machine-learning name of :attr:`tpr`."""
        return self.tpr

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN becomes ``None`` (JSON has no NaN)."""
        return {
            "name": self.name,
            "tpr": _json_float(self.tpr),
            "tnr": _json_float(self.tnr),
            "boa": _json_float(self.boa),
            "precision": _json_float(self.precision),
            "f1": _json_float(self.f1),
            "support": self.support,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


_METRICS = ("support", "tpr", "tnr", "boa", "precision", "f1")
_HEADERS = {
    "support": "support",
    "tpr": "TPR (PA)",
    "tnr": "TNR",
    "boa": "BOA",
    "precision": "precision (UA)",
    "f1": "F1",
}


class _ReadOnlyDict(dict):
    """A dict that refuses changes (MappingProxyType cannot be pickled)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Scores.per_class is read-only")

    __setitem__ = __delitem__ = _readonly
    clear = pop = popitem = setdefault = update = __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))


# eq=False: the generated __eq__ would compare numpy arrays element-wise (ambiguous truth value).
@dataclass(frozen=True, eq=False)
class Scores:
    """Accuracy of a mask against a reference: the confusion matrix and the scores derived from it.

    Attributes
    ----------
    confusion : numpy.ndarray
        K x K int64 counts, rows the reference class, columns the predicted class, in :attr:`labels`
        order; read-only.
    labels : tuple of str
        Class names of the rows and columns (those of :data:`SCHEMES` ``[reference_scheme]``).
    reference_scheme : str
        ``"full"``, ``"cloud/shadow/clear"`` or ``"cloud"``.
    per_class : Mapping[str, ClassScores]
        One-vs-rest scores by class name; also reachable as ``scores[name]``.
    overall_accuracy : float
        Fraction of valid pixels whose predicted class equals the reference (NaN when there are none).
    n_pixels : int
        Valid pixels counted (neither side no-data nor NaN).
    n_ignored : int
        Pixels skipped because either side was no-data or NaN.
    merge_cloud : bool
        Whether ``"cloud"`` (thick + thin) was scored on the ``"full"`` scheme.

    Examples
    --------
    >>> import numpy as np
    >>> s = evaluate(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    >>> s.confusion.tolist(), s.labels
    ([[2, 1], [0, 1]], ('not_cloud', 'cloud'))
    >>> s["cloud"].boa
    0.8333333333333334
    >>> s.as_dict()["classes"]["cloud"]["precision"]
    0.5
    """

    confusion: np.ndarray
    labels: tuple[str, ...]
    reference_scheme: str
    per_class: Mapping[str, ClassScores]
    overall_accuracy: float
    n_pixels: int
    n_ignored: int = 0
    merge_cloud: bool = True
    _class_names: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # Frozen in depth: a read-only copy of the matrix and of the per-class mapping.
        confusion = np.array(self.confusion, dtype=np.int64)
        confusion.setflags(write=False)
        object.__setattr__(self, "confusion", confusion)
        object.__setattr__(self, "per_class", _ReadOnlyDict(self.per_class))

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (e.g. returned by dask.distributed workers), rebuilt through __init__.
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))

    def __getitem__(self, name: str) -> ClassScores:
        try:
            return self.per_class[name]
        except KeyError:
            raise KeyError(f"no scores for class {name!r}; scored: {list(self.per_class)}") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scores):
            return NotImplemented
        return (
            self.labels == other.labels
            and self.reference_scheme == other.reference_scheme
            and np.array_equal(self.confusion, other.confusion)
            and self.n_ignored == other.n_ignored
            and tuple(self.per_class) == tuple(other.per_class)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists, ints, floats; NaN as ``None``).

        Examples
        --------
        >>> import json, numpy as np
        >>> d = evaluate(np.array([1, 1]), np.array([1, 1])).as_dict()
        >>> json.dumps(d["classes"]["cloud"]["tnr"]), d["confusion"]
        ('null', [[0, 0], [0, 2]])
        """
        return {
            "reference_scheme": self.reference_scheme,
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
            "overall_accuracy": _json_float(self.overall_accuracy),
            "n_pixels": self.n_pixels,
            "n_ignored": self.n_ignored,
            "merge_cloud": self.merge_cloud,
            "classes": {name: s.as_dict() for name, s in self.per_class.items()},
        }

    def to_frame(self):  # -> pandas.DataFrame; pandas is optional, so no annotation
        """Per-class scores as a :class:`pandas.DataFrame` (one row per class).

        Raises
        ------
        ImportError
            When pandas is not installed; :meth:`table` gives the same as markdown without it.
        """
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is installed in the test environment
            raise ImportError("Scores.to_frame() needs pandas; Scores.table() needs nothing") from err
        columns = (*_METRICS, "tp", "fp", "fn", "tn")
        rows = {name: {c: getattr(s, c) for c in columns} for name, s in self.per_class.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(columns))
        frame.index.name = "class"
        return frame

    def table(self, digits: int = 4) -> str:
        """Per-class scores and the confusion matrix as markdown tables.

        Examples
        --------
        >>> import numpy as np
        >>> print(evaluate(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])).table(digits=2))
        | class | support | TPR (PA) | TNR | BOA | precision (UA) | F1 |
        |---|---|---|---|---|---|---|
        | not_cloud | 3 | 0.67 | 1.00 | 0.83 | 1.00 | 0.80 |
        | cloud | 1 | 1.00 | 0.67 | 0.83 | 0.50 | 0.67 |
        <BLANKLINE>
        overall accuracy 0.75 over 4 pixels (scheme 'cloud', 0 ignored)
        <BLANKLINE>
        | reference \\ predicted | not_cloud | cloud |
        |---|---|---|
        | not_cloud | 2 | 1 |
        | cloud | 0 | 1 |
        """

        def fmt(x: float) -> str:
            return "n/a" if math.isnan(x) else f"{x:.{digits}f}"

        lines = ["| class | " + " | ".join(_HEADERS[m] for m in _METRICS) + " |"]
        lines.append("|---" * (len(_METRICS) + 1) + "|")
        for name, s in self.per_class.items():
            cells = [str(s.support)] + [fmt(getattr(s, m)) for m in _METRICS[1:]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"overall accuracy {fmt(self.overall_accuracy)} over {self.n_pixels} pixels "
            f"(scheme {self.reference_scheme!r}, {self.n_ignored} ignored)",
            "",
            "| reference \\ predicted | " + " | ".join(self.labels) + " |",
            "|---" * (len(self.labels) + 1) + "|",
        ]
        for label, row in zip(self.labels, self.confusion.tolist(), strict=True):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines)


def _available_classes(scheme: str, merge_cloud: bool) -> tuple[str, ...]:
    labels = SCHEMES[scheme]
    if scheme == "full" and merge_cloud:
        # "cloud" right after its two parts.
        return (*labels[:3], "cloud", labels[3])
    return labels


def _class_members(scheme: str, name: str) -> list[int]:
    if scheme == "full" and name == "cloud":
        return [1, 2]
    return [SCHEMES[scheme].index(name)]


def _select_classes(scheme: str, merge_cloud: bool, classes: Iterable[str] | None) -> tuple[str, ...]:
    available = _available_classes(scheme, merge_cloud)
    if classes is None:
        return available
    if isinstance(classes, str):
        classes = [classes]
    chosen = tuple(classes)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise InputError(
            f"classes {unknown} are not scored on the {scheme!r} scheme (merge_cloud={merge_cloud}); "
            f"choose from {list(available)}"
        )
    return chosen


def _scores_from_confusion(
    confusion: np.ndarray,
    scheme: str,
    *,
    merge_cloud: bool,
    class_names: tuple[str, ...],
    n_ignored: int,
) -> Scores:
    c = np.asarray(confusion, dtype=np.int64).tolist()  # Python ints from here on: no overflow, exact ratios
    n = sum(map(sum, c))
    per_class = {}
    for name in class_names:
        idx = _class_members(scheme, name)
        tp = sum(c[i][j] for i in idx for j in idx)
        pos = sum(sum(c[i]) for i in idx)
        predicted = sum(c[i][j] for i in range(len(c)) for j in idx)
        per_class[name] = ClassScores.from_counts(
            name, tp=tp, fn=pos - tp, fp=predicted - tp, tn=n - pos - predicted + tp
        )
    return Scores(
        confusion=confusion,
        labels=SCHEMES[scheme],
        reference_scheme=scheme,
        per_class=per_class,
        overall_accuracy=_ratio(sum(c[i][i] for i in range(len(c))), n),
        n_pixels=n,
        n_ignored=int(n_ignored),
        merge_cloud=merge_cloud,
        _class_names=class_names,
    )


# ------------------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------------------
def _buckets(block: Any, ignore: np.ndarray) -> np.ndarray:
    """Bucket of each pixel: its code 0..255, _IGNORED (NaN or in ``ignore``) or _OTHER."""
    a = np.asarray(block)
    if a.dtype == bool:
        a = a.view(np.uint8)
    kind = a.dtype.kind
    if kind == "f":
        ignored = np.isnan(a)
        with np.errstate(invalid="ignore"):
            ok = (a >= 0) & (a <= 255) & (a == np.floor(a))
    elif kind in "iu":
        ignored = np.zeros(a.shape, dtype=bool)
        ok = (a >= 0) & (a <= 255) if (a.dtype.itemsize > 1 or kind == "i") else np.ones(a.shape, bool)
    else:
        raise InputError(f"masks must hold integer or float class codes, got dtype {a.dtype}")
    if ignore.size:
        ignored |= np.isin(a, ignore)
    out = np.full(a.shape, _OTHER, dtype=np.intp)
    out[ok] = a[ok]
    out[ignored] = _IGNORED
    return out


_SLAB = 1 << 22  # pixels per pass: bounds the int temporaries (~8 bytes/pixel each) of a big numpy scene


def _block_counts(reference: Any, predicted: Any, ignore: np.ndarray) -> np.ndarray:
    """Counts of one block: joint (reference bucket x prediction column), then the prediction histogram."""
    ref = np.ravel(np.asarray(reference))
    pred = np.ravel(np.asarray(predicted))
    counts = np.zeros(_LEN, dtype=np.int64)
    for start in range(0, max(ref.size, 1), _SLAB):
        rb = _buckets(ref[start : start + _SLAB], ignore)
        pb = _buckets(pred[start : start + _SLAB], ignore)
        col = np.where(pb < _N_CODES, pb, np.where(pb == _IGNORED, _P_IGNORED, _P_INVALID))
        counts[: _NB * _NP] += np.bincount(rb * _NP + col, minlength=_NB * _NP)
        counts[_NB * _NP :] += np.bincount(pb, minlength=_NB)
    return counts


def _block_counts_nd(reference: Any, predicted: Any, ignore: np.ndarray) -> np.ndarray:
    # One count vector per block, on a new trailing axis, so dask can sum the blocks as a tree.
    return _block_counts(reference, predicted, ignore).reshape((1,) * np.ndim(reference) + (_LEN,))


def _is_dask(x: Any) -> bool:
    from dask.base import is_dask_collection

    return is_dask_collection(x)


def _count(reference: Any, predicted: Any, ignore: np.ndarray) -> np.ndarray:
    """The count vector over all pixels: one pass, one ``compute()`` when either side is lazy."""
    if not (_is_dask(reference) or _is_dask(predicted)):
        return _block_counts(reference, predicted, ignore)
    import dask.array as da

    # Follow the lazy side's chunks; a numpy side is wrapped with the same blocks.
    lead = predicted if _is_dask(predicted) else reference
    reference = da.asarray(reference).rechunk(lead.chunks)
    predicted = da.asarray(predicted).rechunk(lead.chunks)
    if reference.ndim == 0:
        reference, predicted = reference.reshape(1), predicted.reshape(1)
    ndim = reference.ndim
    per_block = da.map_blocks(
        _block_counts_nd,
        reference,
        predicted,
        ignore=ignore,
        new_axis=ndim,
        chunks=(*(tuple(1 for _ in c) for c in reference.chunks), (_LEN,)),
        dtype=np.int64,
        meta=np.empty((0,) * (ndim + 1), np.int64),
    )
    return np.asarray(per_block.sum(axis=tuple(range(ndim))).compute())


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------
def _as_array_like(x: Any, what: str) -> Any:
    if isinstance(x, xr.Dataset):
        if "mask" not in x.data_vars:
            names = sorted(map(str, x.data_vars))
            raise InputError(f"{what} is a Dataset without a 'mask' variable (has {names})")
        x = x["mask"]
    if isinstance(x, xr.DataArray):
        return x
    if _is_dask(x):
        return x
    if isinstance(x, np.ma.MaskedArray):
        # Masked pixels are no-data: NaN is always skipped.
        return np.ma.filled(x.astype(np.float64), np.nan)
    return np.asarray(x)


def _coords_match(a: xr.DataArray, b: xr.DataArray, dim: str) -> bool:
    va, vb = a.indexes[dim].values, b.indexes[dim].values
    if va.shape != vb.shape:
        return False
    if va.dtype.kind in "fc" and vb.dtype.kind in "fciu":
        # Grids computed two ways differ in the last bits; a shifted grid differs by a pixel.
        return bool(np.allclose(va, vb, rtol=1e-9, atol=0.0, equal_nan=True))
    return bool(np.array_equal(va, vb))


def _align(predicted: Any, reference: Any) -> tuple[Any, Any]:
    """Raw arrays (numpy or dask) of the same shape, pixel for pixel."""
    if isinstance(predicted, xr.DataArray) and isinstance(reference, xr.DataArray):
        # A size-1 dim on one side only (a one-date prediction against a 2-D label) carries no pixels.
        predicted = predicted.squeeze(
            [d for d in predicted.dims if d not in reference.dims and predicted.sizes[d] == 1]
        )
        reference = reference.squeeze(
            [d for d in reference.dims if d not in predicted.dims and reference.sizes[d] == 1]
        )
        if set(predicted.dims) != set(reference.dims):
            raise InputError(f"predicted has dims {predicted.dims} but reference has dims {reference.dims}")
        reference = reference.transpose(*predicted.dims)
        for dim in predicted.dims:
            if (
                dim in predicted.indexes
                and dim in reference.indexes
                and predicted.sizes[dim] == reference.sizes[dim]
                and not _coords_match(predicted, reference, dim)
            ):
                raise InputError(
                    f"predicted and reference have different {dim!r} coordinates: they are not the same "
                    f"pixels (reproject or select one onto the other first)"
                )
    p = predicted.data if isinstance(predicted, xr.DataArray) else predicted
    r = reference.data if isinstance(reference, xr.DataArray) else reference
    if tuple(p.shape) != tuple(r.shape):
        raise InputError(f"predicted has shape {tuple(p.shape)} but reference has shape {tuple(r.shape)}")
    return p, r


def _scheme_of_names(names: Iterable[str]) -> str:
    names = set(names)
    for scheme in SCHEMES:  # finest first
        if names <= set(SCHEMES[scheme]):
            return scheme
    raise InputError(
        f"reference_classes names {sorted(names)} do not belong to one scheme: "
        + "; ".join(f"{s!r}: {list(n)}" for s, n in SCHEMES.items())
    )


def _check_scheme(scheme: str | None) -> None:
    if scheme is not None and scheme not in SCHEMES:
        raise InputError(f"reference_scheme must be one of {list(SCHEMES)}, got {scheme!r}")


def _reference_lut(
    reference_classes: Mapping[int, str | int] | None, scheme: str | None
) -> tuple[dict[int, str], str | None]:
    """Validate ``reference_classes`` (before any computing) into {code: name} and its scheme."""
    if reference_classes is None:
        return {}, scheme
    lut: dict[int, str] = {}
    for code, name in dict(reference_classes).items():
        if not isinstance(code, (int, np.integer)) or not 0 <= int(code) <= 255:
            raise InputError(f"reference_classes keys must be integer codes 0-255, got {code!r}")
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if int(name) not in CLASS_NAMES:
                raise InputError(
                    f"reference_classes value {name!r} is not an xs2mask code {list(CLASS_NAMES)}"
                )
            name = CLASS_NAMES[int(name)]
        if name not in _NAME_TO_CODE:
            raise InputError(f"reference_classes value {name!r} is not a class name {list(_NAME_TO_CODE)}")
        lut[int(code)] = name
    natural = _scheme_of_names(lut.values())
    if scheme is None:
        return lut, natural
    if _FINENESS[scheme] < _FINENESS[natural]:
        raise InputError(
            f"reference_classes {sorted(set(lut.values()))} describe the {natural!r} scheme, which cannot "
            f"be scored on the finer {scheme!r} scheme"
        )
    return lut, scheme


def _fmt_values(values: np.ndarray) -> list[float | int]:
    return [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]


def _describe_codes(hist: np.ndarray, codes: Iterable[int]) -> str:
    return ", ".join(f"{c} ({int(hist[c])} px)" for c in codes)


# ------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------
def evaluate(
    predicted: Any,
    reference: Any,
    *,
    classes: Iterable[str] | None = None,
    ignore: Iterable[float] | None = (NODATA,),
    merge_cloud: bool = True,
    reference_scheme: Scheme | None = None,
    reference_classes: Mapping[int, str | int] | None = None,
) -> Scores:
    """Score a predicted mask against a reference label, per class one against the rest.

    Parameters
    ----------
    predicted : numpy.ndarray, dask.array.Array, xarray.DataArray or xarray.Dataset
        xs2mask class codes (0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow); a Dataset gives its
        ``mask`` variable. Integer or float (NaN = no-data).
    reference : same kinds as ``predicted``
        The label, same shape. xs2mask / CloudSEN12 codes unless ``reference_classes`` is given.
    classes : iterable of str, optional
        Names of the classes to score (default: every class of the scheme, plus ``"cloud"`` on the
        ``"full"`` scheme when ``merge_cloud``). The confusion matrix always has every class.
    ignore : iterable of numbers, optional
        Codes skipped on either side, besides NaN (default: 255, xs2mask no-data).
    merge_cloud : bool
        Also score thick + thin cloud together as ``"cloud"`` (CloudSEN12 protocol) on the ``"full"``
        scheme.
    reference_scheme : {"full", "cloud/shadow/clear", "cloud"}, optional
        How fine the reference is; detected from its codes when omitted (see the module docstring). Both
        sides are mapped onto it.
    reference_classes : mapping of int to str, optional
        The reference's own codes to class names of one scheme, e.g. ``{0: "not_cloud", 1: "cloud"}``;
        xs2mask codes 0-3 are accepted as values for the ``"full"`` names. Fixes the scheme unless
        ``reference_scheme`` names a coarser one.

    Returns
    -------
    Scores

    Raises
    ------
    InputError
        Shapes (or, for DataArrays, dims or coordinates) differ; ``predicted`` holds a code other than
        0-3 and ``ignore``; ``reference`` holds a code that is neither in its scheme nor ignored; an
        unknown scheme or class name.

    Notes
    -----
    Lazy inputs are counted block by block (one ``bincount`` per block, summed as a tree) and computed
    once; only a vector of 1,806 counts per block is ever held. Codes must be integers 0-255.

    Examples
    --------
    Four-class reference (CloudSEN12 codes); thick and thin also scored as ``cloud``:

    >>> import numpy as np
    >>> ref = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> pred = np.array([0, 3, 1, 2, 2, 0, 3, 3])
    >>> s = evaluate(pred, ref)
    >>> s.reference_scheme, list(s.per_class)
    ('full', ['clear', 'thick_cloud', 'thin_cloud', 'cloud', 'cloud_shadow'])
    >>> s["thick_cloud"].tpr, s["cloud"].tpr, s["cloud"].tnr, s["cloud"].boa
    (0.5, 0.75, 1.0, 0.875)

    A binary label (On Cloud N): predicted thin cloud counts as cloud, predicted shadow as not cloud.

    >>> onecloudn = {0: "not_cloud", 1: "cloud"}
    >>> s = evaluate(np.array([0, 2, 3, 1]), np.array([0, 1, 0, 255]), reference_classes=onecloudn)
    >>> s.labels, s.confusion.tolist(), s.n_ignored
    (('not_cloud', 'cloud'), [[2, 0], [0, 1]], 1)
    """
    _check_scheme(reference_scheme)
    lut, scheme = _reference_lut(reference_classes, reference_scheme)
    if classes is not None and scheme is not None:
        _select_classes(scheme, merge_cloud, classes)  # fail before a long compute
    ignore_arr = np.asarray([] if ignore is None else list(ignore), dtype=np.float64)

    predicted, reference = _align(
        _as_array_like(predicted, "predicted"), _as_array_like(reference, "reference")
    )
    counts = _count(reference, predicted, ignore_arr)
    joint = counts[: _NB * _NP].reshape(_NB, _NP)
    pred_hist = counts[_NB * _NP :]

    bad_pred = [c for c in range(_N_CODES, 256) if pred_hist[c]]
    if bad_pred or pred_hist[_OTHER]:
        extra = f"{int(pred_hist[_OTHER])} px not integers 0-255" if pred_hist[_OTHER] else ""
        listed = "; ".join(x for x in (_describe_codes(pred_hist, bad_pred), extra) if x)
        raise InputError(
            f"predicted holds values that are not xs2mask classes {list(CLASS_NAMES)} nor ignored "
            f"{_fmt_values(ignore_arr)}: {listed}"
        )
    ref_hist = joint.sum(axis=1)
    if ref_hist[_OTHER]:
        n_bad = int(ref_hist[_OTHER])
        raise InputError(f"reference holds {n_bad} px that are not integer codes 0-255 nor NaN")
    present = [c for c in range(256) if ref_hist[c]]

    if lut:
        unknown = [c for c in present if c not in lut]
        if unknown:
            raise InputError(
                f"reference holds codes missing from reference_classes {sorted(lut)}: "
                f"{_describe_codes(ref_hist, unknown)} (add them to the mapping or to ignore)"
            )
        assert scheme is not None
        row_of = {c: _CODE_TO_CLASS[scheme][_NAME_TO_CODE[lut[c]]] for c in present}
    else:
        unknown = [c for c in present if c >= _N_CODES]
        if unknown:
            raise InputError(
                f"reference holds codes that are not xs2mask classes {list(CLASS_NAMES)}: "
                f"{_describe_codes(ref_hist, unknown)}; pass reference_classes= to name them "
                f"or ignore= to skip them"
            )
        if scheme is None:
            scheme = "full" if 2 in present else "cloud/shadow/clear" if 3 in present else "cloud"
        row_of = {c: _CODE_TO_CLASS[scheme][c] for c in present}

    col_of = _CODE_TO_CLASS[scheme]
    k = len(SCHEMES[scheme])
    confusion = np.zeros((k, k), dtype=np.int64)
    for code, row in row_of.items():
        for p in range(_N_CODES):
            confusion[row, col_of[p]] += joint[code, p]
    n_ignored = int(ref_hist[_IGNORED] + joint[:256, _P_IGNORED].sum())
    return _scores_from_confusion(
        confusion,
        scheme,
        merge_cloud=merge_cloud,
        class_names=_select_classes(scheme, merge_cloud, classes),
        n_ignored=n_ignored,
    )


def _coarsen(confusion: np.ndarray, src: str, dst: str) -> np.ndarray:
    # Each class of `src` falls in one class of `dst` (through any xs2mask code that stands for it).
    to = [_CODE_TO_CLASS[dst][_CODE_TO_CLASS[src].index(i)] for i in range(len(SCHEMES[src]))]
    onehot = np.zeros((len(to), len(SCHEMES[dst])), dtype=np.int64)
    onehot[np.arange(len(to)), to] = 1
    return onehot.T @ np.asarray(confusion, dtype=np.int64) @ onehot


def combine(
    scores: Sequence[Scores] | Iterable[Scores],
    *,
    reference_scheme: Scheme | None = None,
    classes: Iterable[str] | None = None,
    merge_cloud: bool | None = None,
) -> Scores:
    """Pool the scores of several scenes by summing their confusion matrices.

    Pooling counts weighs every pixel equally, which is the honest summary over many chips; averaging the
    per-chip BOA would weigh a 10-pixel chip like a full scene, and is undefined for single-class chips.

    Parameters
    ----------
    scores : iterable of Scores
        Results of :func:`evaluate`.
    reference_scheme : str, optional
        Scheme of the result. Required when the inputs differ (each must be as fine or finer: a
        ``"full"`` result can be coarsened to ``"cloud"``, not the reverse). Default: the inputs' scheme.
    classes, merge_cloud : optional
        As in :func:`evaluate`; default: those of the first input.

    Returns
    -------
    Scores

    Examples
    --------
    >>> import numpy as np
    >>> a = evaluate(np.array([1, 0]), np.array([1, 1]), reference_scheme="cloud")
    >>> b = evaluate(np.array([0, 0]), np.array([0, 0]), reference_scheme="cloud")
    >>> b["cloud"].boa                      # no cloud in b: undefined on its own
    nan
    >>> combine([a, b])["cloud"].boa        # TPR 1/2, TNR 3/3
    0.75
    """
    items = list(scores)
    if not items:
        raise InputError("combine() needs at least one Scores")
    if not all(isinstance(s, Scores) for s in items):
        raise InputError("combine() takes Scores objects (results of evaluate)")
    _check_scheme(reference_scheme)
    schemes = {s.reference_scheme for s in items}
    if reference_scheme is None:
        if len(schemes) > 1:
            raise InputError(
                f"the scores were computed on different reference schemes {sorted(schemes)}; pass "
                f"reference_scheme= (the coarsest, e.g. 'cloud') to pool them"
            )
        reference_scheme = items[0].reference_scheme  # type: ignore[assignment]
    assert reference_scheme is not None
    finer = [s for s in schemes if _FINENESS[s] > _FINENESS[reference_scheme]]
    if finer:
        raise InputError(f"scores on the {finer[0]!r} scheme cannot be refined to {reference_scheme!r}")
    total = np.sum([_coarsen(s.confusion, s.reference_scheme, reference_scheme) for s in items], axis=0)
    merge = items[0].merge_cloud if merge_cloud is None else merge_cloud
    if classes is None and reference_scheme == items[0].reference_scheme and merge == items[0].merge_cloud:
        classes = items[0]._class_names
    return _scores_from_confusion(
        total,
        reference_scheme,
        merge_cloud=merge,
        class_names=_select_classes(reference_scheme, merge, classes),
        n_ignored=sum(s.n_ignored for s in items),
    )


def coarsen(reflectance: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``(..., y, x)`` reflectance over ``factor`` x ``factor`` blocks: coarser pixels.

    This is how a sensor (or a resampled cube) at ``factor`` times the pixel size sees the same
    ground. Edges that do not fill a block are cut; a block with any NaN is NaN (no data).

    Examples
    --------
    >>> a = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> coarsen(a, 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    if factor == 1:
        return reflectance
    a = np.asarray(reflectance)
    h, w = (a.shape[-2] // factor) * factor, (a.shape[-1] // factor) * factor
    blocks = a[..., :h, :w].reshape(*a.shape[:-2], h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(a.dtype)


def coarsen_labels(labels: np.ndarray, factor: int, classes: Sequence[int] = (0, 1, 2, 3)) -> np.ndarray:
    """The most frequent of ``classes`` in each ``factor`` x ``factor`` block (ties: the higher code,
    so that a block half cloud is cloud); blocks with no pixel of ``classes`` are ``NODATA``.

    Examples
    --------
    >>> labels = np.array([[0, 1, 3, 3], [0, 0, 3, 0], [1, 1, 2, 2], [0, 1, 255, 255]], np.uint8)
    >>> coarsen_labels(labels, 2)
    array([[0, 3],
           [1, 2]], dtype=uint8)
    """
    if factor == 1:
        return labels
    h, w = (labels.shape[0] // factor) * factor, (labels.shape[1] // factor) * factor
    blocks = labels[:h, :w].reshape(h // factor, factor, w // factor, factor)
    counts = np.stack([(blocks == c).sum(axis=(1, 3)) for c in classes])
    # argmax takes the first maximum: search the reversed list so that ties go to the higher code.
    best = len(classes) - 1 - counts[::-1].argmax(axis=0)
    out = np.asarray(classes, np.uint8)[best]
    out[counts.sum(axis=0) == 0] = NODATA
    return out
