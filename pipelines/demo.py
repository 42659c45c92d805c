"""The whole R2V recipe end to end, at laptop scale: what ``make demo`` runs.

Usage::

    python -m pipelines.demo --out runs/demo

1. :mod:`pipelines.run` — TextWorld games, teacher trajectories under
   perturbation seeds, BC → verifier → DPO, rollouts of the frozen SLM into
   trajectory-feature tables (a router table on other games, a test table);
2. an offline router report on the test table (:func:`r2vcal.report.write_report`:
   reliability diagrams, offline frontier, per-seed table) for
   :class:`r2vcal.CVaRBrierRouter` and the baselines, fitted on the router table;
3. :mod:`pipelines.evaluate` — every router in closed loop on the held-out games
   and seeds, the hindsight oracle, and a round of retraining on mixed
   trajectories;
4. ``<out>/report.md`` and ``report.html`` tying the three together.

``--ship DIR`` copies the two trajectory-feature tables (with a summary) into
``DIR`` — how ``datasets/textworld_tiny`` was made.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines._cli import config_parser, run_cli
from r2vcal._render import Doc

__all__ = ["DemoConfig", "main", "make_parser", "report_doc"]


@dataclass
class DemoConfig:
    """End-to-end demo settings.

    Parameters
    ----------
    out : str
        Output folder.
    n_jobs : int
        Workers of the chain's parallel stages.
    dagger_rounds : int
        Mixed-trajectory retraining rounds of the evaluation (0: none; each
        round plays labelled episodes on every router-table game).
    n_test_games : int
        Held-out test games of the closed loop (× the run's 3 test seeds).
    shipped : bool
        Run the closed loop on the shipped table's SLM: the chain's BC model,
        which the dataset preset trains byte for byte (checked by SHA-256),
        with routers fitted on ``datasets/textworld_r2v``'s 2,784-step router
        table. False: the chain's own SLM and small router table.
    n_resamples : int
        Bootstrap resamples of the reports.
    ship : str or None
        Copy the trajectory-feature tables there (see module docstring).
    reuse_chain : bool
        Skip stage 1 when ``<out>/chain`` holds a finished run.
    """

    out: str = "runs/demo"
    n_jobs: int = 1
    dagger_rounds: int = 0
    n_test_games: int = 20
    shipped: bool = True
    n_resamples: int = 500
    ship: str | None = None
    reuse_chain: bool = False


def _offline_report(run: dict[str, Any], out: Path, n_resamples: int) -> dict[str, Any]:
    import pandas as pd

    train = pd.read_parquet(run["artifacts"]["router_table"])
    test = pd.read_parquet(run["artifacts"]["test_table"])
    return _table_report(
        train,
        test,
        out,
        n_resamples,
        title="Offline router report: TextWorld test table (SLM-only rollouts)",
        where=(run["artifacts"]["router_table"], run["artifacts"]["test_table"]),
    )


def _shipped_report(out: Path, n_resamples: int) -> dict[str, Any] | None:
    """The same offline report on the shipped ``datasets/textworld_r2v`` table."""
    from r2vcal.datasets import load_textworld_r2v

    try:
        train, test = (
            load_textworld_r2v(subset=s, as_frame=True).frame
            for s in ("router", "test")
        )
    except FileNotFoundError as exc:
        print(f"  skipped: {exc}")
        return None
    return _table_report(
        train,
        test,
        out,
        n_resamples,
        title="Offline router report: shipped table datasets/textworld_r2v",
        where=("textworld_r2v router subset", "textworld_r2v test subset"),
    )


def _table_report(
    train: Any,
    test: Any,
    out: Path,
    n_resamples: int,
    *,
    title: str,
    where: tuple[str, str],
) -> dict[str, Any]:
    from pipelines.evaluate import fit_routers, resolve_label
    from r2vcal.features import FEATURE_NAMES
    from r2vcal.report import write_report

    feats = list(FEATURE_NAMES)
    label = resolve_label(train)
    y = train[label].astype(int)
    fitted = fit_routers(train, label)
    names = {
        "CVaRBrierRouter": "cvar_brier",
        "cvar_weight=0": "brier_only",
        "entropy": "entropy",
        "verifier": "verifier",
    }
    routers = {shown: fitted[key] for shown, key in names.items()}
    write_report(
        out,
        routers,
        test[feats],
        test[label].astype(int),
        groups=test["seed"].to_numpy(),
        slm_success=test["slm_step_success"].astype(bool).to_numpy(),
        llm_success=test["llm_step_success"].astype(bool).to_numpy(),
        reference="entropy",
        title=title,
        notes=[
            f"fitted on {where[0]} ({len(train)} steps)",
            f"evaluated on {where[1]} ({len(test)} steps), "
            "held-out games and perturbation seeds",
            f"label: {label} (y_counterfactual: teacher at t, then the SLM, "
            "succeeds while the SLM alone fails; y_verifier: the verifier scores the "
            "teacher's action above every SLM candidate; the counterfactual label "
            "is used when it holds both classes)",
        ],
        n_resamples=n_resamples,
    )
    return {
        "label": label,
        "train_rows": len(train),
        "train_positives": int(y.sum()),
        "train_positive_rate": float(y.mean()),
        "test_rows": len(test),
        "test_positive_rate": float(test[label].mean()),
    }


def _closed_loop_setup(chain: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped table's SLM and router table for the closed loop (or None).

    ``datasets/textworld_r2v`` was rolled out by the BC model of its preset;
    the demo's chain trains the same model (same games, seeds and settings),
    so the closed loop runs that model with routers fitted on the shipped
    2,784-step table. The SHA-256 check says whether the two are identical on
    this machine (floating-point differences across CPUs can change the last
    bits; the report says so when they do).
    """
    from pipelines.models import fingerprints
    from r2vcal.datasets import get_data_home

    folder = get_data_home() / "textworld_r2v"
    table = folder / "textworld_r2v_router.parquet"
    if not table.is_file():
        print(f"  {table} not found: closed loop on the chain's own router table")
        return None
    art = chain["artifacts"]
    stats = json.loads((folder / "stats.json").read_text())
    mine = fingerprints(art["bc"], art["verifier"])
    same = {k: mine[k] == stats.get(k) for k in mine}
    if not all(same.values()):
        print(
            "  WARNING: the chain's BC SLM or verifier differs from the shipped "
            f"table's ({same}); routers are fitted on another model's features"
        )
    return {
        "slm": art["bc"],
        "router_table": str(table),
        "identical_to_shipped": same,
    }


def _agreement(episodes_csv: Path) -> dict[str, Any]:
    """SLM-only outcomes in closed loop vs the shipped test table's, per episode."""
    import pandas as pd

    from r2vcal.datasets import load_textworld_r2v

    eps = pd.read_csv(episodes_csv)
    mine = eps[eps["router"] == "slm_only"].set_index(["task_id", "seed"])["success"]
    ref = (
        load_textworld_r2v(subset="test", as_frame=True)
        .frame.groupby(["task_id", "seed"])["slm_success"]
        .first()
    )
    common = mine.index.intersection(ref.index)
    return {
        "slm_only_episodes_compared": len(common),
        "slm_only_outcomes_agree": int(
            (mine[common].astype(bool) == ref[common].astype(bool)).sum()
        ),
    }


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "—" if x != x else f"{x:.3f}"  # NaN: never reached
    return "—" if x is None else str(x)


def _headline_rows(res: Any, target: float) -> list[dict[str, str]]:
    """Per router: its cheapest arm reaching ``target`` success, else its best."""
    import pandas as pd

    rows = []
    for name, grp in res.groupby("router", sort=False):
        ok = grp[grp["success"] >= target - 1e-12]
        if len(ok):
            r, note = ok.loc[ok["llm_share"].idxmin()], "yes"
        else:
            r, note = grp.loc[grp["success"].idxmax()], "never"
        rate = r["threshold_rate"]
        rows.append(
            {
                "arm": str(name),
                "target rate": "—" if pd.isna(rate) else f"{rate:.2f}",
                "success [95 % CI]": f"{r['success']:.3f} "
                f"[{r['success_low']:.3f}, {r['success_high']:.3f}]",
                "LLM-call share [95 % CI]": f"{r['llm_share']:.3f} "
                f"[{r['llm_share_low']:.3f}, {r['llm_share_high']:.3f}]",
                f"reaches teacher ({target:.3f})?": note,
            }
        )
    return rows


def _headline_table(doc: Doc, csv: Path, ev: dict[str, Any]) -> Doc:
    """Per arm: success and LLM-call share with 95 % CIs (games resampled).

    Each router's row is its cheapest arm reaching the teacher's success
    (within the tolerance), else its most successful arm, marked "never".
    Nothing is added when the closed-loop table ``csv`` is missing.
    """
    import pandas as pd

    if not csv.is_file():
        return doc
    rows = _headline_rows(pd.read_csv(csv), float(ev["headline"]["target_success"]))
    ratios = ev["headline"].get("ratios", {})

    def ci(key: str) -> str:
        d = ratios.get(key)
        if not d:
            return "—"
        return f"{_fmt(d['estimate'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]"

    table = pd.DataFrame(rows)
    doc.heading("Headline: closed loop on held-out games × held-out seeds")
    doc.table(table, index=False, highlight=table["arm"] == "cvar_brier")
    return doc.para(
        "CVaR-Brier ÷ entropy share at the teacher's success: "
        f"**{ci('cvar_over_entropy')}** (paper: ≤ 0.5); ÷ best single-feature "
        f"baseline: **{ci('cvar_over_best')}**. CIs resample whole games."
    )


def _chain_bullets(chain: dict[str, Any]) -> list[str]:
    """Test success of the BC SLM, the BC+DPO SLM and the teacher."""
    names = {"bc": "BC SLM", "bc_dpo": "BC+DPO SLM", "teacher": "teacher"}
    lines = []
    for key, name in names.items():
        v = (chain.get("success") or {}).get(key)
        if isinstance(v, dict):
            ci = v.get("ci") or v.get("ci_episodes") or [None, None]
            lines.append(
                f"{name}: success {_fmt(v['rate'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] "
                f"on {v['n_episodes']} test episodes ({v['n_games']} games)"
            )
    return lines


def _closed_loop_bullets(
    ev: dict[str, Any], shipped: dict[str, Any] | None
) -> list[str]:
    """The closed loop's key numbers, its setup and the shipped table."""
    from pipelines.evaluate import low_budget_lines

    h = ev["headline"]
    best = h["at_entropy_best"]
    lines = [
        f"teacher-only success {_fmt(h['teacher_only_success'])}; SLM-only "
        f"{_fmt(h['slm_only_success'])}",
        "LLM-call share to reach the teacher's success (within 2 points): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in h["share_at_target"].items()),
        f"CVaR-Brier ÷ entropy router share: {_fmt(h['cvar_over_entropy_share'])} "
        "(paper's claim: ≤ 0.5)",
        f"at the entropy router's best success ({_fmt(best['success'])})"
        ": LLM-call share "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in best["share"].items())
        + "; CVaR-Brier ÷ entropy "
        + _fmt(best["cvar_over_entropy_share"]),
    ]
    lines += low_budget_lines(h)
    setup = ev.get("setup")
    if setup:
        same = all(setup["identical_to_shipped"].values())
        lines.append(
            "closed-loop SLM: the chain's BC model "
            + (
                "(byte-identical to the shipped table's SLM and verifier)"
                if same
                else "(**differs** from the shipped table's SLM or verifier on "
                "this machine: routers were fitted on another model's features)"
            )
            + "; routers fitted on the shipped router table; SLM-only outcomes "
            f"agree with the shipped test table on {setup['slm_only_outcomes_agree']}"
            f"/{setup['slm_only_episodes_compared']} episodes"
        )
    if "mixed" in ev:
        m = ev["mixed"]
        lines.append(
            f"mixed trajectories: ECE {_fmt(m['before']['ece'])} → "
            f"{_fmt(m['after']['ece'])}, worst-seed Brier "
            f"{_fmt(m['before']['worst_seed_brier'])} → "
            f"{_fmt(m['after']['worst_seed_brier'])} after retraining"
        )
    lines.append(
        "shipped table datasets/textworld_r2v: "
        + (
            f"{shipped['train_rows']} router steps, {shipped['train_positives']} "
            f"positives of {shipped['label']}; offline report in shipped/"
            if shipped
            else "not found (make dataset-textworld)"
        )
    )
    return lines


