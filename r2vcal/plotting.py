"""Displays for routers: reliability diagrams, reliability-cost frontiers, group bars.

scikit-learn's Display pattern (STYLE §5): compute with :mod:`r2vcal.metrics` /
:mod:`r2vcal.frontier`, then draw. Each display has ``from_estimator(...)``
(anything with ``predict_proba``), ``from_predictions(...)`` and
``plot(ax=None, ...)``; ``plot`` sets ``ax_``, ``figure_`` and ``line_`` and
returns the display. Several routers go on one axes by calling ``plot`` (or
``from_*``) again with ``ax=display.ax_``.

matplotlib is imported inside the plotting functions only (``import r2vcal``
never loads it), and nothing here changes ``rcParams`` or global style.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from r2vcal._base import positive_proba
from r2vcal._validation import (
    bin_edges,
    bin_index,
    check_choice,
    check_float,
    check_inputs,
    check_int,
    check_labels,
    group_codes,
)
from r2vcal.metrics import (
    bootstrap_ci,
    expected_calibration_error,
    reliability_curve,
)

__all__ = ["FrontierDisplay", "GroupDisplay", "ReliabilityDisplay"]

# companion histogram axes of reliability axes, and how many series an axes holds
_HIST_AXES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_N_SERIES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _estimator_name(estimator: Any, name: str | None) -> str:
    return type(estimator).__name__ if name is None else name


def _next_series(ax: Any) -> int:
    k = _N_SERIES.get(ax, 0)
    _N_SERIES[ax] = k + 1
    return k


# ---------------------------------------------------------------------------
# ReliabilityDisplay
# ---------------------------------------------------------------------------


def _reliability_band(
    y: NDArray[np.float64],
    p: NDArray[np.float64],
    w: NDArray[np.float64] | None,
    edges: NDArray[np.float64],
    uniform: bool,
    n_resamples: int,
    confidence_level: float,
    random_state: Any,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Percentile bootstrap band of the fraction of positives per (fixed) bin."""
    n_bins = edges.size - 1
    idx = bin_index(p, edges, uniform)
    w = np.ones_like(p) if w is None else w
    rng = np.random.default_rng(random_state)
    frac = np.full((n_resamples, n_bins), np.nan)
    n = p.size
    for b in range(n_resamples):
        pick = rng.integers(0, n, size=n)
        ib, wb = idx[pick], w[pick]
        cnt = np.bincount(ib, weights=wb, minlength=n_bins)
        pos = np.bincount(ib, weights=wb * y[pick], minlength=n_bins)
        nz = cnt > 0
        frac[b, nz] = pos[nz] / cnt[nz]
    alpha = 1.0 - confidence_level
    low = np.full(n_bins, np.nan)
    high = np.full(n_bins, np.nan)
    seen = np.isfinite(frac).any(axis=0)
    if seen.any():
        low[seen] = np.nanpercentile(frac[:, seen], 50.0 * alpha, axis=0)
        high[seen] = np.nanpercentile(frac[:, seen], 100.0 - 50.0 * alpha, axis=0)
    return low, high


