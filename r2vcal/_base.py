"""What every r2vcal router shares: binary target, Bayes threshold, predictions.

Package-internal API (public names, not re-exported): :class:`BaseRouter` is
the parent of :class:`~r2vcal.CVaRBrierRouter` and of the baselines;
:func:`encode_binary_target` and :func:`cost_threshold` are also re-exported by
:mod:`r2vcal.router`, where they were first defined.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import logit
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

__all__ = [
    "PROB_EPS",
    "BaseRouter",
    "as_unit_interval",
    "cost_threshold",
    "encode_binary_target",
    "positive_proba",
]

#: Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before taking log-odds.
PROB_EPS = 1e-12


def encode_binary_target(estimator: Any, y: ArrayLike) -> NDArray[np.float64]:
    """Check that ``y`` is binary, set ``estimator.classes_``, return y as 0/1."""
    y = np.asarray(y)
    check_classification_targets(y)
    kind = type_of_target(y, input_name="y")
    if kind == "multiclass":
        raise ValueError(
            "Only binary classification is supported. The type of the target is "
            f"multiclass ({np.unique(y).size} classes); a router predicts one "
            "'needs escalation' probability."
        )
    classes = np.unique(y)
    if kind != "binary" or classes.size < 2:
        raise ValueError(
            f"y contains only one class ({classes.tolist()!r}); a router needs both "
            "escalation-needed and not-needed steps to learn when to escalate."
        )
    estimator.classes_, y_enc = np.unique(y, return_inverse=True)
    return np.asarray(y_enc, dtype=np.float64)


def cost_threshold(estimator: Any) -> float:
    """``threshold`` if set, else the Bayes rule (cost_llm - cost_slm) / miss_cost."""
    if estimator.threshold is not None:
        return float(estimator.threshold)
    from r2vcal.thresholds import bayes_threshold

    return bayes_threshold(estimator.cost_slm, estimator.cost_llm, estimator.miss_cost)


def positive_proba(
    router: Any, X: Any, caller: str = "compare_routers", *, arrays: bool = False
) -> NDArray[np.float64]:
    """Escalation probability of ``router`` on ``X``: column 1 of ``predict_proba``.

    Parameters
    ----------
    router : estimator or array-like
        A fitted binary router (or any binary classifier with
        ``predict_proba``); with ``arrays=True`` also a 1-d array of
        probabilities, returned as it is.
    X : array-like
        Features passed to ``predict_proba``.
    caller : str, default="compare_routers"
        Named in error messages.
    arrays : bool, default=False
        Whether ``router`` may be an array of probabilities.

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    if not hasattr(router, "predict_proba"):
        if not arrays:
            raise ValueError(
                f"{caller}: the estimator {type(router).__name__} has no "
                "predict_proba; use from_predictions with your own probabilities "
                "instead."
            )
        p = np.asarray(router, dtype=np.float64)
        if p.ndim != 1:
            raise ValueError(
                f"{caller}: each entry of 'routers' must be a fitted router or a "
                "1-d array of escalation probabilities; got an array of shape "
                f"{p.shape}."
            )
        return p
    proba = np.asarray(router.predict_proba(X), dtype=np.float64)
    if proba.ndim == 2:
        if proba.shape[1] != 2:
            raise ValueError(
                f"{caller}: predict_proba returned {proba.shape[1]} columns; only "
                "binary routers (2 columns) are supported."
            )
        proba = proba[:, 1]
    return proba


def as_unit_interval(score: NDArray[np.float64]) -> NDArray[np.float64]:
    """A monotone map of ``score`` into [0, 1] that keeps ties (dense ranks)."""
    from scipy.stats import rankdata

    r = rankdata(score, method="dense")
    return np.asarray((r - 1.0) / max(float(r.max()) - 1.0, 1.0))


class BaseRouter(ClassifierMixin, BaseEstimator):
    """Shared plumbing of the routers: target, threshold, predictions, ``route``.

    A subclass implements ``_fit(X, y01, sample_weight)`` on validated arrays
    (or overrides :meth:`fit`) and ``_proba1(X)``: the escalation probability
    on raw input ``X`` (:meth:`_check_X` checks that the router is fitted and
    validates ``X``). Every predict-like method derives from ``_proba1``. ``deployable = False`` marks a
    hindsight reference (the oracle); ``_poor_score = True`` tells scikit-learn's
    estimator checks that a one-feature heuristic makes no accuracy promise.
    """

    deployable: ClassVar[bool] = True
    _poor_score: ClassVar[bool] = True

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.poor_score = self._poor_score
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        groups: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
    ) -> Self:
        """Fit the router; ``groups`` is accepted for interface parity and ignored.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Binary label, ``classes_[1]`` = "escalation needed".
        groups : array-like of shape (n_samples,), default=None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        Xv, yv = validate_data(self, X, y, dtype=np.float64)
        y01 = self._fit_target(yv)
        self._fit(Xv, y01, _check_sample_weight(sample_weight, Xv))
        return self

    def _fit(
        self, X: NDArray[np.float64], y01: NDArray[np.float64], sw: NDArray[np.float64]
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_X(self, X: ArrayLike) -> NDArray[np.float64]:
        """``X`` validated against the fitted router, as float64."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, dtype=np.float64)

    def _fit_target(self, y: ArrayLike) -> NDArray[np.float64]:
        return encode_binary_target(self, y)

    def _set_threshold(self) -> None:
        self.threshold_ = cost_threshold(self)

    def _proba1(self, X: Any) -> NDArray[np.float64]:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Probabilities of both classes; column 1 is "needs escalation".

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, 2)
        """
        p = self._proba1(X)
        out = np.empty((p.shape[0], 2))
        out[:, 1] = p
        np.subtract(1.0, p, out=out[:, 0])
        return out

    def risk_score(self, X: ArrayLike) -> NDArray[np.float64]:
        """Ranking score, higher = riskier (here the escalation probability)."""
        return self._proba1(X)

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Log-odds of the escalation probability.

        Positive where :meth:`predict_proba` gives more than 0.5 to
        ``classes_[1]``.
        """
        p = np.clip(self._proba1(X), PROB_EPS, 1.0 - PROB_EPS)
        return np.asarray(logit(p), dtype=np.float64)

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most likely class (probability threshold 0.5, as every classifier).

        For the cost-aware escalation decision use :meth:`route`.
        """
        p = self._proba1(X)
        return np.asarray(self.classes_[(p > 0.5).astype(np.intp)])

    def route(self, X: ArrayLike, threshold: float | None = None) -> NDArray[np.bool_]:
        """Escalation decision: ``True`` where the step should go to the LLM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        threshold : float, default=None
            Overrides ``threshold_`` (the Bayes threshold unless ``threshold``
            was set at construction) for this call.

        Returns
        -------
        ndarray of bool of shape (n_samples,)
            ``predict_proba(X)[:, 1] >= threshold``.
        """
        check_is_fitted(self)
        tau = self.threshold_ if threshold is None else float(threshold)
        if not 0.0 <= tau <= 1.0:
            raise ValueError(
                f"threshold must be a probability in [0, 1]; got {threshold!r}."
            )
        return self._proba1(X) >= tau
