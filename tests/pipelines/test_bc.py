"""Behavioral cloning: template, examples, SFTTrainer smoke run on TextWorld."""

from __future__ import annotations

import inspect

import pytest
from _tw_chain import bc_model, summary, trajectories

from pipelines.bc import (
    ACTION_CUE,
    HISTORY_CUE,
    PROMPT_DEFAULTS,
    BCConfig,
    build_examples,
    clean_text,
    format_prompt,
    main,
    make_parser,
    prompt_kwargs_of,
    read_trajectories,
)


def test_prompt_template() -> None:
    hist = [
        ("open box", "You open the box.\n\n\n>     -= Room =-   1/3"),
        ("go east", "Hall."),
    ]
    p = format_prompt("Goal: win.", hist, n_turns=1)
    assert p == "Goal: win.\nDone: open box\n> go east\nHall.\nAction:"
    p2 = format_prompt("Goal: win.", hist, n_turns=2)
    # The TextWorld prompt/status line is dropped; no Done line is left over.
    assert p2 == "Goal: win.\n> open box\nYou open the box.\n> go east\nHall.\nAction:"
    p3 = format_prompt(
        "Goal: win.", hist, n_turns=2, n_actions=0, drop_prompt_lines=False
    )
    assert "> open box\nYou open the box.\n> -= Room =- 1/3" in p3
    many = [(f"go {i}", "ok") for i in range(30)]
    p4 = format_prompt("g", many, n_turns=1, n_actions=3)
    assert f"{HISTORY_CUE} go 26; go 27; go 28\n> go 29" in p4
    assert p4.endswith(ACTION_CUE)
    assert format_prompt("g", many, n_turns=0, n_actions=0) == "g\nAction:"
    assert clean_text("a" * 50, max_chars=10) == "a" * 10
    with pytest.raises(ValueError, match="n_turns"):
        format_prompt("g", n_turns=-1)
    with pytest.raises(ValueError, match="n_actions"):
        format_prompt("g", n_actions=-1)


def test_prompt_defaults_shared() -> None:
    """Every step's config defaults to the same template as format_prompt."""
    from pipelines.dpo import DPOConfigR2V
    from pipelines.rollout import RolloutConfig
    from pipelines.run import RunConfig
    from pipelines.verifier import VerifierConfig

    sig = inspect.signature(format_prompt).parameters
    assert {k: sig[k].default for k in PROMPT_DEFAULTS} == PROMPT_DEFAULTS
    for cls in (BCConfig, VerifierConfig, DPOConfigR2V, RolloutConfig, RunConfig):
        assert prompt_kwargs_of(cls()) == PROMPT_DEFAULTS, cls
    assert prompt_kwargs_of({"n_turns": 3})["n_turns"] == 3


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
