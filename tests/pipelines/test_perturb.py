"""Perturbations: seeded, composable, recorded in info."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.envs.humaneval import HumanEvalEnv
from pipelines.perturb import (
    FAMILIES,
    DropLines,
    Mask,
    PerturbedEnv,
    PromptInjection,
    StaleResult,
    ToolFailure,
    ToolTimeout,
    Truncate,
    make_family,
)

ACTIONS = [f"WRITE\n    return {i}\n" for i in range(12)]


@pytest.fixture
def env(he_cache) -> HumanEvalEnv:
    return HumanEvalEnv(cache_dir=he_cache, max_steps=50)


def rollout(penv, seed: int, task: str = "HumanEval/0"):
    out = [penv.reset(task, seed)]
    for a in ACTIONS:
        obs, done, success, info = penv.step(a)
        out.append((obs, done, success, info))
    return out


def test_same_seed_same_perturbations(env) -> None:
    penv = PerturbedEnv(env, make_family("all", rate=0.3))
    assert rollout(penv, 7) == rollout(penv, 7)
    assert rollout(penv, 7) != rollout(penv, 8)


def test_every_family_fires_and_is_recorded(env) -> None:
    for family, classes in FAMILIES.items():
        penv = PerturbedEnv(env, make_family(family, rate=1.0))
        steps = rollout(penv, 0)[1:]
        names = {n for _, _, _, info in steps for n in info["perturbations"]}
        assert names, family
        assert names <= {c.name for c in classes}


def test_flakiness_sets_tool_error_and_skips_action(env) -> None:
    penv = PerturbedEnv(env, [ToolFailure(rate=1.0)])
    penv.reset("HumanEval/0", 0)
    obs, done, _, info = penv.step("WRITE\n    return True\n")
    assert info["tool_error"] and info["perturbations"] == ["tool_failure"]
    assert "failed" in obs and not done
    assert env._code is None  # the action never reached the environment


def test_stale_result_repeats_previous_observation(env) -> None:
    penv = PerturbedEnv(env, [StaleResult(rate=1.0)])
    first = penv.reset("HumanEval/0", 0)
    obs, *_ = penv.step("WRITE\n    return True\n")
    assert obs == first


def test_partial_observability_sets_truncated(env) -> None:
    penv = PerturbedEnv(env, [Truncate(rate=1.0, keep=0.3)])
    clean = env.reset("HumanEval/0")
    obs = penv.reset("HumanEval/0", 3)
    assert len(obs) < len(clean) and "truncated" in obs
    _, _, _, info = penv.step("WRITE\n" + "    x = 1\n" * 20)
    assert info["truncated"]


def test_drop_lines_and_mask_are_deterministic() -> None:
    text = "\n".join(f"line {i} with some words" for i in range(10))
    for op in (DropLines(rate=1.0), Mask(rate=1.0, p_word=0.5)):
        a = op.transform(text, np.random.default_rng(0), {})
        b = op.transform(text, np.random.default_rng(0), {})
        assert a == b and a != text


def test_injection_mentions_bait(env) -> None:
    penv = PerturbedEnv(env, [PromptInjection(rate=1.0)])
    penv.reset("HumanEval/0", 0)
    obs, *_ = penv.step("WRITE\n    return 1\n")
    assert "SUBMIT" in obs or "return None" in obs


def test_step_limit_counts_intercepted_steps(env) -> None:
    penv = PerturbedEnv(env, [ToolFailure(rate=1.0)], max_steps=3)
    penv.reset("HumanEval/0", 0)
    dones = [penv.step("RUN")[1] for _ in range(3)]
    assert dones == [False, False, True]


def test_validation() -> None:
    with pytest.raises(ValueError, match="rate"):
        Truncate(rate=1.5)
    with pytest.raises(ValueError, match="family"):
        make_family("weather")
    with pytest.raises(TypeError, match="Perturbation"):
        PerturbedEnv(object(), ["truncate"])


def test_operator_families_and_reset_rules() -> None:
    # Each operator's family and on_reset, as the wrapper reads them.
    for family, classes in FAMILIES.items():
        for cls in classes:
            assert cls().family == family, cls
    resetting = {cls.name for f in FAMILIES.values() for cls in f if cls.on_reset}
    assert resetting == {"truncate", "drop_lines", "mask", "distractor"}


def test_interceptors_show_their_message_and_transforms_do_not_intercept() -> None:
    rng = np.random.default_rng(0)
    assert ToolFailure().intercept("x", rng) == (
        "Error: the tool call failed (transient error). Please retry."
    )
    assert ToolTimeout().intercept("x", rng) == (
        "Error: the command timed out after 30 s. No output."
    )
    for op in make_family("all"):
        if not isinstance(op, (ToolFailure, ToolTimeout)):
            assert op.intercept("x", rng) is None, op.name


def test_wrapper_passes_attributes_through(env) -> None:
    penv = PerturbedEnv(env, [])
    assert penv.tasks("train") == env.tasks("train")
    assert penv.n_visible == env.n_visible
    penv.reset("HumanEval/0", 0)
    assert penv.expert_action() == env.expert_action()
    with pytest.raises(AttributeError):
        penv.no_such_attribute
