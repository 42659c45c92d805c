"""Baseline routers with the same ``fit / predict_proba / route`` interface.

* :class:`LogisticRouter` is scikit-learn's ``LogisticRegression`` on the same
  (standardised) features: the yardstick every router claim is measured against.
* :class:`EntropyRouter` and :class:`VerifierRouter` escalate on one named feature
  (token entropy, verifier score), the heuristics of the literature. Their raw
  score is mapped to a probability by isotonic regression fitted in ``fit``, so
  Brier/ECE comparisons are fair; their *ranking* (:meth:`risk_score`, used for
  frontiers and AUROC) is the raw feature, so the isotonic plateaus do not merge
  distinct feature values and every escalation rate is reachable.
* :class:`RandomRouter` escalates a fixed share of steps at random.
* :class:`OracleRouter` escalates exactly where the label says so. It reads the
  label from a column of ``X`` and is **not deployable**: a hindsight reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import (
    check_is_fitted,
)

from r2vcal._base import BaseRouter, as_unit_interval, positive_proba
from r2vcal.router import weighted_standardisation

__all__ = [
    "EntropyRouter",
    "LogisticRouter",
    "OracleRouter",
    "RandomRouter",
    "VerifierRouter",
    "compare_routers",
    "risk_score",
]

_COST_CONSTRAINTS: dict[str, list[Any]] = {
    "cost_slm": [Interval(Real, 0, None, closed="left")],
    "cost_llm": [Interval(Real, 0, None, closed="left")],
    "miss_cost": [Interval(Real, 0, None, closed="neither")],
    "threshold": [Interval(Real, 0, 1, closed="both"), None],
}


class _FeatureRouter(BaseRouter):
    """Escalate on a monotone function of a single feature column."""

    _risk_increases: ClassVar[bool] = True
    _default_feature: ClassVar[str] = ""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "feature": [str, Interval(Integral, 0, None, closed="left"), None],
        **_COST_CONSTRAINTS,
    }

    def __init__(
        self,
        feature: str | int | None = None,
        *,
        cost_slm: float = 1.0,
        cost_llm: float = 10.0,
        miss_cost: float = 20.0,
        threshold: float | None = None,
    ) -> None:
        self.feature = feature
        self.cost_slm = cost_slm
        self.cost_llm = cost_llm
        self.miss_cost = miss_cost
        self.threshold = threshold

    def _column(self, Xv: NDArray[np.float64]) -> NDArray[np.float64]:
        feature = self._default_feature if self.feature is None else self.feature
        if isinstance(feature, str):
            names = getattr(self, "feature_names_in_", None)
            if names is None or feature not in list(names):
                raise ValueError(
                    f"{type(self).__name__}(feature={feature!r}) needs X to be "
                    f"a DataFrame with a column {feature!r}; got columns "
                    f"{None if names is None else list(names)[:20]}."
                )
            j = list(names).index(feature)
        else:
            j = int(feature)
            if j >= Xv.shape[1]:
                raise ValueError(
                    f"{type(self).__name__}(feature={j}) is out of range for X with "
                    f"{Xv.shape[1]} columns."
                )
        return np.asarray(Xv[:, j], dtype=np.float64)

    def _fit(
        self, X: NDArray[np.float64], y01: NDArray[np.float64], sw: NDArray[np.float64]
    ) -> None:
        """Fit the isotonic map from the feature to the escalation probability."""
        s = self._column(X)
        iso = IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=self._risk_increases, out_of_bounds="clip"
        ).fit(s, y01, sample_weight=sw)
        self.isotonic_x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.isotonic_y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        self._set_threshold()

    def _proba1(self, X: Any) -> NDArray[np.float64]:
        s = self._column(self._check_X(X))
        return np.asarray(np.interp(s, self.isotonic_x_, self.isotonic_y_))

    def risk_score(self, X: ArrayLike) -> NDArray[np.float64]:
        """The raw feature, signed so that higher = riskier.

        Unlike the isotonic probability it keeps every distinct feature value
        apart, so a threshold on it reaches every escalation rate up to the
        feature's own ties.
        """
        s = self._column(self._check_X(X))
        return s if self._risk_increases else -s


class EntropyRouter(_FeatureRouter):
    """Escalate when the SLM's token entropy is high (literature heuristic).

    Parameters
    ----------
    feature : str, int or None, default=None
        Column holding the entropy (name with DataFrame input, or index);
        ``None`` means ``"entropy_mean"`` (:data:`r2vcal.features.FEATURE_NAMES`).
    cost_slm, cost_llm, miss_cost, threshold
        As in :class:`~r2vcal.CVaRBrierRouter`: ``threshold_`` is the Bayes rule
        unless ``threshold`` is given.
    """

    _risk_increases = True
    _default_feature = "entropy_mean"


class VerifierRouter(_FeatureRouter):
    """Escalate when the best verifier score is low (process-reward heuristic).

    Parameters
    ----------
    feature : str, int or None, default=None
        Column holding the verifier score, risk decreasing as it grows;
        ``None`` means ``"verifier_max"``.
    cost_slm, cost_llm, miss_cost, threshold
        As in :class:`~r2vcal.CVaRBrierRouter`.
    """

    _risk_increases = False
    _default_feature = "verifier_max"


class LogisticRouter(BaseRouter):
    """scikit-learn ``LogisticRegression`` on standardised features: the yardstick.

    The first question about any router is "does it beat plain logistic
    regression on the same features?". This is that model, with the router
    interface (``route``, Bayes threshold, pickle-free persistence): the
    features are standardised with the (weighted) training mean and standard
    deviation, ``LogisticRegression(C=C)`` is fitted, and the scaling is folded
    into ``coef_`` and ``intercept_``.

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 strength of ``LogisticRegression`` (on standardised features).
    max_iter : int, default=1000
        Solver iterations.
    cost_slm, cost_llm, miss_cost, threshold
        As in :class:`~r2vcal.CVaRBrierRouter`.

    Attributes
    ----------
    coef_ : ndarray of shape (1, n_features)
        Weights on the original feature scale.
    intercept_ : ndarray of shape (1,)
    threshold_ : float

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.baselines import LogisticRouter
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3)) * [1.0, 100.0, 0.01]
    >>> y = (X[:, 0] + rng.normal(size=400) > 0).astype(int)
    >>> LogisticRouter().fit(X, y).predict_proba(X[:2]).shape
    (2, 2)
    """

    _poor_score = False

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        **_COST_CONSTRAINTS,
    }

    def __init__(
        self,
        C: float = 1.0,
        *,
        max_iter: int = 1000,
        cost_slm: float = 1.0,
        cost_llm: float = 10.0,
        miss_cost: float = 20.0,
        threshold: float | None = None,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.cost_slm = cost_slm
        self.cost_llm = cost_llm
        self.miss_cost = miss_cost
        self.threshold = threshold

    def _fit(
        self, X: NDArray[np.float64], y01: NDArray[np.float64], sw: NDArray[np.float64]
    ) -> None:
        """Fit the logistic regression on standardised features."""
        mean, scale = weighted_standardisation(X, sw)
        lr = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter))
        lr.fit((X - mean) / scale, y01, sample_weight=sw)
        u = lr.coef_[0] / scale
        self.coef_ = u.reshape(1, -1)
        self.intercept_ = np.array([float(lr.intercept_[0]) - float(mean @ u)])
        self.n_iter_ = int(np.max(lr.n_iter_))
        self._set_threshold()

    def _proba1(self, X: Any) -> NDArray[np.float64]:
        Xv = self._check_X(X)
        return np.asarray(expit(Xv @ self.coef_[0] + self.intercept_[0]))


class RandomRouter(BaseRouter):
    """Escalate a share ``rate`` of the steps at random.

    ``predict_proba`` returns the training base rate (the best constant forecast),
    so its frontier is the straight line from SLM-only to LLM-only; ``route`` draws
    independent escalations with probability ``rate``.

    Parameters
    ----------
    rate : float in [0, 1], default=0.1
    random_state : int or None, default=None
        Seeds each :meth:`route` call (the same call gives the same draws).
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "rate": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
    }

    def __init__(self, rate: float = 0.1, *, random_state: int | None = None) -> None:
        self.rate = rate
        self.random_state = random_state

    def _fit(
        self, X: NDArray[np.float64], y01: NDArray[np.float64], sw: NDArray[np.float64]
    ) -> None:
        """Record the (weighted) base rate of ``y``."""
        self.base_rate_ = float(np.average(y01, weights=sw))
        self.threshold_ = 1.0 - float(self.rate)

    def _proba1(self, X: Any) -> NDArray[np.float64]:
        Xv = self._check_X(X)
        return np.full(Xv.shape[0], self.base_rate_)

    def route(self, X: ArrayLike, threshold: float | None = None) -> NDArray[np.bool_]:
        """Independent escalations with probability ``rate`` (``threshold`` unused)."""
        Xv = self._check_X(X)
        rng = check_random_state(self.random_state)
        return rng.random_sample(Xv.shape[0]) < float(self.rate)


