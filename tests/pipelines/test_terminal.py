"""Terminal tasks: each solution.sh passes its tests; an empty attempt fails."""

from __future__ import annotations

import pytest

from pipelines.envs import Env
from pipelines.envs.terminal import TerminalEnv, default_tasks_dir, load_task

TASKS = sorted(p.name for p in default_tasks_dir().iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def env() -> TerminalEnv:
    env = TerminalEnv()
    yield env
    env.close()


def test_at_least_six_tasks_in_format() -> None:
    assert len(TASKS) >= 6
    for name in TASKS:
        task = load_task(default_tasks_dir() / name)
        assert task.instruction and task.agent_timeout > 0


@pytest.mark.parametrize("task", TASKS)
def test_solution_passes_and_empty_attempt_fails(env, task) -> None:
    assert isinstance(env, Env)
    env.reset(task)
    _, done, success, info = env.step("SUBMIT")
    assert done and not success and not info["tests_passed"]
    env.reset(task)
    steps = 0
    while (action := env.expert_action()) is not None:
        obs, done, success, info = env.step(action)
        steps += 1
    assert success, obs
    assert steps == 2


def test_state_persists_and_errors_flagged(env) -> None:
    env.reset(TASKS[0])
    env.step("echo hello > note.txt")
    obs, _, _, info = env.step("cat note.txt")
    assert obs == "hello" and not info["tool_error"]
    obs, _, _, info = env.step("false")
    assert info["tool_error"] and info["exit_code"] == 1


def test_cannot_escape_workdir(env, tmp_path) -> None:
    env.reset(TASKS[0])
    target = tmp_path / "x"
    _, _, _, info = env.step(f"echo pwned > {target}")
    assert info["tool_error"] and not target.exists()


def test_splits_and_errors(env, tmp_path) -> None:
    parts = [env.tasks(s) for s in ("train", "validation", "test")]
    assert sorted(t for p in parts for t in p) == TASKS
    with pytest.raises(KeyError, match="unknown"):
        env.reset("nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_task(tmp_path)
    with pytest.raises(NotImplementedError, match="use_docker"):
        TerminalEnv(use_docker=True)
