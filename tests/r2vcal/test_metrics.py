"""Tests for r2vcal.metrics, pinned against independent references."""

from __future__ import annotations

import doctest
import functools
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.integrate import quad
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

import r2vcal.metrics as M
from r2vcal._objective import exact_cvar
from r2vcal.metrics import (
    BootstrapCI,
    BrierDecomposition,
    ReliabilityCurve,
    bootstrap_ci,
    brier_decomposition,
    cvar,
    debiased_calibration_error,
    expected_calibration_error,
    group_metrics,
    reliability_curve,
    smooth_calibration_error,
)

ECE = expected_calibration_error


def _calibrated(rng, n):
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(np.int64)
    return y, p


def _miscalibrated(rng, n):
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p**2).astype(np.int64)
    return y, p


def test_doctests():
    result = doctest.testmod(M, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_import_does_not_load_torch_or_matplotlib():
    code = (
        "import sys, r2vcal.metrics; "
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------
# expected_calibration_error
# ---------------------------------------------------------------------------


def _ece_reference(y, p, n_bins, norm, w=None):
    """Straightforward per-bin loop, for cross-checking the vectorised code."""
    w = np.ones_like(p) if w is None else w
    edges = np.linspace(0, 1, n_bins + 1)
    gaps, masses = [], []
    for k in range(n_bins):
        last = k == n_bins - 1
        m = (p >= edges[k]) & ((p <= edges[k + 1]) if last else (p < edges[k + 1]))
        if w[m].sum() > 0:
            gaps.append(
                abs(np.average(y[m], weights=w[m]) - np.average(p[m], weights=w[m]))
            )
            masses.append(w[m].sum() / w.sum())
    gaps, masses = np.array(gaps), np.array(masses)
    if norm == "l1":
        return float(np.dot(gaps, masses))
    if norm == "l2":
        return float(np.sqrt(np.dot(gaps**2, masses)))
    return float(gaps.max())


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_torchmetrics(rng, norm, n_bins):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    y, p = _miscalibrated(rng, 5000)
    p = np.minimum(p, 1 - 1e-9)  # torchmetrics gives p == 1.0 an extra bin of its own
    ours = ECE(y, p, n_bins=n_bins, norm=norm)
    ref = tm.binary_calibration_error(
        torch.as_tensor(p, dtype=torch.float64),
        torch.as_tensor(y),
        n_bins=n_bins,
        norm=norm,
    ).item()
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert ours == pytest.approx(_ece_reference(y, p, n_bins, norm), rel=1e-9)


def test_ece_bin_edges_left_closed_last_closed():
    # edges for n_bins=2: [0, 0.5), [0.5, 1]
    y = np.array([1, 0, 1])
    p = np.array([0.5, 0.0, 1.0])
    # bin 0 = {0.0 (y=0)}: gap 0; bin 1 = {0.5, 1.0} (both y=1): gap 1 - 0.75
    assert ECE(y, p, n_bins=2) == pytest.approx(2 / 3 * 0.25)
    curve = reliability_curve(y, p, n_bins=2)
    np.testing.assert_array_equal(curve.counts, [1.0, 2.0])
    # every interior edge of 15 uniform bins goes to the bin on its right
    edges = np.linspace(0, 1, 16)
    curve = reliability_curve(np.zeros(16), edges, n_bins=15)
    np.testing.assert_array_equal(curve.counts, [1.0] * 14 + [2.0])
    np.testing.assert_allclose(curve.prob_pred[:14], edges[:14])


def test_ece_perfect_and_worst():
    assert ECE([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == 0.0
    assert ECE([1, 0], [0.0, 1.0]) == 1.0
    assert ECE([1, 0], [0.0, 1.0], norm="max") == 1.0


def test_ece_integer_weights_equal_repetition(rng):
    y, p = _miscalibrated(rng, 300)
    w = rng.integers(0, 4, size=300)
    rep_y, rep_p = np.repeat(y, w), np.repeat(p, w)
    for norm in ["l1", "l2", "max"]:
        for strategy in ["uniform"]:
            a = ECE(y, p, norm=norm, strategy=strategy, sample_weight=w)
            b = ECE(rep_y, rep_p, norm=norm, strategy=strategy)
            assert a == pytest.approx(b, rel=1e-12)
    assert ECE(y, p, sample_weight=np.ones(300)) == pytest.approx(ECE(y, p), rel=1e-12)


def test_ece_quantile_bins_equal_mass(rng):
    y, p = _miscalibrated(rng, 1000)
    curve = reliability_curve(y, p, n_bins=10, strategy="quantile")
    assert np.all(curve.counts == 100)
    manual = np.nansum(np.abs(curve.prob_true - curve.prob_pred) * curve.counts) / 1000
    assert ECE(y, p, n_bins=10, strategy="quantile") == pytest.approx(manual)
    # weighted quantile bins with unit weights give the same bins (no ties here)
    w_curve = reliability_curve(
        y, p, n_bins=10, strategy="quantile", sample_weight=np.ones(1000)
    )
    np.testing.assert_array_equal(w_curve.counts, curve.counts)


def test_ece_bool_and_column_inputs(rng):
    y, p = _miscalibrated(rng, 200)
    assert ECE(y.astype(bool), p) == ECE(y, p)
    assert ECE(y.reshape(-1, 1), p.reshape(-1, 1)) == ECE(y, p)
    assert ECE(list(y), list(p)) == ECE(y, p)


def test_ece_small_n_bias(rng):
    """Binned ECE is biased upward at small n (DESIGN §4), shrinking like 1/sqrt(n).

    For uniform calibrated scores, n = 200 and 15 bins the mean is about 0.086
    (about sqrt(2/pi) * sqrt(E[p(1-p)] * 15 / 200)); DESIGN's 0.061 was measured on
    scores concentrated nearer 0 and 1, where p(1-p) is smaller.
    """
    small = np.mean([ECE(*_calibrated(rng, 200)) for _ in range(200)])
    large = np.mean([ECE(*_calibrated(rng, 3200)) for _ in range(50)])
    assert small == pytest.approx(np.sqrt(2 / np.pi * (1 / 6) * 15 / 200), rel=0.1)
    assert large == pytest.approx(small / 4, rel=0.2)


def test_ece_large_input_is_fast(rng):
    import time

    y, p = _calibrated(rng, 2_000_000)
    ECE(y, p)
    t0 = time.perf_counter()
    ECE(y, p)
    assert time.perf_counter() - t0 < 1.0  # 10M rows in <= 1 s: see bench/


# ---------------------------------------------------------------------------
# debiased and smooth calibration errors
# ---------------------------------------------------------------------------


def test_debiased_matches_torchmetrics_private_debias(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.classification.calibration_error import _ce_compute

    y, p = _miscalibrated(rng, 3000)
    p = np.minimum(p, 1 - 1e-9)
    curve = reliability_curve(y, p, n_bins=15)
    assert curve.counts.min() >= 2  # bins of one sample are treated differently
    ref = _ce_compute(
        torch.as_tensor(p, dtype=torch.float64),
        torch.as_tensor(y, dtype=torch.float64),
        15,
        norm="l2",
        debias=True,
    ).item()
    assert debiased_calibration_error(y, p) == pytest.approx(ref, rel=1e-9)


def test_debiased_is_closer_to_zero_on_calibrated_scores(rng):
    plug_in, debiased, squared = [], [], []
    for _ in range(300):
        y, p = _calibrated(rng, 200)
        plug_in.append(ECE(y, p, norm="l2"))
        debiased.append(debiased_calibration_error(y, p))
        squared.append(debiased_calibration_error(y, p, squared=True))
    assert np.mean(debiased) < 0.5 * np.mean(plug_in)
    # the squared estimate is (nearly) unbiased for the true value 0
    assert abs(np.mean(squared)) < 0.1 * np.mean(np.square(plug_in))


def test_debiased_tracks_true_miscalibration(rng):
    # p -> y ~ Bernoulli(p**2): true squared L2 error = E[(p - p**2)**2] = 1/30,
    # minus the within-bin spread that binning hides (small for 15 bins)
    y, p = _miscalibrated(rng, 200_000)
    est = debiased_calibration_error(y, p, squared=True)
    assert est == pytest.approx(1 / 30, rel=0.03)


def _smece_quadrature(y, p, sigma):
    shifts = 2.0 * np.arange(-6, 7)

    def kernel(t):
        d = t - p[:, None] - shifts
        s = t + p[:, None] - shifts
        return (np.exp(-0.5 * (d / sigma) ** 2) + np.exp(-0.5 * (s / sigma) ** 2)).sum(
            axis=1
        ) / (sigma * np.sqrt(2 * np.pi))

    def integrand(t):
        return abs(np.mean((y - p) * kernel(t)))

    return quad(integrand, 0, 1, limit=400, epsabs=1e-11)[0]


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.4])
def test_smooth_ece_matches_quadrature(rng, sigma):
    y, p = _miscalibrated(rng, 60)
    ours = smooth_calibration_error(y, p, bandwidth=sigma)
    ref = _smece_quadrature(y.astype(float), p, sigma)
    assert ours == pytest.approx(ref, rel=5e-5)


def test_smooth_ece_auto_bandwidth_is_fixed_point(rng):
    y, p = _miscalibrated(rng, 2000)
    s = smooth_calibration_error(y, p)
    assert smooth_calibration_error(y, p, bandwidth=s) == pytest.approx(s, rel=1e-3)
    # calibrated scores have a much smaller smooth ECE than miscalibrated ones
    yc, pc = _calibrated(rng, 2000)
    assert smooth_calibration_error(yc, pc) < 0.5 * s


def test_smooth_ece_less_biased_than_binned_at_small_n(rng):
    binned, smooth = [], []
    for _ in range(30):
        y, p = _calibrated(rng, 200)
        binned.append(ECE(y, p))
        smooth.append(smooth_calibration_error(y, p))
    assert np.mean(smooth) < np.mean(binned)


def test_smooth_ece_weights_equal_repetition(rng):
    y, p = _miscalibrated(rng, 100)
    w = rng.integers(1, 4, size=100)
    a = smooth_calibration_error(y, p, bandwidth=0.05, sample_weight=w)
    b = smooth_calibration_error(np.repeat(y, w), np.repeat(p, w), bandwidth=0.05)
    assert a == pytest.approx(b, rel=1e-10)


# ---------------------------------------------------------------------------
# reliability_curve
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [3, 10])
def test_reliability_curve_matches_sklearn(rng, strategy, n_bins):
    y, p = _miscalibrated(rng, 1000)
    p = p**3  # leaves some uniform bins empty: sklearn drops them
    curve = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    assert isinstance(curve, ReliabilityCurve)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    keep = curve.counts > 0
    np.testing.assert_allclose(curve.prob_true[keep], prob_true, rtol=1e-12)
    np.testing.assert_allclose(curve.prob_pred[keep], prob_pred, rtol=1e-12)
    assert curve.bin_edges.shape == (n_bins + 1,)
    assert curve.counts.sum() == 1000
    assert np.all(np.isnan(curve.prob_true[~keep]))


def test_reliability_curve_keeps_empty_bins():
    curve = reliability_curve([0, 1], [0.05, 0.95], n_bins=10)
    np.testing.assert_array_equal(curve.counts, [1] + [0] * 8 + [1])
    assert np.isnan(curve.prob_true[1:9]).all()


# ---------------------------------------------------------------------------
# brier_decomposition
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_brier_decomposition_adds_up(rng, weighted):
    y, p = _miscalibrated(rng, 5000)
    p = np.round(p, 2)  # ties in y_prob are pooled by the isotonic fit
    w = rng.uniform(0.1, 3, size=p.size) if weighted else None
    d = brier_decomposition(y, p, sample_weight=w)
    assert isinstance(d, BrierDecomposition)
    assert d.brier == pytest.approx(brier_score_loss(y, p, sample_weight=w), abs=1e-12)
    assert abs(d.miscalibration - d.discrimination + d.uncertainty - d.brier) < 1e-9
    assert d.miscalibration >= 0 and d.discrimination >= 0
    ybar = np.average(y, weights=w)
    assert d.uncertainty == pytest.approx(ybar * (1 - ybar))
    assert all(isinstance(v, float) for v in d)


def test_brier_decomposition_known_values(rng):
    # already isotonic-calibrated forecasts have zero miscalibration
    p = np.repeat([0.2, 0.5, 0.8], 10)
    y = np.concatenate([[1] * 2 + [0] * 8, [1] * 5 + [0] * 5, [1] * 8 + [0] * 2])
    d = brier_decomposition(y, p)
    assert d.miscalibration == pytest.approx(0.0, abs=1e-15)
    assert d.discrimination == pytest.approx(np.var(p))
    # a constant forecast at the base rate has no discrimination
    d = brier_decomposition(y, np.full(30, 0.5))
    assert d.discrimination == pytest.approx(0.0, abs=1e-15)
    assert d.miscalibration == pytest.approx(0.0, abs=1e-15)
    # a miscalibrated model has positive miscalibration; recalibration removes it
    y, p = _miscalibrated(rng, 20000)
    assert brier_decomposition(y, p).miscalibration > 0.02


# ---------------------------------------------------------------------------
# cvar and group_metrics
# ---------------------------------------------------------------------------


def test_cvar_is_exact_cvar(rng):
    v = rng.uniform(size=12)
    for tail in [1 / 12, 0.2, 0.5, 1.0]:
        assert cvar(v, tail) == exact_cvar(v, tail)
    assert cvar(v, 1 / 12) == pytest.approx(v.max())
    assert cvar(v, 1.0) == pytest.approx(v.mean())
    with pytest.raises(ValueError, match="tail"):
        cvar(v, 0.0)


def test_group_metrics_against_per_group_references(rng):
    y, p = _miscalibrated(rng, 3000)
    groups = rng.choice(np.array(["s0", "s1", "s2", "s3", "s4"]), size=3000)
    table = group_metrics(y, p, groups, tail=0.4, n_bins=10, threshold=0.7)
    assert list(table.index) == ["s0", "s1", "s2", "s3", "s4"]
    assert table.index.name == "group"
    assert list(table.columns) == [
        "n",
        "brier",
        "ece",
        "base_rate",
        "mean_prob",
        "escalation_rate",
    ]
    for g in table.index:
        m = groups == g
        row = table.loc[g]
        assert row["n"] == m.sum()
        assert row["brier"] == pytest.approx(brier_score_loss(y[m], p[m]))
        assert row["ece"] == pytest.approx(ECE(y[m], p[m], n_bins=10))
        assert row["base_rate"] == pytest.approx(y[m].mean())
        assert row["mean_prob"] == pytest.approx(p[m].mean())
        assert row["escalation_rate"] == pytest.approx((p[m] >= 0.7).mean())
    assert table.attrs["worst_group"] == table["brier"].idxmax()
    assert table.attrs["worst_brier"] == table["brier"].max()
    assert table.attrs["cvar_brier"] == pytest.approx(exact_cvar(table["brier"], 0.4))
    assert table.attrs["cvar_ece"] == pytest.approx(exact_cvar(table["ece"], 0.4))
    assert "escalation_rate" not in group_metrics(y, p, groups).columns


def test_group_metrics_integer_groups_and_errors(rng):
    y, p = _calibrated(rng, 100)
    g = np.arange(100) % 3
    table = group_metrics(y, p, g)
    assert list(table.index) == [0, 1, 2]
    assert type(table.attrs["worst_group"]) is int
    with pytest.raises(ValueError, match="groups has 99 entries"):
        group_metrics(y, p, g[:99])
    with pytest.raises(ValueError, match="missing"):
        group_metrics(y, p, np.where(g == 0, None, g))
    with pytest.raises(ValueError, match="'tail'"):
        group_metrics(y, p, g, tail=1.5)


# ---------------------------------------------------------------------------
# bootstrap_ci
# ---------------------------------------------------------------------------


def test_bootstrap_ci_basic(rng):
    y, p = _miscalibrated(rng, 2000)
    ci = bootstrap_ci(brier_score_loss, y, p, n_resamples=300, random_state=0)
    assert isinstance(ci, BootstrapCI)
    assert ci.estimate == brier_score_loss(y, p)
    assert ci.low < ci.estimate < ci.high
    again = bootstrap_ci(brier_score_loss, y, p, n_resamples=300, random_state=0)
    assert again == ci
    # roughly the normal-theory width for a mean of squared errors
    se = np.std((p - y) ** 2) / np.sqrt(y.size)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.25)
    metric = functools.partial(ECE, n_bins=10)
    ci = bootstrap_ci(metric, y, p, n_resamples=100, random_state=1)
    assert ci.low <= ci.high


def test_bootstrap_ci_coverage_of_a_mean(rng):
    hits = 0
    for b in range(100):
        x = rng.normal(size=200)
        ci = bootstrap_ci(np.mean, x, n_resamples=200, random_state=b)
        hits += ci.low <= 0.0 <= ci.high
    assert hits >= 85


def test_cluster_bootstrap_is_wider_with_correlated_groups(rng):
    n_groups, per = 20, 100
    shift = np.repeat(rng.normal(scale=1.0, size=n_groups), per)
    x = shift + rng.normal(size=n_groups * per)
    groups = np.repeat(np.arange(n_groups), per)
    iid = bootstrap_ci(np.mean, x, n_resamples=300, random_state=0)
    clu = bootstrap_ci(np.mean, x, n_resamples=300, groups=groups, random_state=0)
    assert (clu.high - clu.low) > 3 * (iid.high - iid.low)
    assert clu.estimate == iid.estimate


def test_bootstrap_ci_errors(rng):
    x = rng.normal(size=10)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(lambda a, b: 0.0, x, x[:5])
    with pytest.raises(ValueError, match="'confidence_level'"):
        bootstrap_ci(np.mean, x, confidence_level=1.0)
    with pytest.raises(ValueError, match="'n_resamples'"):
        bootstrap_ci(np.mean, x, n_resamples=0)
    with pytest.raises(ValueError, match="callable"):
        bootstrap_ci("mean", x)
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci(lambda a: np.nan if a[0] > 0 else 0.0, np.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(np.mean, x, groups=np.arange(5))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_bad_strategy_message_has_sklearn_shape():
    msg = (
        "The 'strategy' parameter of expected_calibration_error must be a str among "
        "{'quantile', 'uniform'}. Got 'foo' instead."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        ECE([0, 1], [0.2, 0.8], strategy="foo")
    with pytest.raises(ValueError, match=re.escape("{'l1', 'l2', 'max'}. Got 'l3'")):
        ECE([0, 1], [0.2, 0.8], norm="l3")
    with pytest.raises(ValueError, match=r"'n_bins' parameter .* range \[1, inf\)"):
        ECE([0, 1], [0.2, 0.8], n_bins=0)
    with pytest.raises(ValueError, match="'n_bins'"):
        reliability_curve([0, 1], [0.2, 0.8], n_bins=2.5)
    with pytest.raises(ValueError, match="'bandwidth'"):
        smooth_calibration_error([0, 1], [0.2, 0.8], bandwidth=0.0)
    with pytest.raises(ValueError, match="'bandwidth'"):
        smooth_calibration_error([0, 1], [0.2, 0.8], bandwidth="scott")


@pytest.mark.parametrize(
    "func",
    [
        ECE,
        debiased_calibration_error,
        smooth_calibration_error,
        reliability_curve,
        brier_decomposition,
    ],
)
def test_input_validation(func):
    with pytest.raises(ValueError, match="y_prob must contain probabilities in"):
        func([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="y_prob contains NaN"):
        func([0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="y_true must contain binary labels"):
        func([0, 2], [0.2, 0.8])
    with pytest.raises(ValueError, match="y_true must contain binary labels"):
        func([0, np.nan], [0.2, 0.8])
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        func([0, 1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="y_true is empty"):
        func(np.array([], dtype=int), np.array([]))
    with pytest.raises(ValueError, match="y_prob must be a 1-D array of real"):
        func([0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="y_prob must be 1-D"):
        func([0, 1], [[0.2, 0.8], [0.1, 0.1]])
    with pytest.raises(ValueError, match="sample_weight must be finite"):
        func([0, 1], [0.2, 0.8], sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="sample_weight has 3 entries"):
        func([0, 1], [0.2, 0.8], sample_weight=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sums to zero"):
        func([0, 1], [0.2, 0.8], sample_weight=[0.0, 0.0])


# ---------------------------------------------------------------------------
# hypothesis: only clear ValueErrors, never another exception or a silent NaN
# ---------------------------------------------------------------------------

_elements = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(0, 1),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, 1e-300]),
)
_arrays = st.one_of(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=12),
        elements=_elements,
    ),
    hnp.arrays(np.int64, st.integers(0, 12), elements=st.integers(-2, 3)),
    hnp.arrays(np.bool_, st.integers(0, 12)),
    st.lists(st.one_of(st.floats(0, 1), st.text(max_size=2), st.none()), max_size=5),
)

_FUNCS = {
    "ece": lambda y, p, w: ECE(y, p, sample_weight=w),
    "ece_q_l2": lambda y, p, w: ECE(
        y, p, strategy="quantile", norm="l2", sample_weight=w
    ),
    "ece_max": lambda y, p, w: ECE(y, p, norm="max", n_bins=3, sample_weight=w),
    "debiased": lambda y, p, w: debiased_calibration_error(y, p, sample_weight=w),
    "debiased_q": lambda y, p, w: debiased_calibration_error(
        y, p, strategy="quantile", sample_weight=w, squared=True
    ),
    "smooth": lambda y, p, w: smooth_calibration_error(y, p, sample_weight=w),
    "curve": lambda y, p, w: reliability_curve(y, p, sample_weight=w).counts.sum(),
    "brier": lambda y, p, w: sum(brier_decomposition(y, p, sample_weight=w)),
    "groups": lambda y, p, w: (
        group_metrics(y, p, np.arange(len(np.asarray(y))) % 2, threshold=0.5)
        .to_numpy(dtype=float)
        .sum()
    ),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(_FUNCS)),
    y=_arrays,
    p=_arrays,
    w=st.one_of(st.none(), _arrays),
)
def test_fuzz_only_value_errors(name, y, p, w):
    try:
        out = _FUNCS[name](y, p, w)
    except ValueError as exc:
        assert str(exc)
        return
    assert np.isfinite(out)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    n_bins=st.integers(1, 20),
    ties=st.booleans(),
)
def test_fuzz_valid_inputs_give_finite_consistent_values(n, seed, n_bins, ties):
    r = np.random.default_rng(seed)
    p = r.uniform(size=n)
    if ties:
        p = np.round(p, 1)
    y = r.integers(0, 2, size=n)
    for strategy in ["uniform", "quantile"]:
        l1 = ECE(y, p, n_bins=n_bins, strategy=strategy)
        l2 = ECE(y, p, n_bins=n_bins, strategy=strategy, norm="l2")
        mx = ECE(y, p, n_bins=n_bins, strategy=strategy, norm="max")
        assert 0 <= l1 <= l2 + 1e-12 <= mx + 2e-12 <= 1 + 2e-12
        deb = debiased_calibration_error(y, p, n_bins=n_bins, strategy=strategy)
        assert 0 <= deb <= 1 and np.isfinite(deb)
        curve = reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
        assert curve.counts.sum() == n
    d = brier_decomposition(y, p)
    assert abs(d.miscalibration - d.discrimination + d.uncertainty - d.brier) < 1e-9
    assert 0 <= smooth_calibration_error(y, p) <= 1


def test_bootstrap_strata_resample_within_groups():
    """A max over groups: strata give an upper bound above the estimate."""
    from r2vcal.metrics import bootstrap_ci

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(10), 50)
    x = rng.normal(size=500) + (g == 3)

    def worst(i):
        return max(x[i][g[i] == k].mean() for k in np.unique(g[i]))

    clustered = bootstrap_ci(
        worst, np.arange(500), groups=g, n_resamples=200, random_state=0
    )
    stratified = bootstrap_ci(
        worst, np.arange(500), strata=g, n_resamples=200, random_state=0
    )
    assert clustered.high == pytest.approx(clustered.estimate)  # the old flaw
    assert stratified.high > stratified.estimate + 0.05
    assert stratified.low < stratified.estimate
    with pytest.raises(ValueError, match="groups or strata"):
        bootstrap_ci(worst, np.arange(500), groups=g, strata=g)