class OracleRouter(BaseRouter):
    """Hindsight oracle: escalates exactly the steps whose label is 1.

    Not deployable (``deployable = False``): it reads the true label from the
    column ``label`` of ``X``, which exists only after the fact. Use it as the
    upper reference on frontiers.

    Parameters
    ----------
    label : str or int, default="y_counterfactual"
        Column of ``X`` holding the 0/1 label.
    """

    deployable: ClassVar[bool] = False

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "label": [str, Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, label: str | int = "y_counterfactual") -> None:
        self.label = label

    def _labels(self, X: Any) -> NDArray[np.float64]:
        if isinstance(self.label, str):
            if not hasattr(X, "columns") or self.label not in X.columns:
                raise ValueError(
                    f"OracleRouter(label={self.label!r}) needs X to be a DataFrame "
                    f"with the label column {self.label!r}."
                )
            col = np.asarray(X[self.label], dtype=np.float64)
        else:
            col = np.asarray(X, dtype=np.float64)[:, int(self.label)]
        if not np.isin(col, (0.0, 1.0)).all():
            raise ValueError(
                f"OracleRouter: column {self.label!r} must hold 0/1 labels."
            )
        return col

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        groups: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
    ) -> OracleRouter:
        """Nothing to learn beyond the classes; ``groups`` is ignored."""
        self._labels(X)
        self._fit_target(np.asarray(y))
        self.threshold_ = 0.5
        return self

    def _proba1(self, X: Any) -> NDArray[np.float64]:
        check_is_fitted(self)
        return self._labels(X)


