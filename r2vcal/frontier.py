"""Reliability-cost frontiers of step-level escalation, and their summary numbers.

Model
-----
Every step is first handled by the SLM. A router gives it a probability
``y_prob``; at threshold ``t`` the step is *escalated* to the LLM when
``y_prob >= t``. The step then succeeds with ``llm_success`` if escalated, else
with ``slm_success`` (both observed or counterfactual outcomes of that step).

Cost model: the SLM always runs (its candidates are what the router reads), so
a kept step costs ``cost_slm`` and an escalated step ``cost_slm + cost_llm``; the
frontier reports the mean cost per step,
``cost = cost_slm + cost_llm * escalation_rate``.

A frontier is a DataFrame with one row per threshold, ordered by increasing
escalation rate, always including both ends (``threshold=inf``: nothing
escalated, the SLM-only system; ``threshold=0``: everything escalated, the
LLM-only system). Tied probabilities escalate together; linear interpolation
between rows is what random tie-breaking (or a randomised threshold) achieves,
and is what :func:`frontier_auc`, :func:`success_at` and :func:`cost_to_reach`
use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FRONTIER_COLUMNS",
    "cost_to_reach",
    "frontier_auc",
    "gap_recovered",
    "oracle_frontier",
    "reliability_cost_frontier",
    "success_at",
]

#: Columns of a frontier DataFrame.
FRONTIER_COLUMNS: tuple[str, ...] = (
    "threshold",
    "escalation_rate",
    "success",
    "cost",
    "worst_group_success",
)


def _binary(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(
            f"The '{name}' parameter must be a 1-d array of 0/1 outcomes. Got shape "
            f"{arr.shape} instead."
        )
    if arr.dtype == bool:
        return arr.astype(np.float64)
    try:
        num = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"The '{name}' parameter must contain 0/1 or bool outcomes. Got dtype "
            f"{arr.dtype} instead."
        ) from None
    bad = (num != 0) & (num != 1)
    if bad.any():
        raise ValueError(
            f"The '{name}' parameter must contain 0/1 or bool outcomes. Got "
            f"{arr[bad][0]!r} at index {int(np.flatnonzero(bad)[0])} instead."
        )
    return num


def _cost(value: Any, name: str) -> float:
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"The '{name}' parameter must be a finite number >= 0. Got {value!r} "
            "instead."
        ) from None
    if not np.isfinite(c) or c < 0:
        raise ValueError(
            f"The '{name}' parameter must be a finite number >= 0. Got {value!r} "
            "instead."
        )
    return c


def _check_inputs(
    y_prob: Any, slm_success: Any, llm_success: Any, groups: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    p = np.asarray(y_prob)
    if p.ndim != 1 or p.dtype.kind not in "biuf":
        raise ValueError(
            "The 'y_prob' parameter must be a 1-d array of probabilities. Got "
            f"shape {p.shape} and dtype {p.dtype} instead."
        )
    p = p.astype(np.float64)
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        raise ValueError(
            "The 'y_prob' parameter must contain probabilities in [0, 1]. Got "
            f"{p[bad][0]} at index {int(np.flatnonzero(bad)[0])} instead."
        )
    if p.size == 0:
        raise ValueError("The 'y_prob' parameter must not be empty. Got 0 steps.")
    slm = _binary(slm_success, "slm_success")
    llm = _binary(llm_success, "llm_success")
    for name, arr in (("slm_success", slm), ("llm_success", llm)):
        if arr.shape != p.shape:
            raise ValueError(
                f"The '{name}' parameter must have the length of 'y_prob' "
                f"({p.size}). Got {arr.size} instead."
            )
    codes = None
    if groups is not None:
        g = np.asarray(groups)
        if g.ndim != 1 or g.shape != p.shape:
            raise ValueError(
                "The 'groups' parameter must be 1-d with the length of 'y_prob' "
                f"({p.size}). Got shape {g.shape} instead."
            )
        if pd.isna(g).any():
            raise ValueError(
                "The 'groups' parameter must not contain missing values. Got "
                f"{int(pd.isna(g).sum())} instead."
            )
        codes = pd.factorize(g)[0]
    return p, slm, llm, codes


def _frontier_from_scores(
    p: np.ndarray,
    slm: np.ndarray,
    llm: np.ndarray,
    codes: np.ndarray | None,
    thresholds: np.ndarray,
    cost_slm: float,
    cost_llm: float,
) -> pd.DataFrame:
    n = p.size
    order = np.argsort(-p, kind="stable")
    p_desc = p[order]
    gain = (llm - slm)[order]
    cum_gain = np.concatenate(([0.0], np.cumsum(gain)))
    # number of steps with p >= t, for t in thresholds (p_desc is decreasing)
    counts = np.searchsorted(-p_desc, -thresholds, side="right")
    # merge thresholds that escalate the same set (keep the highest threshold)
    keep = np.r_[True, counts[1:] != counts[:-1]]
    thresholds, counts = thresholds[keep], counts[keep]
    rate = counts / n
    success = slm.mean() + cum_gain[counts] / n
    if codes is None:
        worst = success.copy()
    else:
        worst = np.full(thresholds.size, np.inf)
        for g in range(int(codes.max()) + 1):  # loop over groups, not steps
            in_g = codes[order] == g
            p_g = p_desc[in_g]
            n_g = p_g.size
            cum_g = np.concatenate(([0.0], np.cumsum(gain[in_g])))
            c_g = np.searchsorted(-p_g, -thresholds, side="right")
            succ_g = slm[codes == g].mean() + cum_g[c_g] / n_g
            np.minimum(worst, succ_g, out=worst)
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "escalation_rate": rate,
            "success": np.clip(success, 0.0, 1.0),
            "cost": cost_slm + cost_llm * rate,
            "worst_group_success": np.clip(worst, 0.0, 1.0),
        }
    )


def reliability_cost_frontier(
    y_prob: Any,
    slm_success: Any,
    llm_success: Any,
    *,
    groups: Any = None,
    cost_slm: float,
    cost_llm: float,
    thresholds: Any = None,
) -> pd.DataFrame:
    """Success and cost of threshold routing at every threshold.

    At threshold ``t`` a step escalates when ``y_prob >= t``; its success is
    ``llm_success`` if escalated, else ``slm_success``; its cost is
    ``cost_slm + cost_llm`` if escalated, else ``cost_slm`` (the SLM always runs).

    Parameters
    ----------
    y_prob : array-like of shape (n_steps,)
        Router probabilities in [0, 1] (higher = escalate first).
    slm_success : array-like of shape (n_steps,)
        Whether the step succeeds when kept on the SLM (bool or 0/1).
    llm_success : array-like of shape (n_steps,)
        Whether the step succeeds when escalated to the LLM (bool or 0/1).
    groups : array-like of shape (n_steps,), default=None
        Group of each step (e.g. perturbation seed) for ``worst_group_success``.
        None treats all steps as one group.
    cost_slm, cost_llm : float
        Cost of one SLM step and of one LLM call (>= 0).
    thresholds : array-like, default=None
        Thresholds to evaluate. None uses every distinct value of ``y_prob``.
        ``inf`` (nothing escalated) and ``0`` (everything escalated) are always
        added so the frontier spans escalation rates 0 to 1. Thresholds that
        escalate the same set of steps are merged into one row (the highest
        threshold is kept).

    Returns
    -------
    frontier : DataFrame
        Columns :data:`FRONTIER_COLUMNS`: ``threshold``, ``escalation_rate``,
        ``success`` (mean step success), ``cost`` (mean cost per step) and
        ``worst_group_success`` (minimum over groups of the group's mean
        success), sorted by increasing escalation rate.

    Examples
    --------
    >>> from r2vcal.frontier import reliability_cost_frontier
    >>> reliability_cost_frontier(
    ...     [0.9, 0.2, 0.6, 0.1], [0, 1, 0, 1], [1, 1, 1, 0],
    ...     cost_slm=1.0, cost_llm=10.0,
    ... )
       threshold  escalation_rate  success  cost  worst_group_success
    0        inf             0.00     0.50   1.0                 0.50
    1        0.9             0.25     0.75   3.5                 0.75
    2        0.6             0.50     1.00   6.0                 1.00
    3        0.2             0.75     1.00   8.5                 1.00
    4        0.1             1.00     0.75  11.0                 0.75
    """
    p, slm, llm, codes = _check_inputs(y_prob, slm_success, llm_success, groups)
    c_slm = _cost(cost_slm, "cost_slm")
    c_llm = _cost(cost_llm, "cost_llm")
    if thresholds is None:
        thr = np.unique(p)
    else:
        thr = np.asarray(thresholds, dtype=np.float64).ravel()
        if np.isnan(thr).any():
            raise ValueError(
                "The 'thresholds' parameter must not contain NaN. Got "
                f"{int(np.isnan(thr).sum())} NaN value(s) instead."
            )
    thr = np.unique(np.concatenate((thr, [0.0, np.inf])))[::-1]
    thr = thr[(thr > 0) | (thr == 0.0)]  # drop thresholds below 0 (same as 0)
    return _frontier_from_scores(p, slm, llm, codes, thr, c_slm, c_llm)


def oracle_frontier(
    slm_success: Any,
    llm_success: Any,
    *,
    groups: Any = None,
    cost_slm: float,
    cost_llm: float,
) -> pd.DataFrame:
    """The hindsight frontier: escalate first where only the LLM succeeds.

    The oracle scores a step 1 when the SLM fails and the LLM succeeds, 0.5 when
    both agree, and 0 when only the SLM succeeds, then sweeps the threshold like
    :func:`reliability_cost_frontier`. It is an upper reference, not a
    deployable router.

    Parameters
    ----------
    slm_success, llm_success : array-like of shape (n_steps,)
        Step outcomes when kept / escalated (bool or 0/1).
    groups : array-like of shape (n_steps,), default=None
        Groups for ``worst_group_success``.
    cost_slm, cost_llm : float
        Costs as in :func:`reliability_cost_frontier`.

    Returns
    -------
    frontier : DataFrame
        Same columns as :func:`reliability_cost_frontier`; ``threshold`` holds
        the oracle scores (inf, 1, 0.5, 0).

    Examples
    --------
    >>> from r2vcal.frontier import frontier_auc, oracle_frontier
    >>> fr = oracle_frontier([0, 1, 0, 1], [1, 1, 1, 0], cost_slm=1, cost_llm=10)
    >>> fr[["escalation_rate", "success"]].to_numpy().tolist()
    [[0.0, 0.5], [0.5, 1.0], [0.75, 1.0], [1.0, 0.75]]
    >>> round(frontier_auc(fr), 4)
    0.8438
    """
    slm = _binary(slm_success, "slm_success")
    llm = _binary(llm_success, "llm_success")
    if llm.shape != slm.shape:
        raise ValueError(
            "The 'llm_success' parameter must have the length of 'slm_success' "
            f"({slm.size}). Got {llm.size} instead."
        )
    score = (llm - slm + 1.0) / 2.0
    return reliability_cost_frontier(
        score,
        slm,
        llm,
        groups=groups,
        cost_slm=cost_slm,
        cost_llm=cost_llm,
        thresholds=[1.0, 0.5, 0.0],
    )


def _check_frontier(frontier: Any, columns: tuple[str, ...]) -> pd.DataFrame:
    if not isinstance(frontier, pd.DataFrame):
        raise TypeError(
            "The 'frontier' parameter must be a DataFrame from "
            "reliability_cost_frontier or oracle_frontier. Got "
            f"{type(frontier).__name__} instead."
        )
    missing = [c for c in columns if c not in frontier.columns]
    if missing:
        raise ValueError(
            f"The 'frontier' parameter is missing column(s) {missing}; build it "
            "with reliability_cost_frontier."
        )
    if len(frontier) == 0:
        raise ValueError("The 'frontier' parameter must not be empty.")
    values = frontier[list(columns)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"The 'frontier' columns {list(columns)} must be finite. Got NaN/inf "
            "instead."
        )
    return frontier.sort_values(
        ["escalation_rate", *(c for c in columns if c != "escalation_rate")],
        kind="stable",
    )


def _spanning(frontier: Any) -> tuple[np.ndarray, np.ndarray]:
    fr = _check_frontier(frontier, ("escalation_rate", "success"))
    x = fr["escalation_rate"].to_numpy(dtype=np.float64)
    y = fr["success"].to_numpy(dtype=np.float64)
    if x[0] > 0 or x[-1] < 1 or x[0] < 0 or x[-1] > 1:
        raise ValueError(
            "The 'frontier' parameter must span escalation rates 0 to 1 (its "
            f"endpoints). Got rates from {x[0]} to {x[-1]} instead; build it with "
            "reliability_cost_frontier, which always includes them."
        )
    return x, y


def frontier_auc(frontier: pd.DataFrame) -> float:
    """Area under success versus escalation rate over [0, 1] (trapezoid).

    A router no better than random gives the straight line from SLM-only to
    LLM-only success, i.e. ``(slm_only + llm_only) / 2``; the oracle frontier is
    the upper limit.

    Parameters
    ----------
    frontier : DataFrame
        From :func:`reliability_cost_frontier` or :func:`oracle_frontier`.

    Returns
    -------
    auc : float
        In [0, 1]; higher is better.

    Examples
    --------
    >>> from r2vcal.frontier import frontier_auc, reliability_cost_frontier
    >>> fr = reliability_cost_frontier(
    ...     [0.9, 0.2, 0.6, 0.1], [0, 1, 0, 1], [1, 1, 1, 0],
    ...     cost_slm=1.0, cost_llm=10.0,
    ... )
    >>> frontier_auc(fr)
    0.84375
    """
    x, y = _spanning(frontier)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def success_at(frontier: pd.DataFrame, escalation_rate: float) -> float:
    """Success at a given escalation rate (linear interpolation between rows).

    Parameters
    ----------
    frontier : DataFrame
        From :func:`reliability_cost_frontier` or :func:`oracle_frontier`.
    escalation_rate : float
        In [0, 1].

    Returns
    -------
    success : float

    Examples
    --------
    >>> from r2vcal.frontier import oracle_frontier, success_at
    >>> fr = oracle_frontier([0, 1, 0, 1], [1, 1, 1, 0], cost_slm=1, cost_llm=10)
    >>> success_at(fr, 0.25)
    0.75
    """
    rate = float(escalation_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(
            "The 'escalation_rate' parameter must be in [0, 1]. Got "
            f"{escalation_rate!r} instead."
        )
    x, y = _spanning(frontier)
    # rightmost duplicate wins at a jump (more of the tied block escalated)
    return float(np.interp(rate, x, y))


def gap_recovered(
    frontier: pd.DataFrame,
    budget: float,
    *,
    slm_only_success: float | None = None,
    llm_only_success: float | None = None,
) -> float:
    """Share of the SLM-only -> LLM-only success gap recovered at a budget.

    ``(success_at(frontier, budget) - slm_only) / (llm_only - slm_only)``:
    0 means no better than the SLM alone, 1 means as good as the LLM alone
    (values above 1 happen when escalating the right steps beats the LLM alone).

    Parameters
    ----------
    frontier : DataFrame
        From :func:`reliability_cost_frontier`.
    budget : float
        Escalation rate in [0, 1] (share of steps sent to the LLM).
    slm_only_success, llm_only_success : float, default=None
        Reference successes. None reads them from the frontier's endpoints
        (escalation rate 0 and 1).

    Returns
    -------
    share : float

    Examples
    --------
    >>> from r2vcal.frontier import gap_recovered, oracle_frontier
    >>> fr = oracle_frontier([0, 0, 0, 1], [1, 1, 0, 1], cost_slm=1, cost_llm=10)
    >>> gap_recovered(fr, 0.25)
    0.5
    """
    _, y = _spanning(frontier)
    lo = y[0] if slm_only_success is None else float(slm_only_success)
    hi = y[-1] if llm_only_success is None else float(llm_only_success)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ValueError(
            "gap_recovered needs llm_only_success > slm_only_success (a gap to "
            f"recover). Got slm_only_success={lo} and llm_only_success={hi} "
            "instead."
        )
    return float((success_at(frontier, budget) - lo) / (hi - lo))


def cost_to_reach(frontier: pd.DataFrame, success: float) -> float:
    """Lowest mean cost per step at which the frontier reaches a success level.

    Interpolates linearly between consecutive rows (a randomised threshold
    achieves any such mixture). Returns ``inf`` when the level is never reached.

    Parameters
    ----------
    frontier : DataFrame
        From :func:`reliability_cost_frontier` or :func:`oracle_frontier`.
    success : float
        Target mean success in [0, 1].

    Returns
    -------
    cost : float

    Examples
    --------
    >>> from r2vcal.frontier import cost_to_reach, oracle_frontier
    >>> fr = oracle_frontier([0, 1, 0, 1], [1, 1, 1, 0], cost_slm=1, cost_llm=10)
    >>> cost_to_reach(fr, 0.75)
    3.5
    >>> cost_to_reach(fr, 1.01)
    Traceback (most recent call last):
    ...
    ValueError: The 'success' parameter must be in [0, 1]. Got 1.01 instead.
    """
    target = float(success)
    if not 0.0 <= target <= 1.0:
        raise ValueError(
            f"The 'success' parameter must be in [0, 1]. Got {success!r} instead."
        )
    fr = _check_frontier(frontier, ("escalation_rate", "success", "cost"))
    c = fr["cost"].to_numpy(dtype=np.float64)
    s = fr["success"].to_numpy(dtype=np.float64)
    best = float(np.min(c[s >= target])) if (s >= target).any() else np.inf
    if c.size > 1:
        c0, c1, s0, s1 = c[:-1], c[1:], s[:-1], s[1:]
        cross = (s0 < target) & (s1 >= target)
        if cross.any():
            frac = (target - s0[cross]) / (s1[cross] - s0[cross])
            best = min(best, float(np.min(c0[cross] + frac * (c1[cross] - c0[cross]))))
    return best
