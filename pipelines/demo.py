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

__all__ = ["DemoConfig", "main", "make_parser"]


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
        "test_table": str(folder / "textworld_r2v_test.parquet"),
        "identical_to_shipped": same,
    }


def _agreement(episodes_csv: Path, setup: dict[str, Any]) -> dict[str, Any]:
    """SLM-only outcomes in closed loop vs the shipped test table's, per episode."""
    import pandas as pd

    eps = pd.read_csv(episodes_csv)
    mine = eps[eps["router"] == "slm_only"].set_index(["task_id", "seed"])["success"]
    ref = (
        pd.read_parquet(setup["test_table"])
        .groupby(["task_id", "seed"])["slm_success"]
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
        return f"{x:.3f}"
    return "—" if x is None else str(x)


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto}"
    "table.headline{border-collapse:collapse;margin:1em 0}"
    "table.headline td,table.headline th{border:1px solid #ccc;padding:.3em .7em;"
    "text-align:right}table.headline td:first-child{text-align:left}"
    "table.headline tr.hl{background:#eef6ee}</style>"
)


def _headline_table(csv: Path, ev: dict[str, Any]) -> str:
    """Per arm: success and LLM-call share with 95 % CIs (games resampled).

    Each router's row is its cheapest arm reaching the teacher's success
    (within the tolerance), else its most successful arm, marked "never".
    """
    import pandas as pd

    if not csv.is_file():
        return ""
    res = pd.read_csv(csv)
    target = float(ev["headline"]["target_success"])
    rows = []
    for name, grp in res.groupby("router", sort=False):
        ok = grp[grp["success"] >= target - 1e-12]
        if len(ok):
            r, note = ok.loc[ok["llm_share"].idxmin()], "yes"
        else:
            r, note = grp.loc[grp["success"].idxmax()], "never"
        rate = r["threshold_rate"]
        rows.append(
            f"<tr class='{'hl' if name == 'cvar_brier' else ''}'><td>{name}</td>"
            f"<td>{'—' if pd.isna(rate) else f'{rate:.2f}'}</td>"
            f"<td>{r['success']:.3f} [{r['success_low']:.3f}, {r['success_high']:.3f}]"
            f"</td><td>{r['llm_share']:.3f} [{r['llm_share_low']:.3f}, "
            f"{r['llm_share_high']:.3f}]</td><td>{note}</td></tr>"
        )
    ratios = ev["headline"].get("ratios", {})

    def ci(key: str) -> str:
        d = ratios.get(key)
        if not d:
            return "—"
        return f"{_fmt(d['estimate'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]"

    return (
        "<h2>Headline: closed loop on held-out games × held-out seeds</h2>"
        "<table class='headline'><tr><th>arm</th><th>target rate</th>"
        "<th>success [95 % CI]</th><th>LLM-call share [95 % CI]</th>"
        f"<th>reaches teacher ({target:.3f})?</th></tr>"
        + "".join(rows)
        + "</table><p>CVaR-Brier ÷ entropy share at the teacher's success: "
        f"<b>{ci('cvar_over_entropy')}</b> (paper: ≤ 0.5); ÷ best single-feature "
        f"baseline: <b>{ci('cvar_over_best')}</b>. CIs resample whole games.</p>"
    )


def _index(out: Path, summary: dict[str, Any]) -> None:
    chain = summary["chain"]
    ev = summary["evaluate"]
    h = ev["headline"]
    shipped = summary.get("shipped_table")
    lines = [
        "# r2vcal demo: the R2V recipe on TextWorld, end to end",
        "",
        f"Total wall time {summary['seconds']['total']:.0f} s "
        + "("
        + ", ".join(
            f"{k} {v:.0f} s" for k, v in summary["seconds"].items() if k != "total"
        )
        + ").",
        "",
        "## Chain",
        "",
        "Stage wall times (s): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in chain.get("seconds", {}).items()),
        "",
    ]
    names = {"bc": "BC SLM", "bc_dpo": "BC+DPO SLM", "teacher": "teacher"}
    for key, name in names.items():
        v = (chain.get("success") or {}).get(key)
        if isinstance(v, dict):
            ci = v.get("ci") or v.get("ci_episodes") or [None, None]
            lines.append(
                f"- {name}: success {_fmt(v['rate'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] "
                f"on {v['n_episodes']} test episodes ({v['n_games']} games)"
            )
    lines += [
        "",
        "## Closed loop (held-out games × held-out perturbation seeds)",
        "",
        f"- teacher-only success {_fmt(h['teacher_only_success'])}; SLM-only "
        f"{_fmt(h['slm_only_success'])}",
        "- LLM-call share to reach the teacher's success (within 2 points): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in h["share_at_target"].items()),
        f"- CVaR-Brier ÷ entropy router share: {_fmt(h['cvar_over_entropy_share'])} "
        "(paper's claim: ≤ 0.5)",
        f"- at the entropy router's best success ({_fmt(h['at_entropy_best']['success'])})"
        ": LLM-call share "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in h["at_entropy_best"]["share"].items())
        + "; CVaR-Brier ÷ entropy "
        + _fmt(h["at_entropy_best"]["cvar_over_entropy_share"]),
    ]
    setup = ev.get("setup")
    if setup:
        same = all(setup["identical_to_shipped"].values())
        lines.append(
            "- closed-loop SLM: the chain's BC model "
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
            f"- mixed trajectories: ECE {_fmt(m['before']['ece'])} → "
            f"{_fmt(m['after']['ece'])}, worst-seed Brier "
            f"{_fmt(m['before']['worst_seed_brier'])} → "
            f"{_fmt(m['after']['worst_seed_brier'])} after retraining"
        )
    lines += [
        "",
        "- shipped table datasets/textworld_r2v: "
        + (
            f"{shipped['train_rows']} router steps, {shipped['train_positives']} "
            f"positives of {shipped['label']}; offline report in shipped/"
            if shipped
            else "not found (make dataset-textworld)"
        ),
        "",
        "![closed-loop frontier](evaluate/frontier.png)",
        "",
        "Details: [closed loop](evaluate/report.md), "
        "[offline router report](offline/report.md), "
        "[chain summary](chain/run_summary.json).",
    ]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    items = [html.escape(x[2:]) for x in lines if x.startswith("- ")]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>r2vcal demo</title>",
        _STYLE,
        "</head><body><h1>r2vcal demo: the R2V recipe on TextWorld</h1>",
        _headline_table(out / "evaluate" / "closed_loop.csv", ev),
        f"<p>{html.escape(lines[2])}</p><ul>",
        *[f"<li>{x}</li>" for x in items],
        "</ul><img src='evaluate/frontier.png' alt='frontier'>",
        "<img src='evaluate/mixed_reliability.png' alt='mixed reliability'>",
        "<img src='offline/reliability.png' alt='reliability'>",
        "<p><a href='evaluate/report.html'>closed loop</a> · "
        "<a href='offline/report.html'>offline router report</a> · "
        "<a href='shipped/report.html'>shipped table report</a></p>",
        "</body></html>",
    ]
    (out / "report.html").write_text("\n".join(page))


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
        setup.update(_agreement(out / "evaluate" / "episodes.csv", setup))
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
    _index(out, summary)
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
