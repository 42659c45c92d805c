"""Terminal tasks in the TerminalBench format, run in Docker or the local sandbox.

A task directory holds ``task.yaml`` (``instruction``, ``max_agent_timeout_sec``,
``max_test_timeout_sec``, ...), ``solution.sh``, ``run-tests.sh`` and
``tests/``; our tasks add ``files/``, the initial contents of the working
directory (TerminalBench builds them in a Dockerfile). The shipped tasks live in
``pipelines/tasks/terminal``.

Actions are shell scripts run with ``bash`` in the task's working directory,
which persists across steps; the action ``SUBMIT`` runs ``run-tests.sh`` (with
``$TEST_DIR`` pointing at the tests) and ends the episode. Every command runs
in :class:`~pipelines.sandbox.Sandbox` with the task's time limits, in a
size-capped :class:`~pipelines.sandbox.Workspace`. The agent's commands see
the working directory only: the task's ``tests/``, ``run-tests.sh`` and
``solution.sh`` are not visible to them. The tests run after the agent's last
process is gone (every command's processes die with it), in a fresh sandbox in
which the tests are mounted read-only; ``run-tests.sh`` starts Python with
``-I`` so files the agent left in the working directory (a fake ``pytest.py``)
are not imported. The verdict needs ``run-tests.sh`` to exit 0 *and* pytest's
summary to list only passed tests. Each step's ``info["isolation"]`` records
the sandbox mode. A Docker runner is not implemented yet;
:func:`docker_available` reports whether one answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.envs.base import base_info
from pipelines.sandbox import Sandbox, Workspace

__all__ = [
    "TerminalEnv",
    "TerminalTask",
    "default_tasks_dir",
    "docker_available",
    "load_task",
    "parse_pytest_summary",
]

_OBS_LIMIT = 4000
_SUMMARY_RE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL|SKIPPED)\s+(\S+)", re.M)


def parse_pytest_summary(output: str) -> dict[str, str]:
    """Test outcomes from pytest's ``-rA`` short summary.

    Parameters
    ----------
    output : str
        pytest's standard output.

    Returns
    -------
    dict of str to str
        Test id to ``"PASSED"``, ``"FAILED"``, ``"ERROR"``, ... (empty when
        pytest printed no summary).

    Examples
    --------
    >>> parse_pytest_summary("PASSED t.py::test_a\nFAILED t.py::test_b - boom")
    {'t.py::test_a': 'PASSED', 't.py::test_b': 'FAILED'}
    """
    return {m.group(2): m.group(1) for m in _SUMMARY_RE.finditer(output)}


def default_tasks_dir() -> Path:
    """Directory of the shipped tasks."""
    return Path(__file__).resolve().parents[1] / "tasks" / "terminal"


@lru_cache(maxsize=1)
def docker_available() -> bool:
    """Whether a Docker engine answers on this machine."""
    exe = shutil.which("docker")
    if exe is None:
        return False
    try:
        proc = subprocess.run(
            [exe, "info"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@dataclass(frozen=True)
class TerminalTask:
    """One TerminalBench-format task.

    Attributes
    ----------
    name : str
    path : Path
        The task directory.
    instruction : str
    agent_timeout : float
        ``max_agent_timeout_sec`` (wall time per command here).
    test_timeout : float
        ``max_test_timeout_sec``.
    """

    name: str
    path: Path
    instruction: str
    agent_timeout: float
    test_timeout: float


def load_task(path: str | Path) -> TerminalTask:
    """Read a task directory.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    TerminalTask
    """
    import yaml

    path = Path(path)
    missing = [
        f
        for f in ("task.yaml", "solution.sh", "run-tests.sh", "tests")
        if not (path / f).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a TerminalBench task: missing {missing}."
        )
    meta = yaml.safe_load((path / "task.yaml").read_text())
    if not isinstance(meta, dict) or "instruction" not in meta:
        raise ValueError(f"{path / 'task.yaml'} has no 'instruction' key.")
    return TerminalTask(
        name=path.name,
        path=path,
        instruction=str(meta["instruction"]).strip(),
        agent_timeout=float(meta.get("max_agent_timeout_sec", 60)),
        test_timeout=float(meta.get("max_test_timeout_sec", 30)),
    )


class TerminalEnv:
    """Shell tasks behind the :class:`~pipelines.envs.Env` protocol.

    Parameters
    ----------
    tasks_dir : str or Path, optional
        Directory of task directories (default: the shipped tasks).
    max_steps : int, default=10
        Steps before the episode ends unsolved.
    memory_mb : int, default=1024
        Memory limit per process.
    max_disk_mb : int, default=256
        Capacity of the working directory.
    allow_weak_isolation : bool, default=False
        Passed to :class:`~pipelines.sandbox.Sandbox`: without bubblewrap the
        commands are refused unless this is ``True``.
    use_docker : bool or None, default=None
        ``None`` or ``False``: the local sandbox. ``True`` raises
        :class:`NotImplementedError` (Docker runner not implemented yet).

    Notes
    -----
    Splits: tasks sorted by name, every fourth one is test, the next one
    validation, the rest train (deterministic; few tasks ship).
    """

    name = "terminal"

    def __init__(
        self,
        tasks_dir: str | Path | None = None,
        *,
        max_steps: int = 10,
        memory_mb: int = 1024,
        max_disk_mb: int = 256,
        allow_weak_isolation: bool = False,
        use_docker: bool | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps!r}.")
        self.tasks_dir = Path(tasks_dir) if tasks_dir else default_tasks_dir()
        self._tasks = {
            p.name: load_task(p)
            for p in sorted(self.tasks_dir.iterdir())
            if (p / "task.yaml").is_file()
        }
        if not self._tasks:
            raise FileNotFoundError(f"no tasks (task.yaml) under {self.tasks_dir}.")
        if use_docker:
            raise NotImplementedError(
                "use_docker=True: the Docker runner is not implemented; pass "
                "use_docker=None or False to use the local sandbox."
            )
        self.backend = "sandbox"
        self.max_steps = max_steps
        self.memory_mb = memory_mb
        self.max_disk_mb = max_disk_mb
        self.allow_weak_isolation = allow_weak_isolation
        self._task: TerminalTask | None = None
        self._ws: Workspace | None = None
        self._t = 0
        self._done = True
        self._solution_sent = False

    def tasks(self, split: str = "test") -> list[str]:
        """Task names of a split (``"train"``, ``"validation"``, ``"test"``, ``"all"``)."""
        names = sorted(self._tasks)
        if split == "all":
            return names
        parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for i, n in enumerate(names):
            key = "test" if i % 4 == 0 else "validation" if i % 4 == 1 else "train"
            parts[key].append(n)
        if split not in parts:
            raise ValueError(
                "The 'split' parameter must be a str among "
                f"{{'train', 'validation', 'test', 'all'}}. Got {split!r} instead."
            )
        return parts[split]

    def reset(self, task: str, seed: int = 0) -> str:
        """Fresh working directory with the task's files; return the instruction."""
        if task not in self._tasks:
            raise KeyError(
                f"unknown terminal task {task!r}; available: {sorted(self._tasks)}."
            )
        self._cleanup()
        self._task = self._tasks[task]
        self._ws = Workspace(self.max_disk_mb)
        files = self._task.path / "files"
        if files.is_dir():
            shutil.copytree(files, self._ws.path, dirs_exist_ok=True)
        self._t = 0
        self._done = False
        self._solution_sent = False
        return (
            f"{self._task.instruction}\n\nYou are in a shell. Send bash commands; "
            "send SUBMIT when done."
        )

    def expert_action(self) -> str | None:
        """``solution.sh`` as one command, then ``SUBMIT``."""
        if self._task is None or self._done:
            return None
        if not self._solution_sent:
            return (self._task.path / "solution.sh").read_text()
        return "SUBMIT"

    def _sandbox(self, wall: float) -> Sandbox:
        return Sandbox(
            wall_time=wall,
            memory_mb=self.memory_mb,
            max_processes=64,
            max_disk_mb=self.max_disk_mb,
            allow_weak_isolation=self.allow_weak_isolation,
        )

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Run a bash command, or ``SUBMIT`` to run the tests."""
        if self._task is None or self._ws is None or self._done:
            raise RuntimeError("call reset(task, seed) before step(action).")
        self._t += 1
        info = base_info(self._t)
        done, success = False, False
        if action.strip().upper() == "SUBMIT":
            tests = self._task.path / "tests"
            script = self._task.path / "run-tests.sh"
            sandbox = self._sandbox(self._task.test_timeout)
            info["isolation"] = sandbox.isolation()
            res = sandbox.run(
                ["bash", str(script)],
                workdir=self._ws,
                env={"TEST_DIR": str(tests)},
                ro_paths=[tests, script],
            )
            outcomes = parse_pytest_summary(res.stdout)
            success = (
                res.ok
                and bool(outcomes)
                and all(v in ("PASSED", "XFAIL", "SKIPPED") for v in outcomes.values())
            )
            done = True
            obs = "Tests passed." if success else "Tests failed.\n" + res.stdout[-1500:]
            info["tests_passed"] = success
            info["tests"] = outcomes
            info["tool_error"] = res.timed_out
        else:
            if action == (self._task.path / "solution.sh").read_text():
                self._solution_sent = True
            sandbox = self._sandbox(self._task.agent_timeout)
            info["isolation"] = sandbox.isolation()
            res = sandbox.run(["bash", "-c", action], workdir=self._ws)
            obs = (res.stdout + res.stderr).strip()
            if res.timed_out:
                obs += "\n[command timed out]"
            if res.disk_exceeded:
                obs += f"\n[working directory over {self.max_disk_mb} MiB]"
            info["exit_code"] = res.returncode
            info["tool_error"] = not res.ok
            if len(obs) > _OBS_LIMIT:
                obs = obs[:_OBS_LIMIT] + "\n[output truncated]"
                info["truncated"] = True
            obs = obs or "(no output)"
        if not done and self._t >= self.max_steps:
            done = True
            info["step_limit"] = True
        self._done = done
        return obs, done, success, info

    def _cleanup(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
            self._ws = None

    def close(self) -> None:
        """Remove the working directory."""
        self._cleanup()

    def __del__(self) -> None:
        self._cleanup()
