"""A report folder comparing a router with the baselines on one held-out table.

``write_report`` writes::

    out/
      metrics.json      comparison table, per-group table, router summary
      comparison.csv    compare_routers(...) (tidy: router, metric, estimate, CI)
      groups.csv        per-group metrics of the main router
      reliability.png   reliability diagrams of every router, one axes
      frontier.png      success vs escalation rate of every router + the oracle
      groups.png        per-group Brier of the main router with CIs
      report.md         the above in prose and tables
      report.html       the same as a standalone page

Matplotlib is imported here only when a report is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from r2vcal._base import as_unit_interval, positive_proba
from r2vcal._render import Doc
from r2vcal.baselines import compare_routers, risk_score

__all__ = ["write_report"]

_HEADLINE = [
    "brier",
    "ece",
    "ece_debiased",
    "worst_group_brier",
    "auroc",
    "frontier_auc",
]


def _cell(r: Any) -> str:
    if not np.isfinite(r.estimate):
        return "n/a (one class)" if r.metric == "auroc" else "n/a"
    return f"{r.estimate:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"


def _fmt_table(table: pd.DataFrame) -> pd.DataFrame:
    """Wide table of ``estimate [low, high]`` strings, one row per router."""
    cell = table.apply(_cell, axis=1)
    wide = (
        table.assign(cell=cell)
        .pivot(index="router", columns="metric", values="cell")
        .reindex(index=list(dict.fromkeys(table["router"])))
    )
    order = [m for m in _HEADLINE if m in wide.columns]
    order += [m for m in wide.columns if m not in order]
    return wide[order]


def _router_summary(router: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"class": type(router).__name__}
    for key in ("threshold_", "cvar_", "temperature_", "n_iter_", "objective_"):
        if hasattr(router, key):
            out[key] = float(getattr(router, key))
    if hasattr(router, "group_losses_"):
        out["group_losses_"] = [float(v) for v in router.group_losses_]
        out["group_labels_"] = [str(v) for v in router.group_labels_]
    if hasattr(router, "get_params"):
        out["params"] = {k: repr(v) for k, v in router.get_params().items()}
    return out


def _warnings(
    probs: Mapping[str, np.ndarray],
    routers: Mapping[str, Any],
    main: str,
    y01: np.ndarray,
    groups: ArrayLike | None,
    n_resamples: int,
) -> tuple[list[str], list[str]]:
    """Warnings and yardstick notes for the top of the report.

    The router under study is compared on held-out Brier with the yardsticks
    (logistic regression, random, the constant base-rate forecast) by a paired
    bootstrap of the difference: a warning when it is worse beyond the 95 %
    interval, a note when the difference is within noise.
    """
    from r2vcal.metrics import bootstrap_ci

    warn: list[str] = []
    notes: list[str] = []
    yardsticks = {"the constant base-rate forecast": np.full_like(y01, y01.mean())}
    for name, est in routers.items():
        if name == main:
            continue
        yardstick = type(est).__name__ in ("RandomRouter", "LogisticRouter")
        if yardstick or name.split(" ")[0] in ("random", "logistic"):
            yardsticks[name] = probs[name]
    mine = (probs[main] - y01) ** 2
    idx = np.arange(y01.shape[0])
    for name, p in yardsticks.items():
        theirs = (p - y01) ** 2

        def diff(i: np.ndarray, theirs: np.ndarray = theirs) -> float:
            return float(mine[i].mean() - theirs[i].mean())

        ci = bootstrap_ci(
            diff, idx, n_resamples=n_resamples, groups=groups, random_state=0
        )
        text = (
            f"held-out Brier {mine.mean():.4f} vs {theirs.mean():.4f}, "
            f"difference {ci.estimate:+.4f} [95% CI {ci.low:+.4f}, {ci.high:+.4f}]"
        )
        if ci.low > 0:
            warn.append(f"**{main} is worse than {name}** ({text}).")
        elif ci.high < 0:
            notes.append(f"{main} beats {name} ({text}).")
        else:
            notes.append(f"{main} is on par with {name}, within noise ({text}).")
    if not 0 < y01.sum() < y01.shape[0]:
        warn.append(
            "The held-out rows hold one class only: AUROC is undefined and "
            "Brier/ECE measure calibration to a constant."
        )
    n_clusters = y01.shape[0] if groups is None else np.unique(np.asarray(groups)).size
    if n_clusters < 2:
        warn.append(
            "The intervals come from fewer than 2 clusters (groups or rows): "
            "they are not confidence intervals."
        )
    elif groups is not None and n_clusters < 5:
        warn.append(f"Only {n_clusters} groups: cluster-bootstrap intervals are rough.")
    return warn, notes


def write_report(
    out: str | Path,
    routers: Mapping[str, Any],
    X: Any,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    slm_success: ArrayLike | None = None,
    llm_success: ArrayLike | None = None,
    main: str | None = None,
    reference: str | None = None,
    cost_slm: float = 1.0,
    cost_llm: float = 10.0,
    budgets: Sequence[float] = (0.1, 0.25, 0.5),
    title: str = "r2vcal router report",
    notes: Sequence[str] = (),
    n_resamples: int = 200,
    random_state: int = 0,
    group_label: str = "group",
    n_bins: int = 15,
) -> Path:
    """Compare ``routers`` on ``(X, y)`` and write the report folder ``out``.

    Parameters
    ----------
    out : str or Path
        Folder to write (created).
    routers : mapping of str to fitted router or array of probabilities
        The first entry (or ``main``) is the router under study.
    X, y, groups, slm_success, llm_success, cost_slm, cost_llm, budgets
        As in :func:`r2vcal.baselines.compare_routers`.
    main : str, default=None
        Name of the router under study (default: the first).
    reference : str, default=None
        Baseline to rank-correlate against (e.g. ``"entropy"``).
    title : str
        Heading of the report.
    notes : sequence of str
        Extra lines for the report (data provenance, split, ...).
    n_resamples, random_state
        Bootstrap settings.
    group_label : str, default="group"
        What the groups are, for headings and axes (``"perturbation seed"``,
        ``"category"``, ``"episode"``).
    n_bins : int, default=15
        ECE bins: the same binning in the table and the reliability diagrams.

    Returns
    -------
    Path
        The report folder.
    """
    from r2vcal.metrics import group_metrics

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    main = main or next(iter(routers))
    y01 = np.asarray(y, dtype=np.float64)
    slm = 1.0 - y01 if slm_success is None else np.asarray(slm_success, np.float64)
    llm = np.ones_like(y01) if llm_success is None else np.asarray(llm_success)
    probs = {name: positive_proba(r, X, arrays=True) for name, r in routers.items()}
    scores = {name: risk_score(r, X) for name, r in routers.items()}

    # probabilities computed once above serve both the table and the plots
    table = compare_routers(
        probs,
        X,
        y01,
        groups=groups,
        slm_success=slm,
        llm_success=llm,
        cost_slm=cost_slm,
        cost_llm=cost_llm,
        budgets=budgets,
        reference=reference,
        n_resamples=n_resamples,
        random_state=random_state,
        scores=scores,
        n_bins=n_bins,
    )
    table["deployable"] = table["router"].map(
        lambda n: bool(getattr(type(routers[n]), "deployable", True))
    )
    table.to_csv(outdir / "comparison.csv", index=False)

    threshold = float(getattr(routers[main], "threshold_", 0.5))
    warnings_, yardstick_notes = _warnings(
        probs, routers, main, y01, groups, n_resamples
    )
    per_group = None
    if groups is not None:
        per_group = group_metrics(y01, probs[main], groups, threshold=threshold)
        per_group.to_csv(outdir / "groups.csv")

    ctx = _Context(
        outdir=outdir,
        title=title,
        main=main,
        y01=y01,
        probs=probs,
        threshold=threshold,
        table=table,
        per_group=per_group,
        group_label=group_label,
        warnings=warnings_,
        notes=[*yardstick_notes, *notes],
        n_bins=n_bins,
    )
    _plot(ctx, scores, slm, llm, groups, cost_slm, cost_llm, n_resamples)
    summary = _summary(ctx, routers[main], yardstick_notes, (cost_slm, cost_llm))
    summary["notes"] = list(notes)
    (outdir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    _document(ctx, cost_slm, cost_llm, clustered=groups is not None).write(outdir)
    return outdir


@dataclass(frozen=True)
class _Context:
    """What the plots, ``metrics.json`` and the prose of one report share."""

    outdir: Path
    title: str
    main: str
    y01: np.ndarray
    probs: dict[str, np.ndarray]
    threshold: float
    table: pd.DataFrame
    per_group: pd.DataFrame | None
    group_label: str
    warnings: list[str]
    notes: list[str]
    n_bins: int

    @property
    def escalation_rate(self) -> float:
        """Share of the held-out steps the main router escalates."""
        return float(np.mean(self.probs[self.main] >= self.threshold))


def _plot(
    ctx: _Context,
    scores: Mapping[str, np.ndarray],
    slm: np.ndarray,
    llm: np.ndarray,
    groups: ArrayLike | None,
    cost_slm: float,
    cost_llm: float,
    n_resamples: int,
) -> None:
    """``reliability.png``, ``frontier.png`` and ``groups.png``: one figure
    each, no global style changes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from r2vcal.plotting import FrontierDisplay, GroupDisplay, ReliabilityDisplay

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for name, p in ctx.probs.items():
        if np.ptp(p) == 0:  # constant forecasts (random router) have no curve
            continue
        ReliabilityDisplay.from_predictions(
            ctx.y01,
            p,
            name=name,
            ax=ax,
            n_resamples=min(n_resamples, 100),
            n_bins=ctx.n_bins,
        )
    ax.set_title("Reliability (held-out steps)")
    fig.savefig(ctx.outdir / "reliability.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, name in enumerate(ctx.probs):
        # rank by risk_score, as the table does (isotonic plateaus would merge
        # distinct feature values); the Bayes mark moves to the same scale
        ranks = as_unit_interval(scores[name])
        marks = None
        escalated = ctx.probs[name] >= ctx.threshold
        if name == ctx.main and escalated.any():
            marks = {"Bayes": float(ranks[escalated].min())}
        FrontierDisplay.from_predictions(
            ranks,
            slm,
            llm,
            cost_slm=cost_slm,
            cost_llm=cost_llm,
            thresholds=marks,
            oracle=k == 0,
            name=name,
            ax=ax,
        )
    ax.set_title("Reliability-cost frontier (held-out steps)")
    fig.savefig(ctx.outdir / "frontier.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    if groups is not None:
        disp = GroupDisplay.from_predictions(
            ctx.y01,
            ctx.probs[ctx.main],
            groups,
            name=ctx.main,
            n_resamples=n_resamples,
            group_label=ctx.group_label.capitalize(),
        )
        disp.ax_.set_title(f"Per-{ctx.group_label} Brier score of {ctx.main}")
        disp.figure_.savefig(ctx.outdir / "groups.png", dpi=120, bbox_inches="tight")
        plt.close(disp.figure_)


def _summary(
    ctx: _Context,
    main_router: Any,
    yardstick_notes: list[str],
    costs: tuple[float, float],
) -> dict[str, Any]:
    """The content of ``metrics.json`` but its ``notes`` (the last key; the key
    order is part of the format)."""
    per_group = ctx.per_group
    return {
        "title": ctx.title,
        "n_steps": int(ctx.y01.shape[0]),
        "positive_rate": float(ctx.y01.mean()),
        "main": ctx.main,
        "warnings": ctx.warnings,
        "yardsticks": yardstick_notes,
        "escalation_rate_at_threshold": ctx.escalation_rate,
        "group_label": ctx.group_label,
        "router": _router_summary(main_router),
        "comparison": ctx.table.to_dict(orient="records"),
        "groups": None
        if per_group is None
        else {
            "table": per_group.reset_index().astype({"group": str}).to_dict("records"),
            **{
                k: (v if isinstance(v, str) else float(v))
                for k, v in per_group.attrs.items()
                if k != "worst_group"
            },
            "worst_group": str(per_group.attrs.get("worst_group")),
        },
        "costs": {"cost_slm": costs[0], "cost_llm": costs[1]},
    }


def _document(
    ctx: _Context, cost_slm: float, cost_llm: float, *, clustered: bool
) -> Doc:
    """``report.md`` / ``report.html``: warnings, notes, tables and figures."""
    doc = Doc(ctx.title)
    for w in ctx.warnings:
        doc.warning(w)
    label = ctx.group_label
    doc.bullets(
        [
            *ctx.notes,
            f"held-out steps: {ctx.y01.shape[0]:,}; escalation-needed rate "
            f"{ctx.y01.mean():.3f}; costs SLM {cost_slm:g}, LLM {cost_llm:g}",
            f"router under study: **{ctx.main}** (threshold {ctx.threshold:.3f}, "
            f"which escalates {ctx.escalation_rate:.1%} of these steps)",
            "every figure is `estimate [95% bootstrap CI]`"
            + (f" (cluster bootstrap over the groups: {label})" if clustered else "")
            + f"; ECE uses {ctx.n_bins} uniform bins, as the reliability diagrams; "
            "worst-group CIs resample rows within each group",
        ]
    )
    doc.heading("Comparison").table(_fmt_table(ctx.table))
    doc.heading("Reliability-cost frontier").image("frontier.png", "frontier")
    doc.heading("Reliability diagrams").image("reliability.png", "reliability")
    per_group = ctx.per_group
    if per_group is not None:
        doc.heading(f"Per {label}").para(
            f"Worst {label} {per_group.attrs['worst_group']}: Brier "
            f"{per_group.attrs['worst_brier']:.4f}; CVaR of per-{label} "
            f"Brier {per_group.attrs['cvar_brier']:.4f}."
        )
        doc.image("groups.png", "groups").table(per_group, floatfmt=".4f")
    return doc
