"""Terminal tasks in both runners: each solution.sh passes its tests, an empty
attempt fails, hostile commands are contained and no container is left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _helpers import host_listener, sandbox_or_skip

from pipelines.envs import Env
from pipelines.envs.terminal import (
    BASE_IMAGE,
    TerminalEnv,
    default_tasks_dir,
    docker_available,
    image_exists,
    load_task,
    parse_pytest_summary,
)

TASKS = sorted(p.name for p in default_tasks_dir().iterdir() if p.is_dir())
REPO = Path(__file__).resolve().parents[2]

# Tests that run code need the sandbox (bubblewrap); CI installs it.
_NO_EXEC = {
    "test_at_least_twenty_tasks_in_format",
    "test_splits_and_errors",
    "test_refused_without_bubblewrap",
    "test_parse_pytest_summary",
}


_sandbox_or_skip = sandbox_or_skip(_NO_EXEC)


def _docker_or_skip() -> None:
    """Skip without a Docker engine and base image; fail where CI promised one."""
    if docker_available() and image_exists(BASE_IMAGE):
        return
    msg = (
        "no Docker engine answers `docker info` or the base image "
        f"{BASE_IMAGE} is missing (start dockerd; python -m "
        "pipelines.envs.terminal build-image)"
    )
    if os.environ.get("R2VCAL_REQUIRE_DOCKER"):
        pytest.fail(msg)
    pytest.skip(msg)


RUNNERS = ["sandbox", "docker"]


def _make(runner: str, **kwargs) -> TerminalEnv:
    if runner == "docker":
        _docker_or_skip()
    return TerminalEnv(use_docker=runner == "docker", **kwargs)


@pytest.fixture(scope="module")
def env() -> TerminalEnv:
    env = TerminalEnv(use_docker=False)
    yield env
    env.close()


def _episode(env: TerminalEnv, task: str, expert: bool) -> list[tuple]:
    env.reset(task)
    record = []
    actions = iter(["SUBMIT"]) if not expert else None
    while True:
        action = env.expert_action() if expert else next(actions, None)
        if action is None:
            break
        obs, done, success, info = env.step(action)
        info = {k: v for k, v in info.items() if k not in ("runner", "isolation")}
        record.append((obs if action == "SUBMIT" else "", done, success, info))
        if done:
            break
    return record


def test_at_least_twenty_tasks_in_format() -> None:
    assert len(TASKS) >= 20
    env = TerminalEnv(use_docker=False)
    splits = {s: env.tasks(s) for s in ("train", "validation", "test")}
    assert all(len(v) >= 5 for v in splits.values()), splits
    for name in TASKS:
        task = load_task(default_tasks_dir() / name)
        assert task.instruction and task.agent_timeout > 0
        assert (task.path / "tests" / "test_outputs.py").is_file()


@pytest.mark.parametrize("task", TASKS)
def test_solution_passes_and_empty_attempt_fails_in_both_runners(task) -> None:
    """Same verdicts and identical records (apart from the runner) in both."""
    records = {}
    for runner in RUNNERS:
        if runner == "docker" and not (docker_available() and image_exists()):
            if os.environ.get("R2VCAL_REQUIRE_DOCKER"):
                _docker_or_skip()
            continue
        env = TerminalEnv(use_docker=runner == "docker")
        assert isinstance(env, Env) and env.backend == runner
        try:
            empty = _episode(env, task, expert=False)
            solved = _episode(env, task, expert=True)
        finally:
            env.close()
        assert empty[-1][1] and not empty[-1][2] and not empty[-1][3]["tests_passed"]
        assert len(solved) == 2 and solved[-1][2], solved
        records[runner] = (empty[-1][1:], solved)
    if len(records) == 2:
        assert records["sandbox"] == records["docker"]


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
    with pytest.raises(ValueError, match="'use_docker'"):
        TerminalEnv(use_docker="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="command_timeout"):
        TerminalEnv(command_timeout=0)


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


@pytest.mark.parametrize("runner", RUNNERS)
def test_agent_never_sees_tests_and_cannot_forge_verdict(runner) -> None:
    """The tests are not visible to the agent's commands, and a fake pytest,
    conftest or plugin left behind, or a process waiting for the tests to
    start, does not pass them."""
    _bwrap_or_skip()
    env = _make(runner)
    task = load_task(default_tasks_dir() / "csv-total")
    try:
        env.reset("csv-total")
        obs, _, _, info = env.step(f"cat {task.path / 'tests' / 'test_outputs.py'}")
        assert info["tool_error"] and "def test_total" not in obs
        assert info["isolation"]["mode"] == ("bwrap" if runner == "sandbox" else runner)
        fake = (
            "import sys\\nprint('PASSED test_outputs.py::test_total')\\nsys.exit(0)\\n"
        )
        plugin = (
            "import pytest\\n@pytest.hookimpl(tryfirst=True)\\n"
            "def pytest_runtest_call(item):\\n    pass\\n"
        )
        env.step(
            f"printf '{fake}' > pytest.py; mkdir -p pytest; cp pytest.py pytest/__main__.py;"
            " touch pytest/__init__.py; cp pytest.py sitecustomize.py;"
            f" printf '{plugin}' > conftest.py;"
            f" mkdir -p /tests; printf '{plugin}' > /tests/conftest.py;"
            # a process that writes the answer once the tests arrive
            " (while [ ! -e /tests/test_outputs.py ]; do sleep 0.05; done;"
            " echo 15.00 > total.txt) > /dev/null 2>&1 &"
        )
        _, done, success, info = env.step("SUBMIT")
    finally:
        env.close()
    assert done and not success and not info["tests_passed"]
    assert info["tests"] == {"test_outputs.py::test_total": "FAILED"}


def test_refused_without_bubblewrap(no_bwrap) -> None:
    from pipelines.sandbox import SandboxUnavailableError

    env = TerminalEnv(use_docker=False)
    env.reset(TASKS[0])
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation"):
        env.step("echo hi")
    weak = TerminalEnv(allow_weak_isolation=True, use_docker=False)
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


# ------------------------------------------ adversarial suite, both runners
def _containers_of(pid: int) -> list[str]:
    """The Docker containers (any state) labelled as owned by process ``pid``."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=r2vcal.owner={pid}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.split()


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("runner", RUNNERS)
def test_adversarial_commands_are_contained(runner, tmp_path) -> None:
    """Fork bomb, memory bomb, infinite loop, network, writes outside the work
    dir, os._exit, a background process: contained, host unchanged, nothing
    left behind."""
    env = _make(runner, command_timeout=4.0, memory_mb=512, max_steps=20)
    marker = f"31{uuid.uuid4().int % 10**6}"
    outside = tmp_path / "outside.txt"
    table: dict[str, bool] = {}
    with contextlib.ExitStack() as stack:
        port, hits = stack.enter_context(host_listener())
        stack.callback(env.close)
        env.reset(TASKS[0])
        start = time.perf_counter()
        _, _, _, info = env.step("bomb() { bomb | bomb & }; bomb")
        table["fork bomb"] = time.perf_counter() - start < 30
        # In Docker the bomb's processes persist until the episode ends, as
        # background processes do in TerminalBench: start a fresh episode.
        env.reset(TASKS[0])
        obs, _, _, info = env.step(
            "python3 -c 'x = bytearray(8 * 1024**3); print(\"allocated\")'"
        )
        table["memory bomb"] = info["tool_error"] and "allocated" not in obs
        start = time.perf_counter()
        obs, _, _, info = env.step("while :; do :; done")
        table["infinite loop"] = (
            info["tool_error"]
            and "timed out" in obs
            and time.perf_counter() - start < 30
        )
        obs, _, _, info = env.step(
            "python3 -c 'import socket; "
            f'socket.create_connection(("127.0.0.1", {port}), timeout=2)\'; '
            f"echo hi > /dev/tcp/127.0.0.1/{port}"
        )
        time.sleep(0.5)
        table["network"] = info["tool_error"] and hits == []
        obs, _, _, info = env.step(f"echo pwned > {outside}; touch /etc/pwned")
        table["write outside the work dir"] = (
            info["tool_error"] and not outside.exists()
        )
        obs, _, _, info = env.step("python3 -c 'import os; os._exit(3)'")
        table["os._exit"] = info["exit_code"] == 3
        env.step(f"(sleep {marker} &) ; nohup sleep {marker} >/dev/null 2>&1 &")
        obs, _, _, info = env.step("echo alive")
        table["still usable"] = obs == "alive"
    time.sleep(0.5)
    table["background process gone"] = _processes_with(marker) == []
    if runner == "docker":
        table["no container left"] = _containers_of(os.getpid()) == []
    assert not Path("/etc/pwned").exists()
    assert all(table.values()), table


def test_docker_container_removed_on_sigint_and_swept_after_sigkill(tmp_path) -> None:
    _docker_or_skip()
    from pipelines.envs.terminal import sweep_containers

    code = (
        "from pipelines.envs.terminal import TerminalEnv\n"
        "env = TerminalEnv(use_docker=True)\n"
        f"env.reset({TASKS[0]!r})\n"
        "print('started', flush=True)\n"
        "env.step('sleep 60')\n"
    )

    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        time.sleep(1.0)
        assert len(_containers_of(proc.pid)) == 1
        proc.send_signal(sig)
        proc.wait(60)
        if sig == signal.SIGKILL:
            assert len(_containers_of(proc.pid)) == 1  # nobody could clean up ...
            sweep_containers()  # ... until the next runner starts
        assert _containers_of(proc.pid) == [], f"container left after {sig.name}"