class ReliabilityDisplay:
    """Reliability diagram with a counts histogram below and a bootstrap band.

    Create it with :meth:`from_predictions` or :meth:`from_estimator`; the
    constructor only stores precomputed arrays (see
    :func:`r2vcal.metrics.reliability_curve`).

    Parameters
    ----------
    prob_true, prob_pred, counts : ndarray of shape (n_bins,)
        Fraction of positives, mean probability and count per bin (NaN for
        empty bins).
    bin_edges : ndarray of shape (n_bins + 1,)
        Bin edges.
    band_low, band_high : ndarray of shape (n_bins,), default=None
        Bootstrap band of ``prob_true`` per bin.
    ece : float, default=None
        Expected calibration error, shown in the legend.
    name : str, default=None
        Legend label of the router.

    Attributes
    ----------
    ax_ : matplotlib Axes
        The reliability axes.
    hist_ax_ : matplotlib Axes or None
        The counts histogram axes below it.
    figure_ : matplotlib Figure
    line_ : matplotlib Line2D
        The reliability curve.
    band_ : matplotlib PolyCollection or None
        The bootstrap band.

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.plotting import ReliabilityDisplay
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=2000)
    >>> y = rng.uniform(size=2000) < p
    >>> disp = ReliabilityDisplay.from_predictions(y, p, name="router")
    >>> disp = ReliabilityDisplay.from_predictions(
    ...     y, p**2, name="entropy", ax=disp.ax_)  # second router, same axes
    """

    def __init__(
        self,
        prob_true: ArrayLike,
        prob_pred: ArrayLike,
        counts: ArrayLike,
        bin_edges: ArrayLike,
        *,
        band_low: ArrayLike | None = None,
        band_high: ArrayLike | None = None,
        ece: float | None = None,
        name: str | None = None,
    ) -> None:
        self.prob_true = np.asarray(prob_true, dtype=np.float64)
        self.prob_pred = np.asarray(prob_pred, dtype=np.float64)
        self.counts = np.asarray(counts, dtype=np.float64)
        self.bin_edges = np.asarray(bin_edges, dtype=np.float64)
        self.band_low = None if band_low is None else np.asarray(band_low, float)
        self.band_high = None if band_high is None else np.asarray(band_high, float)
        self.ece = ece
        self.name = name

    def plot(
        self,
        ax: Any = None,
        *,
        name: str | None = None,
        hist: bool = True,
        hist_ax: Any = None,
        ref_line: bool = True,
        band: bool = True,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Draw the curve (and band and histogram) on ``ax``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Reliability axes. ``None`` creates a figure with the reliability
            axes on top and the counts histogram below. An axes from an
            earlier display reuses that display's histogram axes.
        name : str, default=None
            Legend label; overrides the one given at construction.
        hist : bool, default=True
            Draw the per-bin counts (as a step outline) on the histogram axes.
        hist_ax : matplotlib Axes, default=None
            Histogram axes to use; by default the one paired with ``ax`` (made
            below ``ax`` when there is none yet).
        ref_line : bool, default=True
            Draw the diagonal "perfectly calibrated" line (once per axes).
        band : bool, default=True
            Fill the bootstrap band, when one was computed.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the curve.

        Returns
        -------
        ReliabilityDisplay
            ``self``, with ``ax_``, ``hist_ax_``, ``figure_``, ``line_`` and
            ``band_`` set.
        """
        import matplotlib.pyplot as plt

        name = self.name if name is None else name
        if ax is None:
            if hist:
                _, (ax, hist_ax) = plt.subplots(
                    2,
                    1,
                    sharex=True,
                    figsize=(5.0, 5.6),
                    gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08},
                    layout="constrained",
                )
                _HIST_AXES[ax] = hist_ax
            else:
                _, ax = plt.subplots(figsize=(5.0, 4.5), layout="constrained")
        elif hist and hist_ax is None:
            hist_ax = _HIST_AXES.get(ax)
            if hist_ax is None:
                from mpl_toolkits.axes_grid1 import make_axes_locatable

                hist_ax = make_axes_locatable(ax).append_axes(
                    "bottom", size="33%", pad=0.1, sharex=ax
                )
                _HIST_AXES[ax] = hist_ax
        if hist_ax is not None:
            _HIST_AXES[ax] = hist_ax
        first = _next_series(ax) == 0
        if ref_line and first:
            (self.ref_line_,) = ax.plot(
                [0, 1],
                [0, 1],
                ls="--",
                color="0.55",
                lw=1,
                label="Perfectly calibrated",
            )
        else:
            self.ref_line_ = None
        label = name or "Router"
        if self.ece is not None:
            label = f"{label} (ECE {self.ece:.3f})"
        line_kwargs = {"marker": "o", "ms": 4, "label": label, **kwargs}
        keep = self.counts > 0
        (self.line_,) = ax.plot(
            self.prob_pred[keep], self.prob_true[keep], **line_kwargs
        )
        color = self.line_.get_color()
        self.band_ = None
        if band and self.band_low is not None and self.band_high is not None:
            ok = keep & np.isfinite(self.band_low) & np.isfinite(self.band_high)
            self.band_ = ax.fill_between(
                self.prob_pred[ok],
                self.band_low[ok],
                self.band_high[ok],
                color=color,
                alpha=0.2,
                lw=0,
            )
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Observed frequency (escalation helped)")
        ax.legend(loc="upper left", fontsize="small", frameon=False)
        self.hist_ = None
        if hist and hist_ax is not None:
            self.hist_ = hist_ax.stairs(
                self.counts, self.bin_edges, color=color, lw=1.5
            )
            hist_ax.set_ylabel("Count")
            hist_ax.set_xlabel("Mean predicted probability")
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel("Mean predicted probability")
        self.ax_ = ax
        self.hist_ax_ = hist_ax if hist else None
        self.figure_ = ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        y_prob: ArrayLike,
        *,
        n_bins: int = 15,
        strategy: str = "uniform",
        sample_weight: ArrayLike | None = None,
        n_resamples: int = 200,
        confidence_level: float = 0.95,
        random_state: int | np.random.Generator | None = 0,
        name: str | None = None,
        ax: Any = None,
        hist: bool = True,
        ref_line: bool = True,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Compute the reliability curve and its bootstrap band, then plot.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
            Binary labels (1 = escalation helped).
        y_prob : array-like of shape (n_samples,)
            Router probabilities.
        n_bins : int, default=15
            Number of bins (see :func:`r2vcal.metrics.reliability_curve`).
        strategy : {"uniform", "quantile"}, default="uniform"
            Bin edges.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.
        n_resamples : int, default=200
            Bootstrap resamples for the band (rows resampled, bins fixed);
            ``0`` draws no band.
        confidence_level : float, default=0.95
            Coverage of the band.
        random_state : int or Generator, default=0
            Seed of the bootstrap.
        name : str, default=None
            Legend label.
        ax : matplotlib Axes, default=None
            Axes to draw on (see :meth:`plot`).
        hist : bool, default=True
            Draw the counts histogram.
        ref_line : bool, default=True
            Draw the diagonal.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot`.

        Returns
        -------
        ReliabilityDisplay
        """
        caller = "ReliabilityDisplay.from_predictions"
        n_bins = check_int(n_bins, "n_bins", caller)
        strategy = check_choice(
            strategy, "strategy", frozenset({"uniform", "quantile"}), caller
        )
        n_resamples = check_int(n_resamples, "n_resamples", caller, minimum=0)
        confidence_level = check_float(
            confidence_level, "confidence_level", caller, 0.0, 1.0, "neither"
        )
        y, p, w = check_inputs(y_true, y_prob, sample_weight, caller)
        curve = reliability_curve(
            y, p, n_bins=n_bins, strategy=strategy, sample_weight=w
        )
        low = high = None
        if n_resamples > 0:
            edges = bin_edges(p, w, n_bins, strategy)
            low, high = _reliability_band(
                y,
                p,
                w,
                edges,
                strategy == "uniform",
                n_resamples,
                confidence_level,
                random_state,
            )
        ece = expected_calibration_error(
            y, p, n_bins=n_bins, strategy=strategy, sample_weight=w
        )
        disp = cls(
            curve.prob_true,
            curve.prob_pred,
            curve.counts,
            curve.bin_edges,
            band_low=low,
            band_high=high,
            ece=ece,
            name=name,
        )
        return disp.plot(ax=ax, hist=hist, ref_line=ref_line, **kwargs)

    @classmethod
    def from_estimator(
        cls,
        estimator: Any,
        X: ArrayLike,
        y: ArrayLike,
        *,
        name: str | None = None,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Plot the reliability diagram of ``estimator.predict_proba(X)[:, 1]``.

        ``name`` defaults to the estimator's class name; other keyword
        arguments are those of :meth:`from_predictions`.

        Returns
        -------
        ReliabilityDisplay
        """
        proba = positive_proba(estimator, X, "ReliabilityDisplay.from_estimator")
        return cls.from_predictions(
            y, proba, name=_estimator_name(estimator, name), **kwargs
        )


# ---------------------------------------------------------------------------
# FrontierDisplay
# ---------------------------------------------------------------------------

_FRONTIER_COLUMNS = ("threshold", "escalation_rate", "success")


def _check_frontier(frame: Any, what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"FrontierDisplay: {what} must be a pandas DataFrame.")
    missing = [c for c in _FRONTIER_COLUMNS[1:] if c not in frame.columns]
    if missing:
        raise ValueError(
            f"FrontierDisplay: {what} lacks the column(s) {missing}; expected the "
            "output of r2vcal.frontier.reliability_cost_frontier / oracle_frontier "
            f"(columns {list(_FRONTIER_COLUMNS)}, ...)."
        )
    return frame


class FrontierDisplay:
    """Task success against escalation rate, with the oracle and chosen thresholds.

    Create it with :meth:`from_predictions` or :meth:`from_estimator`, or pass
    DataFrames from :func:`r2vcal.frontier.reliability_cost_frontier` (columns
    ``threshold``, ``escalation_rate``, ``success``, ...) and
    :func:`r2vcal.frontier.oracle_frontier`.

    Parameters
    ----------
    frontier : DataFrame
        The router's frontier, one row per threshold.
    oracle : DataFrame, default=None
        The hindsight oracle's frontier (``escalation_rate``, ``success``).
    thresholds : mapping of str to float, or sequence of float, default=None
        Thresholds to mark on the curve (e.g. ``{"Bayes": 0.19, "budget 10%":
        0.62}``); each marker sits at the frontier row with the nearest
        threshold.
    name : str, default=None
        Legend label of the router.

    Attributes
    ----------
    ax_, figure_ : matplotlib Axes and Figure
    line_ : matplotlib Line2D
        The router's frontier.
    oracle_line_ : matplotlib Line2D or None
    markers_ : list of matplotlib artists
        One scatter per marked threshold.

    Examples
    --------
    >>> import pandas as pd
    >>> from r2vcal.plotting import FrontierDisplay
    >>> frontier = pd.DataFrame({"threshold": [1.0, 0.5, 0.0],
    ...                          "escalation_rate": [0.0, 0.3, 1.0],
    ...                          "success": [0.6, 0.85, 0.9]})
    >>> disp = FrontierDisplay(frontier, thresholds={"Bayes": 0.5}).plot()
    >>> disp.ax_.get_xlabel()
    'Escalation rate (share of steps sent to the LLM)'
    """

    def __init__(
        self,
        frontier: pd.DataFrame,
        *,
        oracle: pd.DataFrame | None = None,
        thresholds: Mapping[str, float] | Sequence[float] | None = None,
        name: str | None = None,
    ) -> None:
        self.frontier = frontier
        self.oracle = oracle
        self.thresholds = thresholds
        self.name = name

    def plot(
        self,
        ax: Any = None,
        *,
        name: str | None = None,
        oracle: bool = True,
        thresholds: Mapping[str, float] | Sequence[float] | None = None,
        **kwargs: Any,
    ) -> FrontierDisplay:
        """Draw the frontier on ``ax``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            ``None`` creates a new figure.
        name : str, default=None
            Legend label; overrides the one given at construction.
        oracle : bool, default=True
            Draw the oracle frontier (once per axes), when one was given.
        thresholds : mapping or sequence, default=None
            Thresholds to mark; overrides the ones given at construction.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the router curve.

        Returns
        -------
        FrontierDisplay
            ``self`` with ``ax_``, ``figure_``, ``line_``, ``oracle_line_`` and
            ``markers_`` set.
        """
        import matplotlib.pyplot as plt

        frontier = _check_frontier(self.frontier, "frontier")
        name = self.name if name is None else name
        thresholds = self.thresholds if thresholds is None else thresholds
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
        first = _next_series(ax) == 0
        self.oracle_line_ = None
        if oracle and self.oracle is not None and first:
            orc = _check_frontier(self.oracle, "oracle").sort_values("escalation_rate")
            (self.oracle_line_,) = ax.plot(
                orc["escalation_rate"],
                orc["success"],
                ls="--",
                color="0.35",
                lw=1.2,
                label="Oracle (hindsight)",
            )
        fr = frontier.sort_values("escalation_rate", kind="stable")
        line_kwargs = {"label": name or "Router", "lw": 1.8, **kwargs}
        (self.line_,) = ax.plot(fr["escalation_rate"], fr["success"], **line_kwargs)
        color = self.line_.get_color()
        self.markers_ = []
        if thresholds is not None:
            if "threshold" not in frontier.columns:
                raise ValueError(
                    "FrontierDisplay: marking thresholds needs a 'threshold' column "
                    "in the frontier."
                )
            items = (
                list(thresholds.items())
                if isinstance(thresholds, Mapping)
                else [(f"τ = {float(t):.2g}", t) for t in thresholds]
            )
            markers = ["o", "s", "D", "^", "v", "P", "X"]
            tcol = frontier["threshold"].to_numpy(dtype=np.float64)
            for k, (label, tau) in enumerate(items):
                row = frontier.iloc[int(np.argmin(np.abs(tcol - float(tau))))]
                art = ax.scatter(
                    [row["escalation_rate"]],
                    [row["success"]],
                    marker=markers[k % len(markers)],
                    s=50,
                    color=color,
                    edgecolor="black",
                    zorder=3,
                    label=f"{label} ({100 * row['escalation_rate']:.1f}% escalated)",
                )
                self.markers_.append(art)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("Escalation rate (share of steps sent to the LLM)")
        ax.set_ylabel("Task success")
        ax.legend(loc="lower right", fontsize="small", frameon=False)
        ax.grid(True, alpha=0.3)
        self.ax_ = ax
        self.figure_ = ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        y_prob: ArrayLike,
        slm_success: ArrayLike,
        llm_success: ArrayLike,
        *,
        groups: ArrayLike | None = None,
        cost_slm: float = 0.0,
        cost_llm: float = 1.0,
        thresholds: Mapping[str, float] | Sequence[float] | None = None,
        oracle: bool = True,
        name: str | None = None,
        ax: Any = None,
        **kwargs: Any,
    ) -> FrontierDisplay:
        """Compute the router's (and the oracle's) frontier, then plot.

        Calls :func:`r2vcal.frontier.reliability_cost_frontier` and
        :func:`r2vcal.frontier.oracle_frontier` with the same arguments.

        Parameters
        ----------
        y_prob : array-like of shape (n_steps,)
            Router probabilities.
        slm_success, llm_success : array-like of shape (n_steps,)
            Outcome (1 = success) when the step is kept on the SLM / escalated.
        groups : array-like of shape (n_steps,), default=None
            Perturbation seeds, for the ``worst_group_success`` column.
        cost_slm, cost_llm : float, default=0.0, 1.0
            Step costs for the frontier's ``cost`` column (not drawn).
        thresholds : mapping or sequence, default=None
            Thresholds to mark on the curve.
        oracle : bool, default=True
            Also compute and draw the oracle frontier.
        name : str, default=None
            Legend label.
        ax : matplotlib Axes, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot`.

        Returns
        -------
        FrontierDisplay
        """
        from r2vcal.frontier import oracle_frontier, reliability_cost_frontier

        frontier = reliability_cost_frontier(
            y_prob,
            slm_success,
            llm_success,
            groups=groups,
            cost_slm=cost_slm,
            cost_llm=cost_llm,
        )
        orc = None
        if oracle:
            orc = oracle_frontier(
                slm_success,
                llm_success,
                groups=groups,
                cost_slm=cost_slm,
                cost_llm=cost_llm,
            )
        disp = cls(frontier, oracle=orc, thresholds=thresholds, name=name)
        return disp.plot(ax=ax, oracle=oracle, **kwargs)

    @classmethod
    def from_estimator(
        cls,
        estimator: Any,
        X: ArrayLike,
        slm_success: ArrayLike,
        llm_success: ArrayLike,
        *,
        name: str | None = None,
        **kwargs: Any,
    ) -> FrontierDisplay:
        """Plot the frontier of ``estimator.predict_proba(X)[:, 1]``.

        ``name`` defaults to the estimator's class name; other keyword
        arguments are those of :meth:`from_predictions`.

        Returns
        -------
        FrontierDisplay
        """
        proba = positive_proba(estimator, X, "FrontierDisplay.from_estimator")
        return cls.from_predictions(
            proba,
            slm_success,
            llm_success,
            name=_estimator_name(estimator, name),
            **kwargs,
        )


# ---------------------------------------------------------------------------
# GroupDisplay
# ---------------------------------------------------------------------------

_GROUP_METRICS = frozenset({"brier", "ece", "success"})
_METRIC_LABELS = {
    "brier": "Brier score (lower is better)",
    "ece": "ECE (lower is better)",
    "success": "Success rate",
}


def _brier(y: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    return float(np.mean((p - y) ** 2))


def _success(y: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    return float(np.mean(y))


_GROUP_ORDER: weakref.WeakKeyDictionary[Any, list[Any] | None] = (
    weakref.WeakKeyDictionary()
)


class GroupDisplay:
    """Per-group (per-seed) metric with bootstrap confidence intervals.

    Points with error bars, one per group; several routers on one axes are
    dodged side by side. With more than ``MAX_VERTICAL_GROUPS`` (8) groups the
    layout turns horizontal, one row per group sorted by the first router's
    value (worst at the top), so 14+ labels stay legible. Create it with
    :meth:`from_predictions` or :meth:`from_estimator`.

    Parameters
    ----------
    groups : sequence
        Group labels, in display order.
    values, low, high : array-like of shape (n_groups,)
        Metric per group and its confidence interval.
    metric : str, default="brier"
        Name of the metric, used for the axis label.
    name : str, default=None
        Legend label of the router.
    group_label : str, default="Group"
        Axis label of the groups (e.g. ``"Perturbation seed"``, ``"Category"``).

    Attributes
    ----------
    ax_, figure_ : matplotlib Axes and Figure
    line_ : matplotlib Line2D
        The points (the data line of the errorbar container).
    errorbar_ : matplotlib ErrorbarContainer
    worst_group_ : label of the worst group (highest loss / lowest success)

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.plotting import GroupDisplay
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=1000)
    >>> y = rng.uniform(size=1000) < p
    >>> seeds = np.arange(1000) % 5
    >>> disp = GroupDisplay.from_predictions(y, p, seeds, n_resamples=50)
    >>> len(disp.values)
    5
    """

    #: Above this many groups the display is horizontal and sorted.
    MAX_VERTICAL_GROUPS = 8

    def __init__(
        self,
        groups: Sequence[Any],
        values: ArrayLike,
        low: ArrayLike,
        high: ArrayLike,
        *,
        metric: str = "brier",
        name: str | None = None,
        group_label: str = "Group",
    ) -> None:
        self.group_label = group_label
        self.groups = list(groups)
        self.values = np.asarray(values, dtype=np.float64)
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.metric = metric
        self.name = name

    def plot(
        self, ax: Any = None, *, name: str | None = None, **kwargs: Any
    ) -> GroupDisplay:
        """Draw the points and error bars on ``ax``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            ``None`` creates a new figure. Reusing an axes dodges the new
            series to the right of the previous ones.
        name : str, default=None
            Legend label; overrides the one given at construction.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.errorbar`.

        Returns
        -------
        GroupDisplay
            ``self`` with ``ax_``, ``figure_``, ``line_`` and ``errorbar_`` set.
        """
        import matplotlib.pyplot as plt

        name = self.name if name is None else name
        n = len(self.groups)
        horizontal = n > self.MAX_VERTICAL_GROUPS
        if ax is None:
            if horizontal:
                size = (6.4, max(3.0, 0.32 * n + 1.2))
            else:
                size = (max(4.5, 0.55 * n + 2.0), 3.8)
            _, ax = plt.subplots(figsize=size, layout="constrained")
        k = _next_series(ax)
        higher_is_better = self.metric == "success"
        if k == 0:  # the first series fixes the row order of the groups
            key = self.values if higher_is_better else -self.values
            order = np.argsort(key, kind="stable") if horizontal else None
            _GROUP_ORDER[ax] = (
                None if order is None else [self.groups[i] for i in order]
            )
        shown = _GROUP_ORDER.get(ax) or self.groups
        where = {g: i for i, g in enumerate(shown)}
        pos = np.array([where.get(g, np.nan) for g in self.groups]) + 0.15 * k
        err = np.vstack(
            [
                np.clip(self.values - self.low, 0, None),
                np.clip(self.high - self.values, 0, None),
            ]
        )
        eb_kwargs = {
            "fmt": "o",
            "capsize": 3,
            "ms": 5,
            "label": name or "Router",
            **kwargs,
        }
        if horizontal:
            self.errorbar_ = ax.errorbar(self.values, pos, xerr=err, **eb_kwargs)
        else:
            self.errorbar_ = ax.errorbar(pos, self.values, yerr=err, **eb_kwargs)
        self.line_ = self.errorbar_.lines[0]
        worst = np.argmin(self.values) if higher_is_better else np.argmax(self.values)
        self.worst_group_ = self.groups[int(worst)]
        if k == 0:
            labels = [str(g) for g in shown]
            metric_label = _METRIC_LABELS.get(self.metric, self.metric)
            if horizontal:
                ax.set_yticks(np.arange(n))
                ax.set_yticklabels(labels)
                ax.invert_yaxis()  # worst group on top
                ax.set_ylabel(self.group_label)
                ax.set_xlabel(metric_label)
                ax.grid(True, axis="x", alpha=0.3)
            else:
                ax.set_xticks(np.arange(n))
                ax.set_xticklabels(labels)
                ax.set_xlabel(self.group_label)
                ax.set_ylabel(metric_label)
                ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small", frameon=False)
        self.ax_ = ax
        self.figure_ = ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        y_prob: ArrayLike | None,
        groups: ArrayLike,
        *,
        metric: str | Callable[..., float] = "brier",
        n_resamples: int = 200,
        confidence_level: float = 0.95,
        random_state: int | np.random.Generator | None = 0,
        name: str | None = None,
        ax: Any = None,
        group_label: str = "Group",
        **kwargs: Any,
    ) -> GroupDisplay:
        """Compute the metric per group with bootstrap CIs, then plot.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
            Binary labels; for ``metric="success"``, the per-step (or
            per-episode) success indicator.
        y_prob : array-like of shape (n_samples,) or None
            Router probabilities (ignored, and may be ``None``, for
            ``metric="success"``).
        groups : array-like of shape (n_samples,)
            Group (perturbation seed) of each sample.
        metric : {"brier", "ece", "success"} or callable, default="brier"
            Per-group metric; a callable ``f(y_true, y_prob) -> float`` is
            treated as a loss (its worst group is the highest).
        n_resamples : int, default=200
            Bootstrap resamples within each group.
        confidence_level : float, default=0.95
            Coverage of the intervals.
        random_state : int or Generator, default=0
            Seed of the bootstrap.
        name : str, default=None
            Legend label.
        ax : matplotlib Axes, default=None
            Axes to draw on.
        group_label : str, default="Group"
            Axis label of the groups (``"Perturbation seed"`` when they are).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.errorbar`.

        Returns
        -------
        GroupDisplay
        """
        caller = "GroupDisplay.from_predictions"
        if callable(metric):
            func: Callable[..., float] = metric
            metric_name = getattr(metric, "__name__", "metric")
        else:
            metric_name = check_choice(metric, "metric", _GROUP_METRICS, caller)
            funcs: dict[str, Callable[..., float]] = {
                "brier": _brier,
                "ece": expected_calibration_error,
                "success": _success,
            }
            func = funcs[metric_name]
        if metric_name == "success" and y_prob is None:
            y = check_labels(y_true, caller)
            p = np.zeros_like(y)
        else:
            y, p, _ = check_inputs(y_true, y_prob, None, caller)
        codes, labels = group_codes(groups, y.shape[0], caller, sort=True)
        rng = np.random.default_rng(random_state)
        vals, lows, highs = [], [], []
        for k in range(len(labels)):
            m = codes == k
            ci = bootstrap_ci(
                func,
                y[m],
                p[m],
                n_resamples=n_resamples,
                confidence_level=confidence_level,
                random_state=rng,
            )
            vals.append(ci.estimate)
            lows.append(ci.low)
            highs.append(ci.high)
        labels_list = [v.item() if isinstance(v, np.generic) else v for v in labels]
        disp = cls(
            labels_list,
            vals,
            lows,
            highs,
            metric=metric_name,
            name=name,
            group_label=group_label,
        )
        return disp.plot(ax=ax, **kwargs)

    @classmethod
    def from_estimator(
        cls,
        estimator: Any,
        X: ArrayLike,
        y: ArrayLike,
        groups: ArrayLike,
        *,
        name: str | None = None,
        **kwargs: Any,
    ) -> GroupDisplay:
        """Plot the per-group metric of ``estimator.predict_proba(X)[:, 1]``.

        ``name`` defaults to the estimator's class name; other keyword
        arguments are those of :meth:`from_predictions`.

        Returns
        -------
        GroupDisplay
        """
        proba = positive_proba(estimator, X, "GroupDisplay.from_estimator")
        return cls.from_predictions(
            y, proba, groups, name=_estimator_name(estimator, name), **kwargs
        )
