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

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from r2vcal._base import as_unit_interval, positive_proba
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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from r2vcal.metrics import group_metrics
    from r2vcal.plotting import FrontierDisplay, GroupDisplay, ReliabilityDisplay

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

    main_router = routers[main]
    threshold = float(getattr(main_router, "threshold_", 0.5))
    escalation_rate = float(np.mean(probs[main] >= threshold))
    warnings_, yardstick_notes = _warnings(
        probs, routers, main, y01, groups, n_resamples
    )
    per_group = None
    if groups is not None:
        per_group = group_metrics(y01, probs[main], groups, threshold=threshold)
        per_group.to_csv(outdir / "groups.csv")

    # ---- plots: one figure each, no global style changes
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for name, p in probs.items():
        if np.ptp(p) == 0:  # constant forecasts (random router) have no curve
            continue
        ReliabilityDisplay.from_predictions(
            y01, p, name=name, ax=ax, n_resamples=min(n_resamples, 100), n_bins=n_bins
        )
    ax.set_title("Reliability (held-out steps)")
    fig.savefig(outdir / "reliability.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for k, name in enumerate(probs):
        # rank by risk_score, as the table does (isotonic plateaus would merge
        # distinct feature values); the Bayes mark moves to the same scale
        ranks = as_unit_interval(scores[name])
        marks = None
        escalated = probs[name] >= threshold
        if name == main and escalated.any():
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
    fig.savefig(outdir / "frontier.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    if groups is not None:
        disp = GroupDisplay.from_predictions(
            y01,
            probs[main],
            groups,
            name=main,
            n_resamples=n_resamples,
            group_label=group_label.capitalize(),
        )
        disp.ax_.set_title(f"Per-{group_label} Brier score of {main}")
        disp.figure_.savefig(outdir / "groups.png", dpi=120, bbox_inches="tight")
        plt.close(disp.figure_)

    # ---- machine-readable
    summary = {
        "title": title,
        "n_steps": int(y01.shape[0]),
        "positive_rate": float(y01.mean()),
        "main": main,
        "warnings": warnings_,
        "yardsticks": yardstick_notes,
        "escalation_rate_at_threshold": escalation_rate,
        "group_label": group_label,
        "router": _router_summary(main_router),
        "comparison": table.to_dict(orient="records"),
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
        "costs": {"cost_slm": cost_slm, "cost_llm": cost_llm},
        "notes": list(notes),
    }
    (outdir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))

    # ---- prose
    wide = _fmt_table(table)
    lines = [f"# {title}", ""]
    lines += [f"> **Warning:** {w}" for w in warnings_]
    lines += [""] if warnings_ else []
    lines += [f"- {n}" for n in yardstick_notes]
    lines += [f"- {n}" for n in notes]
    lines += [
        f"- held-out steps: {y01.shape[0]:,}; escalation-needed rate "
        f"{y01.mean():.3f}; costs SLM {cost_slm:g}, LLM {cost_llm:g}",
        f"- router under study: **{main}** (threshold {threshold:.3f}, which "
        f"escalates {escalation_rate:.1%} of these steps)",
        "- every figure is `estimate [95% bootstrap CI]`"
        + (
            f" (cluster bootstrap over the groups: {group_label})"
            if groups is not None
            else ""
        )
        + f"; ECE uses {n_bins} uniform bins, as the reliability diagrams; "
        "worst-group CIs resample rows within each group",
        "",
        "## Comparison",
        "",
        wide.to_markdown(),
        "",
        "## Reliability-cost frontier",
        "",
        "![frontier](frontier.png)",
        "",
        "## Reliability diagrams",
        "",
        "![reliability](reliability.png)",
        "",
    ]
    if per_group is not None:
        lines += [
            f"## Per {group_label}",
            "",
            f"Worst {group_label} {per_group.attrs['worst_group']}: Brier "
            f"{per_group.attrs['worst_brier']:.4f}; CVaR of per-{group_label} "
            f"Brier {per_group.attrs['cvar_brier']:.4f}.",
            "",
            "![groups](groups.png)",
            "",
            per_group.round(4).to_markdown(),
            "",
        ]
    (outdir / "report.md").write_text("\n".join(lines))

    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *[
            "<p style='background:#fee;border:1px solid #c00;padding:6px'>"
            f"<b>Warning:</b> {html.escape(w.replace('**', ''))}</p>"
            for w in warnings_
        ],
        "<ul>",
        *[f"<li>{html.escape(n)}</li>" for n in yardstick_notes],
        *[f"<li>{html.escape(n)}</li>" for n in notes],
        f"<li>held-out steps: {y01.shape[0]:,}; escalation-needed rate "
        f"{y01.mean():.3f}</li><li>router under study: <b>{html.escape(main)}</b> "
        f"(threshold {threshold:.3f}, escalates {escalation_rate:.1%} of these "
        "steps)</li></ul>",
        "<h2>Comparison</h2>",
        wide.to_html(),
        "<h2>Reliability-cost frontier</h2><img src='frontier.png'>",
        "<h2>Reliability diagrams</h2><img src='reliability.png'>",
    ]
    if per_group is not None:
        page += [
            f"<h2>Per {html.escape(group_label)}</h2><img src='groups.png'>",
            per_group.round(4).to_html(),
        ]
    page.append("</body></html>")
    (outdir / "report.html").write_text("\n".join(page))
    return outdir
