"""Torch backend of :class:`r2vcal.CVaRBrierRouter` (imported inside ``fit`` only).

The network is built here, trained, and its weights copied to numpy; nothing in
the fitted router refers to torch afterwards.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["MLPResult", "group_batches", "torch_exact_cvar", "train_mlp"]


@dataclass
class MLPResult:
    """Trained weights (numpy, standardised inputs) and training diagnostics."""

    coefs: list[NDArray[np.float64]]
    intercepts: list[NDArray[np.float64]]
    n_steps: int
    dual_weight: float
    objective: float
    loss_curve: list[float] = field(default_factory=list)


def group_batches(
    gidx: NDArray[np.intp], n_groups: int, batch_size: int, rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Shuffle rows into minibatches that each contain rows of every group.

    Rows are shuffled, then each group's rows are dealt evenly over the
    ``ceil(n / batch_size)`` batches (a group with fewer rows than batches appears
    in as many batches as it has rows).

    Returns
    -------
    order : ndarray of shape (n,)
        Row indices, batch after batch.
    bounds : ndarray of shape (n_batches + 1,)
        Batch ``k`` is ``order[bounds[k]:bounds[k + 1]]``.
    """
    n = gidx.shape[0]
    n_batches = max(1, math.ceil(n / batch_size))
    perm = rng.permutation(n)
    order = perm[np.argsort(gidx[perm], kind="stable")]  # grouped, random inside
    g_sorted = gidx[order]
    counts = np.bincount(g_sorted, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - starts[g_sorted]
    batch_of = (rank * n_batches) // np.maximum(counts[g_sorted], 1)
    by_batch = np.argsort(batch_of, kind="stable")
    bounds = np.searchsorted(batch_of[by_batch], np.arange(n_batches + 1))
    return order[by_batch], bounds


def torch_exact_cvar(
    values: torch.Tensor, mass: torch.Tensor, tail: float
) -> torch.Tensor:
    """Exact sort-based CVaR (torch twin of :func:`r2vcal._objective.exact_cvar`).

    Differentiable almost everywhere: the tail weights are constants of the sort.
    """
    order = torch.argsort(values.detach(), descending=True)
    v, m = values[order], mass[order]
    before = torch.cumsum(m, 0) - m
    take = torch.minimum(torch.clamp(tail - before, min=0.0), m)
    return (take * v).sum() / tail


def _build(n_in: int, hidden: tuple[int, ...]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    prev = n_in
    for h in hidden:
        layers += [torch.nn.Linear(prev, h), torch.nn.ReLU()]
        prev = h
    layers.append(torch.nn.Linear(prev, 1))
    return torch.nn.Sequential(*layers)


def _loss(
    net: torch.nn.Sequential,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor,
    gb: torch.Tensor,
    n_groups: int,
    lam: float,
    tail: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch objective: weighted Brier + lam * CVaR(group Brier) + alpha * ||W||^2."""
    p = torch.sigmoid(net(xb).squeeze(-1))
    sq = wb * (p - yb) ** 2
    brier = sq.sum() / wb.sum()
    num = torch.zeros(n_groups, dtype=p.dtype).index_add_(0, gb, sq)
    den = torch.zeros(n_groups, dtype=p.dtype).index_add_(0, gb, wb)
    live = den > 0
    bg = num[live] / den[live]
    mass = torch.full_like(bg, 1.0 / bg.numel())
    cvar = torch_exact_cvar(bg, mass, tail)
    l2 = sum((m.weight**2).sum() for m in net if isinstance(m, torch.nn.Linear))
    return brier + lam * cvar + alpha * l2, cvar.detach()


def train_mlp(
    X: NDArray[np.float64],
    y: NDArray[np.float64],
    w: NDArray[np.float64],
    gidx: NDArray[np.intp],
    n_groups: int,
    *,
    hidden: tuple[int, ...],
    cvar_weight: float,
    cvar_tail: float,
    cvar_bound: float | None,
    alpha: float,
    n_epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    dual_step: float,
    seed: int,
    verbose: int = 0,
) -> MLPResult:
    """Train the MLP router on standardised ``X`` and return numpy weights.

    AdamW with a cosine learning-rate schedule over all steps; minibatches from
    :func:`group_batches`. In constrained mode (``cvar_bound`` set) the multiplier
    is updated once per epoch by dual ascent on ``mean batch CVaR - cvar_bound``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dtype = torch.float32
    net = _build(X.shape[1], hidden).to(dtype)
    Xt = torch.as_tensor(X, dtype=dtype)
    yt = torch.as_tensor(y, dtype=dtype)
    wt = torch.as_tensor(w, dtype=dtype)
    gt = torch.as_tensor(gidx, dtype=torch.long)
    steps_per_epoch = max(1, math.ceil(X.shape[0] / batch_size))
    total = steps_per_epoch * n_epochs
    opt = torch.optim.AdamW(
        net.parameters(), lr=learning_rate, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    lam = cvar_weight
    steps = 0
    curve: list[float] = []
    for epoch in range(n_epochs):
        net.train()
        epoch_loss, epoch_cvar, nb = 0.0, 0.0, 0
        order, bounds = group_batches(gidx, n_groups, batch_size, rng)
        it = torch.as_tensor(order)
        Xe, ye, we, ge = Xt[it], yt[it], wt[it], gt[it]  # one gather per epoch
        for a, b in itertools.pairwise(bounds.tolist()):
            if b == a:
                continue
            loss, cv = _loss(
                net, Xe[a:b], ye[a:b], we[a:b], ge[a:b], n_groups, lam, cvar_tail, alpha
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            epoch_loss += float(loss.detach())
            epoch_cvar += float(cv)
            nb += 1
        curve.append(epoch_loss / nb)
        if cvar_bound is not None:
            lam = max(0.0, lam + dual_step * (epoch_cvar / nb - cvar_bound))
        if verbose:
            print(
                f"[mlp] epoch {epoch + 1}/{n_epochs} loss={curve[-1]:.5f} "
                f"lambda={lam:.4f}"
            )
    net.eval()
    with torch.no_grad():
        objective, _ = _loss(net, Xt, yt, wt, gt, n_groups, lam, cvar_tail, alpha)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    coefs = [m.weight.detach().double().numpy().T.copy() for m in linears]
    intercepts = [m.bias.detach().double().numpy().copy() for m in linears]
    return MLPResult(coefs, intercepts, steps, float(lam), float(objective), curve)
