"""Process verifier: step labels, MiniLM head, held-out AUROC/ECE, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from _tw_chain import bc_model, summary, trajectories, verifier

from pipelines.bc import build_examples, read_trajectories
from pipelines.verifier import (
    Verifier,
    VerifierConfig,
    build_slm_labels,
    build_step_labels,
    main,
)


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


def test_slm_candidates_become_labels(tmp_path_factory) -> None:
    """BC SLM candidates at teacher states: teacher's action = 1, others = 0."""
    from pipelines.policies import TransformersPolicy

    recs = read_trajectories(trajectories(tmp_path_factory))
    pol = TransformersPolicy(str(bc_model(tmp_path_factory)), max_new_tokens=8)
    rows = build_slm_labels(recs, pol, k=4, max_contexts=12, seed=0)
    teacher = {
        (e["task"], e["seed"], e["t"]): e["action"] for e in build_examples(recs)
    }
    states = {(r["task"], r["seed"], r["t"]) for r in rows}
    assert len(states) == 12 and all(r["source"] == "slm" for r in rows)
    for r in rows:
        assert r["label"] == int(r["action"] == teacher[(r["task"], r["seed"], r["t"])])
    per_state = [
        [r["action"] for r in rows if (r["task"], r["seed"], r["t"]) == s]
        for s in states
    ]
    assert all(len(a) == len(set(a)) and 1 <= len(a) <= 4 for a in per_state)
    assert any(r["label"] == 0 for r in rows)  # a barely trained SLM errs
    assert build_slm_labels(recs, pol, k=4, max_contexts=12, seed=0) == rows  # seeded
    with pytest.raises(ValueError, match="'k'"):
        build_slm_labels(recs, pol, k=0)


def test_verifier_summary_reports_slm_candidates(tmp_path_factory) -> None:
    s = summary(verifier(tmp_path_factory), "verifier_summary.json")
    assert s["n_slm_pairs"] > 0 and s["n_pairs"] == s["n_plan_pairs"] + s["n_slm_pairs"]
    sub = s["slm_candidates"]
    assert sub["n"] > 0 and 0 <= sub["ece"] <= 1
    assert "auroc_without_slm_negatives" in sub and "top1_is_teacher" in sub
    with pytest.raises(FileNotFoundError, match="slm"):
        main(VerifierConfig(trajectories=["x"], slm="/nonexistent/bc"))
