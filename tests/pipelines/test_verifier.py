"""Process verifier: step labels, MiniLM head, held-out AUROC/ECE, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from _tw_chain import summary, trajectories, verifier

from pipelines.bc import read_trajectories
from pipelines.verifier import Verifier, VerifierConfig, build_step_labels, main


def test_step_labels(tmp_path_factory) -> None:
    recs = read_trajectories(trajectories(tmp_path_factory))
    rows = build_step_labels(recs, n_negatives=3)
    pos = [r for r in rows if r["label"] == 1]
    assert len(pos) == sum(r["n_steps"] for r in recs if r["success"])
    by_step: dict = {}
    for r in rows:
        by_step.setdefault((r["task"], r["seed"], r["t"]), []).append(r)
    for group in by_step.values():
        positives = {r["action"] for r in group if r["label"] == 1}
        assert len(positives) == 1
        assert not positives & {r["action"] for r in group if r["label"] == 0}
    with pytest.raises(ValueError, match="n_negatives"):
        build_step_labels(recs, n_negatives=0)


def test_minilm_verifier_held_out(tmp_path_factory, record_property) -> None:
    out = verifier(tmp_path_factory)
    s = summary(out, "verifier_summary.json")
    record_property("verifier_auroc", s["auroc"])
    record_property("verifier_ece", s["ece"])
    assert s["n_test_pairs"] > 0
    assert s["auroc"] > 0.6, s  # better than chance on held-out tasks
    assert 0 <= s["ece"] <= 0.5
    ver = Verifier.load(out)
    recs = read_trajectories(trajectories(tmp_path_factory))
    rows = build_step_labels(recs)
    p = ver.score([r["prompt"] for r in rows], [r["action"] for r in rows])
    assert p.shape == (len(rows),) and np.all((p >= 0) & (p <= 1))
    y = np.array([r["label"] for r in rows])
    assert p[y == 1].mean() > p[y == 0].mean()


def test_hashing_encoder_and_errors(tmp_path, tmp_path_factory) -> None:
    traj = str(trajectories(tmp_path_factory))
    s = main(
        VerifierConfig(trajectories=[traj], output_dir=str(tmp_path), encoder="hashing")
    )
    assert 0 <= s["auroc"] <= 1
    assert Verifier.load(tmp_path).encoder == "hashing"
    with pytest.raises(ValueError, match="'encoder'"):
        main(VerifierConfig(trajectories=[traj], encoder="bert"))
    with pytest.raises(RuntimeError, match="not fitted"):
        Verifier().score(["x"], ["y"])
    with pytest.raises(ValueError, match="same length"):
        Verifier("hashing").featurize(["x"], [])
