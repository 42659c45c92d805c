"""Closed-loop evaluation of routers, and retraining on mixed trajectories.

Usage::

    python -m pipelines.evaluate --run runs/demo --out runs/demo/evaluate

Every arm plays complete episodes on held-out tasks under held-out
perturbation seeds. At each step the frozen SLM samples ``k`` candidates, the
verifier scores them, and a :class:`r2vcal.cascade.StepCascade` decides; an
escalated step is **re-executed by the teacher** (the environment expert) and
the episode goes on from the state that action produced. Success is what the
environment says at the end — never assumed.

Arms:

* ``slm_only`` (budget 0) and ``teacher_only`` (threshold 0);
* ``entropy``, ``verifier``: :class:`r2vcal.EntropyRouter` /
  :class:`r2vcal.VerifierRouter`; ``random``: :class:`r2vcal.RandomRouter`;
  ``cvar_brier``: :class:`r2vcal.CVaRBrierRouter`; ``brier_only``: the same
  router with ``cvar_weight=0`` — each fitted on the router table (SLM-only
  rollouts on other games) and run at the thresholds that escalate the target
  shares ``rates`` of that table's steps, each ranking steps by its
  :func:`r2vcal.baselines.risk_score` (:class:`RankedRouter`; the raw feature
  for entropy/verifier, so every router reaches every rate),
  so arms meet at matched escalation rates;
* ``oracle`` (not deployable): escalates exactly when the SLM's proposed action
  differs from the teacher's and leads to a state from which the SLM alone
  fails (found by replaying the seeded episode and letting the SLM finish —
  hindsight). It reaches the teacher's success with the fewest calls this
  rule can find.

Reported per arm, with 95 % bootstrap CIs clustered by task: success, LLM-call
share (escalated steps ÷ steps), cost per episode (``cost_slm`` per step plus
``cost_llm`` per teacher call), per-seed success, the worst seed and the CVaR
of per-seed failure. The headline: each router's LLM-call share at the
teacher-only success (within ``success_tolerance``), as a ratio to the entropy
router's.

Mixed trajectories (DAgger-style, ``dagger_rounds``): a router trained on
SLM-only rollouts is deployed on trajectories where some steps were the
teacher's. Each round runs the current CVaR router in the loop on the router
table's tasks under fresh seeds, labels every visited step counterfactually
(the SLM's action then the SLM alone fails, while the teacher's action then the
SLM alone succeeds), adds those rows and refits. Before/after ECE and
worst-seed Brier are measured on mixed trajectories of the test arm (the
original router in the loop on the test tasks), labelled the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines._cli import cli_options, config_parser, run_cli
from pipelines.agent import POLICIES, build_agent
from pipelines.closed_loop import ClosedLoop
from pipelines.envs import make_env
from r2vcal._render import Doc
from r2vcal.cascade import SELECT_RULES

__all__ = [
    "ClosedLoop",
    "EvaluateConfig",
    "RankedRouter",
    "fit_routers",
    "headline_ratios",
    "low_budget_comparison",
    "low_budget_lines",
    "main",
    "make_parser",
    "report_doc",
    "resolve_label",
    "write_markdown",
]

_DEFAULT_RATES = (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class EvaluateConfig:
    """Closed-loop evaluation settings.

    Parameters
    ----------
    run : str
        A :mod:`pipelines.run` output folder; its ``run_summary.json`` gives the
        SLM, verifier, router table, environment and seeds (fields below left
        at None are taken from it).
    out : str
        Output folder (default ``<run>/evaluate``).
    slm, verifier, router_table : str, optional
        Override the run's artifacts.
    policy, select : str, optional
        Override the run's SLM policy (``"score"``/``"generate"``) and
        selection rule (:func:`pipelines.rollout.build_agent`).
    label : str
        Label column of the router table the routers are fitted on and of the
        mixed-trajectory rows. ``"auto"``: ``y_counterfactual`` when it holds
        both classes, else ``y_verifier`` (a weak SLM rarely recovers after one
        teacher step, so the counterfactual label can be all zeros).
    test_seeds : list of int, optional
        Perturbation seeds of the test episodes (default: the run's).
    n_test_tasks : int, optional
        The first ``n_test_tasks`` games of the test split; more than the
        run's test split holds extends it (TextWorld generates the extra games
        from the same game-seed range, still disjoint from every other split).
    rates : list of float
        Target escalation shares that set each router's thresholds.
    success_tolerance : float
        "At the teacher's success" means within this many points (0.02).
    cost_slm, cost_llm : float
        Step and teacher-call costs.
    cvar_tail : float
        Tail of the per-seed failure CVaR.
    dagger_rounds : int
        Rounds of retraining on mixed trajectories (0 skips).
    dagger_seeds : list of int
        Perturbation seeds of the first round's mixed episodes (later rounds
        shift them by ``100 * round``).
    n_resamples : int
        Bootstrap resamples.
    random_state : int
    progress : bool
    """

    run: str = "runs/demo"
    out: str | None = None
    slm: str | None = None
    verifier: str | None = None
    router_table: str | None = None
    policy: str | None = field(
        default=None, metadata=cli_options(choices=sorted(POLICIES))
    )
    select: str | None = field(
        default=None, metadata=cli_options(choices=sorted(SELECT_RULES))
    )
    label: str = "auto"
    test_seeds: list[int] | None = None
    n_test_tasks: int | None = None
    rates: list[float] = field(default_factory=lambda: list(_DEFAULT_RATES))
    success_tolerance: float = 0.02
    cost_slm: float = 1.0
    cost_llm: float = 10.0
    cvar_tail: float = 0.2
    dagger_rounds: int = 1
    dagger_seeds: list[int] = field(default_factory=lambda: [3000, 3001, 3002])
    n_resamples: int = 1000
    random_state: int = 0
    progress: bool = True


# ----------------------------------------------------------------- metrics
def _share(calls: np.ndarray, steps: np.ndarray) -> float:
    return float(np.sum(calls) / max(np.sum(steps), 1))


def arm_metrics(
    episodes: pd.DataFrame,
    *,
    cost_slm: float,
    cost_llm: float,
    cvar_tail: float = 0.2,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> dict[str, Any]:
    """Success, LLM-call share, cost and per-seed figures of one arm's episodes.

    CIs are cluster-bootstrap percentiles over tasks.
    """
    from r2vcal.metrics import bootstrap_ci, cvar

    s = episodes["success"].to_numpy(float)
    calls = episodes["llm_calls"].to_numpy(float)
    steps = episodes["steps"].to_numpy(float)
    cost = cost_slm * steps + cost_llm * calls
    kw = {
        "n_resamples": n_resamples,
        "groups": episodes["task_id"].to_numpy(),
        "random_state": random_state,
    }
    succ = bootstrap_ci(np.mean, s, **kw)
    share = bootstrap_ci(_share, calls, steps, **kw)
    cst = bootstrap_ci(np.mean, cost, **kw)
    per_seed = episodes.groupby("seed")["success"].mean()
    return {
        "episodes": len(episodes),
        "success": succ.estimate,
        "success_low": succ.low,
        "success_high": succ.high,
        "llm_share": share.estimate,
        "llm_share_low": share.low,
        "llm_share_high": share.high,
        "cost": cst.estimate,
        "cost_low": cst.low,
        "cost_high": cst.high,
        "worst_seed_success": float(per_seed.min()),
        "cvar_seed_failure": float(cvar(1.0 - per_seed.to_numpy(), cvar_tail)),
    }


def share_at_success(table: pd.DataFrame, router: str, target: float) -> float:
    """Smallest LLM-call share at which ``router`` reaches ``target`` success."""
    rows = table[(table["router"] == router) & (table["success"] >= target - 1e-12)]
    return float(rows["llm_share"].min()) if len(rows) else float("nan")


def _calibration(
    frame: pd.DataFrame, prob: np.ndarray, label: str = "y_counterfactual"
) -> dict[str, float]:
    from r2vcal.metrics import expected_calibration_error

    y = frame[label].to_numpy(float)
    brier = (prob - y) ** 2
    per_seed = pd.Series(brier).groupby(frame["seed"].to_numpy()).mean()
    return {
        "rows": len(frame),
        "positives": int(y.sum()),
        "ece": float(expected_calibration_error(y, prob, n_bins=10)),
        "brier": float(brier.mean()),
        "worst_seed_brier": float(per_seed.max()),
    }


# ------------------------------------------------------------------- plots
def plot_frontier(table: pd.DataFrame, path: Path) -> None:
    """Closed-loop success against LLM-call share, one curve per router."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, grp in table[table["threshold_rate"].notna()].groupby("router"):
        grp = grp.sort_values("llm_share")
        ax.errorbar(
            grp["llm_share"],
            grp["success"],
            yerr=[
                grp["success"] - grp["success_low"],
                grp["success_high"] - grp["success"],
            ],
            marker="o",
            capsize=2,
            label=name,
            alpha=0.85,
        )
    marks = {"slm_only": "s", "teacher_only": "^", "oracle": "*"}
    for name, m in marks.items():
        row = table[table["router"] == name]
        if len(row):
            ax.scatter(
                row["llm_share"],
                row["success"],
                marker=m,
                s=110,
                zorder=5,
                color="black" if name != "oracle" else "gold",
                edgecolor="black",
                label=name
                + (" (hindsight, not deployable)" if name == "oracle" else ""),
            )
    ax.set_xlabel("LLM-call share (escalated steps / steps)")
    ax.set_ylabel("episode success (closed loop)")
    ax.set_title("Closed-loop reliability-cost frontier (95% CI over tasks)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mixed_reliability(
    frame: pd.DataFrame,
    probs: dict[str, np.ndarray],
    path: Path,
    label: str = "y_counterfactual",
) -> None:
    """Reliability diagrams on held-out mixed trajectories, before/after."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from r2vcal.plotting import ReliabilityDisplay

    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    y = frame[label].to_numpy()
    for name, p in probs.items():
        ReliabilityDisplay.from_predictions(y, p, n_bins=8, name=name, ax=ax)
    ax.set_title("Mixed trajectories (router in the loop), held out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------- main
class _Coin:
    """:class:`r2vcal.RandomRouter` in the loop: a fresh uniform draw per step.

    ``predict_proba`` is the draw, so the threshold ``1 - rate`` escalates a
    share ``rate`` of the steps at random (RandomRouter's ``route`` rule).
    """

    n_features_in_ = 18
    cost_slm, cost_llm = 1.0, 10.0

    def __init__(self, random_state: int) -> None:
        self._rng = np.random.default_rng(random_state)

    def predict_proba(self, X: Any) -> np.ndarray:
        u = self._rng.random(len(X))
        return np.column_stack([1.0 - u, u])


class RankedRouter:
    """A router deciding by the rank of its ``risk_score`` among reference steps.

    ``predict_proba`` returns, as the escalation "probability", the share of
    the reference steps (the router table) whose risk score is at most this
    step's: a monotone map of :func:`r2vcal.baselines.risk_score`, so a
    threshold on it is a threshold on the raw score. EntropyRouter and
    VerifierRouter rank by their raw feature, which keeps distinct values
    apart where their isotonic probabilities tie, so every router reaches
    every target escalation rate up to the ties of its own score.

    Parameters
    ----------
    router : fitted router
    X_ref : array-like
        Reference steps (the router table's features).
    """

    def __init__(self, router: Any, X_ref: Any) -> None:
        from r2vcal.baselines import risk_score

        self.router = router
        self.ref_ = np.sort(risk_score(router, X_ref))
        self.n_features_in_ = getattr(router, "n_features_in_", None)
        if hasattr(router, "feature_names_in_"):
            self.feature_names_in_ = router.feature_names_in_
        self.cost_slm = getattr(router, "cost_slm", 1.0)
        self.cost_llm = getattr(router, "cost_llm", 10.0)

    def rank(self, X: Any) -> np.ndarray:
        """Share of reference steps whose risk score is <= each step's."""
        from r2vcal.baselines import risk_score

        s = risk_score(self.router, X)
        return np.searchsorted(self.ref_, s, side="right") / len(self.ref_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[1 - rank, rank]`` (see the class docstring)."""
        u = self.rank(X)
        return np.column_stack([1.0 - u, u])

    def threshold_for(self, rate: float) -> tuple[float, float]:
        """Threshold on the rank whose reference escalation share is nearest ``rate``.

        Returns
        -------
        threshold : float
        achieved : float
            The share of reference steps escalated at that threshold.
        """
        n = len(self.ref_)
        u = np.searchsorted(self.ref_, self.ref_, side="right") / n
        cands = np.unique(u)
        shares = np.array([(u >= c).mean() for c in cands])
        i = int(np.argmin(np.abs(shares - rate) + 1e-9 * np.arange(len(cands))))
        return float(cands[i]), float(shares[i])


_HEADLINE_ROUTERS = ("cvar_brier", "brier_only", "entropy", "verifier", "random")
_SINGLE_FEATURE = ("entropy", "verifier")


def _headline_from(
    succ: np.ndarray,
    n_ep: np.ndarray,
    calls: np.ndarray,
    steps: np.ndarray,
    arms: list[tuple[str, Any]],
    tol: float,
) -> dict[str, float]:
    """Shares at the teacher's success and the ratios, from per-arm totals."""
    rate = succ / np.maximum(n_ep, 1)
    share = calls / np.maximum(steps, 1)
    names = [a[0] for a in arms]
    target = float(rate[names.index("teacher_only")]) - tol
    out: dict[str, float] = {"target_success": target}
    for r in _HEADLINE_ROUTERS:
        idx = [i for i, n in enumerate(names) if n == r and rate[i] >= target - 1e-12]
        out[r] = float(min(share[i] for i in idx)) if idx else float("nan")
    singles = [out[r] for r in _SINGLE_FEATURE if np.isfinite(out[r])]
    out["best_single_feature"] = min(singles) if singles else float("nan")
    for key, ref in (("entropy", out["entropy"]), ("best", out["best_single_feature"])):
        ok = np.isfinite(out["cvar_brier"]) and np.isfinite(ref) and ref > 0
        out[f"cvar_over_{key}"] = out["cvar_brier"] / ref if ok else float("nan")
    return out


def headline_ratios(
    episodes: pd.DataFrame,
    *,
    tolerance: float = 0.02,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> dict[str, Any]:
    """LLM-call share each router needs to reach the teacher's success, with CIs.

    For every router the smallest LLM-call share among its arms whose success
    is within ``tolerance`` of the teacher-only success (NaN when no arm gets
    there), and the ratios CVaR-Brier ÷ entropy and CVaR-Brier ÷ the best
    single-feature baseline (the smaller of entropy's and verifier's shares).
    The 95 % CIs resample whole games (tasks) with replacement and recompute
    the target, every arm's success and share, and the ratios; ``defined``
    is the share of resamples where a figure exists.

    Parameters
    ----------
    episodes : DataFrame
        One row per episode: ``router``, ``threshold_rate``, ``task_id``,
        ``success``, ``llm_calls``, ``steps``.
    tolerance : float, default=0.02
    n_resamples : int, default=1000
    random_state : int, default=0

    Returns
    -------
    dict
        Per figure: ``estimate``, ``low``, ``high``, ``defined``.
    """
    ep = episodes.copy()
    ep["arm"] = list(zip(ep["router"], ep["threshold_rate"].astype(str), strict=True))
    arms = list(dict.fromkeys(ep["arm"]))
    tasks = sorted(ep["task_id"].unique())
    cube = {}
    for col in ("success", "llm_calls", "steps"):
        cube[col] = (
            ep.pivot_table(index="arm", columns="task_id", values=col, aggfunc="sum")
            .reindex(index=arms, columns=tasks)
            .fillna(0.0)
            .to_numpy(float)
        )
    cube["n"] = (
        ep.pivot_table(index="arm", columns="task_id", values="steps", aggfunc="size")
        .reindex(index=arms, columns=tasks)
        .fillna(0.0)
        .to_numpy(float)
    )

    def at(w: np.ndarray) -> dict[str, float]:
        return _headline_from(
            cube["success"] @ w,
            cube["n"] @ w,
            cube["llm_calls"] @ w,
            cube["steps"] @ w,
            arms,
            tolerance,
        )

    point = at(np.ones(len(tasks)))
    rng = np.random.default_rng(random_state)
    draws = [
        at(np.bincount(rng.integers(0, len(tasks), len(tasks)), minlength=len(tasks)))
        for _ in range(n_resamples)
    ]
    out: dict[str, Any] = {}
    for key, est in point.items():
        vals = np.array([d[key] for d in draws], float)
        fin = vals[np.isfinite(vals)]
        out[key] = {
            "estimate": est,
            "low": float(np.quantile(fin, 0.025)) if len(fin) else float("nan"),
            "high": float(np.quantile(fin, 0.975)) if len(fin) else float("nan"),
            "defined": float(len(fin) / max(len(vals), 1)),
        }
    out["n_games"] = len(tasks)
    return out


def resolve_label(table: pd.DataFrame, label: str = "auto") -> str:
    """The label column to fit on (``"auto"``: see :class:`EvaluateConfig`)."""
    if label != "auto":
        if label not in table:
            raise ValueError(f"The router table has no label column {label!r}.")
        return label
    if table["y_counterfactual"].astype(int).nunique() == 2:
        return "y_counterfactual"
    return "y_verifier"


def fit_routers(
    table: pd.DataFrame,
    label: str,
    *,
    cost_slm: float = 1.0,
    cost_llm: float = 10.0,
    random_state: int = 0,
) -> dict[str, Any]:
    """The routers the evaluation compares, fitted on a trajectory-feature table.

    Parameters
    ----------
    table : DataFrame
        Rows with :data:`r2vcal.features.FEATURE_NAMES`, ``label`` and ``seed``.
    label : str
        The 0/1 label column (see :func:`resolve_label`).
    cost_slm, cost_llm : float
    random_state : int

    Returns
    -------
    dict
        ``cvar_brier``, ``brier_only`` (``cvar_weight=0``), ``entropy``,
        ``verifier``, and ``random`` (a fresh uniform draw per step).
    """
    from r2vcal import CVaRBrierRouter, EntropyRouter, VerifierRouter
    from r2vcal.features import FEATURE_NAMES

    X = table[list(FEATURE_NAMES)]
    y = table[label].astype(int).to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"The router table's label {label!r} has a single class "
            f"({int(y[0]) if len(y) else 'empty'} on all {len(y)} rows); the routers "
            "cannot be fitted. Roll out more episodes or use another label."
        )
    groups = table["seed"].to_numpy()
    costs = {"cost_slm": cost_slm, "cost_llm": cost_llm}
    return {
        "cvar_brier": CVaRBrierRouter(random_state=random_state, **costs).fit(
            X, y, groups=groups
        ),
        "brier_only": CVaRBrierRouter(
            cvar_weight=0.0, random_state=random_state, **costs
        ).fit(X, y, groups=groups),
        "entropy": EntropyRouter(**costs).fit(X, y),
        "verifier": VerifierRouter(**costs).fit(X, y),
        "random": _Coin(random_state),
    }


def _load_run(cfg: EvaluateConfig) -> dict[str, Any]:
    summary_path = Path(cfg.run) / "run_summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(
            f"{summary_path} not found: run the chain first "
            f"(python -m pipelines.run --out {cfg.run})."
        )
    run = json.loads(summary_path.read_text())
    art = dict(run.get("artifacts", {}))
    for key, attr in (
        ("slm", "slm"),
        ("verifier", "verifier"),
        ("router_table", "router_table"),
    ):
        if getattr(cfg, attr):
            art[key] = getattr(cfg, attr)
        if not art.get(key):
            raise ValueError(
                f"{summary_path} has no artifacts.{key}; pass EvaluateConfig.{attr}."
            )
    run["artifacts"] = art
    return run


def _arms(
    cfg: EvaluateConfig,
    routers: dict[str, Any],
    X_table: pd.DataFrame,
    cascade: Callable[..., Any],
) -> tuple[list[tuple[str, float | None, Any]], dict[str, dict[str, float]]]:
    """The arms ``(name, target rate, make cascade)`` and each router's table rates.

    Every router decides by the rank of its risk score among the router
    table's steps (:class:`RankedRouter`), so each reaches each target rate.
    """
    arms: list[tuple[str, float | None, Any]] = [
        ("slm_only", None, lambda: cascade(routers["entropy"], 1.0, budget=0)),
        ("teacher_only", None, lambda: cascade(routers["entropy"], 0.0)),
        ("oracle", None, lambda: None),
    ]
    table_rates: dict[str, dict[str, float]] = {}
    for name in _HEADLINE_ROUTERS:
        ranked = None if name == "random" else RankedRouter(routers[name], X_table)
        table_rates[name] = {}
        for rate in cfg.rates:
            if ranked is None:
                tau, achieved = 1.0 - rate, rate
                arms.append((name, rate, partial(cascade, routers[name], tau)))
            else:
                tau, achieved = ranked.threshold_for(rate)
                arms.append((name, rate, partial(cascade, ranked, tau)))
            table_rates[name][str(rate)] = achieved
    return arms, table_rates


def _play_arms(
    loop: ClosedLoop,
    arms: list[tuple[str, float | None, Any]],
    tasks: list[str],
    seeds: list[int],
    progress: bool,
) -> pd.DataFrame:
    """Every arm on every ``(task, seed)``: one row per episode."""
    from tqdm.auto import tqdm

    episodes = []
    bar = tqdm(
        total=len(arms) * len(tasks) * len(seeds),
        desc="closed loop",
        disable=not progress,
    )
    for name, rate, make in arms:
        cas = make()
        for task in tasks:
            for seed in seeds:
                ep, _ = loop.run_episode(task, seed, cas)
                ep.update(router=name, threshold_rate=rate)
                episodes.append(ep)
                bar.update()
    bar.close()
    return pd.DataFrame(episodes)


def _arm_results(ep_df: pd.DataFrame, cfg: EvaluateConfig, out: Path) -> pd.DataFrame:
    """Per-arm metrics (``closed_loop.csv``), per-seed success and the frontier."""
    results = []
    for (name, rate), grp in ep_df.groupby(
        ["router", "threshold_rate"], dropna=False, sort=False
    ):
        m = arm_metrics(
            grp,
            cvar_tail=cfg.cvar_tail,
            n_resamples=cfg.n_resamples,
            random_state=cfg.random_state,
            cost_slm=cfg.cost_slm,
            cost_llm=cfg.cost_llm,
        )
        results.append({"router": name, "threshold_rate": rate, **m})
    res = pd.DataFrame(results)
    res["deployable"] = res["router"] != "oracle"
    res.to_csv(out / "closed_loop.csv", index=False)
    per_seed = ep_df.pivot_table(
        index=["router", "threshold_rate"],
        columns="seed",
        values="success",
        aggfunc="mean",
        dropna=False,
    )
    per_seed.to_csv(out / "per_seed.csv")
    plot_frontier(res, out / "frontier.png")
    return res


def _headline(
    res: pd.DataFrame, ep_df: pd.DataFrame, cfg: EvaluateConfig
) -> dict[str, Any]:
    """Each router's LLM-call share at the teacher's success, and the ratios."""
    teacher_success = float(res.loc[res["router"] == "teacher_only", "success"].iloc[0])
    target = teacher_success - cfg.success_tolerance
    headline: dict[str, Any] = {
        "teacher_only_success": teacher_success,
        "slm_only_success": float(
            res.loc[res["router"] == "slm_only", "success"].iloc[0]
        ),
        "target_success": target,
        "share_at_target": {
            name: share_at_success(res, name, target) for name in _HEADLINE_ROUTERS
        },
    }
    # The same question at a success level the entropy router does reach.
    best = float(res[res["router"] == "entropy"]["success"].max())
    at_best = {name: share_at_success(res, name, best) for name in _HEADLINE_ROUTERS}
    headline["at_entropy_best"] = {
        "success": best,
        "share": at_best,
        "cvar_over_entropy_share": at_best["cvar_brier"] / at_best["entropy"]
        if at_best["entropy"] > 0
        else None,
    }
    sh = headline["share_at_target"]
    headline["cvar_over_entropy_share"] = (
        sh["cvar_brier"] / sh["entropy"]
        if sh["entropy"] and np.isfinite(sh["entropy"])
        else None
    )
    for name in ("cvar_brier", "brier_only"):
        sub = res[res["router"] == name]
        headline[f"{name}_worst_seed_success_by_rate"] = dict(
            zip(
                sub["threshold_rate"].astype(str),
                sub["worst_seed_success"],
                strict=True,
            )
        )
    headline["ratios"] = headline_ratios(
        ep_df,
        tolerance=cfg.success_tolerance,
        n_resamples=cfg.n_resamples,
        random_state=cfg.random_state,
    )
    headline["low_budget"] = low_budget_comparison(
        ep_df, n_resamples=cfg.n_resamples, random_state=cfg.random_state
    )
    return headline


def low_budget_comparison(
    episodes: pd.DataFrame,
    *,
    n_rates: int = 2,
    reference: str = "cvar_brier",
    n_resamples: int = 1000,
    random_state: int = 0,
) -> dict[str, dict[str, Any]]:
    """Success at the smallest target rates, paired against ``reference`` by game.

    The other end of the frontier from the headline ratio: which router buys
    the most success with few teacher calls. Every router played the same
    games and seeds at each rate, so the difference in success is taken per
    game and its 95 % CI resamples games.

    Parameters
    ----------
    episodes : DataFrame
        ``episodes.csv`` of :func:`main` (``router``, ``threshold_rate``,
        ``task_id``, ``success``, ``llm_calls``, ``steps``).
    n_rates : int, default=2
        How many of the smallest target rates.
    reference : str, default="cvar_brier"
    n_resamples : int, default=1000
    random_state : int, default=0

    Returns
    -------
    dict
        Per rate (as str): ``success`` and ``share`` per router, and
        ``minus`` per other router: ``{"estimate", "low", "high"}`` of
        ``reference``'s success minus that router's.
    """
    from r2vcal.metrics import bootstrap_ci

    routed = episodes[episodes["threshold_rate"].notna()]
    out: dict[str, dict[str, Any]] = {}
    for rate in sorted(routed["threshold_rate"].unique())[:n_rates]:
        at = routed[routed["threshold_rate"] == rate]
        per_game = at.pivot_table(
            index="task_id", columns="router", values="success", aggfunc="mean"
        )
        calls = at.groupby("router")[["llm_calls", "steps"]].sum()
        entry: dict[str, Any] = {
            "success": {r: float(per_game[r].mean()) for r in per_game.columns},
            "share": {
                r: _share(c["llm_calls"], c["steps"]) for r, c in calls.iterrows()
            },
            "minus": {},
        }
        if reference in per_game.columns:
            for other in per_game.columns.drop(reference):
                diff = (per_game[reference] - per_game[other]).to_numpy()
                ci = bootstrap_ci(
                    np.mean, diff, n_resamples=n_resamples, random_state=random_state
                )
                entry["minus"][other] = {
                    "estimate": float(diff.mean()),
                    "low": float(ci.low),
                    "high": float(ci.high),
                }
        out[str(float(rate))] = entry
    return out


def low_budget_lines(h: dict[str, Any], reference: str = "cvar_brier") -> list[str]:
    """One sentence per rate of :func:`low_budget_comparison` (in ``h["low_budget"]``)."""
    lines = []
    for rate, entry in h.get("low_budget", {}).items():
        succ, share = entry["success"], entry["share"]
        lines.append(
            f"at target rate {float(rate):.2f} (realised share in brackets), success "
            + ", ".join(f"{r} {succ[r]:.3f} ({share[r]:.3f})" for r in succ)
            + (
                f"; {reference} minus "
                + ", ".join(
                    f"{r} {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                    for r, d in entry["minus"].items()
                )
                + " (95 % CI, games resampled)"
                if entry["minus"]
                else ""
            )
        )
    return lines


def _closed_loop(cfg: EvaluateConfig, run: dict[str, Any]) -> ClosedLoop:
    """The run's frozen agent on the run's perturbed test environment.

    ``cfg.n_test_tasks`` extends the test split; ``cfg.policy`` and
    ``cfg.select`` override the run's.
    """
    art = run["artifacts"]
    env_name = run.get("env", "textworld")
    env_kwargs = dict(run["env_kwargs"])
    if cfg.n_test_tasks is not None and "n_games" in env_kwargs:
        n_games = dict(env_kwargs["n_games"])
        n_games["test"] = max(int(n_games.get("test", 0)), int(cfg.n_test_tasks))
        env_kwargs["n_games"] = n_games
    new_env = partial(
        make_env,
        env_name,
        perturb=(run.get("families", ["all"]), run["rate"]),
        step_limit=run["max_steps"],
        **env_kwargs,
    )

    agent = build_agent(
        art["slm"],
        art["verifier"],
        policy=cfg.policy or run.get("policy", "generate"),
        select=cfg.select or run.get("select", "logprob"),
        k=int(run["k"]),
        temperature=float(run.get("temperature", 1.0)),
        max_new_tokens=int(run.get("max_new_tokens", 12)),
    )
    return ClosedLoop(agent, new_env, run.get("prompt_kwargs"))


def _cascade_factory(cfg: EvaluateConfig, loop: ClosedLoop) -> Callable[..., Any]:
    """``cascade(router, threshold, budget=None)``: a StepCascade over ``loop``."""
    from r2vcal.cascade import StepCascade

    agent = loop.agent
    costs = {"cost_slm": cfg.cost_slm, "cost_llm": cfg.cost_llm}

    def cascade(
        router: Any, threshold: float, budget: int | None = None
    ) -> StepCascade:
        return StepCascade(
            loop.slm,
            loop.teacher,
            router,
            verifier=loop.verifier,
            k=agent.k,
            threshold=threshold,
            budget=budget,
            horizon=loop.horizon,
            # Execute what the rollouts executed: the scoring agent's top
            # command ("logprob") or the verifier's pick (free generation).
            select=getattr(agent, "select", "verifier"),
            **costs,
        )

    return cascade


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run every arm in closed loop, the mixed-trajectory rounds, and the report."""
    import torch

    start = time.perf_counter()
    torch.set_num_threads(1)  # tiny models: threads only contend
    run = _load_run(cfg)
    art = run["artifacts"]
    out = Path(cfg.out or Path(cfg.run) / "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    loop = _closed_loop(cfg, run)
    agent = loop.agent
    table = pd.read_parquet(art["router_table"])
    label = resolve_label(table, cfg.label)
    routers = fit_routers(
        table,
        label,
        cost_slm=cfg.cost_slm,
        cost_llm=cfg.cost_llm,
        random_state=cfg.random_state,
    )
    from r2vcal.features import FEATURE_NAMES

    X_table = table[list(FEATURE_NAMES)]
    tasks = loop.env.tasks("test")[: cfg.n_test_tasks]
    seeds = [int(s) for s in (cfg.test_seeds or run["test_seeds"])]
    cascade = _cascade_factory(cfg, loop)
    arms, table_rates = _arms(cfg, routers, X_table, cascade)
    ep_df = _play_arms(loop, arms, tasks, seeds, cfg.progress)
    ep_df.to_csv(out / "episodes.csv", index=False)
    res = _arm_results(ep_df, cfg, out)
    headline = _headline(res, ep_df, cfg)
    headline["router_table_escalation_rates"] = table_rates
    summary: dict[str, Any] = {
        "config": asdict(cfg),
        "tasks": tasks,
        "seeds": seeds,
        "label": label,
        "label_rates": {
            c: float(table[c].mean()) for c in ("y_counterfactual", "y_verifier")
        },
        "headline": headline,
        "agent_decisions": len(agent._memo),
    }
    summary["seconds_closed_loop"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    if cfg.dagger_rounds > 0:
        summary["mixed"] = _dagger(
            cfg, loop, routers["cvar_brier"], table, tasks, seeds, cascade, out, label
        )
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_markdown(out, res, summary)
    return summary


def _mixed(
    loop: ClosedLoop,
    cas: Any,
    tasks: list[str],
    seeds: list[int],
    desc: str,
    progress: bool,
) -> pd.DataFrame:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    for task in tqdm(tasks, desc=desc, disable=not progress):
        for seed in seeds:
            _, r = loop.run_episode(task, seed, cas, label=True)
            rows.extend(x for x in r if "y_counterfactual" in x)
    return pd.DataFrame(rows)


def _dagger(
    cfg: EvaluateConfig,
    loop: ClosedLoop,
    router0: Any,
    table: pd.DataFrame,
    test_tasks: list[str],
    test_seeds: list[int],
    cascade: Callable[..., Any],
    out: Path,
    label: str,
) -> dict[str, Any]:
    from sklearn.base import clone

    from r2vcal.features import FEATURE_NAMES

    feats = list(FEATURE_NAMES)
    held = _mixed(
        loop,
        cascade(router0, router0.threshold_),
        test_tasks,
        test_seeds,
        "mixed (test)",
        cfg.progress,
    )
    held.to_parquet(out / "mixed_test.parquet", index=False)
    train_tasks = sorted(table["task_id"].unique())
    # Mixed rows get the same label as the table's (both are computed per step).
    data = table[[*feats, "seed", label]].copy()
    router = router0
    probs = {"SLM-only trained": router0.predict_proba(held[feats])[:, 1]}
    rounds = []
    for k in range(cfg.dagger_rounds):
        seeds = [s + 100 * k for s in cfg.dagger_seeds]
        mixed = _mixed(
            loop,
            cascade(router, router.threshold_),
            train_tasks,
            seeds,
            f"mixed (round {k + 1})",
            cfg.progress,
        )
        data = pd.concat([data, mixed[[*feats, "seed", label]]], ignore_index=True)
        router = clone(router0).fit(
            data[feats],
            data[label].astype(int),
            groups=data["seed"].to_numpy(),
        )
        rounds.append(
            {
                "round": k + 1,
                "rows_added": len(mixed),
                "positives_added": int(mixed[label].sum()),
            }
        )
    probs[f"after {cfg.dagger_rounds} round(s)"] = router.predict_proba(held[feats])[
        :, 1
    ]
    before, after = (_calibration(held, p, label) for p in probs.values())
    plot_mixed_reliability(held, probs, out / "mixed_reliability.png", label)
    return {
        "held_out": {"tasks": test_tasks, "seeds": test_seeds},
        "label": label,
        "rounds": rounds,
        "before": before,
        "after": after,
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return (
        "—"
        if x is None or (isinstance(x, float) and not np.isfinite(x))
        else f"{x:.{digits}f}"
    )


def _ci(d: dict[str, Any]) -> str:
    return (
        f"{_fmt(d['estimate'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]"
        f" (defined in {d['defined']:.0%} of game resamples)"
    )


def _ratio_lines(h: dict[str, Any]) -> list[str]:
    r = h.get("ratios")
    if not r:
        return []
    lines = [
        "- headline (95 % CI, games resampled): LLM-call share at the teacher's "
        "success: CVaR-Brier " + _ci(r["cvar_brier"]) + "; entropy "
        f"{_ci(r['entropy'])}; best single feature {_ci(r['best_single_feature'])}",
        f"- CVaR-Brier ÷ entropy {_ci(r['cvar_over_entropy'])} (paper: ≤ 0.5); "
        f"CVaR-Brier ÷ best single feature {_ci(r['cvar_over_best'])}",
    ]
    c, b = r["cvar_brier"]["estimate"], r["best_single_feature"]["estimate"]
    if not (np.isfinite(c) and np.isfinite(b)) or c > b:
        lines.append(
            "- CVaR-Brier does **not** beat the best single-feature baseline here"
            " (it needs a larger share, or one of them never reaches the target)."
        )
    return lines


_ARM_COLUMNS = [
    "router",
    "threshold_rate",
    "success",
    "success_low",
    "success_high",
    "llm_share",
    "cost",
    "worst_seed_success",
    "cvar_seed_failure",
    "deployable",
]


def _headline_bullets(h: dict[str, Any]) -> list[str]:
    """The headline's key numbers, one sentence each.

    Parameters
    ----------
    h : dict
        ``summary["headline"]`` of :func:`main`.

    Returns
    -------
    list of str
        Teacher/SLM-only success, the LLM-call share each router needs to reach
        the teacher's success, and the shares at the entropy router's best.
    """
    best = h["at_entropy_best"]
    return [
        f"teacher-only success {_fmt(h['teacher_only_success'])}, "
        f"SLM-only {_fmt(h['slm_only_success'])}",
        f"LLM-call share needed to reach {_fmt(h['target_success'])} success: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in h["share_at_target"].items()),
        "CVaR-Brier ÷ entropy share at that success: "
        f"{_fmt(h['cvar_over_entropy_share'])} (goal ≤ 0.5)",
        f"at the entropy router's best success ({_fmt(best['success'])}): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in best["share"].items())
        + "; CVaR-Brier ÷ entropy "
        + _fmt(best["cvar_over_entropy_share"]),
    ]


def report_doc(out: Path, res: pd.DataFrame, summary: dict[str, Any]) -> Doc:
    """The closed-loop report as one :class:`r2vcal._render.Doc`.

    Parameters
    ----------
    out : Path
        The evaluation folder (images are shown only when they exist there).
    res : DataFrame
        Per-arm results (``closed_loop.csv``).
    summary : dict
        The evaluation summary (``summary.json``).

    Returns
    -------
    Doc
        Rendered by :func:`write_markdown` to ``report.md`` and ``report.html``.
    """
    h = summary["headline"]
    doc = Doc("Closed-loop evaluation")
    doc.para(
        f"Held-out tasks: {len(summary['tasks'])}; perturbation seeds: "
        f"{summary['seeds']}. Escalated steps are re-executed by the teacher; "
        f"success is the environment's. Routers fitted on label "
        f"`{summary['label']}` (router-table rates: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary["label_rates"].items())
        + ")."
    )
    lines = [*_headline_bullets(h), *_ratio_lines(h), *low_budget_lines(h)]
    doc.bullets(x.removeprefix("- ") for x in lines)
    doc.image("frontier.png", "frontier", root=out)
    doc.heading("Arms (95% CI, cluster bootstrap over tasks)")
    doc.table(res[_ARM_COLUMNS], floatfmt=".3f", index=False)
    if "mixed" in summary:
        m = summary["mixed"]
        doc.heading("Mixed trajectories (router in the loop, held-out tasks)")
        mixed = pd.DataFrame({"before": m["before"], "after": m["after"]}).T
        doc.table(mixed, floatfmt=".4f")
        doc.image("mixed_reliability.png", "mixed reliability", root=out)
    return doc


def write_markdown(out: Path, res: pd.DataFrame, summary: dict[str, Any]) -> Path:
    """``report.md`` and ``report.html`` of the closed-loop results."""
    md, _ = report_doc(out, res, summary).write(out)
    return md


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`EvaluateConfig`."""
    return config_parser(EvaluateConfig, "Closed-loop evaluation of routers.")


if __name__ == "__main__":
    run_cli(make_parser(), EvaluateConfig, main, show=lambda r: r["headline"], indent=2)
