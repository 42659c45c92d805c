"""Tests of r2vcal.router.CVaRBrierRouter (linear and MLP backends)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest
import sklearn
from scipy.optimize import check_grad
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from r2vcal import CVaRBrierRouter, NoGroupsWarning
from r2vcal._objective import exact_cvar
from r2vcal._torch_mlp import group_batches
from r2vcal.router import _TrainData, linear_objective


def make_seeded_problem(n: int, seed: int, n_groups: int = 10, n_hard: int = 2):
    """Synthetic escalation data: ``n_hard`` of ``n_groups`` seeds follow a shifted rule.

    On the easy seeds risk depends on feature 0; on the hard ones it also depends
    on feature 1, which a plain-Brier fit underweights because those seeds are few.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    g = rng.integers(0, n_groups, size=n)
    hard = g < n_hard
    z = 1.5 * X[:, 0] - 0.5 + np.where(hard, 2.5 * X[:, 1] + 1.0, -0.3 * X[:, 1])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return X, y, g


@parametrize_with_checks(
    [
        CVaRBrierRouter(random_state=0),
        CVaRBrierRouter(calibration="isotonic", cvar_weight=2.0, random_state=0),
        CVaRBrierRouter(calibration=None, cvar_weight=0.0),
        CVaRBrierRouter(cvar_bound=0.05, random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoGroupsWarning)
        check(estimator)


def test_linear_gradient_matches_finite_differences():
    X, y, g = make_seeded_problem(500, 0)
    gidx = np.unique(g, return_inverse=True)[1]
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(y))
    mean, scale = X.mean(0), X.std(0)
    data = _TrainData(X, y.astype(float), w, gidx, 10, mean, scale)
    theta = np.random.default_rng(2).normal(size=5) * 0.5

    def f(t):
        return linear_objective(t, data, 3.0, 0.2, 1e-3, 200.0)[0]

    def grad(t):
        return linear_objective(t, data, 3.0, 0.2, 1e-3, 200.0)[1]

    assert check_grad(f, grad, theta, epsilon=1e-7) < 1e-5


def test_reported_cvar_is_exact_over_group_losses():
    X, y, g = make_seeded_problem(3000, 1)
    r = CVaRBrierRouter(cvar_tail=0.3, random_state=0).fit(X, y, groups=g)
    p = r.predict_proba(X)[:, 1]
    per_group = np.array([np.mean((p[g == k] - y[g == k]) ** 2) for k in range(10)])
    np.testing.assert_allclose(r.group_losses_, per_group, rtol=1e-12)
    worst3 = np.sort(per_group)[::-1][:3]
    assert r.cvar_ == pytest.approx(worst3.mean(), rel=1e-12)
    assert r.n_iter_ >= 1 and r.temperature_ > 0


def test_cvar_weight_lowers_worst_seed_brier_on_new_data():
    X, y, g = make_seeded_problem(20000, 2)
    Xn, yn, gn = make_seeded_problem(20000, 3)
    worst = {}
    for lam in (0.0, 5.0):
        r = CVaRBrierRouter(cvar_weight=lam, cvar_tail=0.2, calibration=None)
        r.fit(X, y, groups=g)
        p = r.predict_proba(Xn)[:, 1]
        worst[lam] = max(np.mean((p[gn == k] - yn[gn == k]) ** 2) for k in range(10))
    assert worst[5.0] < worst[0.0] - 0.002, worst


def test_objective_is_minimised_against_perturbations():
    X, y, g = make_seeded_problem(4000, 4)
    r = CVaRBrierRouter(cvar_weight=2.0, calibration=None).fit(X, y, groups=g)
    gidx = np.unique(g, return_inverse=True)[1]
    mean = X.mean(0)
    scale = X.std(0)
    data = _TrainData(X, y.astype(float), np.ones(len(y)), gidx, 10, mean, scale)
    v = r.coef_[0] * scale
    theta = np.append(v, r.intercept_[0] + mean @ r.coef_[0])
    base = linear_objective(theta, data, 2.0, r.cvar_tail, r.alpha_, None)[0]
    assert base == pytest.approx(r.objective_, rel=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pert = theta + rng.normal(scale=0.05, size=theta.shape)
        assert linear_objective(pert, data, 2.0, r.cvar_tail, r.alpha_, None)[0] >= (
            base - 1e-4
        )


@pytest.mark.parametrize("start", [0.0, 1.0, 50.0])
def test_cvar_bound_ends_at_the_bound(start):
    """Met, and tight: a bound far inside would cost Brier for nothing."""
    X, y, g = make_seeded_problem(8000, 5)
    free = CVaRBrierRouter(cvar_weight=0.0, calibration=None).fit(X, y, groups=g)
    bound = free.cvar_ - 0.004
    r = CVaRBrierRouter(cvar_weight=start, cvar_bound=bound, calibration=None)
    r.fit(X, y, groups=g)
    assert r.dual_weight_ > 0
    assert bound - 2e-4 <= r.cvar_ <= bound + 1e-6
    # the lowest Brier among routers meeting the bound: a penalised fit just
    # above the multiplier found is feasible, just below it is not
    below = CVaRBrierRouter(cvar_weight=0.9 * r.dual_weight_, calibration=None)
    assert below.fit(X, y, groups=g).cvar_ > bound


def test_cvar_bound_already_met_keeps_plain_brier():
    X, y, g = make_seeded_problem(4000, 6)
    free = CVaRBrierRouter(cvar_weight=0.0, calibration=None).fit(X, y, groups=g)
    r = CVaRBrierRouter(cvar_bound=free.cvar_ + 0.01, calibration=None)
    assert r.fit(X, y, groups=g).dual_weight_ == 0.0


def test_route_uses_bayes_threshold():
    X, y, g = make_seeded_problem(2000, 6)
    r = CVaRBrierRouter(cost_slm=1.0, cost_llm=7.0, miss_cost=20.0, random_state=0)
    r.fit(X, y, groups=g)
    assert r.threshold_ == pytest.approx(0.3)
    p = r.predict_proba(X)[:, 1]
    np.testing.assert_array_equal(r.route(X), p >= 0.3)
    np.testing.assert_array_equal(r.route(X, threshold=0.9), p >= 0.9)
    assert CVaRBrierRouter(threshold=0.42).fit(X, y, groups=g).threshold_ == 0.42


def make_tie_problem(n: int, seed: int, k: int = 5, share: float = 0.6):
    """Agreement features with a big mass point: ``share`` of steps have all K agree.

    The shape of real cascade tables (issue 12): most rows are one feature vector
    with both labels, so a split that depends on row content breaks calibration.
    """
    rng = np.random.default_rng(seed)
    agree = np.where(rng.random(n) < share, k, rng.integers(1, k + 1, size=n))
    y = (rng.random(n) < 0.05 + 0.6 * (1 - agree / k)).astype(int)
    return np.c_[agree / k, agree == k], y, rng.integers(0, 6, size=n)


def make_continuous_problem(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    z = X[:, 0] - X[:, 1] + 0.5 * X[:, 2] - 1.0
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return X, y, rng.integers(0, 8, size=n)


def _held_out(router, X, y, g, n_train):
    router.fit(X[:n_train], y[:n_train], groups=g[:n_train])
    p = router.predict_proba(X[n_train:])[:, 1]
    yt, gt = y[n_train:], g[n_train:]
    brier = float(np.mean((p - yt) ** 2))
    worst = max(float(np.mean((p[gt == k] - yt[gt == k]) ** 2)) for k in set(gt))
    return brier, worst, p


def test_issue_snippet_default_router_matches_logistic_regression():
    """The issue-12 reproduction: held-out Brier 0.2495 and constant p before."""
    X, y, g = make_tie_problem(4000, 0)
    brier, _, p = _held_out(
        CVaRBrierRouter(random_state=0), X[::-1], y[::-1], g[::-1], 2000
    )
    lr = LogisticRegression().fit(X[2000:], y[2000:]).predict_proba(X[:2000])[:, 1]
    assert brier <= float(np.mean((lr - y[:2000]) ** 2)) + 0.002
    assert np.ptp(p) > 0.3  # not a constant forecast


PROBLEMS = {
    "ties_k5": lambda s: make_tie_problem(6000, s),
    "ties_k20": lambda s: make_tie_problem(6000, s, k=20, share=0.8),
    "ties_k3_sparse": lambda s: make_tie_problem(3000, s, k=3, share=0.9),
    "flipped_groups": lambda s: make_seeded_problem(8000, s),
    "continuous": lambda s: make_continuous_problem(6000, s),
}


@pytest.mark.parametrize("calibration", ["temperature", "isotonic"])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_calibration_never_makes_held_out_brier_worse(problem, calibration):
    for seed in (0, 1):
        X, y, g = PROBLEMS[problem](seed)
        n_train = X.shape[0] // 2
        raw = _held_out(CVaRBrierRouter(calibration=None), X, y, g, n_train)
        cal = _held_out(
            CVaRBrierRouter(calibration=calibration, random_state=seed),
            X,
            y,
            g,
            n_train,
        )
        assert cal[0] <= raw[0] + 0.002, (problem, seed, cal[0], raw[0])
        assert cal[1] <= raw[1] + 0.002, (problem, seed, cal[1], raw[1])
        assert np.ptp(cal[2]) > 0.1  # data with signal: never a constant forecast


@pytest.mark.parametrize("calibration", ["temperature", "isotonic"])
def test_calibration_repairs_an_underconfident_router(calibration):
    """Strong L2 shrinks the scores; the calibrator must notice and fix it.

    Fails if calibration silently does nothing: held-out Brier and ECE must drop.
    """
    from r2vcal.metrics import expected_calibration_error

    X, y, g = make_continuous_problem(6000, 3)
    raw = _held_out(CVaRBrierRouter(alpha=0.05, calibration=None), X, y, g, 3000)
    router = CVaRBrierRouter(alpha=0.05, calibration=calibration, random_state=0)
    cal = _held_out(router, X, y, g, 3000)
    assert router.calibration_ == calibration
    assert router.calibration_objective_[1] < router.calibration_objective_[0]
    assert cal[0] < raw[0] - 0.003
    ece_raw = expected_calibration_error(y[3000:], raw[2])
    ece_cal = expected_calibration_error(y[3000:], cal[2])
    assert ece_cal < 0.75 * ece_raw
    if calibration == "temperature":
        assert router.temperature_ < 0.9  # sharpened


def test_isotonic_fixes_a_misspecified_link():
    X, y, g = make_continuous_problem(6000, 4)
    rng = np.random.default_rng(4)
    x = X[:, :1]
    y = (rng.random(6000) < 1.0 / (1.0 + np.exp(-(3 * x[:, 0] ** 3 - 1)))).astype(int)
    raw = _held_out(CVaRBrierRouter(calibration=None), x, y, g, 3000)
    router = CVaRBrierRouter(calibration="isotonic", random_state=0)
    cal = _held_out(router, x, y, g, 3000)
    assert router.calibration_ == "isotonic"
    assert cal[0] < raw[0] - 0.003


def test_calibration_is_kept_off_when_it_does_not_help():
    X, y, g = make_tie_problem(4000, 2)
    r = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    raw, calibrated = r.calibration_objective_
    assert (r.calibration_ is None) == (calibrated >= raw - 1e-6)
    if r.calibration_ is None:
        assert r.temperature_ == 1.0
    off = CVaRBrierRouter(calibration=None).fit(X, y, groups=g)
    assert np.isnan(off.calibration_objective_).all() and off.calibration_ is None


def test_calibration_folds_are_stratified_and_content_free():
    X, y, g = make_tie_problem(3000, 5)
    r = CVaRBrierRouter(random_state=0)
    folds = r._calibration_folds(
        y.astype(float), np.ones(3000), g.astype(np.intp), np.random.RandomState(0)
    )
    # within every (group, label) stratum the fold sizes differ by at most one
    for grp in np.unique(g):
        for lab in (0, 1):
            counts = np.bincount(folds[(g == grp) & (y == lab)], minlength=5)
            assert counts.max() - counts.min() <= 1
    # copies of the mass-point vector land in every fold, with both labels
    mass = X[:, 1] == 1
    for f in range(5):
        assert {0, 1} <= set(y[mass & (folds == f)])


def test_small_data_skips_calibration_with_warning():
    X, y, g = make_seeded_problem(20, 8)
    with pytest.warns(UserWarning, match="calibration='temperature' skipped"):
        r = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    assert r.temperature_ == 1.0 and r.calibration_ is None


def test_warns_once_when_groups_missing():
    X, y, _ = make_seeded_problem(500, 9)
    with pytest.warns(NoGroupsWarning, match="enable_metadata_routing=True"):
        CVaRBrierRouter(random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGroupsWarning)
        CVaRBrierRouter(cvar_weight=0.0, random_state=0).fit(X, y)


@pytest.mark.parametrize(
    ("kwargs", "fit_kw", "match"),
    [
        ({}, {"X": np.array([[np.nan, 1.0]] * 10)}, "NaN"),
        ({}, {"X": np.array([[np.inf, 1.0]] * 10)}, "infinity"),
        ({}, {"y": np.arange(100) % 3}, "Only binary classification is supported."),
        ({}, {"y": np.zeros(100, dtype=int)}, "only one class"),
        ({}, {"groups": np.arange(7)}, "groups must be a 1-d array"),
        ({"cvar_tail": 0.0}, {}, "cvar_tail"),
        ({"cvar_tail": 1.5}, {}, "cvar_tail"),
        ({"hidden_layer_sizes": (8, 0)}, {}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": (8, 2.5)}, {}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": "paper"}, {}, "hidden_layer_sizes"),
        ({"calibration": "platt"}, {}, "calibration"),
    ],
)
def test_bad_input_gets_clear_error(kwargs, fit_kw, match):
    X, y, g = make_seeded_problem(100, 10)
    args = {"X": X, "y": y, "groups": g}
    args.update(fit_kw)
    if args["X"].shape[0] != len(args["y"]):
        args["X"] = np.resize(args["X"], (len(args["y"]), args["X"].shape[1]))
    if "groups" not in fit_kw:
        args["groups"] = np.resize(g, len(args["y"]))
    with pytest.raises(ValueError, match=match):
        CVaRBrierRouter(**kwargs).fit(args["X"], args["y"], groups=args["groups"])


# ------------------------------------------------------------ metadata routing
@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def test_groups_reach_router_in_cross_validate(routing):
    X, y, g = make_seeded_problem(3000, 11)
    router = CVaRBrierRouter(random_state=0).set_fit_request(groups=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGroupsWarning)
        out = cross_validate(
            router, X, y, params={"groups": g}, cv=GroupKFold(5), return_estimator=True
        )
    for est in out["estimator"]:
        assert len(est.group_labels_) == 8  # 5-fold over 10 groups: 8 in training


def test_groups_reach_router_in_gridsearch_and_pipeline(routing):
    X, y, g = make_seeded_problem(3000, 12)
    pipe = make_pipeline(
        StandardScaler(),
        CVaRBrierRouter(random_state=0).set_fit_request(groups=True),
    )
    search = GridSearchCV(
        pipe,
        {"cvarbrierrouter__cvar_weight": [0.5, 2.0]},
        cv=GroupKFold(3),
        scoring="neg_brier_score",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGroupsWarning)
        search.fit(X, y, groups=g)
    np.testing.assert_array_equal(
        search.best_estimator_[-1].group_labels_, np.arange(10)
    )


def test_without_routing_groups_are_dropped_and_we_warn():
    X, y, g = make_seeded_problem(3000, 13)
    pipe = make_pipeline(StandardScaler(), CVaRBrierRouter(random_state=0))
    with pytest.warns(NoGroupsWarning):
        cross_validate(pipe, X, y, groups=g, cv=GroupKFold(3))


# ------------------------------------------------------------------ MLP backend
def test_group_batches_contain_every_group():
    rng = np.random.default_rng(0)
    gidx = rng.integers(0, 7, size=10_000)
    order, bounds = group_batches(gidx, 7, 512, rng)
    batches = [order[a:b] for a, b in itertools.pairwise(bounds)]
    assert sum(len(b) for b in batches) == 10_000
    assert len(np.unique(np.concatenate(batches))) == 10_000
    for b in batches:
        assert len(np.unique(gidx[b])) == 7
        assert len(b) <= 600


def test_mlp_backend_trains_and_predicts_with_numpy_only():
    X, y, g = make_seeded_problem(6000, 14)
    r = CVaRBrierRouter(
        hidden_layer_sizes=(16, 16),
        n_epochs=20,
        batch_size=512,
        calibration=None,
        random_state=0,
    ).fit(X, y, groups=g)
    assert all(isinstance(c, np.ndarray) for c in r.coefs_)
    assert r.n_iter_ == 20 * 12
    lr = LogisticRegression().fit(X, y)
    p_lr = lr.predict_proba(X)[:, 1]
    p = r.predict_proba(X)[:, 1]
    # the MLP contains the linear model: it should do about as well
    assert np.mean((p - y) ** 2) <= np.mean((p_lr - y) ** 2) + 0.005
    assert r.loss_curve_[-1] < r.loss_curve_[0]


def test_mlp_paper_size_has_about_10k_parameters():
    from r2vcal import PAPER_HIDDEN_LAYER_SIZES

    X, y, g = make_seeded_problem(600, 15)
    X15 = np.hstack([X] * 4)[:, :15]
    r = CVaRBrierRouter(
        hidden_layer_sizes=PAPER_HIDDEN_LAYER_SIZES, n_epochs=1, random_state=0
    ).fit(X15, y, groups=g)
    n_params = sum(c.size for c in r.coefs_) + sum(b.size for b in r.intercepts_)
    assert 9_000 <= n_params <= 12_000


def test_mlp_cvar_weight_helps_worst_seed():
    X, y, g = make_seeded_problem(12000, 16)
    Xn, yn, gn = make_seeded_problem(12000, 17)
    worst = {}
    for lam in (0.0, 5.0):
        r = CVaRBrierRouter(
            hidden_layer_sizes=(8,),
            cvar_weight=lam,
            calibration=None,
            n_epochs=10,
            batch_size=1024,
            learning_rate=1e-2,
            random_state=0,
        ).fit(X, y, groups=g)
        p = r.predict_proba(Xn)[:, 1]
        worst[lam] = max(np.mean((p[gn == k] - yn[gn == k]) ** 2) for k in range(10))
    assert worst[5.0] < worst[0.0], worst


def test_import_r2vcal_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys, r2vcal, r2vcal.router, r2vcal.persist, r2vcal.baselines;"
        "bad=[m for m in ('torch','matplotlib','transformers','trl','pipelines')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_exact_cvar_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.random(rng.integers(1, 12))
        k = rng.integers(1, len(v) + 1)
        assert exact_cvar(v, k / len(v)) == pytest.approx(np.sort(v)[::-1][:k].mean())
