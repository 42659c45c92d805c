"""Calibration, Brier and group metrics with bootstrap confidence intervals.

Plain functions (DESIGN §4, STYLE §4): each takes ``y_true`` (binary labels,
``1`` = "escalating this step would have helped") and ``y_prob`` (the router's
probability of the positive class) and returns one fixed type.

Binning convention, shared by every binned function here
(:func:`expected_calibration_error`, :func:`debiased_calibration_error`,
:func:`reliability_curve`): with bin edges ``e_0 < e_1 < ... < e_B`` a
probability ``p`` falls in bin ``k`` when ``e_k <= p < e_{k+1}``; the last bin
is closed, ``e_{B-1} <= p <= e_B``. This is :func:`numpy.histogram`'s rule and
torchmetrics' rule (except that torchmetrics puts ``p == 1.0`` exactly into an
extra bin of its own). scikit-learn's ``calibration_curve`` uses the mirror
image, ``e_{k-1} < p <= e_k`` with the first bin closed, so the two only
disagree for probabilities lying exactly on an interior edge.

``strategy="uniform"`` uses ``numpy.linspace(0, 1, n_bins + 1)`` as edges;
``strategy="quantile"`` uses the quantiles of ``y_prob`` at
``linspace(0, 1, n_bins + 1)`` (``numpy.quantile`` with linear interpolation,
as scikit-learn; with ``sample_weight``, the weighted generalisation that reduces
to it for equal weights). Repeated quantile edges give empty bins, which carry no weight.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from r2vcal._objective import exact_cvar
from r2vcal._validation import (
    STRATEGIES,
    FloatArray,
    bin_edges,
    bin_index,
    check_choice,
    check_float,
    check_inputs,
    check_int,
    group_codes,
)

__all__ = [
    "BootstrapCI",
    "BrierDecomposition",
    "ReliabilityCurve",
    "bootstrap_ci",
    "brier_decomposition",
    "cvar",
    "debiased_calibration_error",
    "expected_calibration_error",
    "group_metrics",
    "reliability_curve",
    "smooth_calibration_error",
]

NORMS = frozenset({"l1", "l2", "max"})


class ReliabilityCurve(NamedTuple):
    """Per-bin reliability statistics returned by :func:`reliability_curve`."""

    prob_true: FloatArray
    """Weighted fraction of positives per bin (NaN in empty bins)."""
    prob_pred: FloatArray
    """Weighted mean predicted probability per bin (NaN in empty bins)."""
    counts: FloatArray
    """Number of samples (sum of sample weights) per bin."""
    bin_edges: FloatArray
    """The ``n_bins + 1`` bin edges."""


class BrierDecomposition(NamedTuple):
    """Murphy decomposition ``brier = miscalibration - discrimination + uncertainty``."""

    brier: float
    miscalibration: float
    discrimination: float
    uncertainty: float


class BootstrapCI(NamedTuple):
    """A point estimate with a bootstrap percentile confidence interval."""

    estimate: float
    low: float
    high: float


# ---------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------


def _bincount(
    idx: NDArray[np.intp], weights: FloatArray | None, minlength: int
) -> FloatArray:
    """``np.bincount`` as float64 (typed for mypy)."""
    out = np.bincount(idx, weights=weights, minlength=minlength)
    return np.asarray(out, dtype=np.float64)


def _binned_sums(
    y: FloatArray,
    p: FloatArray,
    w: FloatArray | None,
    n_bins: int,
    strategy: str,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per-bin weight, weighted sum of p, weighted sum of y, sum of w**2, edges."""
    edges = bin_edges(p, w, n_bins, strategy)
    idx = bin_index(p, edges, strategy == "uniform")
    if w is None:
        cnt = _bincount(idx, None, n_bins)
        sp = _bincount(idx, p, n_bins)
        sy = _bincount(idx, y, n_bins)
        sw2 = cnt
    else:
        cnt = _bincount(idx, w, n_bins)
        sp = _bincount(idx, w * p, n_bins)
        sy = _bincount(idx, w * y, n_bins)
        sw2 = _bincount(idx, w * w, n_bins)
    return cnt, sp, sy, sw2, edges


# ---------------------------------------------------------------------------
# calibration errors
# ---------------------------------------------------------------------------


