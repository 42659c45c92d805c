"""Build ``datasets/textworld_r2v``: what ``make dataset-textworld`` runs.

Usage::

    python -m pipelines.dataset_textworld --out runs/dataset --ship datasets/textworld_r2v

1. :mod:`pipelines.run` with the dataset preset (:data:`PRESET`): 40 train
   games, BC of the tiny Llama (no DPO), the verifier, then the frozen SLM
   **scoring the admissible commands** (:mod:`pipelines.scoring`) rolled out
   with counterfactual labels on 40 validation games × 5 perturbation seeds
   (the router table) and 20 test games × 3 held-out seeds (the test table).
2. The two tables are copied to ``--ship`` with ``stats.json`` (rows,
   positives of each label, episodes with a positive, seeds, SLM/teacher
   success) and the chain summary.

About 30-40 minutes on two CPU cores (games are generated once and cached).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines._cli import config_parser, run_cli
from pipelines.models import fingerprints

__all__ = [
    "PRESET",
    "DatasetConfig",
    "main",
    "make_parser",
    "table_stats",
]

#: :class:`pipelines.run.RunConfig` fields of the dataset build.
PRESET: dict[str, Any] = {
    "dpo": False,
    "policy": "score",
    "n_train": 40,
    "n_router": 40,
    "n_router_seeds": 5,
    "n_test": 20,
    "n_test_seeds": 3,
    "max_steps": 15,
}


@dataclass
class DatasetConfig:
    """Dataset build settings.

    Parameters
    ----------
    out : str
        Chain folder.
    ship : str or None
        Copy the tables there (``datasets/textworld_r2v``).
    n_jobs : int
        Parallel rollout workers.
    reuse_chain : bool
        Skip the chain when ``<out>/run_summary.json`` holds a finished run.
    """

    out: str = "runs/dataset"
    ship: str | None = "datasets/textworld_r2v"
    n_jobs: int = 2
    reuse_chain: bool = False


def table_stats(table: Any) -> dict[str, Any]:
    """Rows, label positives, episodes with a positive, seeds and success rates."""
    ep = table.groupby("episode_id")[["slm_success", "teacher_success"]].first()
    out: dict[str, Any] = {
        "rows": len(table),
        "episodes": int(table["episode_id"].nunique()),
        "games": int(table["task_id"].nunique()),
        "seeds": sorted(int(s) for s in table["seed"].unique()),
        "slm_success": float(ep["slm_success"].mean()),
        "teacher_success": float(ep["teacher_success"].mean()),
    }
    for col in ("y_counterfactual", "y_verifier"):
        if col in table:
            pos = table[table[col].astype(int) == 1]
            out[col] = {
                "positives": len(pos),
                "rate": float(table[col].astype(int).mean()),
                "episodes_with_positive": int(pos["episode_id"].nunique()),
                "games_with_positive": int(pos["task_id"].nunique()),
            }
    return out


def main(cfg: DatasetConfig) -> dict[str, Any]:
    """Run the chain with :data:`PRESET` and ship its tables."""
    import pandas as pd

    from pipelines import run

    out = Path(cfg.out)
    done = out / "run_summary.json"
    prior = json.loads(done.read_text()) if done.is_file() else {}
    if cfg.reuse_chain and "total_seconds" in prior:
        chain = prior
    else:
        chain = run.main(run.RunConfig(out=str(out), n_jobs=cfg.n_jobs, **PRESET))
    art = chain["artifacts"]
    stats = {
        "router": table_stats(pd.read_parquet(art["router_table"])),
        "test": table_stats(pd.read_parquet(art["test_table"])),
        "preset": PRESET,
        **fingerprints(art["slm"], art["verifier"]),
    }
    if cfg.ship:
        dest = Path(cfg.ship)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(art["router_table"], dest / "textworld_r2v_router.parquet")
        shutil.copyfile(art["test_table"], dest / "textworld_r2v_test.parquet")
        keep = {k: v for k, v in chain.items() if k != "artifacts"}
        (dest / "chain_summary.json").write_text(json.dumps(keep, indent=2))
        (dest / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return stats


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`DatasetConfig`."""
    return config_parser(DatasetConfig, "Build datasets/textworld_r2v.")


if __name__ == "__main__":
    run_cli(make_parser(), DatasetConfig, main, show=None)