def risk_score(router: Any, X: Any) -> NDArray[np.float64]:
    """Ranking score of ``router`` on ``X``: higher = riskier.

    ``router.risk_score(X)`` where the router has one (the raw feature for
    :class:`EntropyRouter`/:class:`VerifierRouter`, the uncalibrated score for
    :class:`~r2vcal.CVaRBrierRouter`), else the escalation probability. An
    array is returned as is. Frontiers and AUROC rank steps by this score;
    Brier and ECE use the probabilities.
    """
    if hasattr(router, "risk_score"):
        return np.asarray(router.risk_score(X), dtype=np.float64)
    return positive_proba(router, X, arrays=True)


def compare_routers(
    routers: Mapping[str, Any],
    X: Any,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    slm_success: ArrayLike | None = None,
    llm_success: ArrayLike | None = None,
    cost_slm: float = 1.0,
    cost_llm: float = 10.0,
    budgets: Sequence[float] = (0.1, 0.25, 0.5),
    reference: str | None = None,
    n_bins: int = 15,
    tail: float = 0.2,
    n_resamples: int = 200,
    confidence_level: float = 0.95,
    random_state: int | None = 0,
    scores: Mapping[str, ArrayLike] | None = None,
) -> pd.DataFrame:
    """Compare routers on one held-out table: one tidy row per (router, metric).

    Parameters
    ----------
    routers : mapping of str to fitted router or array
        Name -> fitted estimator with ``predict_proba``, or an array of
        escalation probabilities (for routers that need other inputs than ``X``).
    X : array-like or DataFrame
        Features passed to each estimator's ``predict_proba``.
    y : array-like of shape (n_samples,)
        Binary label, 1 = "escalation needed".
    groups : array-like, default=None
        Perturbation seeds: per-group metrics and a cluster bootstrap over them.
    slm_success, llm_success : array-like of {0, 1}, default=None
        Step outcome on each side, for the frontier. When omitted they are taken
        from the label: the SLM fails exactly where ``y = 1`` and the LLM always
        succeeds (the counterfactual reading of the label).
    cost_slm, cost_llm : float
        Step costs for the frontier.
    budgets : sequence of float in [0, 1], default=(0.1, 0.25, 0.5)
        Escalation rates at which the success is reported (``success@b``).
    reference : str, default=None
        Name of a router in ``routers`` (e.g. the entropy baseline): adds
        ``rank_corr_vs_reference``, the Spearman correlation of each router's
        probabilities with it. A router that merely copies the baseline shows
        a value near 1.
    n_bins, tail : int, float
        ECE bins and CVaR tail fraction over groups.
    n_resamples, confidence_level, random_state
        Bootstrap settings; the same resamples are used for every router.
    scores : mapping of str to array, default=None
        Ranking scores (higher = riskier) by router name, for routers given as
        arrays. Fitted routers are ranked by :func:`risk_score` (the raw
        feature for the entropy/verifier baselines), arrays by themselves.

    Returns
    -------
    DataFrame
        Columns ``router``, ``deployable``, ``metric``, ``estimate``, ``ci_low``,
        ``ci_high``. Metrics: ``brier``, ``ece`` (L1, ``n_bins`` uniform bins,
        the binning of the report's reliability diagrams), ``ece_debiased``
        (debiased L2, Kumar et al.), ``worst_group_brier``, ``cvar_group_brier``
        (with groups), ``auroc``, ``frontier_auc``, ``success@b`` per budget and
        ``rank_corr_vs_reference``. Pivot with
        ``table.pivot(index="router", columns="metric", values="estimate")``.

    Notes
    -----
    Intervals: Brier, AUROC and frontier figures use the percentile bootstrap
    (over groups when given); ECE uses the bias-corrected percentile bootstrap
    (binned ECE is biased upward on resamples; the debiased ECE, clipped at zero,
    is skewed the other way and its interval can end just below the estimate);
    worst-group and CVaR figures
    resample rows within each group, since resampling whole groups can only
    drop the worst one. AUROC is undefined on a sample with one class: such
    resamples are dropped, and the estimate is NaN when the data have one class.
    """
    y01 = np.asarray(y, dtype=np.float64)
    n = y01.shape[0]
    held = _HeldOut(
        y01=y01,
        slm=1.0 - y01 if slm_success is None else np.asarray(slm_success, np.float64),
        llm=np.ones(n) if llm_success is None else np.asarray(llm_success, np.float64),
        groups=None if groups is None else np.asarray(groups),
        cost_slm=cost_slm,
        cost_llm=cost_llm,
        n_bins=n_bins,
        tail=tail,
    )
    probs, ranks = _probabilities_and_ranks(routers, X, scores, n)
    if reference is not None and reference not in probs:
        raise ValueError(
            f"compare_routers: reference={reference!r} is not one of the routers "
            f"{sorted(probs)}."
        )
    ref = None if reference is None else probs[reference]
    rows = []
    for name, p in probs.items():
        deployable = bool(getattr(type(routers[name]), "deployable", True))
        fns = _metric_fns(held, p, ranks[name], budgets, ref)
        for metric, ci in _bootstrap(
            held, fns, n_resamples, confidence_level, random_state
        ):
            rows.append((name, deployable, metric, *ci))
    return pd.DataFrame(
        rows,
        columns=["router", "deployable", "metric", "estimate", "ci_low", "ci_high"],
    )


