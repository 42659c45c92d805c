"""HumanEval+ environment: canonical solutions pass, wrong ones fail, hostile code is contained."""

from __future__ import annotations

import pytest

from pipelines.envs import Env, make_env
from pipelines.envs.humaneval import (
    HumanEvalEnv,
    build_program,
    evaluate_solution,
    load_problems,
)


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_problems()}


@pytest.fixture
def env(he_cache) -> HumanEvalEnv:
    return HumanEvalEnv(cache_dir=he_cache)


def test_dataset_complete(problems) -> None:
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert p.entry_point == "has_close_elements"
    assert p.plus_input and p.base_input


def test_splits_are_disjoint_and_cover(env) -> None:
    train, val, test = env.tasks("train"), env.tasks("validation"), env.tasks("test")
    assert len(train) + len(val) + len(test) == 164
    assert not set(train) & set(test) and not set(val) & set(test)
    assert env.tasks("test") == test
    with pytest.raises(ValueError, match="split"):
        env.tasks("dev")


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/2", "HumanEval/32"])
def test_canonical_passes_base_and_plus(problems, he_cache, task) -> None:
    p = problems[task]
    program = p.prompt + p.canonical_solution
    assert evaluate_solution(p, program, suite="base", cache_dir=he_cache).passed
    assert evaluate_solution(p, program, suite="plus", cache_dir=he_cache).passed


def test_known_wrong_fails_plus(problems, he_cache) -> None:
    """A solution that memorises the base tests passes base and fails plus."""
    from pipelines.envs.humaneval import _GroundTruth
    from pipelines.sandbox import Sandbox

    p = problems["HumanEval/0"]
    base_out, _ = _GroundTruth(he_cache, Sandbox()).get(p)
    table = {repr(list(args)): out for args, out in zip(p.base_input, base_out)}
    program = (
        f"_T = {table!r}\n"
        "def has_close_elements(*args):\n"
        "    return _T.get(repr(list(args)), False)\n"
    )
    assert evaluate_solution(p, program, suite="base", cache_dir=he_cache).passed
    rep = evaluate_solution(p, program, suite="plus", cache_dir=he_cache)
    assert not rep.passed and "wrong output" in rep.error


def test_wrong_float_fails(problems, he_cache) -> None:
    p = problems["HumanEval/2"]
    rep = evaluate_solution(
        p, p.prompt + "    return number % 1.0 + 1e-3\n", cache_dir=he_cache
    )
    assert not rep.passed


def test_three_action_loop_with_expert(env) -> None:
    assert isinstance(env, Env)
    obs = env.reset("HumanEval/0", seed=0)
    assert "has_close_elements" in obs
    done, success, steps = False, False, 0
    while not done:
        action = env.expert_action()
        assert action is not None
        obs, done, success, info = env.step(action)
        steps += 1
        assert info["step"] == steps
        assert {"tool_error", "truncated", "perturbations"} <= set(info)
    assert success and steps == 3
    assert info["base_passed"] and info["plus_passed"]
    assert env.expert_action() is None


def test_run_shows_examples_and_flags_errors(env) -> None:
    env.reset("HumanEval/0")
    obs, done, _, info = env.step("WRITE\n    return sorted(numbers)[0] < threshold\n")
    assert not done and not info["tool_error"]
    obs, _, _, info = env.step("RUN")
    assert "has_close_elements(" in obs and "FAIL" in obs
    env.step("WRITE\n    raise ValueError('boom')\n")
    obs, _, _, info = env.step("RUN")
    assert info["tool_error"] and "boom" in obs
    obs, done, success, info = env.step("SUBMIT")
    assert done and not success and not info["base_passed"]


def test_hostile_submission_is_contained(env, tmp_path) -> None:
    env.reset("HumanEval/0")
    env.step("WRITE\n    import os\n    os._exit(0)\n")
    _, done, success, _ = env.step("SUBMIT")
    assert done and not success
    env.reset("HumanEval/0")
    env.step("WRITE\n    while True:\n        pass\n")
    env.sandbox.wall_time = 2.0
    obs, _, _, info = env.step("RUN")
    assert info["tool_error"] and "timed out" in obs


def test_unknown_action_and_step_limit(he_cache) -> None:
    env = make_env("humaneval", cache_dir=he_cache, max_steps=2)
    env.reset("HumanEval/2")
    obs, done, _, info = env.step("DANCE")
    assert info["tool_error"] and "Unknown action" in obs and not done
    _, done, success, info = env.step("RUN")
    assert done and not success and info["step_limit"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("RUN")


def test_full_program_keeps_imports(problems) -> None:
    p = problems["HumanEval/0"]
    prog = build_program(p, "def has_close_elements(numbers, threshold):\n    pass\n")
    assert prog.startswith("from typing import List")


def test_bad_arguments(problems) -> None:
    with pytest.raises(ValueError, match="suite"):
        evaluate_solution(problems["HumanEval/0"], "", suite="extra")
    with pytest.raises(ValueError, match="name"):
        make_env("atari")
    with pytest.raises(FileNotFoundError, match="path"):
        load_problems("/nonexistent.jsonl")


@pytest.mark.slow
def test_all_canonical_solutions_pass(tmp_path) -> None:
    """All 164 canonical solutions pass base and plus (~1-2 min on 2 cores)."""
    from pipelines.check_humaneval import CheckHumanEvalConfig, main

    summary = main(CheckHumanEvalConfig(n_jobs=2, out=str(tmp_path / "s.json")))
    assert summary["failures"] == []
    assert summary["base_passed"] == summary["plus_passed"] == 164
