"""Chain runner at demo scale: collect -> BC -> verifier -> DPO -> rollouts.

Usage::

    python -m pipelines.run --out runs/demo

Steps (DESIGN §1), each timed and logged:

1. ``collect``: teacher trajectories on the train games under perturbation
   seeds ``0 .. n_train_seeds-1``.
2. ``bc``: behavioral cloning of a tiny Llama (:mod:`pipelines.bc`).
3. ``verifier``: the MiniLM verifier, with hard negatives sampled from the BC
   SLM at the teacher's states (:mod:`pipelines.verifier`).
4. ``dpo``: verifier-guided DPO + BC + consistency, continuing from the BC
   policy (:mod:`pipelines.dpo`).
5. ``select_bc`` / ``select_dpo``: both policies on the validation games
   (no labels). **BC+DPO is the frozen SLM** unless BC wins more of those
   episodes (model selection, never on the test games; ``selection`` in the
   summary says which).
6. ``rollout_router``: the frozen SLM on the validation games under seeds
   ``500 + i`` into ``rollout_router.parquet`` (for fitting routers).
7. ``rollout_test``: the frozen SLM on the test games under seeds never used
   before (``1000 + i``) into ``rollout_test.parquet``.
8. ``rollout_test_other``: the policy not frozen on the same test episodes,
   without labels, so that BC and BC+DPO are compared on the same episodes
   (``bc_test_table`` / ``dpo_test_table`` point at the right files).

``<out>/run_summary.json`` holds what later steps need —
``artifacts`` (``slm``, ``bc``, ``dpo``, ``verifier``, ``router_table``,
``test_table``, ``bc_test_table``, ``trajectories``), ``env``, ``env_kwargs``,
``rate``, ``families``, ``test_seeds``, ``router_seeds``, ``k``,
``temperature``, ``max_new_tokens``, ``max_steps``, ``prompt_kwargs`` — and the
figures: ``success`` (BC SLM, BC+DPO SLM and teacher on the test episodes,
with 95 % bootstrap CIs clustered by game), ``labels`` (balance of
``y_counterfactual`` / ``y_verifier`` and their confusion counts, per table),
the verifier's held-out AUROC/ECE (``verifier``), and ``seconds`` per step.

The default settings finish in about five minutes on two CPU cores (games are
generated once and cached, see :mod:`pipelines.envs.textworld`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._cli import config_from_args
from pipelines.labels import label_confusion
from pipelines.prompting import PROMPT_DEFAULTS, prompt_kwargs_of

__all__ = ["RunConfig", "main", "make_parser", "success_summary"]

_ROUTER_SEED0 = 500
_TEST_SEED0 = 1000


@dataclass
class RunConfig:
    """Demo-scale chain settings.

    Parameters
    ----------
    out : str
        Run folder.
    kind : {"simple", "custom"}
        TextWorld game family (:class:`pipelines.envs.textworld.TextWorldEnv`).
    settings : dict or None
        Game generation settings; ``None`` takes the environment's defaults.
    n_train, n_router, n_test : int
        TextWorld games of the train, validation (router table) and test splits.
    n_train_seeds, n_router_seeds, n_test_seeds : int
        Perturbation seeds per game: ``0 ..`` for training, ``500 ..`` for the
        router table, ``1000 ..`` for the test table.
    families : list of str
        Perturbation families (:func:`pipelines.perturb.make_family`).
    rate : float
        Perturbation rate per operator and step.
    max_steps : int
        Episode step limit.
    noise_rate : float
        Teacher noise while collecting (a random admissible command with this
        probability; the teacher then recovers), so that BC sees recoveries
        from off-plan states (DART-style; the noisy actions are cloned too).
        Only won episodes are cloned.
    collect_max_steps : int or None
        Step limit of the collected (noisy) teacher episodes (default
        ``max_steps``); rollouts always stop at ``max_steps``.
    bc_steps, bc_batch_size : int
        BC optimizer steps and batch size.
    bc_learning_rate : float
    hidden_size, n_layers, vocab_size : int
        Tiny-Llama dimensions.
    verifier_contexts : int
        Training states at which the BC SLM's candidates become verifier labels.
    dpo : bool
        Run DPO; when False the BC SLM is the frozen SLM.
    dpo_steps, dpo_max_pairs : int
        DPO optimizer steps and preference contexts.
    dpo_learning_rate, dpo_weight, consistency_weight : float
    policy : {"score", "generate"}
        How the frozen SLM acts in rollouts and in closed loop: ``"score"``
        ranks the environment's admissible commands by the SLM's sequence
        log-probability (:mod:`pipelines.scoring`); ``"generate"`` samples
        ``k`` free-form candidates (what a user without a command list runs).
    select : {"logprob", "verifier"}
        Executed candidate of ``"score"`` (the SLM's most likely, or the
        verifier's favourite among the ``k``).
    k : int
        SLM candidates per step.
    temperature : float
        SLM sampling temperature.
    max_new_tokens : int
        Longest candidate (tokens).
    n_turns, n_actions, max_goal_chars, max_obs_chars, drop_prompt_lines
        Prompt template (:func:`pipelines.bc.format_prompt`).
    n_jobs : int
        Parallel rollout workers.
    torch_threads : int or None
        ``torch.set_num_threads`` for the run (1 is robust on a shared CPU).
    n_resamples : int
        Bootstrap resamples of the CIs.
    verbose : bool
        Log each step and show progress bars (on stderr).
    """

    out: str = "runs/demo"
    kind: str = "simple"
    settings: dict[str, Any] | None = None
    n_train: int = 40
    n_router: int = 3
    n_test: int = 5
    n_train_seeds: int = 3
    n_router_seeds: int = 2
    n_test_seeds: int = 3
    families: list[str] = field(default_factory=lambda: ["all"])
    rate: float = 0.05
    max_steps: int = 15
    noise_rate: float = 0.0
    collect_max_steps: int | None = None
    bc_steps: int = 600
    bc_batch_size: int = 8
    bc_learning_rate: float = 2e-3
    hidden_size: int = 128
    n_layers: int = 2
    vocab_size: int = 1024
    verifier_contexts: int = 200
    dpo: bool = True
    dpo_steps: int = 30
    dpo_max_pairs: int = 96
    dpo_learning_rate: float = 2e-4
    dpo_weight: float = 1.0
    consistency_weight: float = 1.0
    policy: str = "score"
    select: str = "logprob"
    k: int = 5
    temperature: float = 0.5
    max_new_tokens: int = 12
    n_turns: int = PROMPT_DEFAULTS["n_turns"]
    n_actions: int = PROMPT_DEFAULTS["n_actions"]
    max_goal_chars: int = PROMPT_DEFAULTS["max_goal_chars"]
    max_obs_chars: int = PROMPT_DEFAULTS["max_obs_chars"]
    drop_prompt_lines: bool = PROMPT_DEFAULTS["drop_prompt_lines"]
    n_jobs: int = 2
    torch_threads: int | None = 1
    n_resamples: int = 1000
    verbose: bool = True


def success_summary(
    table: Any, column: str = "slm_success", *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Episode success rate with a game-clustered 95 % bootstrap CI.

    Parameters
    ----------
    table : DataFrame
        A rollout table (one row per step; ``episode_id``, ``task_id``).
    column : str, default="slm_success"
        The episode outcome column.
    n_resamples : int, default=1000
    seed : int, default=0

    Returns
    -------
    dict
        ``rate``, ``ci`` (whole games resampled; rows of one game share its
        difficulty), ``ci_episodes`` (episodes resampled), ``n_episodes``,
        ``n_games``, ``n_success``.
    """
    from r2vcal.metrics import bootstrap_ci

    ep = table.groupby("episode_id")[[column, "task_id"]].first()
    x = ep[column].to_numpy(dtype=float)
    games = ep["task_id"].to_numpy()
    out: dict[str, Any] = {
        "rate": float(x.mean()),
        "n_success": int(x.sum()),
        "n_episodes": len(x),
        "n_games": len(set(games)),
    }
    for key, groups in (("ci", games), ("ci_episodes", None)):
        if groups is not None and len(set(groups)) < 2:
            continue
        ci = bootstrap_ci(
            np.mean, x, groups=groups, n_resamples=n_resamples, random_state=seed
        )
        out[key] = [float(ci.low), float(ci.high)]
    return out


def _label_summary(table: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"n_steps": len(table)}
    for col in ("y_counterfactual", "y_verifier"):
        if col in table:
            y = table[col].astype(int)
            out[col] = {"n_positive": int(y.sum()), "rate": float(y.mean())}
    if "y_counterfactual" in table and "y_verifier" in table:
        out["confusion_cf_vs_verifier"] = label_confusion(table)
    return out


def main(cfg: RunConfig) -> dict[str, Any]:
    """Run the chain; return the summary (also written to ``run_summary.json``).

    Parameters
    ----------
    cfg : RunConfig

    Returns
    -------
    dict
        See the module docstring for the keys.
    """
    import pandas as pd

    from pipelines import bc, collect, dpo, rollout, verifier
    from pipelines.envs import shared_env

    for name in ("n_train", "n_router", "n_test", "n_train_seeds", "n_test_seeds"):
        if getattr(cfg, name) < 1:
            raise ValueError(
                f"RunConfig.{name} must be >= 1; got {getattr(cfg, name)}."
            )
    if cfg.n_router_seeds < 1:
        raise ValueError(f"n_router_seeds must be >= 1; got {cfg.n_router_seeds}.")
    if cfg.n_train < 2:
        raise ValueError("n_train must be >= 2 (the verifier holds out whole games).")
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs: dict[str, Any] = {
        "kind": cfg.kind,
        "n_games": {
            "train": cfg.n_train,
            "validation": cfg.n_router,
            "test": cfg.n_test,
        },
        "max_steps": max(cfg.max_steps, cfg.collect_max_steps or 0),
    }
    if cfg.settings is not None:
        env_kwargs["settings"] = dict(cfg.settings)
    pk = prompt_kwargs_of(cfg)
    router_seeds = [_ROUTER_SEED0 + i for i in range(cfg.n_router_seeds)]
    test_seeds = [_TEST_SEED0 + i for i in range(cfg.n_test_seeds)]
    slm_dir = out / ("dpo" if cfg.dpo else "bc")
    traj = out / "train.jsonl"
    summary: dict[str, Any] = {
        "config": asdict(cfg),
        "env": "textworld",
        "env_kwargs": env_kwargs,
        "families": list(cfg.families),
        "rate": cfg.rate,
        "max_steps": cfg.max_steps,
        "k": cfg.k,
        "policy": cfg.policy,
        "select": cfg.select,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "prompt_kwargs": pk,
        "train_seeds": list(range(cfg.n_train_seeds)),
        "router_seeds": router_seeds,
        "test_seeds": test_seeds,
        "artifacts": {
            "slm": str(slm_dir),
            "bc": str(out / "bc"),
            "dpo": str(out / "dpo") if cfg.dpo else None,
            "verifier": str(out / "verifier"),
            "router_table": str(out / "rollout_router.parquet"),
            "test_table": str(out / "rollout_test.parquet"),
            "bc_test_table": str(out / "rollout_test_bc.parquet"),
            "trajectories": str(traj),
        },
        "seconds": {},
    }

    def log(msg: str) -> None:
        if cfg.verbose:
            elapsed = time.perf_counter() - t_start
            print(f"[run {elapsed:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def save() -> None:
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2))

    def timed(name: str, fn: Any, *args: Any) -> Any:
        log(f"{name} ...")
        t0 = time.perf_counter()
        res = fn(*args)
        summary["seconds"][name] = round(time.perf_counter() - t0, 2)
        if isinstance(res, dict):
            res = {k: v for k, v in res.items() if k != "config"}
        summary[name] = res
        save()
        log(f"{name} done in {summary['seconds'][name]:.1f}s")
        return res

    def prepare() -> dict[str, Any]:
        env = shared_env("textworld", env_kwargs)
        env.prepare(("train", "validation", "test"), n_jobs=max(1, cfg.n_jobs))
        return {"n_games": sum(env_kwargs["n_games"].values())}

    timed("games", prepare)
    if traj.exists():
        traj.unlink()  # a fresh run; collect would otherwise resume
    timed(
        "collect",
        collect.main,
        collect.CollectConfig(
            env="textworld",
            out=str(traj),
            env_kwargs=env_kwargs,
            split="train",
            n_seeds=cfg.n_train_seeds,
            families=list(cfg.families),
            rate=cfg.rate,
            noise_rate=cfg.noise_rate,
            max_steps=cfg.collect_max_steps or cfg.max_steps,
            n_jobs=1,
            backend=None,
            progress=cfg.verbose,
        ),
    )
    timed(
        "bc",
        bc.main,
        bc.BCConfig(
            trajectories=[str(traj)],
            output_dir=str(out / "bc"),
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            n_layers=cfg.n_layers,
            max_steps=cfg.bc_steps,
            batch_size=cfg.bc_batch_size,
            learning_rate=cfg.bc_learning_rate,
            logging_steps=max(1, cfg.bc_steps // 4),
            progress=cfg.verbose,
            **pk,
        ),
    )
    timed(
        "verifier",
        verifier.main,
        verifier.VerifierConfig(
            trajectories=[str(traj)],
            output_dir=str(out / "verifier"),
            slm=str(out / "bc"),
            slm_k=cfg.k,
            slm_max_contexts=cfg.verifier_contexts,
            slm_temperature=cfg.temperature,
            slm_max_new_tokens=cfg.max_new_tokens,
            **pk,
        ),
    )
    if cfg.dpo:
        timed(
            "dpo",
            dpo.main,
            dpo.DPOConfigR2V(
                slm=str(out / "bc"),
                verifier=str(out / "verifier"),
                trajectories=[str(traj)],
                output_dir=str(out / "dpo"),
                dpo_weight=cfg.dpo_weight,
                consistency_weight=cfg.consistency_weight,
                max_pairs=cfg.dpo_max_pairs,
                k=cfg.k,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                max_steps=cfg.dpo_steps,
                learning_rate=cfg.dpo_learning_rate,
                progress=cfg.verbose,
                **pk,
            ),
        )

    def roll(slm: Path, split: str, seeds: list[int], path: str, cf: bool) -> Any:
        return rollout.main(
            rollout.RolloutConfig(
                slm=str(slm),
                verifier=str(out / "verifier"),
                out=path,
                env_kwargs=env_kwargs,
                split=split,
                seeds=seeds,
                families=list(cfg.families),
                rate=cfg.rate,
                max_steps=cfg.max_steps,
                k=cfg.k,
                policy=cfg.policy,
                select=cfg.select,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                counterfactual=cf,
                n_jobs=cfg.n_jobs,
                progress=cfg.verbose,
                **pk,
            )
        )

    art = summary["artifacts"]
    other: Path | None = None
    if cfg.dpo:
        # Model selection on the validation games (never the test games): the
        # recipe's BC+DPO policy is kept unless it wins fewer episodes than BC.
        rates = {}
        for name in ("bc", "dpo"):
            path = str(out / f"select_{name}.parquet")
            timed(
                f"select_{name}",
                roll,
                out / name,
                "validation",
                router_seeds,
                path,
                False,
            )
            rates[name] = float(
                pd.read_parquet(path)
                .groupby("episode_id")["slm_success"]
                .first()
                .mean()
            )
        chosen = "dpo" if rates["dpo"] >= rates["bc"] else "bc"
        slm_dir, other = out / chosen, out / ("bc" if chosen == "dpo" else "dpo")
        art["slm"] = str(slm_dir)
        summary["selection"] = {
            "validation_success": rates,
            "frozen_slm": chosen,
            "rule": "BC+DPO unless BC wins more validation episodes",
        }
        save()
        log(f"frozen SLM: {chosen} (validation success {rates})")
    timed(
        "rollout_router",
        roll,
        slm_dir,
        "validation",
        router_seeds,
        art["router_table"],
        True,
    )
    timed("rollout_test", roll, slm_dir, "test", test_seeds, art["test_table"], True)
    if other is not None:
        art["other_test_table"] = str(out / "rollout_test_other.parquet")
        timed(
            "rollout_test_other",
            roll,
            other,
            "test",
            test_seeds,
            art["other_test_table"],
            False,
        )
        art["bc_test_table"] = (
            art["other_test_table"] if other.name == "bc" else art["test_table"]
        )
        art["dpo_test_table"] = (
            art["other_test_table"] if other.name == "dpo" else art["test_table"]
        )
    else:
        art["bc_test_table"] = art["test_table"]

    test = pd.read_parquet(art["test_table"])
    test_bc = pd.read_parquet(art["bc_test_table"])
    router = pd.read_parquet(art["router_table"])
    kw = {"n_resamples": cfg.n_resamples}
    summary["success"] = {
        "split": "test",
        "seeds": test_seeds,
        "bc": success_summary(test_bc, **kw),
        "slm": success_summary(test, **kw),
        "teacher": success_summary(test, "teacher_success", **kw),
        "router_table_slm": success_summary(router, **kw),
        "router_table_teacher": success_summary(router, "teacher_success", **kw),
    }
    if cfg.dpo:
        summary["success"]["bc_dpo"] = success_summary(
            pd.read_parquet(art["dpo_test_table"]), **kw
        )
    summary["labels"] = {"router": _label_summary(router), "test": _label_summary(test)}
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    save()
    s = summary["success"]
    log(
        "test success: BC {:.2f}, SLM {:.2f}, teacher {:.2f}; total {:.0f}s".format(
            s["bc"]["rate"],
            s["slm"]["rate"],
            s["teacher"]["rate"],
            summary["total_seconds"],
        )
    )
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser mirroring :class:`RunConfig`."""
    p = argparse.ArgumentParser(description="Run the R2V chain at demo scale.")
    p.add_argument("--out", default=None)
    for name in (
        "n_train",
        "n_router",
        "n_test",
        "n_train_seeds",
        "n_router_seeds",
        "n_test_seeds",
        "max_steps",
        "collect_max_steps",
        "bc_steps",
        "hidden_size",
        "n_layers",
        "verifier_contexts",
        "dpo_steps",
        "dpo_max_pairs",
        "k",
        "max_new_tokens",
        "n_jobs",
        "torch_threads",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in (
        "rate",
        "noise_rate",
        "temperature",
        "bc_learning_rate",
        "dpo_learning_rate",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--kind", choices=["custom", "simple"], default=None)
    p.add_argument("--policy", choices=["score", "generate"], default=None)
    p.add_argument("--select", choices=["logprob", "verifier"], default=None)
    p.add_argument("--settings", type=json.loads, default=None)
    p.add_argument("--families", nargs="*", default=None)
    p.add_argument("--no-dpo", dest="dpo", action="store_false", default=None)
    p.add_argument("--quiet", dest="verbose", action="store_false", default=None)
    return p


if __name__ == "__main__":
    print(json.dumps(main(config_from_args(make_parser().parse_args(), RunConfig))))
