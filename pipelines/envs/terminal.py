"""Terminal tasks in the TerminalBench format, run in Docker or the local sandbox.

A task directory holds ``task.yaml`` (``instruction``, ``max_agent_timeout_sec``,
``max_test_timeout_sec``, ...), ``solution.sh``, ``run-tests.sh`` and
``tests/``; our tasks add ``files/``, the initial contents of the working
directory, and may add a ``Dockerfile`` ``FROM`` the base image (steps that need
no network). The shipped tasks live in ``pipelines/tasks/terminal``.

Actions are shell scripts run with ``bash`` in the task's working directory,
which persists across steps; the action ``SUBMIT`` runs ``run-tests.sh`` (with
``$TEST_DIR`` pointing at the tests) and ends the episode. Two runners, chosen
by ``use_docker`` and recorded in every step's ``info["runner"]``:

``"docker"``
    One container per episode from the task's image (the base image
    :data:`BASE_IMAGE`, built offline by :func:`build_image`), with no network,
    memory/pids/CPU limits, no capabilities, a read-only root and size-capped
    ``tmpfs`` for ``/app`` (the working directory), ``/tmp`` and ``/tests``.
    Commands run with ``docker exec`` under a per-command timeout; background
    processes persist between commands, as in TerminalBench. The container is
    always removed: at ``close``/``reset``, when the interpreter exits (also
    after ``SIGINT`` or an exception), and, for owners killed outright, by a
    sweep of containers whose owner process is gone.
``"sandbox"``
    Every command runs in :class:`~pipelines.sandbox.Sandbox` (bubblewrap) in a
    size-capped :class:`~pipelines.sandbox.Workspace`; a command's processes die
    with it.

In both, the agent never sees the task's ``tests/``, ``run-tests.sh`` or
``solution.sh``; at ``SUBMIT`` every agent process is killed first, the tests
are put where the agent could not prepare anything (a read-only mount, or an
emptied ``/tests`` under a read-only root) and ``run-tests.sh`` starts Python
with ``-I`` so files left in the working directory (a fake ``pytest.py``) are
not imported. The verdict needs ``run-tests.sh`` to exit 0 *and* pytest's
``-rA`` summary to list only passed tests. ``info["isolation"]`` records the
runner's isolation.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.envs.base import base_info
from pipelines.sandbox import Sandbox, Workspace, pid_alive

__all__ = [
    "BASE_IMAGE",
    "TerminalEnv",
    "TerminalTask",
    "build_image",
    "default_tasks_dir",
    "docker_available",
    "image_exists",
    "load_task",
    "parse_pytest_summary",
    "sweep_containers",
]

BASE_IMAGE = "r2vcal-terminal:bookworm"
"""Tag of the base image :func:`build_image` makes (Debian minbase + Python)."""

_IMAGE_PACKAGES = ("python3", "python3-pytest", "python-is-python3", "git", "sqlite3")
_OWNER_LABEL = "r2vcal.owner"
_OUTPUT_CAP = 1_000_000
_PASS = ("PASSED", "XFAIL", "SKIPPED")

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


# --------------------------------------------------------------------- Docker
def _docker(*args: str, timeout: float = 60, stdin: bytes | None = None):
    return subprocess.run(
        ["docker", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def image_exists(tag: str = BASE_IMAGE) -> bool:
    """Whether the Docker engine has image ``tag``."""
    if not docker_available():
        return False
    try:
        return _docker("image", "inspect", tag, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _apt_mirror() -> str:
    """The Debian mirror apt already uses (what is reachable from here)."""
    paths = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        paths += sorted(d.iterdir())
    for p in paths:
        with contextlib.suppress(OSError):
            for line in p.read_text().splitlines():
                m = re.match(
                    r"^\s*(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s",
                    line + " ",
                )
                if m and "security" not in m.group(1):
                    return m.group(1)
    return "http://deb.debian.org/debian"


def build_image(
    tag: str = BASE_IMAGE,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    packages: tuple[str, ...] = _IMAGE_PACKAGES,
    force: bool = False,
) -> str:
    """Build the base image offline from Debian packages (idempotent).

    ``debootstrap --variant=minbase`` with Python, pytest, git and sqlite3,
    trimmed of documentation, then ``docker import``: no image registry needed,
    only the Debian mirror apt uses. Skips when ``tag`` exists.

    Parameters
    ----------
    tag : str, default=BASE_IMAGE
    suite : str, default="bookworm"
    mirror : str, optional
        Debian mirror; defaults to the one in apt's sources.
    packages : tuple of str
        Packages to include.
    force : bool, default=False
        Rebuild even when the image exists.

    Returns
    -------
    str
        The tag.
    """
    if not docker_available():
        raise RuntimeError(
            "build_image needs a Docker engine that answers `docker info`; start "
            "one (e.g. dockerd --iptables=false --bridge=none)."
        )
    if image_exists(tag) and not force:
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError(
            "build_image needs debootstrap (apt-get install debootstrap); "
            "it was not found on PATH."
        )
    mirror = mirror or _apt_mirror()
    with tempfile.TemporaryDirectory(prefix="r2vcal-rootfs-") as d:
        rootfs = Path(d) / "rootfs"
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                suite,
                str(rootfs),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"debootstrap {suite} from {mirror} failed:\n{proc.stderr[-2000:]}"
            )
        for sub in (
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "var/cache/apt/archives",
            "var/lib/apt/lists",
        ):
            shutil.rmtree(rootfs / sub, ignore_errors=True)
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        imp = subprocess.run(
            ["docker", "import", "-c", "ENV LANG=C.UTF-8", "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            timeout=600,
            check=False,
        )
        tar.wait()
        if imp.returncode != 0:
            raise RuntimeError(f"docker import failed: {imp.stderr.decode()[-1000:]}")
    return tag


def _task_image(task: TerminalTask) -> str:
    """The task's image: the base, or its ``Dockerfile`` built on it (cached)."""
    dockerfile = task.path / "Dockerfile"
    if not dockerfile.is_file():
        return BASE_IMAGE
    digest = hashlib.sha256(dockerfile.read_bytes()).hexdigest()[:12]
    tag = f"r2vcal-task-{task.name.lower()}:{digest}"
    if not image_exists(tag):
        proc = _docker(
            "build", "--network", "none", "-t", tag, str(task.path), timeout=1800
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"building {dockerfile} failed: {proc.stderr.decode()[-1500:]}"
            )
    return tag


