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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._cli import cli_options, config_parser, run_cli
from pipelines.agent import POLICIES
from pipelines.labels import label_confusion
from pipelines.prompting import PromptConfig
from r2vcal.cascade import SELECT_RULES

__all__ = ["STAGES", "RunConfig", "Stage", "main", "make_parser", "success_summary"]

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
    prompt : PromptConfig
        The prompt template (:func:`pipelines.prompting.format_prompt`); on the
        command line, one option per field (``--n-turns``, ...).
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
    kind: str = field(
        default="simple", metadata=cli_options(choices=["custom", "simple"])
    )
    settings: dict[str, Any] | None = None
    n_train: int = 40
    n_router: int = 3
    n_test: int = 5
    n_train_seeds: int = 3
    n_router_seeds: int = 2
    n_test_seeds: int = 3
    families: list[str] = field(
        default_factory=lambda: ["all"], metadata=cli_options(nargs="*")
    )
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
    policy: str = field(default="score", metadata=cli_options(choices=sorted(POLICIES)))
    select: str = field(
        default="logprob", metadata=cli_options(choices=sorted(SELECT_RULES))
    )
    k: int = 5
    temperature: float = 0.5
    max_new_tokens: int = 12
    prompt: PromptConfig = field(default_factory=PromptConfig)
    n_jobs: int = 2
    torch_threads: int | None = 1
    n_resamples: int = 1000
    verbose: bool = field(default=True, metadata=cli_options(flag="--quiet"))


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


def _check(cfg: RunConfig) -> None:
    for name in ("n_train", "n_router", "n_test", "n_train_seeds", "n_test_seeds"):
        if getattr(cfg, name) < 1:
            raise ValueError(
                f"RunConfig.{name} must be >= 1; got {getattr(cfg, name)}."
            )
    if cfg.n_router_seeds < 1:
        raise ValueError(f"n_router_seeds must be >= 1; got {cfg.n_router_seeds}.")
    if cfg.n_train < 2:
        raise ValueError("n_train must be >= 2 (the verifier holds out whole games).")


def _env_kwargs(cfg: RunConfig) -> dict[str, Any]:
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
    return env_kwargs


