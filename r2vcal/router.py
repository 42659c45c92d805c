"""``CVaRBrierRouter``: a calibrated, seed-robust escalation router.

The router is a binary probabilistic classifier of "this step needs escalation"
trained on the objective of DESIGN §3::

    L(theta) = weighted mean Brier
               + cvar_weight * CVaR_tail(per-group mean Brier)
               + alpha * ||W||^2

Two backends share that objective:

* ``hidden_layer_sizes=()`` (default): a linear-logistic score optimised by
  scipy's L-BFGS on the smoothed Rockafellar-Uryasev form of the CVaR;
* non-empty ``hidden_layer_sizes``: a ReLU MLP trained with torch (AdamW, cosine
  learning rate, minibatches that contain every group). Torch is imported inside
  ``fit`` only; the weights are copied to numpy, so prediction and persistence
  never import torch.

A post-hoc calibrator (temperature or isotonic) is fitted on cross-fitted
(out-of-fold) scores, chosen to minimise the same objective, and kept only when
a nested cross-validation shows that it lowers that objective on held-out rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import brentq, minimize, minimize_scalar
from scipy.special import expit, logit
from sklearn.base import _fit_context, clone
from sklearn.isotonic import IsotonicRegression
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    validate_data,
)

from r2vcal._base import BaseRouter

# defined here first: still importable from r2vcal.router
from r2vcal._base import cost_threshold as cost_threshold
from r2vcal._base import encode_binary_target as encode_binary_target
from r2vcal._objective import exact_cvar, group_brier, smoothed_cvar

__all__ = [
    "ALPHA_GRID",
    "PAPER_HIDDEN_LAYER_SIZES",
    "CVaRBrierRouter",
    "NoGroupsWarning",
]

#: L2 penalties tried by ``alpha="auto"`` (linear backend).
ALPHA_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)

#: Two hidden layers of 96 units: about 10.9k parameters on 15 features, the
#: size of the router in the R2V paper.
PAPER_HIDDEN_LAYER_SIZES: tuple[int, ...] = (96, 96)

# Cross-fitted calibration needs enough (weighted) rows of both classes; below this
# the calibrator is skipped with a warning rather than fitted on noise.
_MIN_CALIBRATION_WEIGHT = 30.0
_MIN_CLASS_WEIGHT = 3.0
# A calibrator is kept only if it lowers the cross-validated objective by this much.
_MIN_CALIBRATION_GAIN = 1e-6


class NoGroupsWarning(UserWarning):
    """``cvar_weight > 0`` but ``fit`` received no ``groups``."""


def weighted_standardisation(
    X: NDArray[np.float64], w: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Weighted column means and standard deviations (constant columns: 1)."""
    mean = (w @ X) / w.sum()
    var = np.einsum("i,ij,ij->j", w, X, X) / w.sum() - mean**2
    scale = np.sqrt(np.maximum(var, 0.0))
    scale[scale < 1e-12] = 1.0
    return mean, scale