def expected_calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
    sample_weight: ArrayLike | None = None,
) -> float:
    """Binned expected calibration error of binary probabilities.

    With bins ``b`` holding weight ``W_b`` (out of ``W``), mean label ``ybar_b``
    and mean probability ``pbar_b``:

    * ``norm="l1"``: ``sum_b W_b / W * |ybar_b - pbar_b|`` (the usual ECE);
    * ``norm="l2"``: ``sqrt(sum_b W_b / W * (ybar_b - pbar_b)**2)`` (RMS
      calibration error, as torchmetrics);
    * ``norm="max"``: ``max_b |ybar_b - pbar_b|`` over non-empty bins (MCE).

    Bins follow the module convention: ``e_k <= p < e_{k+1}``, the last bin
    closed. The binned estimate is biased upward at small ``n`` (calibrated
    scores, ``n = 200``, 15 bins: about 0.06); see
    :func:`debiased_calibration_error` and :func:`smooth_calibration_error`,
    and report a :func:`bootstrap_ci` with it.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    n_bins : int, default=15
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins on [0, 1], or equal-mass bins at the quantiles of
        ``y_prob``.
    norm : {"l1", "l2", "max"}, default="l1"
        How the per-bin gaps are combined.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights.

    Returns
    -------
    float
        The calibration error, in [0, 1].

    Examples
    --------
    >>> from r2vcal.metrics import expected_calibration_error
    >>> y_true = [0, 0, 1, 1, 1]
    >>> y_prob = [0.25, 0.25, 0.55, 0.75, 0.75]
    >>> round(expected_calibration_error(y_true, y_prob, n_bins=2), 4)
    0.29
    >>> round(expected_calibration_error(y_true, y_prob, n_bins=2, norm="max"), 4)
    0.3167
    """
    caller = "expected_calibration_error"
    n_bins = check_int(n_bins, "n_bins", caller)
    strategy = check_choice(strategy, "strategy", STRATEGIES, caller)
    norm = check_choice(norm, "norm", NORMS, caller)
    y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
    cnt, sp, sy, _, _ = _binned_sums(y, p, w, n_bins, strategy)
    total = cnt.sum()
    nz = cnt > 0
    if norm == "l1":
        return float(np.abs(sy - sp).sum() / total)
    gap = (sy[nz] - sp[nz]) / cnt[nz]
    if norm == "l2":
        return float(np.sqrt(np.dot(cnt[nz] / total, gap * gap)))
    return float(np.abs(gap).max())


def debiased_calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    sample_weight: ArrayLike | None = None,
    squared: bool = False,
) -> float:
    """Debiased binned L2 calibration error (Kumar, Liang & Ma, 2019).

    The plug-in squared L2 error ``sum_b W_b / W * (ybar_b - pbar_b)**2``
    overestimates the truth by the sampling variance of each ``ybar_b``. This
    estimator subtracts an unbiased estimate of that variance in every bin::

        sum_b W_b / W * [(ybar_b - pbar_b)**2 - ybar_b (1 - ybar_b) / (n_b - 1)]

    where ``n_b`` is the number of samples in the bin (with ``sample_weight``,
    the effective size ``(sum w)**2 / sum w**2``). Bins with ``n_b <= 1``
    contribute zero, as in Kumar et al.'s reference code. The squared estimate
    is (nearly) unbiased and may be negative; the returned L2 error is
    ``sqrt(max(estimate, 0))``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    n_bins : int, default=15
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Bin edges, as in :func:`expected_calibration_error`. Kumar et al.
        recommend ``"quantile"`` (equal-mass) bins when scores are concentrated.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights.
    squared : bool, default=False
        Return the debiased estimate of the *squared* L2 error (not clipped at
        zero) instead of its clipped square root.

    Returns
    -------
    float
        The debiased L2 calibration error (or its square).

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.metrics import (
    ...     debiased_calibration_error, expected_calibration_error)
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=200)
    >>> y = rng.uniform(size=200) < p          # perfectly calibrated
    >>> plug_in = expected_calibration_error(y, p, norm="l2")
    >>> debiased = debiased_calibration_error(y, p)
    >>> debiased < plug_in
    True
    """
    caller = "debiased_calibration_error"
    n_bins = check_int(n_bins, "n_bins", caller)
    strategy = check_choice(strategy, "strategy", STRATEGIES, caller)
    if not isinstance(squared, (bool, np.bool_)):
        raise ValueError(
            f"The 'squared' parameter of {caller} must be a bool. Got {squared!r} "
            "instead."
        )
    y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
    cnt, sp, sy, sw2, _ = _binned_sums(y, p, w, n_bins, strategy)
    total = cnt.sum()
    nz = cnt > 0
    n_eff = np.zeros_like(cnt)
    n_eff[nz] = cnt[nz] ** 2 / sw2[nz]
    use = nz & (n_eff > 1.0 + 1e-12)
    ybar = sy[use] / cnt[use]
    pbar = sp[use] / cnt[use]
    terms = (ybar - pbar) ** 2 - ybar * (1.0 - ybar) / (n_eff[use] - 1.0)
    est = float(np.dot(cnt[use] / total, terms))
    if squared:
        return est
    return float(np.sqrt(max(est, 0.0)))


