"""TextWorld: generated, cached, split by seed; the expert wins every test game."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.envs import Env
from pipelines.envs.textworld import SPLIT_OFFSETS, TextWorldEnv
from pipelines.perturb import FAMILIES, PerturbedEnv, make_family

pytest.importorskip("textworld")


@pytest.fixture(scope="module")
def tw_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("textworld")


@pytest.fixture(scope="module")
def env(tw_cache) -> TextWorldEnv:
    env = TextWorldEnv(
        "simple", n_games={"train": 1, "validation": 1, "test": 3}, cache_dir=tw_cache
    )
    env.prepare(("test",), n_jobs=2)
    yield env
    env.close()


def run_expert(env) -> tuple[bool, list[float], list[dict]]:
    latencies, infos, success, done = [], [], False, False
    while not done:
        action = env.expert_action()
        t0 = time.perf_counter()
        _, done, success, info = env.step(action)
        latencies.append(time.perf_counter() - t0)
        infos.append(info)
    return success, latencies, infos


def test_splits_by_seed(env) -> None:
    assert isinstance(env, Env)
    assert env.tasks("train") == [f"simple-{SPLIT_OFFSETS['train']}"]
    assert env.tasks("test")[0] == "simple-200000"
    assert not set(env.tasks("train")) & set(env.tasks("test"))
    with pytest.raises(ValueError, match="split"):
        env.tasks("dev")


def test_games_are_cached(env) -> None:
    path = env.game_path("simple-200000")
    mtime = path.stat().st_mtime
    t0 = time.perf_counter()
    assert env.game_path("simple-200000") == path
    assert time.perf_counter() - t0 < 0.5
    assert path.stat().st_mtime == mtime


def test_expert_solves_all_test_games(env, record_property) -> None:
    wins, lat = [], []
    for task in env.tasks("test"):
        obs = env.reset(task, seed=0)
        assert obs.strip()
        ok, latencies, infos = run_expert(env)
        wins.append(ok)
        lat += latencies
        assert infos[0]["admissible_commands"]
        assert all(not i["tool_error"] and not i["truncated"] for i in infos)
    assert all(wins), wins
    record_property("median_step_latency_s", float(np.median(lat)))
    assert np.median(lat) < 0.5


def test_deterministic_replay(env) -> None:
    task = env.tasks("test")[1]
    env.reset(task)
    actions, trace = [], []
    for _ in range(4):
        a = env.expert_action() or "look"
        actions.append(a)
        trace.append(env.step(a)[:3])
    env.reset(task)
    assert [env.step(a)[:3] for a in actions] == trace


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_expert_under_each_family(env, family, record_property) -> None:
    penv = PerturbedEnv(env, make_family(family, rate=0.2), max_steps=60)
    wins, fired = [], set()
    for task in env.tasks("test"):
        penv.reset(task, seed=1)
        ok, _, infos = run_expert(penv)
        wins.append(ok)
        for info in infos:
            fired.update(info["perturbations"])
            if "tool_failure" in info["perturbations"]:
                assert info["tool_error"]
            if "truncate" in info["perturbations"]:
                assert info["truncated"]
    record_property(f"success_{family}", float(np.mean(wins)))
    assert fired, f"no {family} perturbation fired"
    # The expert reads the true state: only step limits could stop it.
    assert np.mean(wins) == 1.0


def test_invalid_arguments(tw_cache) -> None:
    with pytest.raises(ValueError, match="kind"):
        TextWorldEnv("zork")
    with pytest.raises(ValueError, match="n_games"):
        TextWorldEnv(n_games={"dev": 1})
    env = TextWorldEnv(cache_dir=tw_cache)
    with pytest.raises(ValueError, match="task"):
        env.game_path("custom-3")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


@pytest.mark.slow
def test_custom_games(tw_cache) -> None:
    env = TextWorldEnv("custom", n_games={"test": 2}, cache_dir=tw_cache)
    for task in env.tasks("test"):
        env.reset(task)
        assert run_expert(env)[0]
    env.close()
