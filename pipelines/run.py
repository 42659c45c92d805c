"""Chain runner at demo scale: collect -> BC -> verifier -> rollouts.

Usage::

    python -m pipelines.run --out runs/demo --n-train 4 --n-test 2

Teacher trajectories on the train games (seeds ``0 .. n_train_seeds-1``),
behavioral cloning, the verifier, then rollouts of the frozen SLM on the test
games under perturbation seeds never used in training (``1000 + i``), written
as a trajectory-feature table. Wall time of each step goes to
``<out>/run_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.bc import config_from_args

__all__ = ["RunConfig", "main", "make_parser"]


@dataclass
class RunConfig:
    """Demo-scale chain settings.

    Parameters
    ----------
    out : str
        Run folder.
    n_train, n_test : int
        TextWorld games per split.
    n_train_seeds, n_test_seeds : int
        Perturbation seeds per game (test seeds start at 1000).
    rate : float
        Perturbation rate (all families).
    max_steps : int
        Episode step limit.
    bc_steps : int
        BC optimizer steps.
    k : int
        SLM candidates per step.
    n_jobs : int
    """

    out: str = "runs/demo"
    n_train: int = 4
    n_test: int = 2
    n_train_seeds: int = 3
    n_test_seeds: int = 3
    rate: float = 0.05
    max_steps: int = 15
    bc_steps: int = 100
    k: int = 5
    n_jobs: int = 1


def main(cfg: RunConfig) -> dict[str, Any]:
    """Run the chain; return per-step summaries and wall times."""
    from pipelines import bc, collect, rollout, verifier

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {
        "kind": "simple",
        "n_games": {"train": cfg.n_train, "validation": 0, "test": cfg.n_test},
        "max_steps": cfg.max_steps,
    }
    summary: dict[str, Any] = {"config": asdict(cfg), "seconds": {}}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        res = fn(*args)
        summary["seconds"][name] = round(time.perf_counter() - t0, 2)
        if isinstance(res, dict):
            res.pop("config", None)
        summary[name] = res
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
        return res

    traj = str(out / "train.jsonl")
    timed(
        "collect",
        collect.main,
        collect.CollectConfig(
            env="textworld",
            out=traj,
            env_kwargs=env_kwargs,
            split="train",
            n_seeds=cfg.n_train_seeds,
            families=["all"],
            rate=cfg.rate,
            n_jobs=cfg.n_jobs,
            progress=False,
        ),
    )
    timed(
        "bc",
        bc.main,
        bc.BCConfig(
            trajectories=[traj], output_dir=str(out / "bc"), max_steps=cfg.bc_steps
        ),
    )
    timed(
        "verifier",
        verifier.main,
        verifier.VerifierConfig(trajectories=[traj], output_dir=str(out / "verifier")),
    )
    timed(
        "rollout_test",
        rollout.main,
        rollout.RolloutConfig(
            slm=str(out / "bc"),
            verifier=str(out / "verifier"),
            out=str(out / "rollout_test.parquet"),
            env_kwargs=env_kwargs,
            split="test",
            seeds=[1000 + i for i in range(cfg.n_test_seeds)],
            rate=cfg.rate,
            k=cfg.k,
            n_jobs=cfg.n_jobs,
        ),
    )
    summary["total_seconds"] = round(sum(summary["seconds"].values()), 2)
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser mirroring :class:`RunConfig`."""
    p = argparse.ArgumentParser(description="Run the R2V chain at demo scale.")
    p.add_argument("--out", default=None)
    for name in (
        "n_train",
        "n_test",
        "n_train_seeds",
        "n_test_seeds",
        "max_steps",
        "bc_steps",
        "k",
        "n_jobs",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--rate", type=float, default=None)
    return p


if __name__ == "__main__":
    print(json.dumps(main(config_from_args(make_parser().parse_args(), RunConfig))))