def _smooth_residual_integral(h: FloatArray, sigma: float, delta: float) -> float:
    """``int_0^1 |sum_j h_j K_sigma(t, g_j)| dt`` on the grid ``g_j = j * delta``.

    ``K_sigma`` is the Gaussian kernel reflected at 0 and 1 (method of images),
    which integrates to one over [0, 1] for every centre.
    """
    from scipy.signal import fftconvolve

    g = h.size
    span = g - 1  # grid steps between 0 and 1
    d = np.arange(-span, span + 1, dtype=np.float64) * delta  # t - g in [-1, 1]
    s = np.arange(0, 2 * span + 1, dtype=np.float64) * delta  # t + g in [0, 2]
    n_img = int(np.ceil(6.0 * sigma / 2.0)) + 1
    shifts = 2.0 * np.arange(-n_img, n_img + 1)
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))
    toe = norm * np.exp(-0.5 * ((d[:, None] - shifts) / sigma) ** 2).sum(axis=1)
    han = norm * np.exp(-0.5 * ((s[:, None] - shifts) / sigma) ** 2).sum(axis=1)
    direct = fftconvolve(h, toe)[span : span + g]
    mirror = fftconvolve(h[::-1], han)[span : span + g]
    vals = np.abs(direct + mirror)
    # at most 1 exactly (residuals in [-1, 1], weights summing to 1): cap the
    # rounding error (y=1, p=0 gave 1.0000000000000002)
    return min(float(delta * (vals.sum() - 0.5 * (vals[0] + vals[-1]))), 1.0)


