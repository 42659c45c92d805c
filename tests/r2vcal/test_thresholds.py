"""Tests for r2vcal.thresholds."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import r2vcal.thresholds as T
from r2vcal.thresholds import (
    bayes_threshold,
    budget_threshold,
    miss_rate_upper_bound,
    risk_controlled_threshold,
)


def test_doctests():
    result = doctest.testmod(T)
    assert result.attempted > 0
    assert result.failed == 0


def test_import_is_light():
    code = "import sys, r2vcal.thresholds; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------
# bayes_threshold
# ---------------------------------------------------------------------------


def test_bayes_threshold_formula_and_clipping():
    assert bayes_threshold(1.0, 20.0, 100.0) == pytest.approx(0.19)
    assert bayes_threshold(0, 0, 1) == 0.0
    assert bayes_threshold(1.0, 5.0, 2.0) == 1.0  # LLM extra cost > miss penalty
    assert bayes_threshold(5.0, 1.0, 2.0) == 0.0  # LLM cheaper: always escalate
    assert isinstance(bayes_threshold(1, 2, 4), float)


def test_bayes_threshold_minimises_expected_cost(rng):
    """With calibrated p, escalating iff p >= tau* minimises the expected cost."""
    c_slm, c_llm, kappa = 1.0, 4.0, 10.0
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p

    def cost(tau):
        esc = p >= tau
        return np.mean(np.where(esc, c_llm, c_slm + kappa * y))

    tau_star = bayes_threshold(c_slm, c_llm, kappa)
    grid = np.linspace(0, 1, 101)
    costs = np.array([cost(t) for t in grid])
    assert cost(tau_star) <= costs.min() + 2e-3
    assert abs(grid[costs.argmin()] - tau_star) <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"cost_slm": -1, "cost_llm": 1, "miss_cost": 1}, "cost_slm"),
        ({"cost_slm": 0, "cost_llm": np.nan, "miss_cost": 1}, "cost_llm"),
        ({"cost_slm": 0, "cost_llm": 1, "miss_cost": 0}, "miss_cost"),
        ({"cost_slm": 0, "cost_llm": 1, "miss_cost": "10"}, "miss_cost"),
        ({"cost_slm": True, "cost_llm": 1, "miss_cost": 1}, "cost_slm"),
    ],
)
def test_bayes_threshold_validation(kwargs, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of bayes_threshold"):
        bayes_threshold(**kwargs)


# ---------------------------------------------------------------------------
# budget_threshold
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.333, 0.5, 0.99, 1.0])
def test_budget_threshold_hits_rate_without_ties(rng, rate):
    p = rng.uniform(size=1000)
    t = budget_threshold(p, rate)
    realised = np.mean(p >= t)
    assert realised <= rate + 1e-12
    assert realised > rate - 1 / 1000  # the largest rate within budget
    assert 0.0 <= t <= 1.0


def test_budget_threshold_ties_escalate_together():
    p = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert budget_threshold(p, 0.3) == 0.9
    assert budget_threshold(p, 0.4) == 0.9  # 0.5 would escalate 50 %
    assert budget_threshold(p, 0.5) == 0.5
    t = budget_threshold(p, 0.2)  # top tie alone is 30 %: escalate nothing
    assert t > 0.9 and not np.any(p >= t)
    assert budget_threshold([1.0, 1.0, 0.2], 0.1) == 1.0


def test_budget_threshold_weighted_equals_repetition(rng):
    p = np.round(rng.uniform(size=200), 2)
    w = rng.integers(0, 4, size=200)
    for rate in [0.05, 0.2, 0.5, 0.8]:
        a = budget_threshold(p, rate, sample_weight=w)
        b = budget_threshold(np.repeat(p, w), rate)
        assert a == b


def test_budget_threshold_agrees_with_fixed_threshold_classifier(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier

    X = rng.normal(size=(500, 3))
    y = (X[:, 0] + rng.normal(size=500) > 0.5).astype(int)
    clf = LogisticRegression().fit(X, y)
    t = budget_threshold(clf.predict_proba(X)[:, 1], 0.25)
    fixed = FixedThresholdClassifier(clf, threshold=t, response_method="predict_proba")
    fixed.fit(X, y)
    assert fixed.predict(X).mean() == pytest.approx(0.25, abs=1 / 500)


def test_budget_threshold_validation():
    msg = "The 'escalation_rate' parameter of budget_threshold must be a float"
    with pytest.raises(ValueError, match=re.escape(msg)):
        budget_threshold([0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="y_prob must contain probabilities"):
        budget_threshold([0.1, 2.0], 0.5)
    with pytest.raises(ValueError, match="y_prob contains NaN"):
        budget_threshold([0.1, np.nan], 0.5)
    with pytest.raises(ValueError, match="sample_weight has 1 entries"):
        budget_threshold([0.1, 0.2], 0.5, sample_weight=[1.0])


# ---------------------------------------------------------------------------
# risk_controlled_threshold
# ---------------------------------------------------------------------------


def test_risk_controlled_threshold_definition(rng):
    """The result is the largest threshold whose exact binomial test rejects."""
    p = rng.uniform(size=800)
    y = (rng.uniform(size=800) < p).astype(int)
    eps, delta = 0.05, 0.1
    t = risk_controlled_threshold(p, y, eps, delta)
    candidates = np.unique(np.r_[0.0, p, 1.0])
    misses = np.array([np.sum((p < c) & (y == 1)) for c in candidates])
    pvals = stats.binom.cdf(misses, 800, eps)
    certified = candidates[pvals <= delta]
    assert t == certified.max()
    # the Clopper-Pearson bound at the result is within target; just above, not
    assert miss_rate_upper_bound(p, y, t, delta) <= eps
    nxt = candidates[candidates > t].min()
    assert miss_rate_upper_bound(p, y, nxt, delta) > eps


def test_risk_controlled_threshold_edge_cases():
    p = np.linspace(0, 1, 20)
    y = np.ones(20)
    # (1 - eps)**n > delta: too few samples to certify anything
    assert risk_controlled_threshold(p, y, 0.05, 0.1) == 0.0
    # no positives: nothing can be missed, never escalate
    assert risk_controlled_threshold(np.full(500, 0.3), np.zeros(500), 0.05) == 1.0
    # ties at the boundary escalate together
    p = np.r_[np.full(100, 0.2), np.full(900, 0.7)]
    y = np.r_[np.ones(100), np.zeros(900)]
    t = risk_controlled_threshold(p, y, 0.05, 0.1)
    assert t == 0.2
    assert np.sum((p < t) & (y == 1)) == 0


def test_risk_controlled_threshold_validation():
    with pytest.raises(ValueError, match="'max_miss_rate' parameter"):
        risk_controlled_threshold([0.1], [1], 0.0)
    with pytest.raises(ValueError, match="'delta' parameter"):
        risk_controlled_threshold([0.1], [1], 0.1, delta=1.0)
    with pytest.raises(ValueError, match="y_true must contain binary labels"):
        risk_controlled_threshold([0.1], [2], 0.1)
    with pytest.raises(ValueError, match="same length"):
        risk_controlled_threshold([0.1, 0.2], [1], 0.1)
    with pytest.raises(ValueError, match="'threshold' parameter"):
        miss_rate_upper_bound([0.1], [1], np.nan)


def _simulate(rng, n, size):
    """A miscalibrated router: y ~ Bernoulli(p ** 0.7), p ~ Uniform(0, 1)."""
    p = rng.uniform(size=(size, n))
    y = rng.uniform(size=(size, n)) < p**0.7
    return p, y


def test_risk_control_guarantee_holds_in_simulation(rng):
    """P(true miss rate <= eps) >= 1 - delta over 500 calibration draws."""
    n, eps, delta, draws = 1000, 0.05, 0.1, 500
    # true miss rate R(t) = P(p < t, y = 1) from a huge fresh sample
    fresh_p, fresh_y = _simulate(rng, 4_000_000, 1)
    fresh_pos = np.sort(fresh_p[0][fresh_y[0]])
    big_n = fresh_p.shape[1]

    cal_p, cal_y = _simulate(rng, n, draws)
    taus = np.array(
        [
            risk_controlled_threshold(cal_p[i], cal_y[i], eps, delta)
            for i in range(draws)
        ]
    )
    true_risk = np.searchsorted(fresh_pos, taus, side="left") / big_n
    # the fresh-sample risk agrees with the closed form t**1.7 / 1.7
    np.testing.assert_allclose(true_risk, taus**1.7 / 1.7, atol=5e-4)
    coverage = np.mean(true_risk <= eps)
    assert coverage >= 1 - delta
    # ... and is not trivially conservative: the thresholds are useful
    assert coverage <= 0.97
    assert np.median(true_risk) > 0.8 * eps
    # exact theory: failure probability = P(Binomial(n, eps) <= k*) < delta
    k_star = T._max_allowed_misses(n, eps, delta)
    assert (
        stats.binom.cdf(k_star, n, eps) <= delta < stats.binom.cdf(k_star + 1, n, eps)
    )
    print(f"coverage {coverage:.3f} (theory {1 - stats.binom.cdf(k_star, n, eps):.3f})")


def test_naive_threshold_violates_more_often(rng):
    """Choosing t by the empirical miss rate alone fails about half the time."""
    n, eps, draws = 1000, 0.05, 200
    cal_p, cal_y = _simulate(rng, n, draws)
    fails = 0
    for i in range(draws):
        pos = np.sort(cal_p[i][cal_y[i]])
        t_naive = pos[int(eps * n)] if pos.size > eps * n else 1.0
        fails += t_naive**1.7 / 1.7 > eps
    assert fails / draws > 0.3
