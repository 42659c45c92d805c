"""Collect expert trajectories under N perturbation seeds into JSONL.

Usage::

    python -m pipelines.collect --env textworld --split train --n-seeds 5 \\
        --families all --rate 0.2 --out runs/tw_train.jsonl --n-jobs 2

Record schema (``r2vcal.trajectory/v1``), one JSON object per line and episode:

============================  ==================================================
key                           meaning
============================  ==================================================
``schema``                    ``"r2vcal.trajectory/v1"``
``key``                       ``"<env>|<task>|<seed>"``, unique per file
``env``, ``task``, ``seed``   environment name, task id, perturbation seed z
``perturbations``             operator names configured (``[]`` = clean)
``rate``                      firing probability per operator and step
``policy``, ``noise_rate``    ``"expert"`` and its noise rate
``initial_observation``       what ``reset`` returned (perturbed)
``reset_perturbations``       operators that fired on the first observation
``steps``                     list of ``{"t", "action", "observation", "done",
                              "success", "info"}``; ``info`` holds
                              ``tool_error``, ``truncated``, ``perturbations``,
                              ``step`` and environment extras
``success``, ``n_steps``      episode outcome and length
``wall_time``                 seconds spent on the episode
============================  ==================================================

Runs are resumable: each finished episode is appended and flushed at once;
on restart, completed keys are skipped and a torn final line (a run killed
mid-write: the last line, without its newline) is removed. Nothing else is
ever rewritten or dropped:

- the output must end in ``.jsonl``, and an existing file must hold only
  ``r2vcal.trajectory/v1`` records, one per line with unique keys; a file with
  a foreign or unreadable line (another tool's file, a future
  ``trajectory/v2`` record) is refused with the line number, untouched;
- a run holds an exclusive :func:`fcntl.flock` on the output for its whole
  duration; a second run on the same file fails at once with
  :class:`OutputLockedError` instead of writing duplicates;
- worker processes started by the run (``loky``, ``multiprocessing``) exit
  when the run's process dies, even by ``kill -9``.

Parallelism uses :class:`joblib.Parallel` with a configurable backend
(``loky`` by default; ``dask``/``ray`` via ``joblib.parallel_config``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines._cli import cli_options, config_parser, parse_config
from pipelines.envs import perturbed, shared_env
from pipelines.trajectories import (
    SCHEMA,
    SUFFIX,
    OutputLockedError,
    check_output_path,
    load_records,
    locked_output,
    repair_torn_line,
    scan_records,
)

__all__ = [
    "SCHEMA",
    "SUFFIX",
    "CollectConfig",
    "OutputLockedError",
    "collect_episode",
    "load_records",
    "main",
    "make_parser",
]

_WATCHDOG: list[int] = []


@dataclass
class CollectConfig:
    """Configuration of a collection run.

    Parameters
    ----------
    env : str
        ``"textworld"``, ``"humaneval"`` or ``"terminal"``.
    out : str
        Output JSONL path (appended to; resumable).
    env_kwargs : dict
        Passed to the environment's constructor.
    split : str
        Task split.
    tasks : list of str or None
        Explicit task ids (overrides ``split``).
    limit : int or None
        Keep the first ``limit`` tasks.
    n_seeds : int
        Perturbation seeds ``0 .. n_seeds-1`` per task.
    families : list of str
        Perturbation families (see :data:`pipelines.perturb.FAMILIES`), or
        ``["all"]``; empty for clean episodes.
    rate : float
        Firing probability per operator and step.
    noise_rate : float
        Expert noise rate.
    max_steps : int or None
        Step limit of the perturbed episode (default: the environment's).
    n_jobs : int
        Parallel workers.
    backend : str or None
        ``joblib`` backend; ``None`` uses the active ``parallel_config``.
    progress : bool
        Show a tqdm progress bar.
    """

    env: str = "humaneval"
    out: str = "runs/trajectories.jsonl"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    tasks: list[str] | None = field(default=None, metadata=cli_options(nargs="*"))
    limit: int | None = None
    n_seeds: int = 5
    families: list[str] = field(
        default_factory=lambda: ["all"], metadata=cli_options(nargs="*")
    )
    rate: float = 0.2
    noise_rate: float = 0.0
    max_steps: int | None = None
    n_jobs: int = 1
    backend: str | None = "loky"
    progress: bool = True


def _episode_key(env: str, task: str, seed: int) -> str:
    return f"{env}|{task}|{seed}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def collect_episode(cfg: dict[str, Any], task: str, seed: int) -> dict[str, Any]:
    """Run the (noisy) expert on one ``(task, seed)`` and return its record.

    Parameters
    ----------
    cfg : dict
        :class:`CollectConfig` as a dict (picklable for any backend).
    task : str
    seed : int

    Returns
    -------
    dict
        One record of the schema in the module docstring.
    """
    from pipelines.policies import ExpertPolicy

    if "parent_pid" in cfg:
        _end_with_parent(int(cfg["parent_pid"]))
    start = time.perf_counter()
    base = shared_env(cfg["env"], cfg["env_kwargs"])
    env = perturbed(base, cfg["families"], cfg["rate"], step_limit=cfg["max_steps"])
    obs0 = env.reset(task, seed)
    policy = ExpertPolicy(env, noise_rate=cfg["noise_rate"], seed=seed)
    steps = []
    done, success = False, False
    while not done:
        action = policy.propose(None, k=1)[0].text
        obs, done, success, info = env.step(action)
        steps.append(
            {
                "t": len(steps) + 1,
                "action": action,
                "observation": obs,
                "done": bool(done),
                "success": bool(success),
                "info": _jsonable(info),
            }
        )
    return {
        "schema": SCHEMA,
        "key": _episode_key(cfg["env"], task, seed),
        "env": cfg["env"],
        "task": task,
        "seed": int(seed),
        "perturbations": [op.name for op in env.perturbations],
        "rate": cfg["rate"],
        "policy": "expert",
        "noise_rate": cfg["noise_rate"],
        "initial_observation": obs0,
        "reset_perturbations": list(env.reset_perturbations),
        "steps": steps,
        "success": bool(success),
        "n_steps": len(steps),
        "wall_time": round(time.perf_counter() - start, 4),
    }


def _end_with_parent(parent: int) -> None:
    """In a worker process forked/spawned by ``parent``: exit when it dies."""
    if _WATCHDOG or os.getpid() == parent or os.getppid() != parent:
        return  # the parent itself, or a worker of a cluster (dask, ray)
    _WATCHDOG.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="collect-watchdog", daemon=True).start()


def main(cfg: CollectConfig) -> dict[str, Any]:
    """Collect every missing ``(task, seed)`` episode into ``cfg.out``.

    Parameters
    ----------
    cfg : CollectConfig
        The environment, its tasks and seeds, the perturbations, and the
        JSONL file to append to.

    Returns
    -------
    dict
        ``n_new``, ``n_skipped``, ``n_total``, ``success_rate``, ``seconds``.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if cfg.n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1; got {cfg.n_seeds!r}.")
    start = time.perf_counter()
    out = Path(cfg.out)
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked_output(out) as fh:
        records, offset, fix = scan_records(fh, out)
        env = shared_env(cfg.env, cfg.env_kwargs)
        tasks = list(cfg.tasks) if cfg.tasks else env.tasks(cfg.split)
        if cfg.limit is not None:
            tasks = tasks[: cfg.limit]
        repair_torn_line(fh, offset, fix)
        done_keys = {r["key"] for r in records}
        jobs = [
            (t, s)
            for t in tasks
            for s in range(cfg.n_seeds)
            if _episode_key(cfg.env, t, s) not in done_keys
        ]
        cfg_dict = {**asdict(cfg), "parent_pid": os.getpid()}
        par_kwargs: dict[str, Any] = {"n_jobs": cfg.n_jobs, "return_as": "generator"}
        if cfg.backend is not None:
            par_kwargs["backend"] = cfg.backend
        n_new, n_success = 0, 0
        with tqdm(total=len(jobs), disable=not cfg.progress, desc="collect") as bar:
            results = Parallel(**par_kwargs)(
                delayed(collect_episode)(cfg_dict, t, s) for t, s in jobs
            )
            for rec in results:
                fh.write((json.dumps(rec) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
                n_new += 1
                n_success += rec["success"]
                bar.update(1)
    return {
        "n_new": n_new,
        "n_skipped": len(tasks) * cfg.n_seeds - len(jobs),
        "n_total": len(done_keys) + n_new,
        "success_rate": n_success / n_new if n_new else float("nan"),
        "seconds": round(time.perf_counter() - start, 2),
    }


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`CollectConfig`."""
    return config_parser(
        CollectConfig,
        "Collect expert trajectories to JSONL.",
    )


def _cli(argv: list[str] | None = None) -> int:
    """``python -m pipelines.collect``: errors about the output are one line."""
    cfg = parse_config(make_parser(), CollectConfig, argv)
    try:
        summary = main(cfg)
    except (OutputLockedError, ValueError) as exc:
        print(f"pipelines.collect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