@dataclass(frozen=True)
class _HeldOut:
    """The held-out table and settings every metric of :func:`compare_routers`
    reads."""

    y01: NDArray[np.float64]
    slm: NDArray[np.float64]
    llm: NDArray[np.float64]
    groups: NDArray[Any] | None
    cost_slm: float
    cost_llm: float
    n_bins: int
    tail: float


def _probabilities_and_ranks(
    routers: Mapping[str, Any],
    X: Any,
    scores: Mapping[str, ArrayLike] | None,
    n: int,
) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]]]:
    """Escalation probabilities and [0, 1] ranks of every router, checked."""
    probs = {name: positive_proba(r, X, arrays=True) for name, r in routers.items()}
    given = dict(scores or {})
    ranks = {
        name: as_unit_interval(
            np.asarray(given[name], dtype=np.float64)
            if name in given
            else risk_score(r, X)
        )
        for name, r in routers.items()
    }
    for name, p in probs.items():
        if p.shape[0] != n or ranks[name].shape[0] != n:
            raise ValueError(
                f"compare_routers: router {name!r} gave {p.shape[0]} probabilities "
                f"and {ranks[name].shape[0]} scores for {n} labels."
            )
    return probs, ranks


def _metric_fns(
    d: _HeldOut,
    p: NDArray[np.float64],
    s: NDArray[np.float64],
    budgets: Sequence[float],
    ref: NDArray[np.float64] | None,
) -> dict[str, Callable[[NDArray[np.intp]], float]]:
    """Each metric of one router as a function of the resampled row indices."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from r2vcal.frontier import frontier_auc, reliability_cost_frontier, success_at
    from r2vcal.metrics import (
        debiased_calibration_error,
        expected_calibration_error,
        group_metrics,
    )

    y01, g = d.y01, d.groups

    def frontier(i: NDArray[np.intp]) -> pd.DataFrame:
        return reliability_cost_frontier(
            s[i], d.slm[i], d.llm[i], cost_slm=d.cost_slm, cost_llm=d.cost_llm
        )

    def success(i: NDArray[np.intp], budget: float) -> float:
        return success_at(frontier(i), budget)

    def group_attr(i: NDArray[np.intp], key: str) -> float:
        assert g is not None
        table = group_metrics(y01[i], p[i], g[i], tail=d.tail, n_bins=d.n_bins)
        return float(table.attrs[key])

    fns: dict[str, Callable[[NDArray[np.intp]], float]] = {
        "brier": lambda i: float(np.mean((p[i] - y01[i]) ** 2)),
        "ece": lambda i: expected_calibration_error(y01[i], p[i], n_bins=d.n_bins),
        "ece_debiased": lambda i: debiased_calibration_error(
            y01[i], p[i], n_bins=d.n_bins
        ),
        "auroc": lambda i: (
            float(roc_auc_score(y01[i], s[i])) if 0 < y01[i].sum() < len(i) else np.nan
        ),
        "frontier_auc": lambda i: frontier_auc(frontier(i)),
    }
    if g is not None:
        fns["worst_group_brier"] = lambda i: group_attr(i, "worst_brier")
        fns["cvar_group_brier"] = lambda i: group_attr(i, "cvar_brier")
    for b in budgets:
        fns[f"success@{b:g}"] = partial(success, budget=b)
    if ref is not None:
        fns["rank_corr_vs_reference"] = lambda i: (
            float(spearmanr(p[i], ref[i]).statistic)
            if np.ptp(p[i]) > 0 and np.ptp(ref[i]) > 0
            else 0.0  # a constant forecast carries no ranking
        )
    return fns


def _bootstrap(
    d: _HeldOut,
    fns: Mapping[str, Callable[[NDArray[np.intp]], float]],
    n_resamples: int,
    confidence_level: float,
    random_state: int | None,
) -> list[tuple[str, tuple[float, float, float]]]:
    """``(metric, (estimate, low, high))`` for each metric: see the Notes of
    :func:`compare_routers` for the interval of each."""
    from r2vcal.metrics import bootstrap_ci

    g = d.groups
    idx = np.arange(d.y01.shape[0])
    one_class = not 0 < d.y01.sum() < d.y01.shape[0]
    out = []
    for metric, fn in fns.items():
        if metric == "auroc" and one_class:
            out.append((metric, (np.nan, np.nan, np.nan)))
            continue
        per_group = metric in ("worst_group_brier", "cvar_group_brier")
        ci = bootstrap_ci(
            fn,
            idx,
            n_resamples=n_resamples,
            confidence_level=confidence_level,
            groups=None if per_group else g,
            strata=g if per_group else None,
            method="bc" if metric.startswith("ece") else "percentile",
            nan_policy="omit" if metric == "auroc" else "raise",
            random_state=random_state,
        )
        out.append((metric, (ci.estimate, ci.low, ci.high)))
    return out
