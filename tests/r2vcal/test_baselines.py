"""Tests of r2vcal.baselines: same interface as the router, honest behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from r2vcal import (
    EntropyRouter,
    LogisticRouter,
    OracleRouter,
    RandomRouter,
    VerifierRouter,
    compare_routers,
)
from r2vcal.baselines import risk_score


@parametrize_with_checks(
    [
        EntropyRouter(feature=0),
        VerifierRouter(feature=0),
        RandomRouter(0.2),
        LogisticRouter(),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    n = 4000
    entropy = rng.gamma(2.0, 0.5, size=n)
    verifier = rng.uniform(size=n)
    risk = 1 / (1 + np.exp(-(1.5 * entropy - 2.0 * verifier - 0.5)))
    y = (rng.random(n) < risk).astype(int)
    X = pd.DataFrame(
        {"entropy_mean": entropy, "verifier_max": verifier, "y_counterfactual": y}
    )
    return X, y


def test_entropy_router_is_monotone_increasing_in_entropy(frame):
    X, y = frame
    r = EntropyRouter().fit(X, y)
    p = r.predict_proba(X)[:, 1]
    order = np.argsort(X["entropy_mean"].to_numpy())
    assert np.all(np.diff(p[order]) >= -1e-12)
    assert r.threshold_ == pytest.approx(0.45)  # (10 - 1) / 20
    np.testing.assert_array_equal(r.route(X), p >= 0.45)


def test_verifier_router_is_monotone_decreasing_in_score(frame):
    X, y = frame
    p = VerifierRouter().fit(X, y).predict_proba(X)[:, 1]
    order = np.argsort(X["verifier_max"].to_numpy())
    assert np.all(np.diff(p[order]) <= 1e-12)


def test_feature_routers_name_missing_columns(frame):
    X, y = frame
    with pytest.raises(ValueError, match="needs X to be a DataFrame with a column"):
        EntropyRouter("entropy").fit(X, y)
    with pytest.raises(ValueError, match="out of range"):
        EntropyRouter(7).fit(X.to_numpy(), y)


def test_random_router_escalates_at_its_rate(frame):
    X, y = frame
    r = RandomRouter(0.25, random_state=0).fit(X, y)
    routed = r.route(X)
    assert abs(routed.mean() - 0.25) < 0.03
    np.testing.assert_array_equal(routed, r.route(X))  # reproducible
    np.testing.assert_allclose(r.predict_proba(X)[:, 1], y.mean())


def test_oracle_router_is_hindsight_and_flagged(frame):
    X, y = frame
    r = OracleRouter().fit(X, y)
    assert OracleRouter.deployable is False and EntropyRouter.deployable is True
    np.testing.assert_array_equal(r.route(X), y == 1)
    with pytest.raises(ValueError, match="label column"):
        r.predict_proba(X.drop(columns="y_counterfactual"))


def test_compare_routers_shows_a_copy_of_the_baseline(frame):
    from r2vcal import CVaRBrierRouter, compare_routers

    X, y = frame
    g = np.arange(len(y)) % 5
    feats = X[["entropy_mean", "verifier_max"]]
    router = CVaRBrierRouter(random_state=0).fit(feats, y, groups=g)
    entropy = EntropyRouter().fit(feats, y)
    copy = EntropyRouter().fit(feats, y)  # a "router" that is the baseline
    table = compare_routers(
        {
            "cvar": router,
            "entropy": entropy,
            "copy": copy,
            "random": RandomRouter(0.3).fit(feats, y),
            "oracle": y.astype(float),
        },
        feats,
        y,
        groups=g,
        reference="entropy",
        n_resamples=30,
    )
    est = table.pivot(index="router", columns="metric", values="estimate")
    assert est.loc["copy", "rank_corr_vs_reference"] == pytest.approx(1.0)
    assert est.loc["cvar", "rank_corr_vs_reference"] < 0.9
    assert est.loc["cvar", "frontier_auc"] > est.loc["entropy", "frontier_auc"]
    assert est.loc["oracle", "frontier_auc"] >= est.loc["cvar", "frontier_auc"]
    assert est.loc["random", "frontier_auc"] < est.loc["cvar", "frontier_auc"]
    assert (table["ci_low"] <= table["ci_high"]).all()
    assert {"brier", "ece", "worst_group_brier", "auroc", "success@0.25"} <= set(
        table["metric"]
    )


def test_logistic_router_is_sklearn_logistic_regression(frame):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = frame
    X = X[["entropy_mean", "verifier_max"]] * [1000.0, 0.001]  # scale-free
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    r = LogisticRouter().fit(X, y)
    np.testing.assert_allclose(
        r.predict_proba(X), ref.predict_proba(X), atol=1e-6, rtol=0
    )
    assert list(r.feature_names_in_) == ["entropy_mean", "verifier_max"]


def test_feature_routers_rank_by_the_raw_feature(frame):
    """Isotonic plateaus merge distinct entropies; the ranking must not."""
    X, y = frame
    r = EntropyRouter().fit(X, y)
    p = r.predict_proba(X)[:, 1]
    s = risk_score(r, X)
    assert np.unique(s).size > 10 * np.unique(p).size
    np.testing.assert_array_equal(s, X["entropy_mean"].to_numpy())
    np.testing.assert_array_equal(
        risk_score(VerifierRouter().fit(X, y), X), -X["verifier_max"].to_numpy()
    )
    # the frontier ranks by it: compare_routers' frontier AUC equals that of
    # the raw feature passed as scores, not that of the plateaus
    table = compare_routers(
        {"entropy": r, "plateaus": p}, X, y, n_resamples=20
    ).set_index(["router", "metric"])["estimate"]
    raw = compare_routers(
        {"raw": p}, X, y, scores={"raw": s}, n_resamples=20
    ).set_index(["router", "metric"])["estimate"]
    assert table["entropy", "frontier_auc"] == pytest.approx(raw["raw", "frontier_auc"])
    assert table["entropy", "frontier_auc"] != table["plateaus", "frontier_auc"]
    assert table["entropy", "brier"] == table["plateaus", "brier"]  # probabilities


def test_compare_routers_intervals_contain_their_estimates():
    """Worst-group upper bounds above the estimate; ECE inside its own CI."""
    rng = np.random.default_rng(1)
    n = 1500
    X = rng.normal(size=(n, 2))
    g = rng.integers(0, 12, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 0] - 1)))).astype(int)
    lr = LogisticRouter().fit(X, y)
    table = compare_routers(
        {"lr": lr, "noisy": np.clip(lr.predict_proba(X)[:, 1] + 0.1, 0, 1)},
        X,
        y,
        groups=g,
        n_resamples=100,
    )
    inside = (table.ci_low <= table.estimate + 1e-12) & (
        table.estimate <= table.ci_high + 1e-12
    )
    # the debiased ECE is clipped at zero, which skews its resamples low: its
    # bias-corrected interval can end a hair below the estimate (documented)
    inside |= table.metric == "ece_debiased"
    assert inside.all(), table[~inside]
    worst = table[table.metric == "worst_group_brier"]
    assert (worst.ci_high > worst.estimate + 1e-4).all()


def test_compare_routers_auroc_is_undefined_on_one_class():
    X = np.random.default_rng(0).normal(size=(50, 1))
    y = np.zeros(50)
    table = compare_routers({"p": np.full(50, 0.1)}, X, y, n_resamples=20)
    auroc = table[table.metric == "auroc"].iloc[0]
    assert np.isnan(auroc.estimate) and np.isnan(auroc.ci_low)
