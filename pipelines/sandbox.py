"""Run untrusted code in a contained subprocess.

The sandbox layers every mechanism the host offers and records which ones were
in force in :attr:`SandboxResult.isolation`:

* **Resource limits** (always): CPU seconds (``RLIMIT_CPU``), address space
  (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``), no core dumps, and a process
  count limit (``RLIMIT_NPROC``; root ignores it, so as root a ``pids`` cgroup
  is used instead when the cgroup filesystem is writable).
* **Wall-clock limit** (always): the whole process group is killed when it
  runs past ``wall_time``.
* **Namespaces** (when ``unshare`` can create a user namespace): a new network
  namespace with no interfaces (no network at all), a PID namespace (every
  descendant dies with the sandbox), and a mount namespace in which every mount
  is remounted read-only except the sandbox's working directory.
* **Audit-hook fallback** (Python programs, when namespaces are unavailable): a
  ``sitecustomize`` installs a :func:`sys.addaudithook` hook that refuses
  sockets and writes, renames or deletions outside the working directory.

The working directory is a fresh temporary directory removed afterwards, and
the environment is scrubbed down to ``PATH``, ``HOME``, ``TMPDIR`` and locale.
A program that escapes nothing but fails (killed, timed out, non-zero exit) is
reported as a failed attempt; the caller keeps going.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["Sandbox", "SandboxResult", "isolation_capabilities"]

_CGROUP_PIDS_ROOT = Path("/sys/fs/cgroup/pids")

# Remount every mount point read-only, then re-open the working directory.
_MOUNT_SCRIPT = r"""
set -e
wd="$1"; shift
mount --bind "$wd" "$wd"
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount -o remount,bind,rw "$wd"
cd "$wd"
exec "$@"
"""

_AUDIT_HOOK = r"""
import os as _os
import sys as _sys

_ROOT = _os.path.realpath(_os.environ.get("R2VCAL_SANDBOX_ROOT", "/nonexistent"))
_WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_APPEND | _os.O_CREAT | _os.O_TRUNC


def _inside(path):
    try:
        path = _os.fsdecode(path)
    except TypeError:
        return True
    full = _os.path.realpath(path)
    return full == _ROOT or full.startswith(_ROOT + _os.sep) or full == "/dev/null"


def _hook(event, args):
    if event.startswith("socket.") and event != "socket.gethostname":
        raise PermissionError("network access is disabled in the sandbox")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and isinstance(path, (str, bytes)) and not _inside(path):
            raise PermissionError(f"writing outside the sandbox is disabled: {path}")
    elif event in {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod",
                   "os.truncate", "os.link", "os.symlink", "shutil.rmtree"}:
        for path in args[:2]:
            if isinstance(path, (str, bytes)) and not _inside(path):
                raise PermissionError(f"{event} outside the sandbox is disabled: {path}")
    elif event in {"ctypes.dlopen", "ctypes.dlsym"}:
        raise PermissionError("ctypes is disabled in the sandbox")