def smooth_calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    bandwidth: float | str = "auto",
    sample_weight: ArrayLike | None = None,
) -> float:
    """Kernel-smoothed calibration error (smECE, Błasiok & Nakkiran, 2023).

    With residuals ``r_i = y_i - p_i`` and weights ``w_i`` (summing to one),
    the smoothed residual curve is ``s(t) = sum_i w_i r_i K(t, p_i)`` and::

        smECE_sigma = int_0^1 |s(t)| dt

    where ``K`` is a Gaussian kernel of standard deviation ``sigma`` reflected
    at 0 and 1 (so that no mass leaks out of [0, 1]). It equals
    ``int |rbar(t)| dens(t) dt`` for the Nadaraya-Watson residual ``rbar`` and
    the kernel density ``dens`` of the scores. With ``bandwidth="auto"`` the
    bandwidth is the fixed point ``sigma* = smECE_sigma*`` (found by bisection
    on ``log sigma`` in ``[1.5e-3, 1]``), which makes the estimate consistent
    and free of a tuning parameter, as in the paper and its ``relplot``
    package. Scores are linearly binned onto a grid of spacing
    ``min(1/4000, sigma/40)`` (``1/8000`` for ``"auto"``; relative error
    about 1e-5) and the kernel sum is computed by FFT
    convolution, so the cost grows linearly in ``n_samples``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    bandwidth : "auto" or float, default="auto"
        Kernel standard deviation ``sigma`` (at least 0.001), or ``"auto"``
        for the fixed point described above.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights.

    Returns
    -------
    float
        The smooth calibration error, in [0, 1].

    Examples
    --------
    >>> from r2vcal.metrics import smooth_calibration_error
    >>> y_true = [0, 1, 0, 1, 1, 0, 1, 1]
    >>> y_prob = [0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.9]
    >>> round(smooth_calibration_error(y_true, y_prob, bandwidth=0.1), 3)
    0.2
    """
    caller = "smooth_calibration_error"
    sigma: float | None = None
    if not (isinstance(bandwidth, str) and bandwidth == "auto"):
        real = isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool)
        sigma = float(bandwidth) if real else np.nan
        if not (np.isfinite(sigma) and sigma >= 1e-3):
            raise ValueError(
                f"The 'bandwidth' parameter of {caller} must be 'auto' or a float "
                f"in the range [0.001, inf). Got {bandwidth!r} instead."
            )
    y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
    wn = np.full(p.size, 1.0 / p.size) if w is None else w / w.sum()
    r = wn * (y - p)

    def grid_mass(spacing_steps: int) -> tuple[FloatArray, float]:
        pos = p * spacing_steps
        lo = np.minimum(pos.astype(np.intp), spacing_steps - 1)
        frac = pos - lo
        h = _bincount(lo, r * (1.0 - frac), spacing_steps + 1)
        h += _bincount(lo + 1, r * frac, spacing_steps + 1)
        return h, 1.0 / spacing_steps

    if sigma is not None:
        steps = max(4000, int(np.ceil(40.0 / sigma)))
        h, delta = grid_mass(steps)
        return _smooth_residual_integral(h, sigma, delta)

    h, delta = grid_mass(8000)
    lo_s, hi_s = np.log(1.5e-3), 0.0

    def gap(log_s: float) -> tuple[float, float]:
        val = _smooth_residual_integral(h, float(np.exp(log_s)), delta)
        return val - float(np.exp(log_s)), val

    g_lo, v_lo = gap(lo_s)
    if g_lo <= 0.0:
        return v_lo
    val = v_lo
    for _ in range(40):
        mid = 0.5 * (lo_s + hi_s)
        g_mid, val = gap(mid)
        if g_mid > 0.0:
            lo_s = mid
        else:
            hi_s = mid
        if hi_s - lo_s < 1e-4:
            break
    return float(val)


# ---------------------------------------------------------------------------
# reliability curve and Brier decomposition
# ---------------------------------------------------------------------------


def reliability_curve(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
    sample_weight: ArrayLike | None = None,
) -> ReliabilityCurve:
    """Fraction of positives and mean probability per bin, with bin counts.

    Bins follow the module convention (``e_k <= p < e_{k+1}``, last bin
    closed). Unlike scikit-learn's ``calibration_curve``, empty bins are kept,
    with ``NaN`` in ``prob_true`` and ``prob_pred`` and ``0`` in ``counts``, so
    that every array lines up with ``bin_edges``; use ``counts > 0`` to drop
    them. At the same settings, ``prob_true[counts > 0]`` and
    ``prob_pred[counts > 0]`` equal ``calibration_curve``'s output (up to
    probabilities lying exactly on an interior edge).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    n_bins : int, default=10
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width or equal-mass bins.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights; ``counts`` are then sums of weights.

    Returns
    -------
    ReliabilityCurve
        Named tuple ``(prob_true, prob_pred, counts, bin_edges)`` of float
        arrays of shapes ``(n_bins,)``, ``(n_bins,)``, ``(n_bins,)`` and
        ``(n_bins + 1,)``.

    Examples
    --------
    >>> from r2vcal.metrics import reliability_curve
    >>> curve = reliability_curve([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    >>> curve.prob_true.tolist(), curve.counts.tolist()
    ([0.0, 1.0], [2.0, 2.0])
    >>> curve.prob_pred.round(2).tolist()
    [0.15, 0.8]
    """
    caller = "reliability_curve"
    n_bins = check_int(n_bins, "n_bins", caller)
    strategy = check_choice(strategy, "strategy", STRATEGIES, caller)
    y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
    cnt, sp, sy, _, edges = _binned_sums(y, p, w, n_bins, strategy)
    nz = cnt > 0
    prob_true = np.full(n_bins, np.nan)
    prob_pred = np.full(n_bins, np.nan)
    prob_true[nz] = sy[nz] / cnt[nz]
    prob_pred[nz] = sp[nz] / cnt[nz]
    return ReliabilityCurve(prob_true, prob_pred, cnt, edges)