def _links(out: Path) -> tuple[str, str]:
    """Links to the detailed reports that exist: (HTML, Markdown)."""
    pages = [
        ("closed loop", "evaluate/report"),
        ("offline router report", "offline/report"),
        ("shipped table report", "shipped/report"),
    ]
    pages = [(t, p) for t, p in pages if (out / f"{p}.html").is_file()]
    page = " · ".join(f"<a href='{p}.html'>{html.escape(t)}</a>" for t, p in pages)
    md = ", ".join(f"[{t}]({p}.md)" for t, p in pages)
    md += ", " if md else ""
    return (
        f"<p>{page} · <a href='chain/run_summary.json'>chain summary</a></p>",
        f"Details: {md}[chain summary](chain/run_summary.json).",
    )


def report_doc(out: Path, summary: dict[str, Any]) -> Doc:
    """The demo's index page as one :class:`r2vcal._render.Doc`.

    It opens with the headline table (per arm: success and LLM-call share
    with CIs, the CVaR-Brier row highlighted), then the chain's and the closed
    loop's numbers, the figures that exist and links to the detailed reports.

    Parameters
    ----------
    out : Path
        The demo folder.
    summary : dict
        The demo summary (``demo_summary.json``).

    Returns
    -------
    Doc
        Written by :func:`main` to ``report.md`` and ``report.html``.
    """
    chain, ev = summary["chain"], summary["evaluate"]
    doc = Doc("r2vcal demo: the R2V recipe on TextWorld, end to end")
    _headline_table(doc, out / "evaluate" / "closed_loop.csv", ev)
    seconds = summary["seconds"]
    doc.para(
        f"Total wall time {seconds['total']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
        + ")."
    )
    doc.heading("Chain")
    doc.para(
        "Stage wall times (s): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in chain.get("seconds", {}).items())
    )
    doc.bullets(_chain_bullets(chain))
    doc.heading("Closed loop (held-out games × held-out perturbation seeds)")
    doc.bullets(_closed_loop_bullets(ev, summary.get("shipped_table")))
    for src, alt in [
        ("evaluate/frontier.png", "closed-loop frontier"),
        ("evaluate/mixed_reliability.png", "mixed reliability"),
        ("offline/reliability.png", "offline reliability"),
    ]:  # mixed_reliability.png needs dagger_rounds > 0
        doc.image(src, alt, root=out)
    return doc.html_block(*_links(out))


