"""MemoEnv: memoised transitions give exactly what the environment gives."""

from __future__ import annotations

import pytest

from pipelines.envs import MemoEnv
from pipelines.envs.humaneval import HumanEvalEnv
from pipelines.perturb import PerturbedEnv, make_family

ACTIONS = [f"WRITE\n    return {i}\n" for i in range(8)]
TASK = "HumanEval/0"


def _env(he_cache) -> PerturbedEnv:
    # A high rate so that perturbations fire and their seeded draws matter.
    return PerturbedEnv(
        HumanEvalEnv(cache_dir=he_cache, max_steps=50), make_family("all", 0.3)
    )


def _play(env, seed: int, actions: list[str]) -> list:
    out = [env.reset(TASK, seed), list(getattr(env, "reset_perturbations", []))]
    for a in actions:
        out.append((env.expert_action(), *env.step(a)))
    return out


@pytest.mark.parametrize("max_entries", [500_000, 3])
def test_interleaved_episodes_and_branches_match_the_plain_env(he_cache, max_entries):
    plain, memo = _env(he_cache), MemoEnv(_env(he_cache), max_entries=max_entries)
    # Two seeds interleaved, then branches off a prefix while the wrapped env
    # sits at the end of another episode: every answer must be the plain one.
    plays = [
        (1, ACTIONS[:6]),
        (2, ACTIONS[:4]),
        (1, [*ACTIONS[:3], ACTIONS[7]]),
        (1, ACTIONS[:6]),
        (2, [*ACTIONS[:4], ACTIONS[5], ACTIONS[6]]),
        (1, [*ACTIONS[:3], ACTIONS[7], ACTIONS[0]]),
    ]
    for seed, actions in plays:
        assert _play(memo, seed, actions) == _play(plain, seed, actions)
    steps = sum(len(a) for _, a in plays)
    assert memo.hits_ + memo.misses_ == steps
    if max_entries > 100:
        # Only transitions never seen before reach the environment.
        assert memo.misses_ == 6 + 4 + 1 + 0 + 2 + 1
    assert memo.tasks("test") == plain.tasks("test")


def test_step_before_reset_names_the_problem(he_cache):
    with pytest.raises(RuntimeError, match="reset"):
        MemoEnv(_env(he_cache)).step("look")


def test_other_attributes_pass_through(he_cache):
    inner = _env(he_cache)
    memo = MemoEnv(inner)
    assert memo.name == inner.name == "humaneval"
    assert memo.tasks("validation") == inner.tasks("validation")
    assert memo.n_visible == inner.env.n_visible  # two wrappers deep
    with pytest.raises(AttributeError):
        memo.no_such_attribute