def _initial_summary(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """What later steps need (module docstring), before any step ran."""
    traj = out / "train.jsonl"
    return {
        "config": asdict(cfg),
        "env": "textworld",
        "env_kwargs": _env_kwargs(cfg),
        "families": list(cfg.families),
        "rate": cfg.rate,
        "max_steps": cfg.max_steps,
        "k": cfg.k,
        "policy": cfg.policy,
        "select": cfg.select,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "prompt_kwargs": cfg.prompt.kwargs(),
        "train_seeds": list(range(cfg.n_train_seeds)),
        "router_seeds": [_ROUTER_SEED0 + i for i in range(cfg.n_router_seeds)],
        "test_seeds": [_TEST_SEED0 + i for i in range(cfg.n_test_seeds)],
        "artifacts": {
            "slm": str(out / ("dpo" if cfg.dpo else "bc")),
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


class _Chain:
    """The state one run shares between its stages: config, folder, summary."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary = _initial_summary(cfg, self.out)
        self.art: dict[str, Any] = self.summary["artifacts"]
        self.env_kwargs: dict[str, Any] = self.summary["env_kwargs"]
        self.traj = self.out / "train.jsonl"
        self.other: Path | None = None  # the policy not frozen (with DPO)

    def log(self, msg: str) -> None:
        if self.cfg.verbose:
            elapsed = time.perf_counter() - self.t_start
            print(f"[run {elapsed:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def save(self) -> None:
        (self.out / "run_summary.json").write_text(json.dumps(self.summary, indent=2))

    def timed(self, name: str, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``; its result (less ``config``) is ``summary[name]``."""
        self.log(f"{name} ...")
        t0 = time.perf_counter()
        res = fn(*args)
        self.summary["seconds"][name] = round(time.perf_counter() - t0, 2)
        if isinstance(res, dict):
            res = {k: v for k, v in res.items() if k != "config"}
        self.summary[name] = res
        self.save()
        self.log(f"{name} done in {self.summary['seconds'][name]:.1f}s")
        return res

    def roll(self, slm: Path, split: str, seeds: list[int], path: str, cf: bool) -> Any:
        """Roll ``slm`` out on ``split`` under ``seeds`` into ``path``."""
        from pipelines import rollout

        cfg = self.cfg
        return rollout.main(
            rollout.RolloutConfig(
                slm=str(slm),
                verifier=str(self.out / "verifier"),
                out=path,
                env_kwargs=self.env_kwargs,
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
                prompt=self.cfg.prompt,
            )
        )


# ------------------------------------------------------------------ stages
def _games(ch: _Chain) -> dict[str, Any]:
    from pipelines.envs import shared_env

    env = shared_env("textworld", ch.env_kwargs)
    env.prepare(("train", "validation", "test"), n_jobs=max(1, ch.cfg.n_jobs))
    return {"n_games": sum(ch.env_kwargs["n_games"].values())}


def _collect(ch: _Chain) -> dict[str, Any]:
    from pipelines import collect

    cfg = ch.cfg
    if ch.traj.exists():
        ch.traj.unlink()  # a fresh run; collect would otherwise resume
    return collect.main(
        collect.CollectConfig(
            env="textworld",
            out=str(ch.traj),
            env_kwargs=ch.env_kwargs,
            split="train",
            n_seeds=cfg.n_train_seeds,
            families=list(cfg.families),
            rate=cfg.rate,
            noise_rate=cfg.noise_rate,
            max_steps=cfg.collect_max_steps or cfg.max_steps,
            n_jobs=1,
            backend=None,
            progress=cfg.verbose,
        )
    )


def _bc(ch: _Chain) -> dict[str, Any]:
    from pipelines import bc

    cfg = ch.cfg
    return bc.main(
        bc.BCConfig(
            trajectories=[str(ch.traj)],
            output_dir=str(ch.out / "bc"),
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            n_layers=cfg.n_layers,
            max_steps=cfg.bc_steps,
            batch_size=cfg.bc_batch_size,
            learning_rate=cfg.bc_learning_rate,
            logging_steps=max(1, cfg.bc_steps // 4),
            progress=cfg.verbose,
            prompt=cfg.prompt,
        )
    )


def _verifier(ch: _Chain) -> dict[str, Any]:
    from pipelines import verifier

    cfg = ch.cfg
    return verifier.main(
        verifier.VerifierConfig(
            trajectories=[str(ch.traj)],
            output_dir=str(ch.out / "verifier"),
            slm=str(ch.out / "bc"),
            slm_k=cfg.k,
            slm_max_contexts=cfg.verifier_contexts,
            slm_temperature=cfg.temperature,
            slm_max_new_tokens=cfg.max_new_tokens,
            prompt=cfg.prompt,
        )
    )


def _dpo(ch: _Chain) -> dict[str, Any]:
    from pipelines import dpo

    cfg = ch.cfg
    return dpo.main(
        dpo.DPOConfigR2V(
            slm=str(ch.out / "bc"),
            verifier=str(ch.out / "verifier"),
            trajectories=[str(ch.traj)],
            output_dir=str(ch.out / "dpo"),
            dpo_weight=cfg.dpo_weight,
            consistency_weight=cfg.consistency_weight,
            max_pairs=cfg.dpo_max_pairs,
            k=cfg.k,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            max_steps=cfg.dpo_steps,
            learning_rate=cfg.dpo_learning_rate,
            progress=cfg.verbose,
            prompt=cfg.prompt,
        )
    )


def _select(ch: _Chain) -> None:
    """Model selection on the validation games (never the test games).

    The recipe's BC+DPO policy is kept unless it wins fewer episodes than BC.
    """
    import pandas as pd

    rates = {}
    for name in ("bc", "dpo"):
        path = str(ch.out / f"select_{name}.parquet")
        seeds = ch.summary["router_seeds"]
        ch.timed(
            f"select_{name}", ch.roll, ch.out / name, "validation", seeds, path, False
        )
        rates[name] = float(
            pd.read_parquet(path).groupby("episode_id")["slm_success"].first().mean()
        )
    chosen = "dpo" if rates["dpo"] >= rates["bc"] else "bc"
    ch.other = ch.out / ("bc" if chosen == "dpo" else "dpo")
    ch.art["slm"] = str(ch.out / chosen)
    ch.summary["selection"] = {
        "validation_success": rates,
        "frozen_slm": chosen,
        "rule": "BC+DPO unless BC wins more validation episodes",
    }
    ch.save()
    ch.log(f"frozen SLM: {chosen} (validation success {rates})")


def _rollout_router(ch: _Chain) -> Any:
    seeds = ch.summary["router_seeds"]
    return ch.roll(
        Path(ch.art["slm"]), "validation", seeds, ch.art["router_table"], True
    )


def _rollout_test(ch: _Chain) -> Any:
    seeds = ch.summary["test_seeds"]
    return ch.roll(Path(ch.art["slm"]), "test", seeds, ch.art["test_table"], True)


def _rollout_test_other(ch: _Chain) -> Any:
    assert ch.other is not None  # the stage's skip rule
    ch.art["other_test_table"] = str(ch.out / "rollout_test_other.parquet")
    seeds = ch.summary["test_seeds"]
    return ch.roll(ch.other, "test", seeds, ch.art["other_test_table"], False)


def _test_tables(ch: _Chain) -> None:
    """Point ``bc_test_table`` / ``dpo_test_table`` at the right files."""
    art = ch.art
    if ch.other is None:
        art["bc_test_table"] = art["test_table"]
        return
    other = ch.other.name
    art["bc_test_table"] = (
        art["other_test_table"] if other == "bc" else art["test_table"]
    )
    art["dpo_test_table"] = (
        art["other_test_table"] if other == "dpo" else art["test_table"]
    )


def _figures(ch: _Chain) -> None:
    """Success rates (game-clustered CIs) and label balance of the tables."""
    import pandas as pd

    cfg, art, summary = ch.cfg, ch.art, ch.summary
    test = pd.read_parquet(art["test_table"])
    test_bc = pd.read_parquet(art["bc_test_table"])
    router = pd.read_parquet(art["router_table"])
    kw = {"n_resamples": cfg.n_resamples}
    summary["success"] = {
        "split": "test",
        "seeds": summary["test_seeds"],
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


@dataclass(frozen=True)
class Stage:
    """One step of the chain.

    Parameters
    ----------
    name : str
        The step's key in ``run_summary.json`` (its result and its seconds)
        when ``timed``.
    fn : callable
        ``fn(chain)``; reads ``inputs`` and writes ``outputs``.
    inputs, outputs : tuple of str
        Artifacts (files or folders under the run folder) it reads / writes.
    skip : callable, optional
        ``skip(chain)`` → True leaves the step out.
    timed : bool, default=True
        Time and log the step and keep its result in the summary.
    """

    name: str
    fn: Callable[[_Chain], Any]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    skip: Callable[[_Chain], bool] | None = None
    timed: bool = True


def _no_dpo(ch: _Chain) -> bool:
    return not ch.cfg.dpo


#: The chain, in order (module docstring).
STAGES: tuple[Stage, ...] = (
    Stage("games", _games, outputs=("games",)),
    Stage("collect", _collect, ("games",), ("train.jsonl",)),
    Stage("bc", _bc, ("train.jsonl",), ("bc",)),
    Stage("verifier", _verifier, ("train.jsonl", "bc"), ("verifier",)),
    Stage("dpo", _dpo, ("train.jsonl", "bc", "verifier"), ("dpo",), _no_dpo),
    Stage(
        "select",
        _select,
        ("bc", "dpo", "verifier"),
        ("select_bc.parquet", "select_dpo.parquet"),
        _no_dpo,
        timed=False,
    ),
    Stage(
        "rollout_router",
        _rollout_router,
        ("slm", "verifier"),
        ("rollout_router.parquet",),
    ),
    Stage(
        "rollout_test", _rollout_test, ("slm", "verifier"), ("rollout_test.parquet",)
    ),
    Stage(
        "rollout_test_other",
        _rollout_test_other,
        ("other slm", "verifier"),
        ("rollout_test_other.parquet",),
        lambda ch: ch.other is None,
    ),
    Stage("test_tables", _test_tables, timed=False),
    Stage(
        "figures",
        _figures,
        ("rollout_test.parquet", "rollout_router.parquet"),
        timed=False,
    ),
)


def main(cfg: RunConfig) -> dict[str, Any]:
    """Run the chain (:data:`STAGES`); return the summary (``run_summary.json``).

    Parameters
    ----------
    cfg : RunConfig
        The sizes of every stage of the chain and the folder it writes.

    Returns
    -------
    dict
        See the module docstring for the keys.
    """
    _check(cfg)
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    ch = _Chain(cfg)
    for stage in STAGES:
        if stage.skip is not None and stage.skip(ch):
            continue
        if stage.timed:
            ch.timed(stage.name, stage.fn, ch)
        else:
            stage.fn(ch)
    summary = ch.summary
    summary["total_seconds"] = round(time.perf_counter() - ch.t_start, 2)
    ch.save()
    s = summary["success"]
    ch.log(
        "test success: BC {:.2f}, SLM {:.2f}, teacher {:.2f}; total {:.0f}s".format(
            s["bc"]["rate"],
            s["slm"]["rate"],
            s["teacher"]["rate"],
            summary["total_seconds"],
        )
    )
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`RunConfig`."""
    return config_parser(RunConfig, "Run the R2V chain at demo scale.")


if __name__ == "__main__":
    run_cli(make_parser(), RunConfig, main)
