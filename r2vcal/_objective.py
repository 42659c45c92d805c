"""The router objective: weighted Brier, exact CVaR over groups, smoothed CVaR.

DESIGN §3. With sample weights ``w_i``, groups ``g`` and probabilities ``p_i``::

    L = sum_i w_i (p_i - y_i)^2 / sum_i w_i
        + cvar_weight * CVaR_alpha({B_g})
        + alpha * ||theta||^2

where ``B_g`` is the weighted mean Brier score of group ``g``. ``CVaR_alpha`` is
the mean of the worst ``alpha``-fraction of the ``B_g`` (exact, sort based, with
fractional weight on the boundary group), which equals the Rockafellar-Uryasev
form ``min_eta eta + 1/alpha * sum_g pi_g (B_g - eta)_+`` with group masses
``pi_g`` (uniform by default). For gradient-based optimisation the ``(.)_+`` is
replaced by a sharp softplus; the exact value is what gets reported.

Everything here is numpy; :mod:`r2vcal._torch_mlp` holds the torch twins.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "exact_cvar",
    "group_brier",
    "smoothed_cvar",
]


def _check_tail(tail: float) -> float:
    tail = float(tail)
    if not (0.0 < tail <= 1.0) or not np.isfinite(tail):
        raise ValueError(
            f"The CVaR tail fraction must be in (0, 1] (1/G is the worst group, 1 the "
            f"plain mean). Got {tail!r} instead."
        )
    return tail


def exact_cvar(
    values: ArrayLike, tail: float, weights: ArrayLike | None = None
) -> float:
    """Exact CVaR: the (weighted) mean of the worst ``tail`` fraction of ``values``.

    Parameters
    ----------
    values : array-like of shape (n_groups,)
        Losses, higher is worse (e.g. per-group Brier scores).
    tail : float in (0, 1]
        Tail fraction ``alpha``. ``1 / n_groups`` gives the maximum, ``1`` the mean.
    weights : array-like of shape (n_groups,), default=None
        Non-negative masses of the values; uniform when ``None``.

    Returns
    -------
    float
        ``sum of the worst values carrying total mass alpha, divided by alpha``; the
        value on the boundary contributes the fraction of its mass that fits.

    Examples
    --------
    >>> exact_cvar([0.1, 0.4, 0.2, 0.3], tail=0.5)
    0.35
    >>> exact_cvar([0.1, 0.4, 0.2, 0.3], tail=0.25)
    0.4
    >>> round(exact_cvar([0.1, 0.4, 0.2, 0.3], tail=0.375), 6)
    0.366667
    """
    tail = _check_tail(tail)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("exact_cvar needs at least one value; got an empty array.")
    if not np.all(np.isfinite(v)):
        raise ValueError("exact_cvar got NaN or infinite values.")
    if weights is None:
        w = np.full(v.size, 1.0 / v.size)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != v.shape:
            raise ValueError(
                f"weights must have the same length as values ({v.size}); got {w.size}."
            )
        if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero.")
        w = w / w.sum()
    order = np.argsort(-v, kind="stable")
    v, w = v[order], w[order]
    before = np.concatenate(([0.0], np.cumsum(w)[:-1]))
    # mass of each value that falls inside the tail [0, alpha]
    take = np.clip(tail - before, 0.0, w)
    return float(np.dot(take, v) / tail)


def group_brier(
    p: NDArray[np.float64],
    y: NDArray[np.float64],
    w: NDArray[np.float64],
    group_index: NDArray[np.intp],
    n_groups: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Weighted mean Brier score per group and each group's share of the weight.

    Returns ``(B, mass)`` with ``B[g] = sum_{i in g} w_i (p_i - y_i)^2 / sum_{i in g} w_i``
    and ``mass[g] = 1 / n_groups`` (groups count equally, DESIGN §3).
    """
    sq = w * (p - y) ** 2
    num = np.bincount(group_index, weights=sq, minlength=n_groups)
    den = np.bincount(group_index, weights=w, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    mass = np.where(den > 0, 1.0, 0.0)
    mass = mass / mass.sum()
    return b, mass


def softplus(x: NDArray[np.float64], sharpness: float) -> NDArray[np.float64]:
    """``log(1 + exp(s x)) / s``, computed stably; tends to ``max(x, 0)`` as s grows."""
    sx = sharpness * x
    return np.logaddexp(0.0, sx) / sharpness


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Numerically stable logistic function."""
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def smoothed_cvar(
    b: NDArray[np.float64],
    mass: NDArray[np.float64],
    eta: float,
    tail: float,
    sharpness: float,
) -> tuple[float, NDArray[np.float64], float]:
    """Smoothed Rockafellar-Uryasev CVaR and its gradients.

    ``value = eta + (1/tail) * sum_g mass_g * softplus_s(B_g - eta)``.

    Returns
    -------
    value : float
    d_b : ndarray of shape (n_groups,)
        Gradient with respect to each ``B_g``.
    d_eta : float
        Gradient with respect to ``eta``.
    """
    z = b - eta
    sp = softplus(z, sharpness)
    s = sigmoid(sharpness * z)
    value = eta + float(np.dot(mass, sp)) / tail
    d_b = mass * s / tail
    d_eta = 1.0 - float(d_b.sum())
    return value, d_b, d_eta
