"""Check that HumanEval+ canonical solutions pass their base and plus tests.

Usage::

    python -m pipelines.check_humaneval --n-jobs 2 --out runs/humaneval_check.json

Writes one JSON summary (counts, failures, run time) and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines._cli import config_parser, run_cli

__all__ = ["CheckHumanEvalConfig", "main", "make_parser"]


@dataclass
class CheckHumanEvalConfig:
    """Configuration of the canonical-solution check.

    Parameters
    ----------
    data_path : str or None
        HumanEval+ JSONL(.gz); ``None`` uses the shipped copy.
    limit : int or None
        Check only the first ``limit`` problems.
    n_jobs : int
        Parallel workers (``joblib``).
    backend : str
        ``joblib`` backend (``"loky"``, ``"threading"``, ``"dask"``, ...).
    cache_dir : str or None
        Ground-truth cache directory.
    out : str or None
        Where to write the JSON summary.
    allow_weak_isolation : bool
        Run without bubblewrap (resource limits and an audit hook only; see
        :class:`pipelines.sandbox.Sandbox`). Recorded in the summary.
    """

    data_path: str | None = None
    limit: int | None = None
    n_jobs: int = 2
    backend: str = "loky"
    cache_dir: str | None = None
    out: str | None = None
    allow_weak_isolation: bool = False


def _check_one(
    problem: Any, cache_dir: str | None, allow_weak_isolation: bool = False
) -> dict[str, Any]:
    from pipelines.envs.humaneval import default_sandbox, evaluate_solution

    sb = default_sandbox()
    sb.allow_weak_isolation = allow_weak_isolation
    program = problem.prompt + problem.canonical_solution
    kw: dict[str, Any] = {"cache_dir": cache_dir, "sandbox": sb}
    base = evaluate_solution(problem, program, suite="base", **kw)
    plus = evaluate_solution(problem, program, suite="plus", **kw)
    return {
        "task_id": problem.task_id,
        "base": base.passed,
        "plus": plus.passed,
        "error": base.error or plus.error,
    }


def main(cfg: CheckHumanEvalConfig) -> dict[str, Any]:
    """Run the check and return the summary.

    Parameters
    ----------
    cfg : CheckHumanEvalConfig
        Where the problems are, how many to check, and the sandbox settings.

    Returns
    -------
    dict
        ``n``, ``base_passed``, ``plus_passed``, ``failures``, ``seconds``,
        ``isolation`` (the sandbox mode in force).
    """
    from joblib import Parallel, delayed

    from pipelines.envs.humaneval import default_sandbox, load_problems

    problems = load_problems(cfg.data_path)
    if cfg.limit is not None:
        problems = problems[: cfg.limit]
    start = time.perf_counter()
    rows = Parallel(n_jobs=cfg.n_jobs, backend=cfg.backend)(
        delayed(_check_one)(p, cfg.cache_dir, cfg.allow_weak_isolation)
        for p in problems
    )
    sb = default_sandbox()
    sb.allow_weak_isolation = cfg.allow_weak_isolation
    summary = {
        "n": len(rows),
        "base_passed": sum(r["base"] for r in rows),
        "plus_passed": sum(r["plus"] for r in rows),
        "failures": [r for r in rows if not (r["base"] and r["plus"])],
        "seconds": round(time.perf_counter() - start, 2),
        "isolation": sb.isolation(),
        "config": asdict(cfg),
    }
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(summary, indent=2))
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`CheckHumanEvalConfig`."""
    return config_parser(CheckHumanEvalConfig, __doc__.split("\n")[0])


if __name__ == "__main__":
    run_cli(
        make_parser(),
        CheckHumanEvalConfig,
        main,
        show=lambda r: {k: v for k, v in r.items() if k != "config"},
        indent=2,
    )
