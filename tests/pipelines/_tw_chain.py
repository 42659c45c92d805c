"""Shared tiny TextWorld chain for the BC / verifier / rollout / DPO smoke tests.

Games are generated once into the TextWorld cache (``$R2VCAL_TEXTWORLD_CACHE``
or ``~/.cache/r2vcal/textworld``); trajectories, the BC model and the verifier
are built once per pytest session under its base temp directory, so the four
test modules share them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Two train games and one test game of tw-simple, short episodes.
ENV_KWARGS = {
    "kind": "simple",
    "n_games": {"train": 2, "validation": 0, "test": 1},
    "max_steps": 12,
}
FAMILIES = ["all"]
RATE = 0.05


def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session-wide folder of the tiny chain."""
    d = tmp_path_factory.getbasetemp() / "tw_chain"
    d.mkdir(exist_ok=True)
    return d


def trajectories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Teacher trajectories on the train games (2 games x 2 seeds)."""
    pytest.importorskip("textworld")
    from pipelines.collect import main as collect

    out = chain_dir(tmp_path_factory) / "train.jsonl"
    if not out.is_file():
        collect(collect_config(out, split="train", n_seeds=2))
    return out


def bc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BC model trained for a few steps."""
    pytest.importorskip("trl")
    from pipelines.bc import main as bc

    out = chain_dir(tmp_path_factory) / "bc"
    if not (out / "bc_summary.json").is_file():
        bc(bc_config(trajectories(tmp_path_factory), out))
    return out


def verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MiniLM verifier fitted on the tiny trajectories + BC SLM candidates."""
    pytest.importorskip("sentence_transformers")
    from pipelines.verifier import VerifierConfig
    from pipelines.verifier import main as fit_verifier

    out = chain_dir(tmp_path_factory) / "verifier"
    if not (out / "verifier_summary.json").is_file():
        fit_verifier(
            VerifierConfig(
                trajectories=[str(trajectories(tmp_path_factory))],
                output_dir=str(out),
                slm=str(bc_model(tmp_path_factory)),
                slm_k=3,
                slm_max_contexts=24,
                slm_max_new_tokens=8,
            )
        )
    return out


def summary(path: Path, name: str) -> dict:
    """Read a step's JSON summary."""
    return json.loads((path / name).read_text())


def collect_config(out: Path | str, **kw):
    """Teacher collection on the tiny chain's games into ``out``; ``kw`` sets
    the split, seeds and anything else (one process, no progress bar)."""
    from pipelines.collect import CollectConfig

    base = {
        "env": "textworld",
        "env_kwargs": ENV_KWARGS,
        "families": FAMILIES,
        "rate": RATE,
        "n_jobs": 1,
        "backend": None,
        "progress": False,
    }
    return CollectConfig(out=str(out), **base | kw)


def bc_config(traj: Path | str, out: Path | str, **kw):
    """A tiny BC model (64 wide, 2 layers, 6 steps) on the trajectories ``traj``;
    ``kw`` overrides any size or step count."""
    from pipelines.bc import BCConfig

    base = {
        "hidden_size": 64,
        "n_layers": 2,
        "vocab_size": 600,
        "max_steps": 6,
        "batch_size": 4,
        "logging_steps": 2,
    }
    return BCConfig(trajectories=[str(traj)], output_dir=str(out), **base | kw)


def rollout_config(slm: Path | str, verifier: Path | str, out: Path | str, **kw):
    """A short rollout of the tiny chain's SLM on the test game (seeds 1000, 1001)."""
    from pipelines.rollout import RolloutConfig

    base = {
        "env_kwargs": ENV_KWARGS,
        "split": "test",
        "seeds": [1000, 1001],
        "families": FAMILIES,
        "rate": RATE,
        "k": 3,
        "backend": None,
    }
    return RolloutConfig(
        slm=str(slm), verifier=str(verifier), out=str(out), **base | kw
    )
