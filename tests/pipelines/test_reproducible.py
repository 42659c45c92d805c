"""The same small chain twice gives the same model and the same tables, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _tw_chain import bc_config, rollout_config, trajectories, verifier

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_chain_twice_byte_for_byte(tmp_path_factory) -> None:
    pytest.importorskip("trl")
    from pipelines.bc import main as bc
    from pipelines.rollout import main as rollout

    traj = trajectories(tmp_path_factory)
    ver = str(verifier(tmp_path_factory))
    root = tmp_path_factory.mktemp("repro")
    tables = []
    models = []
    for run in ("a", "b"):
        slm = root / run / "bc"
        bc(
            bc_config(
                traj, slm, hidden_size=32, n_layers=1, vocab_size=400, max_steps=4
            )
        )
        models.append(_digest(slm / "model.safetensors"))
        for policy in ("score", "generate"):
            out = root / run / f"{policy}.parquet"
            rollout(
                rollout_config(
                    slm, ver, out, max_steps=6, max_new_tokens=6, policy=policy
                )
            )
            tables.append(_digest(out))
    assert models[0] == models[1]
    assert tables[:2] == tables[2:]
