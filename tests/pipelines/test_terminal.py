"""Terminal tasks: each solution.sh passes its tests; an empty attempt fails."""

from __future__ import annotations

import os
import shutil

import pytest

from pipelines.envs import Env
from pipelines.envs.terminal import (
    TerminalEnv,
    default_tasks_dir,
    load_task,
    parse_pytest_summary,
)

TASKS = sorted(p.name for p in default_tasks_dir().iterdir() if p.is_dir())

# Tests that run code need the sandbox (bubblewrap); CI installs it.
_NO_EXEC = {
    "test_at_least_six_tasks_in_format",
    "test_splits_and_errors",
    "test_refused_without_bubblewrap",
    "test_parse_pytest_summary",
}


@pytest.fixture(autouse=True)
def _sandbox_or_skip(request) -> None:
    if request.node.originalname in _NO_EXEC or shutil.which("bwrap") is not None:
        return
    msg = (
        "bubblewrap (`bwrap`) is not installed and the sandbox refuses to run "
        "untrusted code without it (apt-get install bubblewrap)"
    )
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


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


def _bwrap_or_skip() -> None:
    if shutil.which("bwrap") is not None:
        return
    msg = "bubblewrap (`bwrap`) is not installed (apt-get install bubblewrap)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def test_x1_agent_cannot_remount_and_write_host(env, tmp_path) -> None:
    _bwrap_or_skip()
    env.reset(TASKS[0])
    target = tmp_path / "x1.txt"
    env.step(
        "for m in / $(awk '{print $5}' /proc/self/mountinfo); do "
        "mount -o remount,bind,rw $m 2>/dev/null; done; "
        f"echo pwned > {target}"
    )
    assert not target.exists()


def test_agent_never_sees_tests_and_cannot_forge_verdict(env) -> None:
    """The tests are not visible to the agent's commands, and a fake pytest,
    conftest or plugin left in the working directory does not pass them."""
    _bwrap_or_skip()
    task = load_task(default_tasks_dir() / "csv-total")
    env.reset("csv-total")
    obs, _, _, info = env.step(f"cat {task.path / 'tests' / 'test_outputs.py'}")
    assert info["tool_error"] and "def test_total" not in obs
    assert info["isolation"]["mode"] == "bwrap"
    fake = "import sys\\nprint('PASSED test_outputs.py::test_total')\\nsys.exit(0)\\n"
    env.step(
        f"printf '{fake}' > pytest.py; mkdir -p pytest; cp pytest.py pytest/__main__.py;"
        " touch pytest/__init__.py; cp pytest.py sitecustomize.py;"
        " printf 'import pytest\\n@pytest.hookimpl(tryfirst=True)\\n"
        "def pytest_runtest_call(item):\\n    pass\\n' > conftest.py;"
        # a process that would write the answer once the tests start: killed
        " (sleep 2; echo 15.00 > total.txt) & disown"
    )
    _, done, success, info = env.step("SUBMIT")
    assert done and not success and not info["tests_passed"]
    assert (
        info["tests"]
        == {f"{task.path / 'tests' / 'test_outputs.py'}::test_total": "FAILED"}
        or "FAILED" in info["tests"].values()
    )


def test_refused_without_bubblewrap(tmp_path, monkeypatch) -> None:
    from pipelines.sandbox import SandboxUnavailableError

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if os.path.isdir(d):
            for name in os.listdir(d):
                link = bindir / name
                if name != "bwrap" and not link.exists() and not link.is_symlink():
                    link.symlink_to(os.path.join(d, name))
    monkeypatch.setenv("PATH", str(bindir))
    env = TerminalEnv()
    env.reset(TASKS[0])
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation"):
        env.step("echo hi")
    weak = TerminalEnv(allow_weak_isolation=True)
    weak.reset(TASKS[0])
    obs, _, _, info = weak.step("echo hi")
    assert obs == "hi"
    assert info["isolation"]["mode"] == "weak"
    assert info["isolation"]["allow_weak_isolation"] == "true"
    env.close()
    weak.close()


def test_parse_pytest_summary() -> None:
    out = "PASSED a.py::t1\nFAILED a.py::t2 - AssertionError\nERROR a.py::t3\n"
    assert parse_pytest_summary(out) == {
        "a.py::t1": "PASSED",
        "a.py::t2": "FAILED",
        "a.py::t3": "ERROR",
    }
    assert parse_pytest_summary("no tests ran") == {}