def test_bootstrap_bc_interval_holds_a_biased_estimate():
    """Binned ECE grows on resamples; the BC interval still covers the estimate."""
    from r2vcal.metrics import bootstrap_ci, expected_calibration_error

    rng = np.random.default_rng(2)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(float)
    pct = bootstrap_ci(
        expected_calibration_error, y, p, n_resamples=300, random_state=0
    )
    bc = bootstrap_ci(
        expected_calibration_error, y, p, n_resamples=300, random_state=0, method="bc"
    )
    assert bc.low <= bc.estimate <= bc.high
    assert bc.low < pct.low  # shifted down, towards the estimate


def test_bootstrap_nan_policy_omit_drops_undefined_resamples():
    from sklearn.metrics import roc_auc_score

    from r2vcal.metrics import bootstrap_ci

    y = np.r_[1.0, np.zeros(29)]
    s = np.linspace(0, 1, 30)

    def auroc(a, b):
        return roc_auc_score(a, b) if 0 < a.sum() < len(a) else np.nan

    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci(auroc, y, s, n_resamples=50, random_state=0)
    ci = bootstrap_ci(auroc, y, s, n_resamples=50, random_state=0, nan_policy="omit")
    assert 0 <= ci.low <= ci.high <= 1


def test_bootstrap_ci_checks_groups_with_shared_group_codes():
    # the checks of r2vcal._validation.group_codes, shared with GroupDisplay
    y, p = [0, 1, 0, 1], [0.2, 0.8, 0.3, 0.6]
    with pytest.raises(
        ValueError,
        match=r"bootstrap_ci: groups must be 1-D with one label per sample \(4\); "
        r"got shape \(2,\)\.",
    ):
        bootstrap_ci(brier_score_loss, y, p, groups=[0, 1], n_resamples=5)
    with pytest.raises(
        ValueError, match=r"bootstrap_ci: groups contains missing values \(NaN/None\)"
    ):
        bootstrap_ci(brier_score_loss, y, p, groups=[0, None, 1, 1], n_resamples=5)
    ci = bootstrap_ci(
        brier_score_loss, y, p, groups=["b", "a", "b", "a"], n_resamples=5
    )
    assert ci.low <= ci.estimate <= ci.high
