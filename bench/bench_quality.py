"""Router quality on every real table the project ships, against plain baselines.

For each table, rows are dealt to ``--n-splits`` folds by whole hold-out units
(questions for the MMLU-Pro tables, games for TextWorld: ``GroupKFold`` with a
shuffle), every router is fitted on the other folds, and its out-of-fold
probabilities are pooled: every row is predicted once, by a router that never
saw its unit. On the pooled predictions ``compare_routers`` gives Brier, ECE
(binned and debiased), worst-group and CVaR-of-group Brier, AUROC and
frontier AUC with bootstrap CIs (clustered by hold-out unit; within-group for
the worst-group figures). Then the yardstick: the paired difference in Brier
and worst-group Brier between the default ``CVaRBrierRouter`` and sklearn's
``LogisticRegression`` on the same features, with a 95 % bootstrap CI.

Routers: ``CVaRBrierRouter()`` (default), ``cvar_weight=0`` (plain Brier), the
paper-size MLP, ``LogisticRouter`` (sklearn ``LogisticRegression``), HGB +
isotonic (``CalibratedClassifierCV``), the one-feature entropy and verifier
heuristics where the table has such a feature, random, and the hindsight
oracle (not deployable).

Usage: ``python bench/bench_quality.py [--tables NAME ...] [--n-splits 3]
[--n-resamples 200] [--quick]`` (``--quick``: default router and LR only).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from r2vcal import (
    PAPER_HIDDEN_LAYER_SIZES,
    CVaRBrierRouter,
    EntropyRouter,
    LogisticRouter,
    VerifierRouter,
    compare_routers,
)
from r2vcal.metrics import bootstrap_ci


@dataclass
class Table:
    """One real table: features, label, groups (for CVaR) and hold-out units."""

    name: str
    X: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray
    units: np.ndarray
    slm_success: np.ndarray
    llm_success: np.ndarray
    entropy: str | None = None
    verifier: str | None = None
    note: str = ""


def load_tables() -> dict[str, Callable[[], Table]]:
    """Every shipped real table, by name (loaded lazily)."""
    from r2vcal import datasets

    def mmlu(
        loader: Callable[..., Any], entropy: str, note: str
    ) -> Callable[[], Table]:
        def load() -> Table:
            ds = loader(as_frame=True)
            return Table(
                name=loader.__name__.removeprefix("load_"),
                X=ds.data,
                y=ds.target.to_numpy(),
                groups=ds.groups.to_numpy(),
                units=ds.frame["question_id"].to_numpy(),
                slm_success=ds.slm_success.to_numpy(),
                llm_success=ds.llm_success.to_numpy(),
                entropy=entropy,
                note=note,
            )

        return load

    def textworld(target: str, which: str = "tiny") -> Callable[[], Table]:
        loader = getattr(datasets, f"load_textworld_{which}")

        def load() -> Table:
            parts = [
                loader(subset=s, target=target, as_frame=True)
                for s in ("router", "test")
            ]
            frame = pd.concat([p.frame for p in parts], ignore_index=True)
            ds = parts[0]
            return Table(
                name=f"textworld_{which}[{target}]",
                X=frame[ds.feature_names].astype(np.float64),
                y=frame[target].to_numpy().astype(int),
                groups=frame["seed"].to_numpy(),
                units=frame["task_id"].to_numpy(),
                slm_success=frame["slm_step_success"].to_numpy().astype(bool),
                llm_success=frame["llm_step_success"].to_numpy().astype(bool),
                entropy="entropy_mean",
                verifier="verifier_max",
                note="router + test subsets pooled, held out by game (task_id)",
            )

        return load

    return {
        "mmlu_pro_cascade": mmlu(
            datasets.load_mmlu_pro_cascade,
            "hedge_rate",
            "text features of one 8B answer; entropy stand-in: hedge_rate",
        ),
        "mmlu_pro_agreement": mmlu(
            datasets.load_mmlu_pro_agreement,
            "answer_entropy",
            "K=8 small models' votes, 109 distinct feature vectors",
        ),
        "textworld_tiny[y_verifier]": textworld("y_verifier"),
        "textworld_tiny[y_counterfactual]": textworld("y_counterfactual"),
        "textworld_r2v[y_counterfactual]": textworld("y_counterfactual", "r2v"),
    }


def make_routers(table: Table, quick: bool) -> dict[str, Any]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    routers: dict[str, Any] = {
        "CVaRBrierRouter": CVaRBrierRouter(random_state=0),
        "LogisticRegression": LogisticRouter(),
    }
    if quick:
        return routers
    routers["CVaRBrierRouter(cvar_weight=0)"] = CVaRBrierRouter(
        cvar_weight=0.0, random_state=0
    )
    routers["CVaRBrierRouter(MLP 96x96)"] = CVaRBrierRouter(
        hidden_layer_sizes=PAPER_HIDDEN_LAYER_SIZES, random_state=0
    )
    routers["HGB+isotonic"] = CalibratedClassifierCV(
        HistGradientBoostingClassifier(max_iter=100, random_state=0),
        method="isotonic",
        cv=3,
    )
    if table.entropy:
        routers["entropy"] = EntropyRouter(table.entropy)
    if table.verifier:
        routers["verifier"] = VerifierRouter(table.verifier)
    return routers


def out_of_fold(
    table: Table, routers: dict[str, Any], n_splits: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Pooled out-of-fold probabilities and ranking scores of every router."""
    from r2vcal.baselines import risk_score

    n = table.y.shape[0]
    probs = {name: np.empty(n) for name in routers}
    scores = {name: np.empty(n) for name in routers}
    seconds = dict.fromkeys(routers, 0.0)
    cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in cv.split(table.X, table.y, groups=table.units):
        for name, proto in routers.items():
            est = clone(proto)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if isinstance(est, (CVaRBrierRouter, EntropyRouter, VerifierRouter)):
                    est.fit(
                        table.X.iloc[train], table.y[train], groups=table.groups[train]
                    )
                else:
                    est.fit(table.X.iloc[train], table.y[train])
            seconds[name] += time.perf_counter() - t0
            probs[name][test] = est.predict_proba(table.X.iloc[test])[:, 1]
            scores[name][test] = (
                risk_score(est, table.X.iloc[test])
                if hasattr(est, "risk_score")
                else probs[name][test]
            )
    return probs, scores, seconds


