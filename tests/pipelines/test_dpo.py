"""DPO + BC + consistency: TRL DPOTrainer subclass; β₂ > 0 lowers held-out JSD."""

from __future__ import annotations

import pytest
from _tw_chain import bc_model, collect_config, trajectories, verifier

from pipelines.bc import build_examples, read_trajectories
from pipelines.dpo import (
    DPOConfigR2V,
    build_consistency_pairs,
    jsd_on_pairs,
    main,
    make_parser,
)


@pytest.fixture(scope="module")
def held_out_pairs(tmp_path_factory):
    from pipelines.collect import main as collect

    out = tmp_path_factory.mktemp("dpo_heldout") / "test.jsonl"
    collect(collect_config(out, split="test", n_seeds=1))
    # Test games, and a view seed never used in training.
    return build_consistency_pairs(build_examples(read_trajectories(out)), seed=7)


def _run(tmp_path_factory, weight: float):
    out = tmp_path_factory.mktemp(f"dpo_{weight}")
    cfg = DPOConfigR2V(
        slm=str(bc_model(tmp_path_factory)),
        verifier=str(verifier(tmp_path_factory)),
        trajectories=[str(trajectories(tmp_path_factory))],
        output_dir=str(out),
        consistency_weight=weight,
        cons_batch_size=4,
        max_pairs=24,
        k=3,
        max_new_tokens=8,
        max_steps=8,
        batch_size=4,
        learning_rate=2e-3,
    )
    return cfg, main(cfg)


def test_consistency_lowers_held_out_jsd(tmp_path_factory, held_out_pairs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert held_out_pairs and any(p["view_a"] != p["view_b"] for p in held_out_pairs)
    jsd = {}
    for w in (0.0, 5.0):
        cfg, s = _run(tmp_path_factory, w)
        assert s["n_pairs"] > 0 and s["train_loss"] == s["train_loss"]
        model = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
        tok = AutoTokenizer.from_pretrained(cfg.output_dir)
        jsd[w] = jsd_on_pairs(model, tok, held_out_pairs)
    assert jsd[5.0] < jsd[0.0], jsd


def test_second_view_keeps_actions(tmp_path_factory) -> None:
    exs = build_examples(read_trajectories(trajectories(tmp_path_factory)))
    pairs = build_consistency_pairs(exs, seed=3, rate=0.9)
    for p in pairs:
        acts_a = [ln for ln in p["view_a"].split("\n") if ln.startswith("> ")]
        acts_b = [ln for ln in p["view_b"].split("\n") if ln.startswith("> ")]
        assert acts_a == acts_b and p["view_b"].endswith("Action:")
    assert build_consistency_pairs(exs, seed=3, rate=0.9) == pairs  # seeded


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="trajectories"):
        main(DPOConfigR2V(trajectories=[]))
    with pytest.raises(ValueError, match="consistency_weight"):
        main(DPOConfigR2V(trajectories=["x"], consistency_weight=-1))
    args = make_parser().parse_args(["--trajectories", "a", "--max-steps", "2"])
    assert args.max_steps == 2