def sweep_containers() -> list[str]:
    """Remove task containers whose owner process is gone (killed outright).

    Returns
    -------
    list of str
        Names of the removed containers.
    """
    if not docker_available():
        return []
    try:
        proc = _docker(
            "ps",
            "-a",
            "--filter",
            f"label={_OWNER_LABEL}",
            "--format",
            f'{{{{.Names}}}} {{{{.Label "{_OWNER_LABEL}"}}}}',
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    removed = []
    for line in proc.stdout.decode().splitlines():
        name, _, owner = line.partition(" ")
        if owner.isdigit() and not pid_alive(int(owner)):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _docker("rm", "-f", name, timeout=60)
            removed.append(name)
    return removed


_LIVE: set[str] = set()


@atexit.register
def _remove_live_containers() -> None:
    for name in list(_LIVE):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _docker("rm", "-f", name, timeout=60)
        _LIVE.discard(name)


def _run_capped(
    argv: list[str], timeout: float, stdin: bytes | None = None
) -> tuple[int, str, str, bool]:
    """Run ``argv``; ``(returncode, stdout, stderr, killed_at_timeout)``.

    Each stream keeps its first ``_OUTPUT_CAP`` bytes (the rest is drained).
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    bufs: list[bytearray] = [bytearray(), bytearray()]

    def drain(stream: Any, buf: bytearray) -> None:
        while chunk := stream.read(65536):
            if len(buf) < _OUTPUT_CAP:
                buf += chunk[: _OUTPUT_CAP - len(buf)]

    threads = [
        threading.Thread(target=drain, args=(s, b), daemon=True)
        for s, b in ((proc.stdout, bufs[0]), (proc.stderr, bufs[1]))
    ]
    for t in threads:
        t.start()
    if stdin is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
        proc.stdin.close()
    killed = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killed = True
        proc.kill()
        proc.wait()
    finally:
        for t in threads:
            t.join(5)
    dec = [b.decode("utf-8", errors="replace") for b in bufs]
    return int(proc.returncode), dec[0], dec[1], killed


@dataclass
class _CmdResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    disk_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _tar_of(paths: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, path in paths.items():
            tar.add(path, arcname=arcname)
    return buf.getvalue()


class _DockerRunner:
    """One container per episode."""

    name = "docker"

    def __init__(self, memory_mb: int, max_disk_mb: int, pids: int, cpus: float):
        self.memory_mb = memory_mb
        self.max_disk_mb = max_disk_mb
        self.pids = pids
        self.cpus = cpus
        self.container: str | None = None

    def isolation(self) -> dict[str, str]:
        return {
            "mode": "docker",
            "network": "none",
            "filesystem": "read-only-root+tmpfs",
            "user": "root-no-caps",
            "processes": f"pids-limit-{self.pids}",
            "disk": f"tmpfs-{self.max_disk_mb}MiB",
            "allow_weak_isolation": "false",
        }

    def start(self, task: TerminalTask) -> None:
        self.close()
        sweep_containers()
        image = _task_image(task)
        name = f"r2vcal-term-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        _LIVE.add(name)
        proc = _docker(
            "run", "-d", "--name", name,
            "--label", f"{_OWNER_LABEL}={os.getpid()}",
            "--network", "none",
            "--memory", f"{self.memory_mb}m", "--memory-swap", f"{self.memory_mb}m",
            "--pids-limit", str(self.pids), "--cpus", str(self.cpus),
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--read-only",
            "--tmpfs", f"/app:rw,exec,size={self.max_disk_mb}m,mode=0777",
            "--tmpfs", "/tmp:rw,exec,size=64m,mode=1777",
            "--tmpfs", "/tests:rw,size=16m,mode=0755",
            "-w", "/app", "-e", "HOME=/app", "-e", "LANG=C.UTF-8",
            image, "sleep", "infinity",
            timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            self._remove(name)
            raise RuntimeError(
                f"docker run {image} failed: {proc.stderr.decode()[-1000:]}"
            )
        self.container = name
        files = task.path / "files"
        if files.is_dir():
            data = _tar_of({p.name: p for p in sorted(files.iterdir())})
            self._exec(["tar", "--no-same-owner", "-x", "-C", "/app"], 60, data)

    def _exec(
        self, argv: list[str], timeout: float, stdin: bytes | None = None
    ) -> tuple[int, str, str, bool]:
        if self.container is None:
            raise RuntimeError("no container: call reset(task) first.")
        cmd = ["docker", "exec"] + (["-i"] if stdin is not None else [])
        return _run_capped([*cmd, self.container, *argv], timeout, stdin)

    def run(self, cmd: str, timeout: float, env: dict[str, str] | None = None):
        start = time.monotonic()
        extra = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        argv = ["docker", "exec", "-w", "/app", *extra, self.container or "",
                "timeout", "-s", "KILL", str(timeout), "bash", "-c", cmd]  # fmt: skip
        rc, out, err, killed = _run_capped(argv, timeout + 30)
        timed_out = killed or (rc == 137 and time.monotonic() - start >= timeout)
        if rc > 128:
            rc = -(rc - 128)
        return _CmdResult(out, err, -9 if timed_out else rc, timed_out)

    def run_tests(self, task: TerminalTask, timeout: float) -> _CmdResult:
        # The agent's processes go first; then /tests is emptied and filled.
        kill = "for i in 1 2 3 4 5; do kill -9 -1 2>/dev/null; done; true"
        self._exec(["sh", "-c", kill], 60)
        self._exec(["sh", "-c", "rm -rf /tests/* /tests/.[!.]* 2>/dev/null; true"], 60)
        data = _tar_of(
            {
                **{p.name: p for p in sorted((task.path / "tests").iterdir())},
                "run-tests.sh": task.path / "run-tests.sh",
            }
        )
        self._exec(["tar", "--no-same-owner", "-x", "-C", "/tests"], 60, data)
        return self.run("bash /tests/run-tests.sh", timeout, {"TEST_DIR": "/tests"})

    @staticmethod
    def _remove(name: str) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _docker("rm", "-f", name, timeout=60)
        _LIVE.discard(name)

    def close(self) -> None:
        if self.container is not None:
            self._remove(self.container)
            self.container = None


class _SandboxRunner:
    """Each command in a fresh bubblewrap sandbox over a persistent workspace."""

    name = "sandbox"

    def __init__(self, memory_mb: int, max_disk_mb: int, allow_weak: bool) -> None:
        self.memory_mb = memory_mb
        self.max_disk_mb = max_disk_mb
        self.allow_weak = allow_weak
        self.ws: Workspace | None = None

    def _sandbox(self, wall: float) -> Sandbox:
        return Sandbox(
            wall_time=wall,
            memory_mb=self.memory_mb,
            max_processes=64,
            max_disk_mb=self.max_disk_mb,
            allow_weak_isolation=self.allow_weak,
        )

    def isolation(self) -> dict[str, str]:
        return self._sandbox(1.0).isolation()

    def start(self, task: TerminalTask) -> None:
        self.close()
        self.ws = Workspace(self.max_disk_mb)
        files = task.path / "files"
        if files.is_dir():
            shutil.copytree(files, self.ws.path, dirs_exist_ok=True)

    def run(self, cmd: str, timeout: float) -> _CmdResult:
        res = self._sandbox(timeout).run(["bash", "-c", cmd], workdir=self.ws)
        return _CmdResult(
            res.stdout, res.stderr, res.returncode, res.timed_out, res.disk_exceeded
        )

    def run_tests(self, task: TerminalTask, timeout: float) -> _CmdResult:
        tests = task.path / "tests"
        script = task.path / "run-tests.sh"
        res = self._sandbox(timeout).run(
            ["bash", str(script)],
            workdir=self.ws,
            env={"TEST_DIR": str(tests)},
            ro_paths=[tests, script],
        )
        return _CmdResult(
            res.stdout, res.stderr, res.returncode, res.timed_out, res.disk_exceeded
        )

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


class TerminalEnv:
    """Shell tasks behind the :class:`~pipelines.envs.Env` protocol.

    Parameters
    ----------
    tasks_dir : str or Path, optional
        Directory of task directories (default: the shipped tasks).
    max_steps : int, default=10
        Steps before the episode ends unsolved.
    memory_mb : int, default=1024
        Memory limit (per process in the sandbox, per container in Docker).
    max_disk_mb : int, default=256
        Capacity of the working directory.
    allow_weak_isolation : bool, default=False
        Passed to :class:`~pipelines.sandbox.Sandbox`: without bubblewrap the
        local runner refuses to run commands unless this is ``True``.
    use_docker : bool or None, default=None
        ``True``: the Docker runner (fails when no engine answers or the base
        image is missing: see :func:`build_image`). ``False``: the local
        sandbox. ``None``: Docker when an engine answers and the base image
        exists, else the local sandbox.
    command_timeout : float or None, default=None
        Per-command wall time; ``None`` uses the task's
        ``max_agent_timeout_sec``.
    max_processes : int, default=64
        Process limit (pids) in Docker.

    Attributes
    ----------
    backend : str
        ``"docker"`` or ``"sandbox"`` (also ``info["runner"]`` of every step).

    Notes
    -----
    Splits: tasks sorted by name, every fourth one is test, the next one
    validation, the rest train (deterministic).
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
        command_timeout: float | None = None,
        max_processes: int = 64,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps!r}.")
        if use_docker not in (None, True, False):
            raise ValueError(
                "The 'use_docker' parameter of TerminalEnv must be None, True or "
                f"False. Got {use_docker!r} instead."
            )
        if command_timeout is not None and not command_timeout > 0:
            raise ValueError(
                f"command_timeout must be > 0 or None; got {command_timeout!r}."
            )
        self.tasks_dir = Path(tasks_dir) if tasks_dir else default_tasks_dir()
        self._tasks = {
            p.name: load_task(p)
            for p in sorted(self.tasks_dir.iterdir())
            if (p / "task.yaml").is_file()
        }
        if not self._tasks:
            raise FileNotFoundError(f"no tasks (task.yaml) under {self.tasks_dir}.")
        if use_docker is True:
            if not docker_available():
                raise RuntimeError(
                    "use_docker=True but no Docker engine answers `docker info`; "
                    "start dockerd or pass use_docker=None to fall back to the "
                    "local sandbox."
                )
            if not image_exists(BASE_IMAGE):
                raise RuntimeError(
                    f"use_docker=True but the base image {BASE_IMAGE} is missing; "
                    "build it with `python -m pipelines.envs.terminal build-image`."
                )
        docker = (
            use_docker
            if use_docker is not None
            else docker_available() and image_exists(BASE_IMAGE)
        )
        self.max_steps = max_steps
        self.memory_mb = memory_mb
        self.max_disk_mb = max_disk_mb
        self.allow_weak_isolation = allow_weak_isolation
        self.command_timeout = command_timeout
        self._runner: _DockerRunner | _SandboxRunner = (
            _DockerRunner(memory_mb, max_disk_mb, max_processes, 1.0)
            if docker
            else _SandboxRunner(memory_mb, max_disk_mb, allow_weak_isolation)
        )
        self.backend = self._runner.name
        self._task: TerminalTask | None = None
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
        self._task = self._tasks[task]
        self._runner.start(self._task)
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

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Run a bash command, or ``SUBMIT`` to run the tests."""
        if self._task is None or self._done:
            raise RuntimeError("call reset(task, seed) before step(action).")
        self._t += 1
        info = base_info(self._t)
        info["runner"] = self._runner.name
        info["isolation"] = self._runner.isolation()
        done, success = False, False
        if action.strip().upper() == "SUBMIT":
            res = self._runner.run_tests(self._task, self._task.test_timeout)
            outcomes = parse_pytest_summary(res.stdout)
            success = (
                res.ok and bool(outcomes) and all(v in _PASS for v in outcomes.values())
            )
            done = True
            obs = "Tests passed." if success else "Tests failed.\n" + res.stdout[-1500:]
            info["tests_passed"] = success
            info["tests"] = {k.rsplit("/", 1)[-1]: v for k, v in outcomes.items()}
            info["tool_error"] = res.timed_out
        else:
            if action == (self._task.path / "solution.sh").read_text():
                self._solution_sent = True
            timeout = self.command_timeout or self._task.agent_timeout
            res = self._runner.run(action, timeout)
            obs = (res.stdout + res.stderr).strip()
            if res.timed_out:
                obs += "\n[command timed out]"
            if res.disk_exceeded:
                obs += f"\n[working directory over {self.max_disk_mb} MiB]"
            info["exit_code"] = res.exit_code
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

    def close(self) -> None:
        """Remove the working directory (and the container)."""
        if getattr(self, "_runner", None) is not None:
            self._runner.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m pipelines.envs.terminal",
        description="Terminal-task tools: build the Docker base image.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-image", help="build the base image offline (idempotent)")
    b.add_argument("--tag", default=BASE_IMAGE)
    b.add_argument("--mirror", default=None)
    b.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    start = time.perf_counter()
    existed = image_exists(args.tag)
    tag = build_image(args.tag, mirror=args.mirror, force=args.force)
    what = "exists" if existed and not args.force else "built"
    print(f"{tag} {what} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