class CVaRBrierRouter(BaseRouter):
    """Escalation router trained with a Brier score plus a CVaR penalty over groups.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=()
        ``()`` is the linear-logistic backend (scipy L-BFGS). A non-empty tuple
        trains a ReLU MLP with torch; :data:`PAPER_HIDDEN_LAYER_SIZES` ``(96, 96)``
        gives about 10k parameters on 15 features, as in the R2V paper.
    cvar_weight : float, default=1.0
        Weight ``lambda`` of the CVaR of per-group Brier scores. ``0`` is plain
        Brier. In constrained mode (``cvar_bound`` set) it is the initial
        multiplier of the dual ascent.
    cvar_tail : float in (0, 1], default=0.2
        Tail fraction ``alpha`` of the CVaR: ``1/G`` is the worst group, ``1`` the
        mean over groups.
    cvar_bound : float or None, default=None
        If set, train the constrained form ``min Brier s.t. CVaR <= cvar_bound``:
        the linear backend bisects on the multiplier for the smallest one whose
        solution meets the bound (so it ends at the bound, not far inside it);
        the MLP backend uses dual ascent.
    alpha : float or "auto", default="auto"
        L2 penalty on the weights (not the intercepts), on standardised features.
        ``"auto"`` (linear backend) picks it from :data:`ALPHA_GRID` by the
        cross-fitted objective on the same folds as the calibrator: small
        tables (a few hundred steps, a dozen positives) need far more
        shrinkage than large ones. The MLP backend reads ``"auto"`` as
        ``1e-4``. The value used is ``alpha_``.
    calibration : {"temperature", "isotonic"} or None, default="temperature"
        Post-hoc calibrator, fitted on cross-fitted scores: the rows are split in
        ``calibration_cv`` folds at random, stratified by group and label, and
        each row is scored by a router fitted without its fold. The temperature
        minimises the router's own objective (Brier + ``cvar_weight`` x CVaR over
        groups) on those scores and keeps the ranking; isotonic regression
        (pooled Brier) is more flexible. The calibrator is applied to the router
        fitted on all rows **only if** a nested cross-validation shows it lowers
        the objective on held-out rows; otherwise the raw map is kept and
        ``calibration_`` is ``None`` (see ``calibration_objective_``). ``None``
        skips all of this.
    calibration_cv : int >= 2, default=5
        Number of cross-fitting folds for the calibrator (the router is fitted
        ``calibration_cv + 1`` times).
    cost_slm, cost_llm : float, default=1.0, 10.0
        Cost of one step on the SLM and on the LLM.
    miss_cost : float, default=20.0
        Penalty ``kappa`` for a step that needed escalation but stayed on the SLM.
    threshold : float or None, default=None
        Escalation threshold used by :meth:`route`. ``None`` uses the Bayes rule
        ``(cost_llm - cost_slm) / miss_cost`` (DESIGN §1).
    max_iter : int, default=500
        Maximum L-BFGS iterations (linear backend).
    tol : float, default=1e-9
        L-BFGS gradient tolerance (linear backend).
    cvar_sharpness : float, default=500.0
        Sharpness ``s`` of the softplus replacing ``(.)_+`` in the smoothed CVaR
        used for optimisation (linear backend). The reported ``cvar_`` is exact.
    n_epochs : int, default=20
        MLP epochs.
    batch_size : int, default=4096
        MLP minibatch size; every minibatch contains rows of every group.
    learning_rate : float, default=1e-2
        Peak AdamW learning rate (cosine schedule) for the MLP.
    weight_decay : float, default=0.0
        AdamW decoupled weight decay for the MLP (the objective's L2 is ``alpha``).
    dual_step : float, default=100.0
        Step size of the dual ascent on the multiplier in constrained mode
        (MLP backend).
    max_dual_iter : int, default=20
        Bisection rounds on the multiplier (linear backend) or dual-ascent
        rounds (MLP backend) in constrained mode.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration folds and the MLP initialisation and batching.
    verbose : int, default=0
        Print progress when positive.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        Class labels; ``classes_[1]`` is "needs escalation".
    coef_ : ndarray of shape (1, n_features)
        Linear backend: weights on the original feature scale.
    intercept_ : ndarray of shape (1,)
        Linear backend: intercept.
    coefs_, intercepts_ : list of ndarray
        MLP backend: layer weights and biases (numpy, original feature scale).
    alpha_ : float
        The L2 penalty used (``alpha``, or the one ``"auto"`` chose).
    alpha_objective_ : ndarray of shape (len(ALPHA_GRID),)
        With ``alpha="auto"``: the cross-fitted objective of each grid value.
    calibration_ : {"temperature", "isotonic"} or None
        The calibrator in use: ``calibration``, or ``None`` when it was skipped
        (too few rows) or did not lower the held-out objective.
    calibration_objective_ : ndarray of shape (2,)
        Cross-validated objective (Brier + weight x CVaR over groups) of the
        out-of-fold scores without and with the calibrator; ``[nan, nan]`` when
        calibration was not attempted.
    temperature_ : float
        Temperature of the calibrator (``1.0`` when not used).
    isotonic_x_, isotonic_y_ : ndarray
        Isotonic calibrator knots (only when ``calibration_ == "isotonic"``).
    threshold_ : float
        Threshold used by :meth:`route`.
    group_labels_ : ndarray
        Group labels seen in ``fit`` (a single group ``0`` when none were given).
    group_losses_ : ndarray of shape (n_groups,)
        Weighted mean Brier score per group of the fitted (calibrated) router on
        the data passed to ``fit``.
    cvar_ : float
        Exact sort-based CVaR of ``group_losses_`` at ``cvar_tail``.
    objective_ : float
        Exact training objective (mean Brier + weight * exact CVaR + L2) at the
        solution, on all rows, before calibration.
    dual_weight_ : float
        Final CVaR multiplier (``cvar_weight`` unless ``cvar_bound`` is set).
    n_iter_ : int
        L-BFGS iterations (linear) or optimiser steps (MLP).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.

    Notes
    -----
    Inside scikit-learn meta-estimators (``GridSearchCV``, ``cross_validate``,
    ``Pipeline``) the ``groups`` reach ``fit`` only with metadata routing::

        sklearn.set_config(enable_metadata_routing=True)
        router = CVaRBrierRouter().set_fit_request(groups=True)

    Without it scikit-learn drops them silently and the CVaR term sees one group;
    the router warns (:class:`NoGroupsWarning`) when that happens.

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal import CVaRBrierRouter
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 3))
    >>> y = (X[:, 0] + rng.normal(size=600) > 0).astype(int)
    >>> seeds = rng.integers(0, 5, size=600)
    >>> router = CVaRBrierRouter(random_state=0).fit(X, y, groups=seeds)
    >>> router.predict_proba(X[:2]).shape
    (2, 2)
    >>> bool(router.cvar_ >= router.group_losses_.mean())
    True
    """

    _poor_score = False

    _parameter_constraints: dict[str, list[Any]] = {
        "hidden_layer_sizes": ["array-like"],
        "cvar_weight": [Interval(Real, 0, None, closed="left")],
        "cvar_tail": [Interval(Real, 0, 1, closed="right")],
        "cvar_bound": [Interval(Real, 0, None, closed="left"), None],
        "alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "calibration": [StrOptions({"temperature", "isotonic"}), None],
        "calibration_cv": [Interval(Integral, 2, None, closed="left")],
        "cost_slm": [Interval(Real, 0, None, closed="left")],
        "cost_llm": [Interval(Real, 0, None, closed="left")],
        "miss_cost": [Interval(Real, 0, None, closed="neither")],
        "threshold": [Interval(Real, 0, 1, closed="both"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "cvar_sharpness": [Interval(Real, 0, None, closed="neither")],
        "n_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "dual_step": [Interval(Real, 0, None, closed="neither")],
        "max_dual_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] = (),
        cvar_weight: float = 1.0,
        cvar_tail: float = 0.2,
        cvar_bound: float | None = None,
        alpha: float | str = "auto",
        calibration: str | None = "temperature",
        calibration_cv: int = 5,
        cost_slm: float = 1.0,
        cost_llm: float = 10.0,
        miss_cost: float = 20.0,
        threshold: float | None = None,
        max_iter: int = 500,
        tol: float = 1e-9,
        cvar_sharpness: float = 500.0,
        n_epochs: int = 20,
        batch_size: int = 4096,
        learning_rate: float = 1e-2,
        weight_decay: float = 0.0,
        dual_step: float = 100.0,
        max_dual_iter: int = 20,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.cvar_weight = cvar_weight
        self.cvar_tail = cvar_tail
        self.cvar_bound = cvar_bound
        self.alpha = alpha
        self.calibration = calibration
        self.calibration_cv = calibration_cv
        self.cost_slm = cost_slm
        self.cost_llm = cost_llm
        self.miss_cost = miss_cost
        self.threshold = threshold
        self.max_iter = max_iter
        self.tol = tol
        self.cvar_sharpness = cvar_sharpness
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.dual_step = dual_step
        self.max_dual_iter = max_dual_iter
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ tags
    # ------------------------------------------------------------ validation
    def _hidden_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, (str, bytes)):
            raise ValueError(
                "The 'hidden_layer_sizes' parameter of CVaRBrierRouter must be a "
                f"tuple of positive ints (e.g. (96, 96)). Got {sizes!r} instead."
            )
        try:
            items: tuple[Any, ...] = tuple(sizes)
        except TypeError:
            items = (sizes,)
        bad = [
            s
            for s in items
            if isinstance(s, (bool, np.bool_))
            or not isinstance(s, (Integral, np.integer))
            or int(s) <= 0
        ]
        if bad:
            raise ValueError(
                "The 'hidden_layer_sizes' parameter of CVaRBrierRouter must be a "
                f"tuple of positive ints (e.g. (96, 96)). Got {sizes!r} instead "
                f"(invalid entries: {bad!r})."
            )
        return tuple(int(s) for s in items)

    def _validate_groups(
        self, groups: ArrayLike | None, n_samples: int
    ) -> NDArray[np.intp]:
        if groups is None:
            if self.cvar_weight > 0 or self.cvar_bound is not None:
                warnings.warn(
                    "CVaRBrierRouter has a CVaR term (cvar_weight="
                    f"{self.cvar_weight}) but fit() received no groups, so every "
                    "row counts as one group and the CVaR is just the Brier score. "
                    "Pass groups=seeds; inside GridSearchCV, cross_validate or "
                    "Pipeline enable routing with "
                    "sklearn.set_config(enable_metadata_routing=True) and "
                    "router.set_fit_request(groups=True), or scikit-learn drops "
                    "the groups silently.",
                    NoGroupsWarning,
                    stacklevel=3,
                )
            self.group_labels_ = np.array([0])
            return np.zeros(n_samples, dtype=np.intp)
        g = np.asarray(groups)
        if g.ndim != 1 or g.shape[0] != n_samples:
            raise ValueError(
                "groups must be a 1-d array with one entry per row of X "
                f"({n_samples} rows); got shape {g.shape}."
            )
        if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
            raise ValueError("groups contains NaN or infinite values.")
        labels, index = np.unique(g, return_inverse=True)
        self.group_labels_ = labels
        return index.astype(np.intp)

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        groups: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
    ) -> CVaRBrierRouter:
        """Fit the router.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Step features (e.g. from :class:`r2vcal.features.CandidateFeaturizer`).
        y : array-like of shape (n_samples,)
            Binary label, the larger class meaning "escalation needed".
        groups : array-like of shape (n_samples,), default=None
            Perturbation seed (or any group) of each row: the CVaR is taken over
            the per-group Brier scores.
        sample_weight : array-like of shape (n_samples,), default=None
            Row weights.

        Returns
        -------
        self : CVaRBrierRouter
        """
        hidden = self._hidden_sizes()
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], y_numeric=False
        )
        X = np.asarray(X, dtype=np.float64)
        y01 = self._fit_target(y)
        n = X.shape[0]
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        gidx = self._validate_groups(groups, n)
        present = np.unique(y01[sw > 0])
        if present.size < 2:
            raise ValueError(
                "Only one class has a non-zero sample_weight; the router needs "
                "rows of both classes to learn when to escalate."
            )

        rng = np.random.RandomState(
            self.random_state
            if not isinstance(self.random_state, np.random.RandomState)
            else self.random_state.randint(2**31 - 1)
        )
        n_groups = self.group_labels_.shape[0]
        rows = _Rows(y01, sw, gidx, n_groups)
        auto = self.alpha == "auto" and not hidden
        self.dual_weight_ = float(self.cvar_weight)  # the objective's weight until fit
        folds = self._calibration_folds(y01, sw, gidx, rng, auto)
        fold_seeds = rng.randint(0, 2**31 - 1, size=int(self.calibration_cv))
        self.alpha_ = 1e-4 if self.alpha == "auto" else float(self.alpha)
        z_oof, objectives = None, []
        if folds is not None:
            grid = ALPHA_GRID if auto else (self.alpha_,)
            scores = self._out_of_fold_scores(X, rows, hidden, folds, fold_seeds, grid)
            for a, z in zip(grid, scores):
                objectives.append(self._objective(expit(z), rows))
                if objectives[-1] <= min(objectives):
                    z_oof, self.alpha_ = z, float(a)
        self.alpha_objective_ = np.asarray(objectives if auto else [], dtype=float)
        self._fit_scorer(_train_data(X, rows), hidden, rng)

        self.calibration_: str | None = None
        self.temperature_ = 1.0
        self.calibration_objective_ = np.full(2, np.nan)
        if z_oof is not None and folds is not None and self.calibration is not None:
            self._choose_calibrator(z_oof, rows, folds)

        self._set_threshold()
        p = self._calibrated_proba(X)
        self.group_losses_, _ = group_brier(p, y01, sw, gidx, n_groups)
        self.cvar_ = exact_cvar(self.group_losses_, self.cvar_tail)
        return self

    def _fit_scorer(
        self, data: _TrainData, hidden: tuple[int, ...], rng: np.random.RandomState
    ) -> None:
        """Fit the uncalibrated score (linear or MLP) on the given rows."""
        if hidden:
            self._fit_mlp(data, hidden, rng)
        else:
            self._fit_linear(data)

    def _calibration_folds(
        self,
        y01: NDArray[np.float64],
        sw: NDArray[np.float64],
        gidx: NDArray[np.intp],
        rng: np.random.RandomState,
        auto_alpha: bool = False,
    ) -> NDArray[np.intp] | None:
        """Fold of each row: random, stratified by (group, label); or ``None``.

        Within each (group, label) stratum the rows are shuffled and dealt to the
        folds in turn, starting at a random fold, so every fold holds about the
        same share of every group and of both labels (also for strata smaller
        than the number of folds). Rows are assigned by their position, never by
        their content: copies of one feature vector (all K candidates agree, say)
        spread over the folds with both of their labels.
        """
        if self.calibration is None and not auto_alpha:
            return None
        k = int(self.calibration_cv)
        pos, neg = sw[y01 == 1].sum(), sw[y01 == 0].sum()
        n_pos = int(np.count_nonzero((y01 == 1) & (sw > 0)))
        n_neg = int(np.count_nonzero((y01 == 0) & (sw > 0)))
        if (
            sw.sum() < _MIN_CALIBRATION_WEIGHT
            or min(pos, neg) < _MIN_CLASS_WEIGHT
            or min(n_pos, n_neg) < k
        ):
            what = (
                f"calibration={self.calibration!r} skipped"
                if self.calibration is not None
                else "alpha='auto' falls back to 1e-4"
            )
            if self.calibration is not None and auto_alpha:
                what += " and alpha='auto' falls back to 1e-4"
            warnings.warn(
                f"{what}: cross-fitting with "
                f"calibration_cv={k} folds needs total weight >= "
                f"{_MIN_CALIBRATION_WEIGHT:.0f} and at least {k} rows (weight >= "
                f"{_MIN_CLASS_WEIGHT:.0f}) of each class; got weight {sw.sum():.1f} "
                f"with {n_pos} positive and {n_neg} negative rows. The router is "
                "left uncalibrated.",
                UserWarning,
                stacklevel=4,
            )
            return None
        folds = np.empty(y01.shape[0], dtype=np.intp)
        strata = gidx.astype(np.int64) * 2 + y01.astype(np.int64)
        offset = 0
        for s in np.unique(strata):
            rows = np.flatnonzero(strata == s)
            rows = rows[rng.permutation(rows.shape[0])]
            folds[rows] = (np.arange(rows.shape[0]) + offset) % k
            offset += rows.shape[0]  # small strata fill the folds in turn
        # every fold's complement must keep both classes (it trains a router)
        for f in range(k):
            rest = folds != f
            if not (
                sw[rest & (y01 == 1)].sum() > 0 and sw[rest & (y01 == 0)].sum() > 0
            ):
                return None
        return folds

    def _out_of_fold_scores(
        self,
        X: NDArray[np.float64],
        rows: _Rows,
        hidden: tuple[int, ...],
        folds: NDArray[np.intp],
        seeds: NDArray[np.int64],
        alphas: Sequence[float],
    ) -> list[NDArray[np.float64]]:
        """Per L2 penalty in ``alphas``, the raw score of each row from a router
        fitted on the other folds. A fold's training rows are copied and
        standardised once for all penalties. In constrained mode the fold
        routers use the penalised form with ``cvar_weight``: a bisection per
        fold would cost 20 solves each."""
        scores = [np.empty(X.shape[0]) for _ in alphas]
        for f, seed in enumerate(seeds):
            test = folds == f
            train = ~test
            data = _train_data(X[train], rows.take(train))
            X_test = X[test]
            for z, alpha in zip(scores, alphas):
                sub = clone(self).set_params(verbose=0, alpha=alpha, cvar_bound=None)
                sub.alpha_ = float(alpha)
                sub._fit_scorer(data, hidden, np.random.RandomState(int(seed)))
                z[test] = sub._raw_scores(X_test)
        return scores

    def _objective(self, p: NDArray[np.float64], rows: _Rows) -> float:
        """Weighted Brier + weight x exact CVaR of per-group Brier (no L2)."""
        brier = float(np.dot(rows.w, (p - rows.y) ** 2) / rows.w.sum())
        lam = float(self.dual_weight_)
        if lam <= 0:
            return brier
        losses, gw = group_brier(p, rows.y, rows.w, rows.gidx, rows.n_groups)
        return brier + lam * exact_cvar(losses[gw > 0], float(self.cvar_tail))

    def _choose_calibrator(
        self, z: NDArray[np.float64], rows: _Rows, folds: NDArray[np.intp]
    ) -> None:
        """Fit the calibrator on out-of-fold scores; keep it only if it helps.

        The calibrator's own held-out effect is estimated by a nested
        cross-validation over the same folds: each fold's scores are calibrated
        by a calibrator fitted on the other folds' scores. The objective of those
        probabilities is compared with that of the raw out-of-fold probabilities.
        """

        def fit(mask: NDArray[np.bool_]) -> Any:
            return _fit_calibrator(
                str(self.calibration), z[mask], rows.take(mask), self
            )

        p_cv = np.empty_like(z)
        for f in range(int(self.calibration_cv)):
            test = folds == f
            p_cv[test] = fit(~test)(z[test])
        raw = self._objective(expit(z), rows)
        calibrated = self._objective(p_cv, rows)
        self.calibration_objective_ = np.array([raw, calibrated])
        if calibrated < raw - _MIN_CALIBRATION_GAIN:
            cal = fit(np.ones(z.shape[0], dtype=bool))
            self.calibration_ = self.calibration
            if self.calibration == "temperature":
                self.temperature_ = float(cal.temperature)
            else:
                self.isotonic_x_ = cal.x
                self.isotonic_y_ = cal.y
        elif self.verbose:
            print(
                f"[calibration] {self.calibration} not applied: cross-validated "
                f"objective {calibrated:.5f} vs {raw:.5f} uncalibrated"
            )

    # -------------------------------------------------------- linear backend
    def _fit_linear(self, data: _TrainData) -> None:
        """L-BFGS on standardised weights without copying ``X``.

        With ``theta = (v, b)`` on standardised features the score is
        ``X @ (v / scale) + b - mean @ (v / scale)``; the gradient in ``v`` is
        ``(X.T @ g - mean * g.sum()) / scale``.
        """
        d = data.X.shape[1]
        mean, scale = data.mean, data.scale
        tail = float(self.cvar_tail)
        alpha = float(self.alpha_)
        sharp = float(self.cvar_sharpness)

        def fun(theta: NDArray[np.float64], lam: float) -> tuple[float, Any]:
            return linear_objective(theta, data, lam, tail, alpha, sharp)

        theta = data.start.copy()  # one least-squares start per split, every penalty
        lam = float(self.cvar_weight)
        total_iter = 0

        def solve(theta0: NDArray[np.float64], lam: float) -> Any:
            return minimize(
                fun,
                theta0,
                args=(lam,),
                jac=True,
                method="L-BFGS-B",
                options={
                    "maxiter": int(self.max_iter),
                    "gtol": float(self.tol),
                    "ftol": 64 * np.finfo(float).eps,
                    "maxcor": 20,
                },
            )

        res = solve(theta, lam)
        total_iter += int(res.nit)
        theta = res.x
        if self.cvar_bound is not None:
            theta, lam, n_dual = self._dual_ascent(theta, lam, solve, data, tail)
            total_iter += n_dual
        if self.verbose:
            print(f"[linear] L-BFGS: {res.message} after {total_iter} iterations")

        v, b = theta[:d], theta[d]
        u = v / scale
        self.coef_ = u.reshape(1, -1)
        self.intercept_ = np.array([b - mean @ u])
        self.n_iter_ = max(total_iter, 1)
        self.dual_weight_ = lam
        self.objective_ = linear_objective(theta, data, lam, tail, alpha, None)[0]

    @staticmethod
    def _linear_start(data: _TrainData) -> NDArray[np.float64]:
        """Starting point: the weighted least-squares (linear probability) fit.

        Its slopes, divided by ``p(1 - p)`` at the base rate, approximate the
        logistic ones near the mean; L-BFGS then needs a few iterations only.
        """
        X, y, w = data.X, data.y, data.w
        d = X.shape[1]
        y_bar = float(np.clip(np.dot(w, y) / data.wsum, 1e-6, 1 - 1e-6))
        theta = np.zeros(d + 1)
        theta[d] = logit(y_bar)
        # standardised Gram matrix from the raw one: one pass over X
        Xw = X.T @ (X * w[:, None]) if not data.unit_weights else X.T @ X
        cov = Xw / data.wsum - np.outer(data.mean, data.mean)
        corr = cov / np.outer(data.scale, data.scale)
        xy = ((X.T @ (w * y)) / data.wsum - data.mean * y_bar) / data.scale
        try:
            beta = np.linalg.solve(corr + 1e-6 * np.eye(d), xy)
        except np.linalg.LinAlgError:
            return theta
        slope = np.clip(beta / (y_bar * (1.0 - y_bar)), -20.0, 20.0)
        if np.all(np.isfinite(slope)):
            theta[:d] = slope
        return theta

    def _dual_ascent(
        self,
        theta: NDArray[np.float64],
        lam: float,
        solve: Any,
        data: _TrainData,
        tail: float,
    ) -> tuple[NDArray[np.float64], float, int]:
        """Constrained mode: the smallest multiplier whose solution meets the bound.

        The CVaR of the solution falls as the multiplier grows, so the
        multiplier is bracketed (from ``cvar_weight``, doubling up or halving
        down) and then bisected for ``max_dual_iter`` rounds, each solve
        warm-started from the last. The solution returned is the feasible one
        with the smallest multiplier, i.e. the lowest Brier score that meets
        ``CVaR <= cvar_bound``: it ends at the bound, not far inside it. When
        no multiplier up to ``2**30`` is feasible, the one with the lowest CVaR
        is returned.
        """
        bound = float(self.cvar_bound)  # type: ignore[arg-type]
        n_iter = 0

        def cvar_brier(th: NDArray[np.float64]) -> tuple[float, float]:
            brier = linear_objective(th, data, 0.0, tail, 0.0, None)[0]
            cv = linear_objective(th, data, 1.0, tail, 0.0, None)[0] - brier
            return cv, brier

        def at(new_lam: float, th0: NDArray[np.float64]) -> NDArray[np.float64]:
            nonlocal n_iter
            res = solve(th0, new_lam)
            n_iter += int(res.nit)
            return np.asarray(res.x)

        cv, _ = cvar_brier(theta)
        if self.verbose:
            print(f"[bound] lambda={lam:.4g} cvar={cv:.5f} bound={bound:.5f}")
        if lam > 0 and cv <= bound:  # feasible: look for a smaller multiplier
            lo, hi, hi_theta = 0.0, lam, theta
            zero = at(0.0, theta)
            if cvar_brier(zero)[0] <= bound:
                return zero, 0.0, n_iter
        elif lam == 0 and cv <= bound:
            return theta, 0.0, n_iter
        else:  # infeasible: double the multiplier until the bound is met
            lo, hi, hi_theta = lam, max(lam, 1.0), theta
            best = (cv, theta, lam)
            while True:
                hi *= 2.0
                hi_theta = at(hi, hi_theta)
                cv, _ = cvar_brier(hi_theta)
                if cv < best[0]:
                    best = (cv, hi_theta, hi)
                if self.verbose:
                    print(f"[bound] lambda={hi:.4g} cvar={cv:.5f}")
                if cv <= bound:
                    break
                lo = hi
                if hi >= 2.0**30:
                    return best[1], best[2], n_iter
        for _ in range(int(self.max_dual_iter)):
            mid = 0.5 * (lo + hi)
            mid_theta = at(mid, hi_theta)
            cv, brier = cvar_brier(mid_theta)
            if self.verbose:
                print(f"[bound] lambda={mid:.4g} cvar={cv:.5f} brier={brier:.5f}")
            if cv <= bound:
                hi, hi_theta = mid, mid_theta
            else:
                lo = mid
            if hi - lo <= 1e-4 * max(hi, 1e-8):
                break
        return hi_theta, hi, n_iter

    # ----------------------------------------------------------- MLP backend
    def _fit_mlp(
        self, data: _TrainData, hidden: tuple[int, ...], rng: np.random.RandomState
    ) -> None:
        from r2vcal._torch_mlp import train_mlp  # torch behind a door

        mean, scale = data.mean, data.scale
        result = train_mlp(
            (data.X - mean) / scale,
            data.y,
            data.w,
            data.gidx,
            data.n_groups,
            hidden=hidden,
            cvar_weight=float(self.cvar_weight),
            cvar_tail=float(self.cvar_tail),
            cvar_bound=None if self.cvar_bound is None else float(self.cvar_bound),
            alpha=float(self.alpha_),
            n_epochs=int(self.n_epochs),
            batch_size=int(self.batch_size),
            learning_rate=float(self.learning_rate),
            weight_decay=float(self.weight_decay),
            dual_step=float(self.dual_step),
            seed=int(rng.randint(0, 2**31 - 1)),
            verbose=int(self.verbose),
        )
        coefs, intercepts = result.coefs, result.intercepts
        # fold the standardisation into the first layer: prediction needs no scaler
        w0 = coefs[0] / scale[:, None]
        intercepts[0] = intercepts[0] - mean @ w0
        coefs[0] = w0
        self.coefs_ = coefs
        self.intercepts_ = intercepts
        self.n_iter_ = result.n_steps
        self.dual_weight_ = result.dual_weight
        self.objective_ = result.objective
        self.loss_curve_ = np.asarray(result.loss_curve)

    # ------------------------------------------------------------ prediction
    def _raw_scores(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        if hasattr(self, "coefs_"):
            h = X
            last = len(self.coefs_) - 1
            for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
                h = h @ W
                h += b
                if i < last:
                    np.maximum(h, 0.0, out=h)
            return np.ascontiguousarray(h[:, 0], dtype=np.float64)
        z = X @ self.coef_[0]
        z += self.intercept_[0]
        return np.asarray(z, dtype=np.float64)

    def _calibrated_proba(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Escalation probability on validated features."""
        z = self._raw_scores(X)
        if getattr(self, "calibration_", None) == "isotonic":
            return np.interp(expit(z), self.isotonic_x_, self.isotonic_y_)
        if self.temperature_ != 1.0:
            z *= 1.0 / self.temperature_
        return np.asarray(expit(z, out=z), dtype=np.float64)

    def _proba1(self, X: ArrayLike) -> NDArray[np.float64]:
        return self._calibrated_proba(self._check_X(X))

    def risk_score(self, X: ArrayLike) -> NDArray[np.float64]:
        """Uncalibrated score, higher = riskier: the ranking used for frontiers.

        Every calibrator is monotone, so this orders steps as
        :meth:`predict_proba` does, without the ties an isotonic map creates.
        """
        return self._raw_scores(self._check_X(X))


@dataclass
class _Calibrator:
    """A fitted calibrator: a temperature or isotonic knots ``(x, y)``."""

    temperature: float = 1.0
    x: NDArray[np.float64] | None = None
    y: NDArray[np.float64] | None = None

    def __call__(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.x is not None and self.y is not None:
            return np.asarray(np.interp(expit(z), self.x, self.y))
        return np.asarray(expit(z / self.temperature))


def _fit_calibrator(
    kind: str, z: NDArray[np.float64], rows: _Rows, router: CVaRBrierRouter
) -> _Calibrator:
    """Fit ``kind`` ("temperature" or "isotonic") to scores ``z``.

    The temperature minimises the router's objective (weighted Brier + weight x
    CVaR over groups) of ``sigmoid(z / T)``, a bounded 1-d search over
    ``log T`` in [-7, 7]. Isotonic regression minimises the pooled weighted
    Brier score of ``sigmoid(z)``.
    """
    if kind == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(expit(z), rows.y, sample_weight=rows.w)
        return _Calibrator(
            x=np.asarray(iso.X_thresholds_, dtype=np.float64),
            y=np.asarray(iso.y_thresholds_, dtype=np.float64),
        )

    def loss(log_t: float) -> float:
        return router._objective(expit(z * np.exp(-log_t)), rows)

    res = minimize_scalar(loss, bounds=(-7.0, 7.0), method="bounded")
    log_t = float(res.x) if loss(float(res.x)) < loss(0.0) else 0.0
    return _Calibrator(temperature=float(np.exp(log_t)))


@dataclass(frozen=True)
class _Rows:
    """The rows a fit step sees: 0/1 target, weights, group index, and the
    number of groups (of the whole fit, so that fold subsets keep every group)."""

    y: NDArray[np.float64]
    w: NDArray[np.float64]
    gidx: NDArray[np.intp]
    n_groups: int

    def take(self, mask: NDArray[np.bool_]) -> _Rows:
        """The rows where ``mask`` is True."""
        return _Rows(self.y[mask], self.w[mask], self.gidx[mask], self.n_groups)


@dataclass
class _TrainData:
    """Training split (features, 0/1 target, weights, group index), the
    standardisation constants, and quantities derived from them."""

    X: NDArray[np.float64]
    y: NDArray[np.float64]
    w: NDArray[np.float64]
    gidx: NDArray[np.intp]
    n_groups: int
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    wsum: float = field(init=False)
    group_weight: NDArray[np.float64] = field(init=False)
    unit_weights: bool = field(init=False)

    def __post_init__(self) -> None:
        self.wsum = float(self.w.sum())
        self.group_weight = np.bincount(
            self.gidx, weights=self.w, minlength=self.n_groups
        ).astype(np.float64)
        self.unit_weights = bool(np.all(self.w == 1.0))

    @cached_property
    def start(self) -> NDArray[np.float64]:
        """:meth:`CVaRBrierRouter._linear_start`, computed once per split."""
        return CVaRBrierRouter._linear_start(self)


def _train_data(X: NDArray[np.float64], rows: _Rows) -> _TrainData:
    """``X`` and ``rows`` with the weighted standardisation of ``X``."""
    mean, scale = weighted_standardisation(X, rows.w)
    return _TrainData(X, rows.y, rows.w, rows.gidx, rows.n_groups, mean, scale)


def linear_objective(
    theta: NDArray[np.float64],
    data: _TrainData,
    lam: float,
    tail: float,
    alpha: float,
    sharpness: float | None,
) -> tuple[float, NDArray[np.float64]]:
    """Objective of the linear backend and its gradient.

    ``theta = (v, b)`` are weights on standardised features and the intercept; the
    score ``X @ (v / scale) + b - mean @ (v / scale)`` is computed without copying
    ``X``. With ``sharpness=None`` the CVaR term is exact (the value reported) and
    the gradient is not computed (NaN); otherwise the CVaR is the smoothed
    Rockafellar-Uryasev form used by L-BFGS, whose ``eta`` is minimised exactly
    (envelope theorem).
    """
    X, y, w, gidx = data.X, data.y, data.w, data.gidx
    mean, scale, wsum, gw = data.mean, data.scale, data.wsum, data.group_weight
    d = X.shape[1]
    v, b = theta[:d], theta[d]
    u = v / scale
    p = X @ u
    p += b - mean @ u
    expit(p, out=p)
    r = p - y
    wr = r if data.unit_weights else w * r
    sq = wr * r
    value = float(sq.sum()) / wsum + alpha * float(v @ v)
    if lam > 0:
        num = np.bincount(gidx, weights=sq, minlength=data.n_groups)
        bg = np.divide(num, gw, out=np.zeros_like(num), where=gw > 0)
        mass = (gw > 0) / float(np.count_nonzero(gw > 0))
        if sharpness is None:
            return value + lam * exact_cvar(bg[gw > 0], tail), np.full_like(
                theta, np.nan
            )
        cv, d_b, _ = _smoothed_cvar_at_optimum(bg, mass, tail, sharpness)
        value += lam * cv
        per_group = np.divide(lam * d_b, gw, out=np.zeros_like(d_b), where=gw > 0)
        coef_row = (per_group + 1.0 / wsum)[gidx]
        coef_row *= wr
        wr = coef_row
    else:
        wr = wr / wsum
    # d value / d score = 2 w r coef p (1 - p)
    gz = p
    gz *= 1.0 - p
    gz *= wr
    gz *= 2.0
    gsum = float(gz.sum())
    grad = np.empty_like(theta)
    grad[:d] = (X.T @ gz - mean * gsum) / scale + 2.0 * alpha * v
    grad[d] = gsum
    return value, grad


def _smoothed_cvar_at_optimum(
    b: NDArray[np.float64], mass: NDArray[np.float64], tail: float, sharpness: float
) -> tuple[float, NDArray[np.float64], float]:
    """Smoothed RU CVaR with ``eta`` minimised exactly (a 1-d root find).

    By the envelope theorem the gradient in ``b`` at the inner optimum is the
    partial derivative, so the outer L-BFGS only sees the model parameters.
    """
    if tail >= 1.0:
        return float(np.dot(mass, b)), mass.copy(), float(np.dot(mass, b))
    live = mass > 0

    def slope(eta: float) -> float:
        return 1.0 - float(np.dot(mass, expit(sharpness * (b - eta)))) / tail

    lo = float(b[live].min()) - 60.0 / sharpness
    hi = float(b[live].max()) + 60.0 / sharpness
    if slope(lo) >= 0:  # tail covers all mass even at the sharp limit
        eta = lo
    else:
        eta = brentq(slope, lo, hi, xtol=1e-14, rtol=1e-12)
    return smoothed_cvar(b, mass, eta, tail, sharpness)