_sys.addaudithook(_hook)
"""


@lru_cache(maxsize=1)
def _unshare_works() -> bool:
    """Whether ``unshare`` can build the user/net/mount/pid namespaces here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        proc = subprocess.run(
            [exe, "-r", "-n", "-m", "-p", "-f", "--mount-proc", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _cgroup_pids_available() -> bool:
    return (
        os.geteuid() == 0
        and _CGROUP_PIDS_ROOT.is_dir()
        and os.access(_CGROUP_PIDS_ROOT, os.W_OK)
    )


def isolation_capabilities() -> dict[str, str]:
    """Describe which containment mechanisms this host provides.

    Returns
    -------
    dict of str to str
        ``network``, ``filesystem`` and ``processes`` mapped to the mechanism
        used (``"netns"``/``"audit-hook"``, ``"ro-mounts"``/``"audit-hook"``,
        ``"cgroup-pids"``/``"rlimit"``).
    """
    ns = _unshare_works()
    return {
        "network": "netns" if ns else "audit-hook",
        "filesystem": "ro-mounts" if ns else "audit-hook",
        "processes": "cgroup-pids" if _cgroup_pids_available() else "rlimit",
    }


def _count_user_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
    return count


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes
    ----------
    returncode : int
        Exit status (negative: killed by that signal; ``-9`` on timeout).
    stdout, stderr : str
        Captured output, cut at ``max_output_bytes``.
    timed_out : bool
        The wall-clock limit expired and the process group was killed.
    wall_time : float
        Seconds from start to the end of clean-up.
    isolation : dict of str to str
        The mechanisms in force (see :func:`isolation_capabilities`).
    files : dict of str to bytes
        Contents of the requested output files read back from the working
        directory (missing files are absent).
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_time: float
    isolation: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the program exited normally with status 0 in time."""
        return self.returncode == 0 and not self.timed_out


@dataclass
class Sandbox:
    """A reusable sandbox configuration.

    Parameters
    ----------
    wall_time : float, default=10.0
        Wall-clock limit in seconds for the whole process group.
    cpu_time : int or None, default=None
        CPU-seconds limit per process; ``None`` uses ``ceil(wall_time) + 1``.
    memory_mb : int, default=1024
        Address-space limit per process in MiB.
    max_processes : int, default=32
        Processes the program may create (fork bombs stop here).
    max_file_mb : int, default=64
        Largest file any process may write, in MiB.
    max_output_bytes : int, default=1_000_000
        Captured stdout/stderr are cut at this many bytes.
    isolate : bool, default=True
        Use namespaces when available (else only limits and the audit hook).
    python : str or None, default=None
        Interpreter for :meth:`run_python`; defaults to :data:`sys.executable`.

    Examples
    --------
    >>> res = Sandbox(wall_time=5).run_python("print(6 * 7)")
    >>> res.ok, res.stdout.strip()
    (True, '42')
    """

    wall_time: float = 10.0
    cpu_time: int | None = None
    memory_mb: int = 1024
    max_processes: int = 32
    max_file_mb: int = 64
    max_output_bytes: int = 1_000_000
    isolate: bool = True
    python: str | None = None

    def __post_init__(self) -> None:
        if not self.wall_time > 0:
            raise ValueError(f"wall_time must be > 0; got {self.wall_time!r}.")
        if self.cpu_time is not None and self.cpu_time < 1:
            raise ValueError(f"cpu_time must be >= 1 or None; got {self.cpu_time!r}.")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64; got {self.memory_mb!r}.")
        if self.max_processes < 1:
            raise ValueError(f"max_processes must be >= 1; got {self.max_processes!r}.")

    # ------------------------------------------------------------------ API
    def run_python(
        self,
        code: str,
        *,
        files: Mapping[str, str | bytes] | None = None,
        read_files: Sequence[str] = (),
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SandboxResult:
        """Run Python source ``code`` as ``main.py`` in a fresh working directory.

        Parameters
        ----------
        code : str
            The program.
        files : mapping of str to str or bytes, optional
            Extra files to create in the working directory (relative paths).
        read_files : sequence of str, default=()
            Relative paths to read back after the run into
            :attr:`SandboxResult.files`.
        stdin : str, optional
            Text sent to the program's standard input.
        env : mapping of str to str, optional
            Extra environment variables.

        Returns
        -------
        SandboxResult
        """
        all_files: dict[str, str | bytes] = dict(files or {})
        all_files["main.py"] = code
        py = self.python or sys.executable
        return self.run(
            [py, "main.py"],
            files=all_files,
            read_files=read_files,
            stdin=stdin,
            env=env,
            python_program=True,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        copy_tree: str | os.PathLike[str] | None = None,
        read_files: Sequence[str] = (),
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        python_program: bool = False,
        workdir: str | os.PathLike[str] | None = None,
    ) -> SandboxResult:
        """Run ``argv`` inside the sandbox.

        Parameters
        ----------
        argv : sequence of str
            Command and arguments; relative paths resolve in the working
            directory.
        files : mapping of str to str or bytes, optional
            Files to create in the working directory before the run.
        copy_tree : path-like, optional
            A directory whose contents are copied into the working directory.
        read_files : sequence of str, default=()
            Relative paths to read back after the run.
        stdin : str, optional
            Text sent to standard input.
        env : mapping of str to str, optional
            Extra environment variables (added to the scrubbed environment).
        python_program : bool, default=False
            Install the audit-hook fallback for Python programs when namespaces
            are unavailable.
        workdir : path-like, optional
            Use (and keep) this existing directory as the working directory
            instead of a fresh temporary one, for state that persists across
            runs (a terminal session). Only it is writable.

        Returns
        -------
        SandboxResult
        """
        if not argv:
            raise ValueError("argv must name a command; got an empty sequence.")
        caps = isolation_capabilities() if self.isolate else {}
        use_ns = self.isolate and caps.get("network") == "netns"
        isolation = (
            dict(caps)
            if self.isolate
            else {"network": "none", "filesystem": "none", "processes": "rlimit"}
        )
        start = time.perf_counter()
        root = Path(tempfile.mkdtemp(prefix="r2vcal-sandbox-"))
        if workdir is None:
            workdir = root / "work"
            workdir.mkdir()
        else:
            workdir = Path(workdir).resolve()
            if not workdir.is_dir():
                raise FileNotFoundError(f"workdir {workdir} is not a directory.")
        outdir = root / "out"
        outdir.mkdir()
        cgroup: Path | None = None
        try:
            if copy_tree is not None:
                shutil.copytree(copy_tree, workdir, dirs_exist_ok=True)
            for rel, content in (files or {}).items():
                target = workdir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content)
            full_env = self._scrubbed_env(workdir)
            if python_program and not use_ns and self.isolate:
                hookdir = root / "hook"
                hookdir.mkdir()
                (hookdir / "sitecustomize.py").write_text(_AUDIT_HOOK)
                full_env["PYTHONPATH"] = str(hookdir)
                full_env["R2VCAL_SANDBOX_ROOT"] = str(workdir)
            if env:
                full_env.update(env)
            cmd = list(argv)
            if use_ns:
                unshare = shutil.which("unshare") or "unshare"
                cmd = [
                    unshare,
                    "-r",
                    "-n",
                    "-m",
                    "-p",
                    "-f",
                    "--kill-child",
                    "--mount-proc",
                    "/bin/sh",
                    "-c",
                    _MOUNT_SCRIPT,
                    "sh",
                    str(workdir),
                    *cmd,
                ]
            if caps.get("processes") == "cgroup-pids":
                cgroup = self._make_cgroup()
                if cgroup is None:
                    isolation["processes"] = "rlimit"
            nproc = self._nproc_limit()
            limits = self._preexec(nproc, cgroup)
            with (
                open(outdir / "stdout", "wb") as out,
                open(outdir / "stderr", "wb") as err,
            ):
                proc = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=full_env,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=limits,
                )
                timed_out = False
                try:
                    if stdin is not None:
                        proc.communicate(stdin.encode(), timeout=self.wall_time)
                    else:
                        proc.wait(timeout=self.wall_time)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    self._kill_group(proc.pid, cgroup)
                    proc.wait()
            rc = proc.returncode
            # ``unshare`` reports a killed child as 128 + signal.
            if use_ns and rc is not None and rc > 128 and rc - 128 < 65:
                rc = -(rc - 128)
            stdout = self._read(outdir / "stdout")
            stderr = self._read(outdir / "stderr")
            read_back: dict[str, bytes] = {}
            for rel in read_files:
                path = workdir / rel
                if path.is_file() and not path.is_symlink():
                    read_back[rel] = path.read_bytes()
            return SandboxResult(
                returncode=-signal.SIGKILL if timed_out else int(rc),
                stdout=stdout,
                stderr=stderr,
                timed_out=timed_out,
                wall_time=time.perf_counter() - start,
                isolation=isolation,
                files=read_back,
            )
        finally:
            if cgroup is not None:
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            shutil.rmtree(root, ignore_errors=True)

    # -------------------------------------------------------------- helpers
    def _scrubbed_env(self, workdir: Path) -> dict[str, str]:
        bindir = os.path.dirname(self.python or sys.executable)
        return {
            "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def _nproc_limit(self) -> int:
        # RLIMIT_NPROC counts every process of the real user, so leave room for
        # the ones that already exist (only the new ones are the sandbox's).
        return _count_user_processes(os.getuid()) + self.max_processes + 4

    def _make_cgroup(self) -> Path | None:
        path = _CGROUP_PIDS_ROOT / f"r2vcal-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(self.max_processes + 4))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path

    def _preexec(self, nproc: int, cgroup: Path | None):
        cpu = self.cpu_time if self.cpu_time is not None else int(self.wall_time) + 1
        mem = self.memory_mb * 1024 * 1024
        fsize = self.max_file_mb * 1024 * 1024
        procs_file = str(cgroup / "cgroup.procs") if cgroup is not None else None

        def limits() -> None:  # runs in the child between fork and exec
            if procs_file is not None:
                with open(procs_file, "w") as fh:
                    fh.write(str(os.getpid()))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

        return limits

    @staticmethod
    def _kill_group(pid: int, cgroup: Path | None) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if cgroup is None:
            return
        # Processes that called setsid() left the group; the cgroup still has them.
        for _ in range(50):
            try:
                pids = (cgroup / "cgroup.procs").read_text().split()
            except OSError:
                return
            if not pids:
                return
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            time.sleep(0.02)

    def _read(self, path: Path) -> str:
        with open(path, "rb") as fh:
            data = fh.read(self.max_output_bytes + 1)
        text = data[: self.max_output_bytes].decode("utf-8", errors="replace")
        if len(data) > self.max_output_bytes:
            text += "\n[output truncated]"
        return text
