"""Escalation thresholds: Bayes (from costs), budget, and risk-controlled.

A router escalates a step when its probability ``p >= threshold`` (the rule of
``CVaRBrierRouter.route`` and of scikit-learn's ``FixedThresholdClassifier``).
Every function here returns a threshold in ``[0, 1]``: ``0`` escalates every
step, ``1`` only steps with ``p == 1`` exactly.

* :func:`bayes_threshold` -- the cost-optimal threshold for calibrated
  probabilities (DESIGN §1): ``(cost_llm - cost_slm) / miss_cost``.
* :func:`budget_threshold` -- the threshold at which a validation set escalates
  a target fraction of steps.
* :func:`risk_controlled_threshold` -- the cheapest threshold whose miss rate
  is certified ``<= max_miss_rate`` with probability ``>= 1 - delta`` over the
  calibration draw (Learn-then-Test with a binomial tail bound), and
  :func:`miss_rate_upper_bound`, the bound it certifies.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from r2vcal._validation import check_float, check_inputs, check_prob, check_weight

__all__ = [
    "bayes_threshold",
    "budget_threshold",
    "miss_rate_upper_bound",
    "risk_controlled_threshold",
]


def _check_cost(value: Any, name: str, caller: str, positive: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    v = float(value) if ok else np.nan
    if not (np.isfinite(v) and (v > 0 if positive else v >= 0)):
        rng = "(0, inf)" if positive else "[0, inf)"
        raise ValueError(
            f"The {name!r} parameter of {caller} must be a finite float in the range "
            f"{rng}. Got {value!r} instead."
        )
    return v


def bayes_threshold(cost_slm: float, cost_llm: float, miss_cost: float) -> float:
    """Bayes-optimal escalation threshold ``(cost_llm - cost_slm) / miss_cost``.

    Keeping a step on the small model costs ``cost_slm`` plus ``miss_cost``
    when escalation would have helped (probability ``p``); escalating costs
    ``cost_llm``. Escalating is cheaper in expectation exactly when
    ``p * miss_cost >= cost_llm - cost_slm``, i.e. ``p >= threshold``. With a
    calibrated router the plug-in regret is at most
    ``miss_cost * E|p - q*|`` (DESIGN §1), which is why calibration matters.

    The ratio is clipped to ``[0, 1]``, as the router's default
    ``threshold_``: below 0 (the LLM is cheaper) every step escalates; above 1
    (the LLM's extra cost exceeds the miss penalty) only ``p == 1`` escalates.

    Parameters
    ----------
    cost_slm : float
        Cost of a step on the small model, ``>= 0``.
    cost_llm : float
        Cost of a step on the large model, ``>= 0`` (normally ``> cost_slm``).
    miss_cost : float
        Penalty for keeping a step on the small model when escalation would
        have helped, ``> 0``, in the same unit as the costs.

    Returns
    -------
    float
        The threshold, in ``[0, 1]``.

    Examples
    --------
    >>> from r2vcal.thresholds import bayes_threshold
    >>> bayes_threshold(cost_slm=1.0, cost_llm=20.0, miss_cost=100.0)
    0.19
    >>> bayes_threshold(cost_slm=1.0, cost_llm=20.0, miss_cost=10.0)  # clipped
    1.0
    """
    caller = "bayes_threshold"
    c_slm = _check_cost(cost_slm, "cost_slm", caller)
    c_llm = _check_cost(cost_llm, "cost_llm", caller)
    kappa = _check_cost(miss_cost, "miss_cost", caller, positive=True)
    return float(np.clip((c_llm - c_slm) / kappa, 0.0, 1.0))


def budget_threshold(
    y_prob: ArrayLike,
    escalation_rate: float,
    *,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Threshold at which the given probabilities escalate at most a target share.

    Returns the smallest observed probability ``t`` such that the (weighted)
    share of steps with ``y_prob >= t`` does not exceed ``escalation_rate``:
    the largest escalation rate within budget. Ties escalate together, so when
    many probabilities are tied at the boundary the realised rate on
    ``y_prob`` is below the target (never above it). If even the highest
    probability's ties exceed the budget, the returned threshold escalates
    none of ``y_prob`` (the next float above its maximum, or ``1.0`` when the
    maximum is 1).

    To use the result with any scikit-learn classifier, wrap it in
    ``sklearn.model_selection.FixedThresholdClassifier(router,
    threshold=t, response_method="predict_proba")``, which applies the same
    ``>=`` rule.

    Parameters
    ----------
    y_prob : array-like of shape (n_samples,)
        Validation probabilities of the positive ("escalate") class.
    escalation_rate : float in [0, 1]
        Target share of escalated steps (the LLM budget).
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights; the rate is then a share of total weight.

    Returns
    -------
    float
        The threshold, in ``[0, 1]``.

    Examples
    --------
    >>> from r2vcal.thresholds import budget_threshold
    >>> p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    >>> budget_threshold(p, 0.3)
    0.8
    >>> budget_threshold(p, 0.25)  # at most 25 %: 2 of 10 steps
    0.9
    >>> budget_threshold(p, 1.0)
    0.1
    """
    caller = "budget_threshold"
    rate = check_float(escalation_rate, "escalation_rate", caller, 0.0, 1.0)
    p = check_prob(y_prob, caller)
    w = check_weight(sample_weight, p.shape[0], caller)
    w = np.ones_like(p) if w is None else w
    order = np.argsort(-p, kind="stable")
    ps, ws = p[order], w[order]
    # share escalated at threshold ps[i] = weight of all values >= ps[i]
    share = np.cumsum(ws) / ws.sum()
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    ok = last_of_tie & (share <= rate + 1e-12)
    if not ok.any():
        top = float(ps[0])
        return 1.0 if top >= 1.0 else float(np.nextafter(top, 2.0))
    return float(ps[np.flatnonzero(ok)[-1]])


def _max_allowed_misses(n: int, max_miss_rate: float, delta: float) -> int:
    """Largest ``k`` with ``P(Binomial(n, max_miss_rate) <= k) <= delta`` (-1 if none)."""
    k = int(stats.binom.ppf(delta, n, max_miss_rate))
    # ppf gives the smallest k with cdf(k) >= delta; step to the last k with cdf <= delta
    while k >= 0 and stats.binom.cdf(k, n, max_miss_rate) > delta:
        k -= 1
    while k + 1 <= n and stats.binom.cdf(k + 1, n, max_miss_rate) <= delta:
        k += 1
    return k


def risk_controlled_threshold(
    y_prob: ArrayLike,
    y_true: ArrayLike,
    max_miss_rate: float,
    delta: float = 0.1,
) -> float:
    """Cheapest threshold whose miss rate is certified ``<= max_miss_rate``.

    A *miss* is a step kept on the small model (``y_prob < threshold``) that
    needed escalation (``y_true == 1``). The miss rate is counted over **all**
    steps: ``R(t) = P(p < t and y = 1)``. Given a calibration split of ``n``
    exchangeable (i.i.d.) steps, this returns a threshold ``t_hat`` with::

        P_calibration( R(t_hat) <= max_miss_rate ) >= 1 - delta

    where ``R`` is the population miss rate on fresh steps from the same
    distribution. Method (Learn-then-Test, Angelopoulos et al. 2021, with a
    binomial tail bound): for each candidate ``t`` the null hypothesis
    ``R(t) > max_miss_rate`` is rejected when its exact binomial p-value
    ``P(Binomial(n, max_miss_rate) <= misses(t))`` is ``<= delta`` --
    equivalently, when the one-sided Clopper-Pearson upper bound
    :func:`miss_rate_upper_bound` is ``<= max_miss_rate``. Candidates are
    tested in fixed sequence from the most conservative, ``t = 0`` (escalate
    everything, no misses), towards cheaper, larger thresholds, stopping at the
    first non-rejection. Because ``R`` is monotone in ``t``, the sequence is
    fixed in advance and no multiplicity correction is needed; the result is
    the largest (cheapest) certified threshold.

    Parameters
    ----------
    y_prob : array-like of shape (n_samples,)
        Calibration-split probabilities of the positive ("escalate") class.
        Must not have been used to fit the router.
    y_true : array-like of shape (n_samples,)
        Binary labels: 1 where escalating the step would have helped.
    max_miss_rate : float in (0, 1)
        Target ``epsilon`` on the share of all steps that are misses.
    delta : float in (0, 1), default=0.1
        Allowed probability that the calibration draw yields a threshold that
        violates the target.

    Returns
    -------
    float
        The threshold, in ``[0, 1]``. It is ``0.0`` (escalate everything)
        when no threshold can be certified, which happens whenever
        ``(1 - max_miss_rate) ** n > delta``, i.e. the calibration split is too
        small: ``n`` must exceed ``log(delta) / log(1 - max_miss_rate)``.
        It is ``1.0`` when every positive may be kept.

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.thresholds import risk_controlled_threshold
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=5000)
    >>> y = rng.uniform(size=5000) < p       # calibrated router
    >>> t = risk_controlled_threshold(p, y, max_miss_rate=0.05, delta=0.1)
    >>> round(t, 3)
    0.316
    >>> round(t**2 / 2, 4)                    # its true miss rate, P(p < t, y = 1)
    0.0498
    >>> risk_controlled_threshold(p[:20], y[:20], max_miss_rate=0.05)
    0.0
    """
    caller = "risk_controlled_threshold"
    eps = check_float(max_miss_rate, "max_miss_rate", caller, 0.0, 1.0, "neither")
    delta = check_float(delta, "delta", caller, 0.0, 1.0, "neither")
    y, p, _ = check_inputs(y_true, y_prob, None, caller)
    n = p.shape[0]
    k_max = _max_allowed_misses(n, eps, delta)
    if k_max < 0:
        return 0.0
    pos = np.sort(p[y == 1])
    if k_max >= pos.size:
        return 1.0
    # keeping the k_max smallest positive probabilities is the most we may afford;
    # t = pos[k_max] keeps exactly those below it (ties escalate together)
    return float(pos[k_max])


def miss_rate_upper_bound(
    y_prob: ArrayLike,
    y_true: ArrayLike,
    threshold: float,
    delta: float = 0.1,
) -> float:
    """One-sided Clopper-Pearson upper confidence bound on the miss rate at a threshold.

    With ``k`` misses (``y_prob < threshold`` and ``y_true == 1``) among ``n``
    steps, returns the ``1 - delta`` upper bound
    ``Beta.ppf(1 - delta, k + 1, n - k)`` (``1`` when ``k == n``) on the
    population miss rate ``P(p < threshold and y = 1)``. Valid for a threshold
    fixed before looking at these data, or chosen by
    :func:`risk_controlled_threshold` on them.

    Parameters
    ----------
    y_prob : array-like of shape (n_samples,)
        Probabilities of the positive ("escalate") class.
    y_true : array-like of shape (n_samples,)
        Binary labels: 1 where escalating the step would have helped.
    threshold : float
        Escalation threshold (steps with ``y_prob >= threshold`` escalate).
    delta : float in (0, 1), default=0.1
        One minus the confidence level.

    Returns
    -------
    float
        The upper confidence bound, in ``[0, 1]``.

    Examples
    --------
    >>> from r2vcal.thresholds import miss_rate_upper_bound
    >>> round(miss_rate_upper_bound([0.1, 0.2, 0.9, 0.8], [1, 0, 1, 0], 0.5), 4)
    0.6795
    """
    caller = "miss_rate_upper_bound"
    tau = check_float(threshold, "threshold", caller, -np.inf, np.inf)
    delta = check_float(delta, "delta", caller, 0.0, 1.0, "neither")
    y, p, _ = check_inputs(y_true, y_prob, None, caller)
    n = p.shape[0]
    k = int(np.count_nonzero((p < tau) & (y == 1)))
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - delta, k + 1, n - k))