def brier_decomposition(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    sample_weight: ArrayLike | None = None,
) -> BrierDecomposition:
    """Brier score and its exact Murphy decomposition (CORP, via isotonic regression).

    Following Dimitriadis, Gneiting & Jordan (2021), the recalibrated
    probabilities ``q`` are the isotonic (PAV) regression of ``y_true`` on
    ``y_prob`` (ties in ``y_prob`` pooled). Then, with weighted means::

        brier          = mean((p - y)**2)
        miscalibration = brier - mean((q - y)**2)        >= 0
        discrimination = uncertainty - mean((q - y)**2)  >= 0
        uncertainty    = ybar * (1 - ybar)

    so ``brier = miscalibration - discrimination + uncertainty`` holds exactly
    (to floating-point rounding), unlike the binned decomposition.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights.

    Returns
    -------
    BrierDecomposition
        Named tuple ``(brier, miscalibration, discrimination, uncertainty)`` of
        floats.

    Examples
    --------
    >>> from r2vcal.metrics import brier_decomposition
    >>> d = brier_decomposition([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8])
    >>> [round(v, 4) for v in d]
    [0.1925, 0.0675, 0.125, 0.25]
    >>> round(d.miscalibration - d.discrimination + d.uncertainty, 12) == round(
    ...     d.brier, 12)
    True
    """
    from sklearn.isotonic import IsotonicRegression

    caller = "brier_decomposition"
    y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
    wn = np.full(p.size, 1.0 / p.size) if w is None else w / w.sum()
    keep = wn > 0
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True)
    q = np.empty_like(p)
    q[keep] = iso.fit_transform(p[keep], y[keep], sample_weight=wn[keep])
    q[~keep] = 0.0
    brier = float(np.dot(wn, (p - y) ** 2))
    recal = float(np.dot(wn, (q - y) ** 2))
    ybar = float(np.dot(wn, y))
    unc = ybar * (1.0 - ybar)
    return BrierDecomposition(
        brier=brier,
        miscalibration=brier - recal,
        discrimination=unc - recal,
        uncertainty=unc,
    )


# ---------------------------------------------------------------------------
# group metrics
# ---------------------------------------------------------------------------


def cvar(values: ArrayLike, tail: float, weights: ArrayLike | None = None) -> float:
    """Exact CVaR: the (weighted) mean of the worst ``tail`` fraction of ``values``.

    The same quantity the router reports (DESIGN §3): sort-based, with
    fractional weight on the boundary value. ``tail = 1 / n`` is the maximum
    of ``n`` equally weighted values, ``tail = 1`` their mean.

    Parameters
    ----------
    values : array-like of shape (n_values,)
        Losses, higher is worse (for example per-seed Brier scores).
    tail : float in (0, 1]
        Tail fraction.
    weights : array-like of shape (n_values,), default=None
        Non-negative masses of the values; uniform when ``None``.

    Returns
    -------
    float
        The mean of the worst ``tail`` mass of ``values``.

    Examples
    --------
    >>> from r2vcal.metrics import cvar
    >>> cvar([0.1, 0.4, 0.2, 0.3], tail=0.5)
    0.35
    >>> cvar([0.1, 0.4, 0.2, 0.3], tail=0.25)
    0.4
    """
    return exact_cvar(values, tail, weights)


