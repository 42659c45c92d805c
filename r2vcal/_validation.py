"""Input checks and probability binning shared by the metric, threshold and
plotting modules.

Package-internal API: the names are public within r2vcal (no leading
underscore) but are not re-exported. Each check raises a ``ValueError`` naming
the parameter and the caller, what was expected and what came.

Binning: with edges ``e_0 < ... < e_B`` a probability falls in bin ``k`` when
``e_k <= p < e_{k+1}``, the last bin closed (see :mod:`r2vcal.metrics`).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

__all__ = [
    "STRATEGIES",
    "FloatArray",
    "as_1d",
    "bin_edges",
    "bin_index",
    "check_choice",
    "check_float",
    "check_inputs",
    "check_int",
    "check_labels",
    "check_prob",
    "check_weight",
    "fmt_choices",
    "group_codes",
]

STRATEGIES = frozenset({"uniform", "quantile"})

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def fmt_choices(choices: frozenset[str]) -> str:
    return "{" + ", ".join(repr(c) for c in sorted(choices)) + "}"


def check_choice(value: Any, name: str, choices: frozenset[str], caller: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"The {name!r} parameter of {caller} must be a str among "
            f"{fmt_choices(choices)}. Got {value!r} instead."
        )
    return value


def check_int(value: Any, name: str, caller: str, minimum: int = 1) -> int:
    is_int = not isinstance(value, bool) and isinstance(value, numbers.Integral)
    if not is_int or value < minimum:
        raise ValueError(
            f"The {name!r} parameter of {caller} must be an int in the range "
            f"[{minimum}, inf). Got {value!r} instead."
        )
    return int(value)


def check_float(
    value: Any,
    name: str,
    caller: str,
    low: float,
    high: float,
    closed: str = "both",
) -> float:
    """Check a real scalar in an interval; ``closed`` in {both, left, right, neither}."""
    lo_br = "[" if closed in ("both", "left") else "("
    hi_br = "]" if closed in ("both", "right") else ")"
    msg = (
        f"The {name!r} parameter of {caller} must be a float in the range "
        f"{lo_br}{low}, {high}{hi_br}. Got {value!r} instead."
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(msg)
    v = float(value)
    if not np.isfinite(v) and not (v == high == np.inf and hi_br == "]"):
        raise ValueError(msg)
    ok_lo = v >= low if lo_br == "[" else v > low
    ok_hi = v <= high if hi_br == "]" else v < high
    if not (ok_lo and ok_hi):
        raise ValueError(msg)
    return v


def as_1d(x: Any, name: str, caller: str, dtype: Any = np.float64) -> NDArray[Any]:
    """Convert to a 1-D numeric array or raise a ValueError naming ``name``."""
    if x is None:
        raise ValueError(f"{caller}: {name} is required; got None.")
    try:
        arr = np.asarray(x)
        if arr.dtype.kind in "OUSVMm":
            raise TypeError(f"dtype {arr.dtype}")
        if arr.dtype.kind == "c":
            raise TypeError("complex values")
        arr = arr.astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"{caller}: {name} must be a 1-D array of real numbers; it could not be "
            f"converted ({exc})."
        ) from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"{caller}: {name} must be 1-D (one value per sample); got an array of "
            f"shape {arr.shape}."
        )
    return arr


def group_codes(
    groups: Any, n: int, caller: str, *, sort: bool = False
) -> tuple[NDArray[np.intp], pd.Index]:
    """Integer code of each sample's group and the group labels.

    ``groups`` must be 1-D with ``n`` labels and no missing values; codes
    number the labels in order of appearance, or in sorted order with
    ``sort=True`` (:func:`pandas.factorize`).
    """
    g = np.asarray(groups, dtype=object)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(
            f"{caller}: groups must be 1-D with one label per sample ({n}); "
            f"got shape {g.shape}."
        )
    codes, labels = pd.factorize(pd.Series(list(g)), sort=sort)
    if np.any(codes < 0):
        raise ValueError(f"{caller}: groups contains missing values (NaN/None).")
    return codes, labels


def _nonempty_1d(x: Any, name: str, caller: str) -> FloatArray:
    arr = as_1d(x, name, caller)
    if arr.size == 0:
        raise ValueError(f"{caller}: {name} is empty; at least one sample is needed.")
    return arr


def check_prob(y_prob: Any, caller: str, name: str = "y_prob") -> FloatArray:
    """``y_prob`` as a non-empty 1-D array of probabilities in [0, 1]."""
    p = _nonempty_1d(y_prob, name, caller)
    lo, hi = float(p.min()), float(p.max())
    if np.isnan(lo) or np.isnan(hi):
        raise ValueError(f"{caller}: {name} contains NaN.")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{caller}: {name} must contain probabilities in [0, 1]; got values in "
            f"[{lo!r}, {hi!r}]. Pass predict_proba(X)[:, 1], not decision_function."
        )
    return p


def check_labels(y_true: Any, caller: str, name: str = "y_true") -> FloatArray:
    """``y_true`` as a non-empty 1-D array of 0/1 labels (float64)."""
    y = _nonempty_1d(y_true, name, caller)
    ok = (y == 0.0) | (y == 1.0)
    if not ok.all():
        bad = np.unique(y[~ok])[:5]
        raise ValueError(
            f"{caller}: {name} must contain binary labels 0/1 (or booleans); got "
            f"other values such as {bad.tolist()}. Only binary classification is "
            "supported."
        )
    return y


def check_weight(
    sample_weight: Any, n: int, caller: str, name: str = "sample_weight"
) -> FloatArray | None:
    if sample_weight is None:
        return None
    w = as_1d(sample_weight, name, caller)
    if w.shape[0] != n:
        raise ValueError(
            f"{caller}: {name} has {w.shape[0]} entries but there are {n} samples."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{caller}: {name} must be finite and non-negative.")
    if not w.sum() > 0:
        raise ValueError(f"{caller}: {name} sums to zero; nothing to average.")
    return w


def check_inputs(
    y_true: Any, y_prob: Any, sample_weight: Any, caller: str
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    y = check_labels(y_true, caller)
    p = check_prob(y_prob, caller)
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"{caller}: y_true and y_prob must have the same length; got "
            f"{y.shape[0]} and {p.shape[0]}."
        )
    w = check_weight(sample_weight, y.shape[0], caller)
    return y, p, w


# ---------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------


def _weighted_quantiles(p: FloatArray, w: FloatArray, q: FloatArray) -> FloatArray:
    """Weighted quantiles by linear interpolation between order statistics.

    Sorted value ``i`` sits at position ``(S_i - w_i) / (W - w_last)`` where
    ``S_i`` is the cumulative weight; with equal weights this is ``i / (n - 1)``,
    i.e. exactly :func:`numpy.quantile`'s default (linear) method.
    """
    keep = w > 0
    p, w = p[keep], w[keep]
    order = np.argsort(p, kind="stable")
    ps, ws = p[order], w[order]
    denom = ws.sum() - ws[-1]
    if ps.size == 1 or denom <= 0:
        return np.full(q.shape, ps[-1])
    pos = (np.cumsum(ws) - ws) / denom
    return np.asarray(np.interp(q, pos, ps), dtype=np.float64)


def bin_edges(
    p: FloatArray, w: FloatArray | None, n_bins: int, strategy: str
) -> FloatArray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    q = np.linspace(0.0, 1.0, n_bins + 1)
    if w is None:
        edges: FloatArray = np.quantile(p, q)
    else:
        edges = _weighted_quantiles(p, w, q)
    return np.maximum.accumulate(edges)  # guard against rounding non-monotonicity


def bin_index(p: FloatArray, edges: FloatArray, uniform: bool) -> NDArray[np.intp]:
    """Bin of each probability: ``e_k <= p < e_{k+1}``, last bin closed."""
    n_bins = edges.size - 1
    if uniform:
        # fast path: floor(p * n_bins), re-checked exactly against the edges for
        # the few values that lie within rounding distance of an edge
        scaled = p * n_bins
        idx = scaled.astype(np.intp)
        frac = scaled - idx
        near = np.flatnonzero((frac < 1e-9) | (frac > 1.0 - 1e-9))
        if near.size:
            idx[near] = np.searchsorted(edges, p[near], side="right") - 1
    else:
        idx = np.searchsorted(edges, p, side="right") - 1
    np.clip(idx, 0, n_bins - 1, out=idx)
    return idx
