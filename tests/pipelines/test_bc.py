"""Behavioral cloning: template, examples, SFTTrainer smoke run on TextWorld."""

from __future__ import annotations

import pytest
from _tw_chain import bc_model, summary, trajectories

from pipelines.bc import (
    ACTION_CUE,
    BCConfig,
    build_examples,
    clean_text,
    format_prompt,
    main,
    make_parser,
    read_trajectories,
)


def test_prompt_template() -> None:
    hist = [
        ("open box", "You open the box.\n\n\n>     -= Room =-"),
        ("go east", "Hall."),
    ]
    p = format_prompt("Goal: win.", hist, n_turns=1)
    assert p == "Goal: win.\n> go east\nHall.\nAction:"
    p2 = format_prompt("Goal: win.", hist, n_turns=2)
    assert "> open box\nYou open the box.\n> -= Room =-" in p2
    assert p2.endswith(ACTION_CUE)
    assert clean_text("a" * 50, max_chars=10) == "a" * 10
    with pytest.raises(ValueError, match="n_turns"):
        format_prompt("g", n_turns=-1)


def test_examples_follow_teacher(tmp_path_factory) -> None:
    recs = read_trajectories(trajectories(tmp_path_factory))
    exs = build_examples(recs)
    assert len(exs) == sum(r["n_steps"] for r in recs if r["success"])
    first = [e for e in exs if e["t"] == 1]
    assert all(e["prompt"].endswith(ACTION_CUE) for e in exs)
    assert all(e["completion"] == " " + e["action"] for e in exs)
    assert all("> " not in e["prompt"].split("\n", 1)[0] for e in first)
    with pytest.raises(FileNotFoundError, match="collect"):
        read_trajectories("/nonexistent/file.jsonl")


def test_bc_smoke(tmp_path_factory) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.policies import TransformersPolicy

    out = bc_model(tmp_path_factory)
    s = summary(out, "bc_summary.json")
    assert s["n_examples"] > 10 and 5e4 < s["n_parameters"] < 5e6
    assert s["final_loss"] < s["train_loss"] * 1.5 and s["completion_nll"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    pol = TransformersPolicy(model, tok, max_new_tokens=8)
    recs = read_trajectories(trajectories(tmp_path_factory))
    cands = pol.propose(build_examples(recs)[0]["prompt"], k=3)
    assert len(cands) == 3 and all(c.token_logprobs.size for c in cands)


def test_bc_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="trajectories"):
        main(BCConfig(trajectories=[], output_dir=str(tmp_path)))
    args = make_parser().parse_args(["--trajectories", "x.jsonl", "--max-steps", "3"])
    assert args.max_steps == 3 and args.trajectories == ["x.jsonl"]