def paired_difference(
    table: Table,
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int,
) -> dict[str, tuple[float, float, float]]:
    """Brier and worst-group Brier of ``a`` minus ``b``, with 95 % bootstrap CIs."""
    y, g = table.y.astype(float), table.groups

    def brier(i: np.ndarray) -> float:
        return float(np.mean((a[i] - y[i]) ** 2) - np.mean((b[i] - y[i]) ** 2))

    def worst(i: np.ndarray) -> float:
        out = []
        for p in (a, b):
            sq = (p[i] - y[i]) ** 2
            out.append(max(sq[g[i] == k].mean() for k in np.unique(g[i])))
        return out[0] - out[1]

    idx = np.arange(y.shape[0])
    res = {}
    ci = bootstrap_ci(
        brier, idx, n_resamples=n_resamples, groups=table.units, random_state=0
    )
    res["brier"] = (ci.estimate, ci.low, ci.high)
    ci = bootstrap_ci(worst, idx, n_resamples=n_resamples, strata=g, random_state=0)
    res["worst_group_brier"] = (ci.estimate, ci.low, ci.high)
    return res


def evaluate_table(
    table: Table, *, n_splits: int = 3, n_resamples: int = 200, quick: bool = False
) -> tuple[pd.DataFrame, dict[str, tuple[float, float, float]], dict[str, float]]:
    """Comparison table, CVaR-minus-LR differences, and fit seconds per router."""
    routers = make_routers(table, quick)
    probs, scores, seconds = out_of_fold(table, routers, n_splits)
    arrays: dict[str, Any] = dict(probs)
    if not quick:
        rng = np.random.default_rng(0)
        arrays["random"] = np.full(table.y.shape[0], table.y.mean())
        scores["random"] = rng.random(table.y.shape[0])
        arrays["oracle (hindsight)"] = table.y.astype(float)
        scores["oracle (hindsight)"] = table.y.astype(float)
    comparison = compare_routers(
        arrays,
        table.X,
        table.y,
        groups=table.groups,
        slm_success=table.slm_success,
        llm_success=table.llm_success,
        scores=scores,
        n_resamples=n_resamples,
    )
    diff = paired_difference(
        table, probs["CVaRBrierRouter"], probs["LogisticRegression"], n_resamples
    )
    return comparison, diff, seconds


_COLUMNS = [
    "brier",
    "ece_debiased",
    "worst_group_brier",
    "cvar_group_brier",
    "auroc",
    "frontier_auc",
]


def _print(table: Table, comparison: pd.DataFrame, diff: dict, seconds: dict) -> None:
    pos = int(table.y.sum())
    print(
        f"\n## {table.name}: {len(table.y):,} rows, {pos:,} positives "
        f"({pos / len(table.y):.1%}), {len(np.unique(table.groups))} groups, "
        f"{len(np.unique(table.units)):,} hold-out units ({table.note})"
    )
    cell = comparison.apply(
        lambda r: (
            "n/a"
            if not np.isfinite(r.estimate)
            else f"{r.estimate:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"
        ),
        axis=1,
    )
    wide = comparison.assign(cell=cell).pivot(
        index="router", columns="metric", values="cell"
    )
    wide = wide.reindex(index=list(dict.fromkeys(comparison.router)))
    wide = wide[[c for c in _COLUMNS if c in wide.columns]]
    wide.insert(0, "fit_s", [f"{seconds.get(r, 0.0):.1f}" for r in wide.index])
    print(wide.to_markdown())
    for metric, (est, lo, hi) in diff.items():
        verdict = (
            "CVaR better" if hi < 0 else "LR better" if lo > 0 else "no difference"
        )
        print(
            f"CVaRBrierRouter - LogisticRegression, {metric}: {est:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] -> {verdict} (95% CI)"
        )


def main(argv: list[str] | None = None) -> None:
    tables = load_tables()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tables", nargs="*", default=list(tables), choices=list(tables)
    )
    parser.add_argument("--n-splits", type=int, default=3)
    parser.add_argument("--n-resamples", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args(argv)
    for name in a.tables:
        table = tables[name]()
        comparison, diff, seconds = evaluate_table(
            table, n_splits=a.n_splits, n_resamples=a.n_resamples, quick=a.quick
        )
        _print(table, comparison, diff, seconds)


if __name__ == "__main__":
    main()