def group_metrics(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    groups: ArrayLike,
    *,
    tail: float = 0.2,
    n_bins: int = 15,
    threshold: float | None = None,
) -> pd.DataFrame:
    """Per-group Brier, ECE, base rate and escalation rate, with worst group and CVaR.

    One row per group (e.g. per perturbation seed), indexed by the sorted group
    labels (index name ``"group"``), with columns

    * ``n`` -- number of samples;
    * ``brier`` -- mean squared error ``mean((p - y)**2)``;
    * ``ece`` -- :func:`expected_calibration_error` (L1, uniform ``n_bins``);
    * ``base_rate`` -- mean of ``y_true``;
    * ``mean_prob`` -- mean of ``y_prob``;
    * ``escalation_rate`` -- share of steps with ``y_prob >= threshold``
      (only when ``threshold`` is given).

    The across-group summary lives in ``DataFrame.attrs`` (not as extra rows,
    so that the table stays one row per group):
    ``attrs["worst_group"]`` (label of the highest Brier),
    ``attrs["worst_brier"]``, ``attrs["cvar_brier"]`` and ``attrs["cvar_ece"]``
    (exact :func:`cvar` at ``tail`` over groups, each group counting equally,
    as in the router objective) and ``attrs["tail"]``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels in {0, 1} (or booleans).
    y_prob : array-like of shape (n_samples,)
        Predicted probabilities of the positive class, in [0, 1].
    groups : array-like of shape (n_samples,)
        Group label of each sample (hashable, no missing values).
    tail : float in (0, 1], default=0.2
        CVaR tail fraction over groups.
    n_bins : int, default=15
        Bins of the per-group ECE.
    threshold : float, default=None
        Escalation threshold; adds the ``escalation_rate`` column.

    Returns
    -------
    pandas.DataFrame
        The per-group table described above.

    Examples
    --------
    >>> from r2vcal.metrics import group_metrics
    >>> table = group_metrics([0, 1, 0, 1], [0.2, 0.9, 0.6, 0.4], ["a", "a", "b", "b"])
    >>> table[["n", "brier"]].round(3)  # doctest: +NORMALIZE_WHITESPACE
           n  brier
    group
    a      2  0.025
    b      2  0.360
    >>> table.attrs["worst_group"], round(table.attrs["cvar_brier"], 3)
    ('b', 0.36)
    """
    caller = "group_metrics"
    n_bins = check_int(n_bins, "n_bins", caller)
    tail = check_float(tail, "tail", caller, 0.0, 1.0, closed="right")
    if threshold is not None:
        threshold = check_float(threshold, "threshold", caller, -np.inf, np.inf)
    y, p, _ = check_inputs(y_true, y_prob, None, caller)
    g_arr = np.asarray(groups, dtype=object) if groups is not None else None
    if g_arr is None or g_arr.ndim != 1:
        raise ValueError(f"{caller}: groups must be 1-D, one label per sample.")
    if g_arr.shape[0] != y.shape[0]:
        raise ValueError(
            f"{caller}: groups has {g_arr.shape[0]} entries but there are "
            f"{y.shape[0]} samples."
        )
    try:
        codes, labels = group_codes(g_arr, y.shape[0], caller, sort=True)
    except TypeError as exc:
        raise ValueError(
            f"{caller}: groups must hold labels of one sortable type ({exc})."
        ) from None
    n_groups = len(labels)
    n = np.bincount(codes, minlength=n_groups).astype(np.float64)
    brier = _bincount(codes, (p - y) ** 2, n_groups) / n
    base = _bincount(codes, y, n_groups) / n
    mean_p = _bincount(codes, p, n_groups) / n
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    flat = codes * n_bins + bin_index(p, edges, uniform=True)
    size = n_groups * n_bins
    gap = _bincount(flat, y - p, size).reshape(n_groups, n_bins)
    ece = np.abs(gap).sum(axis=1) / n
    data: dict[str, Any] = {
        "n": n.astype(np.int64),
        "brier": brier,
        "ece": ece,
        "base_rate": base,
        "mean_prob": mean_p,
    }
    if threshold is not None:
        esc = _bincount(codes, (p >= threshold).astype(np.float64), n_groups)
        data["escalation_rate"] = esc / n
    table = pd.DataFrame(data, index=pd.Index(labels, name="group"))
    worst = int(np.argmax(brier))
    worst_label: Hashable = labels[worst]
    if isinstance(worst_label, np.generic):
        worst_label = worst_label.item()
    table.attrs.update(
        {
            "tail": tail,
            "worst_group": worst_label,
            "worst_brier": float(brier[worst]),
            "cvar_brier": exact_cvar(brier, tail),
            "cvar_ece": exact_cvar(ece, tail),
        }
    )
    return table


# ---------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------