def main(cfg: DemoConfig) -> dict[str, Any]:
    """Run the chain, the offline report and the closed-loop evaluation."""
    from pipelines import evaluate, run

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    print("[demo 1/3] chain: games, teacher trajectories, BC, verifier, DPO, rollouts")
    done = out / "chain" / "run_summary.json"
    prior = json.loads(done.read_text()) if done.is_file() else {}
    if cfg.reuse_chain and "total_seconds" in prior:
        print("  reusing", done)
        chain = prior
    else:
        chain = run.main(run.RunConfig(out=str(out / "chain"), n_jobs=cfg.n_jobs))
    seconds["chain"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    print("[demo 2/3] offline router report on the test table")
    offline = _offline_report(chain, out / "offline", cfg.n_resamples)
    print("  and on the shipped table datasets/textworld_r2v")
    shipped = _shipped_report(out / "shipped", cfg.n_resamples)
    seconds["offline_report"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    setup = _closed_loop_setup(chain) if cfg.shipped else None
    print(
        f"[demo 3/3] closed loop on {cfg.n_test_games} held-out games × "
        f"{len(chain['test_seeds'])} seeds"
        + (": the shipped table's SLM and router table" if setup else "")
    )
    ev = evaluate.main(
        evaluate.EvaluateConfig(
            run=str(out / "chain"),
            out=str(out / "evaluate"),
            slm=setup["slm"] if setup else None,
            router_table=setup["router_table"] if setup else None,
            n_test_tasks=cfg.n_test_games,
            dagger_rounds=cfg.dagger_rounds,
            n_resamples=cfg.n_resamples,
        )
    )
    if setup:
        setup.update(_agreement(out / "evaluate" / "episodes.csv"))
        ev["setup"] = setup
    seconds["evaluate"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    summary = {
        "config": asdict(cfg),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "chain": chain,
        "offline": offline,
        "shipped_table": shipped,
        "evaluate": ev,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report_doc(out, summary).write(out)
    if cfg.ship:
        ship(chain, Path(cfg.ship))
    print(f"report: {out / 'report.html'}")
    return summary


def ship(chain: dict[str, Any], dest: Path) -> None:
    """Copy the router and test tables and the chain summary to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    art = chain["artifacts"]
    shutil.copyfile(art["router_table"], dest / "textworld_tiny_router.parquet")
    shutil.copyfile(art["test_table"], dest / "textworld_tiny_test.parquet")
    keep = {k: v for k, v in chain.items() if k != "artifacts"}
    (dest / "chain_summary.json").write_text(json.dumps(keep, indent=2, default=str))


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`DemoConfig`."""
    return config_parser(DemoConfig, "The R2V recipe end to end (make demo).")


if __name__ == "__main__":
    run_cli(make_parser(), DemoConfig, main, show=None)