def _group_members(
    groups: Any, n: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    codes, _ = group_codes(groups, n, "bootstrap_ci")
    order = np.argsort(codes, kind="stable").astype(np.intp)
    sizes = np.bincount(codes).astype(np.intp)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
    return order, starts, sizes


def bootstrap_ci(
    metric: Callable[..., Any],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    groups: ArrayLike | None = None,
    random_state: int | np.random.Generator | np.random.RandomState | None = None,
    strata: ArrayLike | None = None,
    method: str = "percentile",
    nan_policy: str = "raise",
) -> BootstrapCI:
    """Percentile bootstrap confidence interval of any metric ``metric(*arrays)``.

    Each resample draws rows with replacement (the same rows from every array,
    so paired arrays stay paired) and evaluates ``metric`` on them. With
    ``groups``, whole groups are drawn with replacement instead (a cluster
    bootstrap), which is the honest interval when rows within a perturbation
    seed or episode are correlated. The interval is the
    ``(1 - confidence_level) / 2`` and ``(1 + confidence_level) / 2``
    percentiles of the resampled values.

    Parameters
    ----------
    metric : callable
        ``metric(*arrays) -> float``, e.g. :func:`expected_calibration_error`
        or ``sklearn.metrics.brier_score_loss``. Use :func:`functools.partial`
        to fix keyword arguments.
    *arrays : array-like of shape (n_samples, ...)
        Arrays indexed along their first axis (converted with
        :func:`numpy.asarray`).
    n_resamples : int, default=1000
        Number of bootstrap resamples.
    confidence_level : float in (0, 1), default=0.95
        Coverage of the interval.
    groups : array-like of shape (n_samples,), default=None
        Cluster labels for a cluster (group) bootstrap.
    random_state : int, numpy Generator or RandomState, default=None
        Seed for reproducible resampling.
    strata : array-like of shape (n_samples,), default=None
        Resample rows *within* each stratum (every stratum keeps its size).
        This is the honest interval for a maximum over groups (worst-group
        Brier): a cluster bootstrap over groups can only drop groups, so its
        upper bound would always equal the estimate. Exclusive with ``groups``.
    method : {"percentile", "bc"}, default="percentile"
        ``"bc"`` is Efron's bias-corrected percentile interval: the percentiles
        are shifted by ``z0 = Phi^-1(share of resamples below the estimate)``.
        Use it for metrics whose resamples are biased (binned ECE grows on
        resamples with duplicated rows, so plain percentiles can exclude the
        estimate).
    nan_policy : {"raise", "omit"}, default="raise"
        ``"omit"`` drops resamples on which ``metric`` is undefined (NaN), e.g.
        AUROC on a resample with one class, instead of raising; at least half
        of the resamples must be defined.

    Returns
    -------
    BootstrapCI
        Named tuple ``(estimate, low, high)``: ``metric`` on the full data and
        the interval bounds, as floats.

    Raises
    ------
    ValueError
        If the arrays differ in length, or ``metric`` returns a non-finite
        value on the data or on a resample.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics import brier_score_loss
    >>> from r2vcal.metrics import bootstrap_ci
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=500)
    >>> y = (rng.uniform(size=500) < p).astype(int)
    >>> ci = bootstrap_ci(brier_score_loss, y, p, n_resamples=200, random_state=0)
    >>> bool(ci.low < ci.estimate < ci.high)
    True
    """
    caller = "bootstrap_ci"
    if not callable(metric):
        raise ValueError(f"{caller}: metric must be callable; got {metric!r}.")
    if not arrays:
        raise ValueError(f"{caller}: pass at least one array after the metric.")
    n_resamples = check_int(n_resamples, "n_resamples", caller)
    confidence_level = check_float(
        confidence_level, "confidence_level", caller, 0.0, 1.0, closed="neither"
    )
    arrs = _same_length_arrays(arrays, caller)
    n = arrs[0].shape[0]
    if isinstance(random_state, np.random.RandomState):
        rng = np.random.default_rng(random_state.randint(0, 2**31 - 1))
    else:
        rng = np.random.default_rng(random_state)

    def evaluate(idx: NDArray[np.intp] | None) -> float:
        args = arrs if idx is None else [a[idx] for a in arrs]
        return _real(metric(*args), caller)

    method = check_choice(method, "method", frozenset({"percentile", "bc"}), caller)
    nan_policy = check_choice(
        nan_policy, "nan_policy", frozenset({"raise", "omit"}), caller
    )
    if strata is not None and groups is not None:
        raise ValueError(f"{caller}: pass groups or strata, not both.")
    estimate = evaluate(None)
    if not np.isfinite(estimate):
        raise ValueError(f"{caller}: metric returned {estimate} on the full data.")
    stats = np.array(
        [evaluate(idx) for idx in _resamples(rng, n, n_resamples, groups, strata)]
    )
    stats = _finite_stats(stats, nan_policy, caller)
    low, high = _percentile_interval(stats, estimate, confidence_level, method)
    return BootstrapCI(estimate=estimate, low=float(low), high=float(high))


def _real(value: Any, caller: str) -> float:
    """A metric's value as a float, or a ValueError saying what came."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{caller}: metric must return a real number; got {value!r}."
        ) from None


def _finite_stats(stats: FloatArray, nan_policy: str, caller: str) -> FloatArray:
    """The resampled values without NaN/inf (``nan_policy="omit"``, at most
    half of them dropped), or a ValueError."""
    n_resamples = stats.shape[0]
    bad = ~np.isfinite(stats)
    if nan_policy == "omit" and bad.sum() <= n_resamples // 2:
        return stats[~bad]
    if bad.any():
        raise ValueError(
            f"{caller}: metric returned a non-finite value on {int(bad.sum())} of "
            f"{n_resamples} resamples (e.g. a resample with a single class); use a "
            "metric defined on every resample or a cluster bootstrap with more "
            "groups."
        )
    return stats


def _same_length_arrays(arrays: tuple[Any, ...], caller: str) -> list[NDArray[Any]]:
    """The arrays as numpy arrays of one non-zero length (the first axis)."""
    arrs = [np.asarray(a) for a in arrays]
    for k, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"{caller}: array {k} is a scalar; arrays must be 1-D+.")
    n = arrs[0].shape[0]
    lengths = [a.shape[0] for a in arrs]
    if any(m != n for m in lengths):
        raise ValueError(f"{caller}: arrays must have the same length; got {lengths}.")
    if n == 0:
        raise ValueError(f"{caller}: the arrays are empty.")
    return arrs


def _resamples(
    rng: np.random.Generator,
    n: int,
    n_resamples: int,
    groups: ArrayLike | None,
    strata: ArrayLike | None,
) -> Iterator[NDArray[np.intp]]:
    """Row indices of each resample: rows within each stratum, whole groups
    (cluster bootstrap) or rows."""
    if strata is not None:
        order, starts, sizes = _group_members(strata, n)
        for _ in range(n_resamples):
            offs = np.floor(rng.random(n) * np.repeat(sizes, sizes)).astype(np.intp)
            yield order[np.repeat(starts, sizes) + offs]
    elif groups is None:
        for _ in range(n_resamples):
            yield np.asarray(rng.integers(0, n, size=n), dtype=np.intp)
    else:
        order, starts, sizes = _group_members(groups, n)
        n_groups = sizes.size
        for _ in range(n_resamples):
            pick = rng.integers(0, n_groups, size=n_groups)
            sz = sizes[pick]
            offsets = np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz)
            yield order[np.repeat(starts[pick], sz) + offsets]


def _percentile_interval(
    stats: FloatArray, estimate: float, confidence_level: float, method: str
) -> tuple[float, float]:
    """Percentile interval of the bootstrap ``stats``; ``method="bc"`` shifts
    the percentiles by the bias correction ``z0``."""
    alpha = 1.0 - confidence_level
    q = np.array([0.5 * alpha, 1.0 - 0.5 * alpha])
    if method == "bc":
        from scipy.stats import norm

        m = stats.shape[0]
        below = (
            np.count_nonzero(stats < estimate)
            + 0.5 * np.count_nonzero(stats == estimate)
        ) / m
        z0 = float(norm.ppf(np.clip(below, 0.5 / m, 1.0 - 0.5 / m)))
        q = norm.cdf(2.0 * z0 + norm.ppf(q))
    low, high = np.percentile(stats, 100.0 * q)
    return float(low), float(high)
