"""Run untrusted code in a contained subprocess.

Model-written code (HumanEval+ solutions, terminal-task commands) runs here.
The sandbox is **closed by default**: it runs code only under bubblewrap
(``bwrap``, Debian package ``bubblewrap``) and refuses otherwise, unless the
caller opts in to weak isolation with ``allow_weak_isolation=True``. The mode
in force is recorded in :attr:`SandboxResult.isolation` (and the environments
copy it into every step's ``info``, so into every episode record).

``"bwrap"`` mode (the default):

* **No capabilities.** A new user namespace mapped to ``nobody`` (when the host
  lets bubblewrap create one), ``--cap-drop ALL``, ``no_new_privs`` and no
  further user namespaces: the program cannot remount, mount or unshare, so it
  cannot undo the read-only view it was given.
* **A minimal filesystem.** Read-only: ``/usr`` (and the ``/bin``, ``/lib*``
  links), a handful of non-secret ``/etc`` files, the Python installation that
  runs the program (prefix and virtual environment, not the repository around
  it) and any ``ro_paths`` the caller names. Writable: only the working
  directory. Private: ``/proc`` (own PID namespace), ``/dev`` (null, zero,
  random, tty), a size-capped ``/tmp``. Not there: ``/root``, ``/home``,
  ``/etc/shadow``, the repository, the host's ``/tmp`` and ``/run`` (so no
  host Unix socket is reachable).
* **No network**: a new network namespace with only a down loopback.
* **Processes**: a PID namespace (every descendant dies with the sandbox, and
  with the parent: ``--die-with-parent``), a ``pids`` cgroup when root, else
  ``RLIMIT_NPROC``.

``"weak"`` mode (``allow_weak_isolation=True`` on a host without bubblewrap):
resource limits and, for Python programs, an audit hook that refuses sockets
and writes outside the working directory. Known to be bypassable (a child
process, ``/dev/tcp``, ``os.kill`` on the parent); for trusted code only.

Always, in both modes:

* **Resource limits**: CPU seconds, address space, file size, no core dumps.
* **Wall-clock limit**: the process group (and cgroup) is killed on expiry.
* **Size-capped working directory**: as root, a ``tmpfs`` of ``max_disk_mb``
  holds the working directory and the captured output; elsewhere a watchdog
  kills the program when they grow past the cap.
* **Scrubbed environment**: ``PATH``, ``HOME``, ``TMPDIR``, locale only.
* **Clean-up**: temporary directories are named after the owning process and
  removed afterwards; ones whose owner died (``SIGKILL``) are swept at the next
  run.

A program that fails (killed, timed out, non-zero exit) is reported as a failed
attempt; the caller keeps going.
"""

from __future__ import annotations

import contextlib
import os
import re
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

__all__ = [
    "Sandbox",
    "SandboxResult",
    "SandboxUnavailableError",
    "Workspace",
    "isolation_capabilities",
    "pid_alive",
    "sweep_stale_dirs",
]

_CGROUP_PIDS_ROOT = Path("/sys/fs/cgroup/pids")
_PREFIX = "r2vcal-sandbox-"
_DIR_RE = re.compile(rf"^{re.escape(_PREFIX)}(\d+)-[0-9a-f]+$")

# Non-secret /etc files a shell and Python expect (no shadow, no ssh, no ssl keys).
_ETC_FILES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/bash.bashrc",
)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

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


class SandboxUnavailableError(RuntimeError):
    """No namespace isolation on this host and weak isolation was not allowed."""


# ---------------------------------------------------------------- host probes
def _bwrap_path() -> str | None:
    return shutil.which("bwrap")


@lru_cache(maxsize=8)
def _bwrap_probe(exe: str) -> tuple[bool, bool, str]:
    """``(works, userns, why)`` for the bubblewrap binary ``exe``."""
    base = [exe, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    base += [*_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    why = ""
    for userns in (True, False):
        extra = ["--unshare-user", "--disable-userns"] if userns else []
        try:
            proc = subprocess.run(
                [*base, *extra, "--remount-ro", "/", "true"],
                capture_output=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, False, f"{exe}: {exc}"
        if proc.returncode == 0:
            return True, userns, ""
        why = proc.stderr.decode(errors="replace").strip()[-300:]
    return False, False, f"{exe} failed: {why}"


def _bwrap_status() -> tuple[str | None, bool, str]:
    """``(bwrap executable or None, userns, reason it is unusable)``."""
    exe = _bwrap_path()
    if exe is None:
        return None, False, "`bwrap` is not on PATH"
    works, userns, why = _bwrap_probe(exe)
    return (exe, userns, "") if works else (None, False, why)


@lru_cache(maxsize=1)
def _tmpfs_mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path = Path(tempfile.mkdtemp(prefix="r2vcal-probe-"))
    try:
        ok = _mount_tmpfs(path, 1)
        if ok:
            _umount(path)
        return ok
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    try:
        proc = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size_mb}m,mode=0755,nosuid,nodev",
                "r2vcal-sandbox",
                str(path),
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _umount(path: Path) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            ["umount", "-l", str(path)], capture_output=True, timeout=10, check=False
        )


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
        ``mode`` (``"bwrap"``, or ``"none"``: untrusted code is refused unless
        weak isolation is allowed), ``network`` (``"netns"``/``"audit-hook"``),
        ``filesystem`` (``"bwrap-minimal-ro"``/``"audit-hook"``), ``user``
        (``"userns-nobody"``/``"no-caps"``/``"host"``), ``processes``
        (``"cgroup-pids"``/``"rlimit"``, plus ``"+pidns"`` under bubblewrap) and
        ``disk`` (``"tmpfs"``/``"watchdog"``).
    """
    exe, userns, _ = _bwrap_status()
    procs = "cgroup-pids" if _cgroup_pids_available() else "rlimit"
    disk = "tmpfs" if _tmpfs_mount_works() else "watchdog"
    if exe is None:
        return {
            "mode": "none",
            "network": "audit-hook",
            "filesystem": "audit-hook",
            "user": "host",
            "processes": procs,
            "disk": disk,
        }
    return {
        "mode": "bwrap",
        "network": "netns",
        "filesystem": "bwrap-minimal-ro",
        "user": "userns-nobody" if userns else "no-caps",
        "processes": procs + "+pidns",
        "disk": disk,
    }


# ------------------------------------------------------------ temp directories
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs(tmpdir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove sandbox directories whose owning process is gone.

    Every sandbox directory is named ``r2vcal-sandbox-<pid>-<hex>`` after the
    process that made it; one whose process no longer exists was left behind by
    a crash or ``SIGKILL``. Called at the start of every run.

    Parameters
    ----------
    tmpdir : path-like, optional
        Directory to sweep (default :func:`tempfile.gettempdir`).

    Returns
    -------
    list of str
        The removed directories.
    """
    base = Path(tmpdir) if tmpdir is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        m = _DIR_RE.match(entry.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        if path.is_symlink() or not path.is_dir():
            continue
        for sub in (path, *[c for c in path.iterdir() if c.is_dir()]):
            if os.path.ismount(sub):
                _umount(sub)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(str(path))
    return removed


def _make_dir() -> Path:
    name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    path = Path(tempfile.gettempdir()) / name
    path.mkdir(mode=0o755)
    return path


def _dir_size(path: Path, limit: int) -> int:
    """Bytes used under ``path`` (stops counting past ``limit``)."""
    total = 0
    stack = [path]
    while stack and total <= limit:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
    return total


class Workspace:
    """A size-capped directory that outlives single runs (a terminal session).

    Parameters
    ----------
    max_disk_mb : int
        Capacity in MiB (a ``tmpfs`` as root, else a watchdog in each run).

    Attributes
    ----------
    path : Path
        The directory to pass as ``workdir`` to :meth:`Sandbox.run`.
    capped : str
        ``"tmpfs"`` or ``"watchdog"``.
    """

    def __init__(self, max_disk_mb: int = 256) -> None:
        if max_disk_mb < 1:
            raise ValueError(f"max_disk_mb must be >= 1; got {max_disk_mb!r}.")
        sweep_stale_dirs()
        self.max_disk_mb = max_disk_mb
        self._root: Path | None = _make_dir()
        self.path = self._root / "work"
        self.path.mkdir()
        self._mounted = _tmpfs_mount_works() and _mount_tmpfs(self.path, max_disk_mb)
        self.capped = "tmpfs" if self._mounted else "watchdog"

    def close(self) -> None:
        """Unmount and remove the directory (idempotent)."""
        if self._root is None:
            return
        if self._mounted:
            _umount(self.path)
        shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# ---------------------------------------------------------------- the sandbox
def _count_user_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid:
                count += 1
    return count


@lru_cache(maxsize=8)
def _python_dirs(python: str) -> tuple[str, ...]:
    """Directories the interpreter ``python`` needs (prefix, base prefix)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    else:
        try:
            out = subprocess.run(
                [
                    python,
                    "-I",
                    "-c",
                    "import sys; print(sys.prefix); print(sys.base_prefix)",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError) as exc:
            raise ValueError(
                f"The 'python' parameter of Sandbox must be a runnable interpreter; "
                f"got {python!r} ({exc})."
            ) from exc
        dirs = set(out)
    dirs.add(os.path.dirname(python))
    real = {os.path.realpath(d) for d in dirs} | set(dirs)
    return tuple(sorted(d for d in real if d and d != "/" and os.path.isdir(d)))


def _system_binds() -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        args += ["--ro-bind-try", f, f]
    return args


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
        The mechanisms in force (see :func:`isolation_capabilities`) and
        ``allow_weak_isolation``.
    files : dict of str to bytes
        Contents of the requested output files read back from the working
        directory (missing files are absent).
    disk_exceeded : bool
        The working directory grew past ``max_disk_mb`` (watchdog mode) or the
        program hit the cap (``ENOSPC`` on the tmpfs shows as an error).
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_time: float
    isolation: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    disk_exceeded: bool = False

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
    max_disk_mb : int, default=256
        Capacity of the working directory (and captured output) in MiB.
    max_output_bytes : int, default=1_000_000
        Captured stdout/stderr are cut at this many bytes.
    allow_weak_isolation : bool, default=False
        Without bubblewrap the sandbox refuses to run
        (:class:`SandboxUnavailableError`). ``True`` runs anyway with resource
        limits and an audit hook only, and says so in
        :attr:`SandboxResult.isolation` (``mode="weak"``).
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
    max_disk_mb: int = 256
    max_output_bytes: int = 1_000_000
    allow_weak_isolation: bool = False
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
        if self.max_file_mb < 1:
            raise ValueError(f"max_file_mb must be >= 1; got {self.max_file_mb!r}.")
        if self.max_disk_mb < 1:
            raise ValueError(f"max_disk_mb must be >= 1; got {self.max_disk_mb!r}.")
        if not isinstance(self.allow_weak_isolation, bool):
            raise TypeError(
                "allow_weak_isolation must be a bool; got "
                f"{type(self.allow_weak_isolation).__name__} "
                f"{self.allow_weak_isolation!r}."
            )

    # ------------------------------------------------------------------ API
    def isolation(self) -> dict[str, str]:
        """The isolation this sandbox would use here (the episode-record entry).

        Returns
        -------
        dict of str to str
            :func:`isolation_capabilities` with ``mode`` set to ``"bwrap"`` or
            ``"weak"`` (or ``"refused"``) and ``allow_weak_isolation``.
        """
        caps = isolation_capabilities()
        if caps["mode"] == "none":
            caps["mode"] = "weak" if self.allow_weak_isolation else "refused"
        caps["allow_weak_isolation"] = str(self.allow_weak_isolation).lower()
        return caps

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
        workdir: str | os.PathLike[str] | Workspace | None = None,
        ro_paths: Sequence[str | os.PathLike[str]] = (),
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
            Relative paths to read back after the run (each at most
            ``max_disk_mb``; symbolic links are not followed).
        stdin : str, optional
            Text sent to standard input.
        env : mapping of str to str, optional
            Extra environment variables (added to the scrubbed environment).
        python_program : bool, default=False
            Install the audit hook for Python programs in weak mode.
        workdir : Workspace or path-like, optional
            Use (and keep) this directory as the working directory instead of a
            fresh one, for state that persists across runs (a terminal
            session). A :class:`Workspace` is size-capped; a plain directory
            is capped by the watchdog only.
        ro_paths : sequence of path-like, default=()
            Host files or directories made visible, read-only, at the same
            path (e.g. a task's tests, only when they run).

        Returns
        -------
        SandboxResult

        Raises
        ------
        SandboxUnavailableError
            No bubblewrap here and ``allow_weak_isolation`` is ``False``.
        """
        exe, userns, capped, workdir, ro = self._checked(argv, workdir, ro_paths)
        isolation = self.isolation()
        sweep_stale_dirs()
        start = time.perf_counter()
        root = _make_dir()
        # The captured output lives beside the working directory, outside its
        # cap (each file is bounded by RLIMIT_FSIZE), so a full disk cannot
        # silence the program's report.
        mounted = False
        watch: list[Path] = []
        if workdir is None:
            work = root / "work"
            work.mkdir()
            mounted = _tmpfs_mount_works() and _mount_tmpfs(work, self.max_disk_mb)
            if not mounted:
                watch.append(work)
        else:
            work = Path(workdir).resolve()
            if not capped:
                watch.append(work)
        isolation["disk"] = "watchdog" if watch else "tmpfs"
        outdir = root / "out"
        outdir.mkdir()
        cgroup: Path | None = None
        try:
            full_env = self._prepare(
                work, root, copy_tree, files, env, python_program and exe is None
            )
            cmd = list(argv)
            if exe is not None:
                cmd = self._bwrap_argv(exe, userns, work, ro) + cmd
            if isolation["processes"].startswith("cgroup-pids"):
                cgroup = self._make_cgroup()
                if cgroup is None:
                    isolation["processes"] = isolation["processes"].replace(
                        "cgroup-pids", "rlimit"
                    )
            rc, timed_out, disk_exceeded = self._execute(
                cmd, work, full_env, stdin, outdir, cgroup, watch
            )
            # bubblewrap reports a child killed by a signal as 128 + signal.
            if exe is not None and rc is not None and 128 < rc < 128 + 65:
                rc = -(rc - 128)
            stdout = self._read(outdir / "stdout")
            stderr = self._read(outdir / "stderr")
            read_back = self._read_back(work, read_files)
            if disk_exceeded:
                stderr += f"\n[sandbox: working directory over {self.max_disk_mb} MiB]"
            return SandboxResult(
                returncode=-signal.SIGKILL if timed_out or disk_exceeded else int(rc),
                stdout=stdout,
                stderr=stderr,
                timed_out=timed_out,
                wall_time=time.perf_counter() - start,
                isolation=isolation,
                files=read_back,
                disk_exceeded=disk_exceeded,
            )
        finally:
            if cgroup is not None:
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            if mounted:
                _umount(work)
            shutil.rmtree(root, ignore_errors=True)

    # -------------------------------------------------------------- helpers
    def _execute(
        self,
        cmd: list[str],
        work: Path,
        full_env: dict[str, str],
        stdin: str | None,
        outdir: Path,
        cgroup: Path | None,
        watch: list[Path],
    ) -> tuple[int | None, bool, bool]:
        """Start ``cmd`` under the limits, wait, kill its group.

        Returns ``(returncode, timed_out, disk_exceeded)``; output goes to
        ``outdir``.
        """
        stdin_path = outdir / "stdin"
        stdin_path.write_bytes((stdin or "").encode())
        limits = self._preexec(self._nproc_limit(), cgroup)
        with (
            open(stdin_path, "rb") as inp,
            open(outdir / "stdout", "wb") as out,
            open(outdir / "stderr", "wb") as err,
        ):
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=full_env,
                stdin=inp if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=limits,
            )
            try:
                timed_out, disk_exceeded = self._wait(proc, watch)
            finally:
                self._kill_group(proc.pid, cgroup)
                proc.wait()
        return proc.returncode, timed_out, disk_exceeded

    def _checked(
        self,
        argv: Sequence[str],
        workdir: str | os.PathLike[str] | Workspace | None,
        ro_paths: Sequence[str | os.PathLike[str]],
    ) -> tuple[str | None, bool, bool, str | os.PathLike[str] | None, list[Path]]:
        """Validate :meth:`run`'s arguments; the isolation it can use.

        Returns ``(bwrap executable or None, user namespaces, capped workdir,
        workdir path, read-only paths)``.
        """
        if isinstance(argv, str) or not argv:
            raise ValueError(
                "argv must be a non-empty sequence of str; got "
                f"{argv!r}. Wrap a shell command as ['bash', '-c', cmd]."
            )
        exe, userns, why = _bwrap_status()
        if exe is None and not self.allow_weak_isolation:
            raise SandboxUnavailableError(
                f"No namespace isolation on this host ({why}); refusing to run "
                "untrusted code. Install bubblewrap (apt-get install bubblewrap) "
                "or pass allow_weak_isolation=True to accept resource limits and "
                "an audit hook only."
            )
        capped = isinstance(workdir, Workspace) and workdir.capped == "tmpfs"
        if isinstance(workdir, Workspace):
            workdir = workdir.path
        if workdir is not None and not Path(workdir).is_dir():
            raise FileNotFoundError(
                "The 'workdir' parameter must be an existing directory; got "
                f"{workdir!s}."
            )
        ro = [Path(p).resolve() for p in ro_paths]
        for p in ro:
            if not p.exists():
                raise FileNotFoundError(
                    f"The 'ro_paths' parameter must name existing paths; got {p}."
                )
        return exe, userns, capped, workdir, ro

    def _prepare(
        self,
        work: Path,
        root: Path,
        copy_tree: str | os.PathLike[str] | None,
        files: Mapping[str, str | bytes] | None,
        env: Mapping[str, str] | None,
        audit_hook: bool,
    ) -> dict[str, str]:
        """Fill the working directory; the program's environment variables."""
        if copy_tree is not None:
            shutil.copytree(copy_tree, work, dirs_exist_ok=True, symlinks=True)
        for rel, content in (files or {}).items():
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        full_env = self._scrubbed_env(work)
        if audit_hook:
            hookdir = root / "hook"
            hookdir.mkdir()
            (hookdir / "sitecustomize.py").write_text(_AUDIT_HOOK)
            full_env["PYTHONPATH"] = str(hookdir)
            full_env["R2VCAL_SANDBOX_ROOT"] = str(work)
        if env:
            full_env.update(env)
        return full_env

    def _read_back(self, work: Path, read_files: Sequence[str]) -> dict[str, bytes]:
        """The files asked for (regular files only, each capped at ``max_disk_mb``)."""
        read_back: dict[str, bytes] = {}
        cap = self.max_disk_mb * 1024 * 1024
        for rel in read_files:
            path = work / rel
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as fh:
                    read_back[rel] = fh.read(cap)
        return read_back

    def _bwrap_argv(
        self, exe: str, userns: bool, work: Path, ro: Sequence[Path]
    ) -> list[str]:
        args = [
            exe,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
        ]
        if userns:
            args += [
                "--unshare-user",
                "--disable-userns",
                "--uid",
                "65534",
                "--gid",
                "65534",
            ]
        args += _system_binds()
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.max_disk_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        # after the private /tmp: an interpreter or venv under /tmp (a checkout
        # in /tmp, as CI may use) must stay visible through it
        for d in _python_dirs(self.python or sys.executable):
            args += ["--ro-bind", d, d]
        for p in ro:
            args += ["--ro-bind", str(p), str(p)]
        args += ["--bind", str(work), str(work), "--chdir", str(work)]
        args += ["--remount-ro", "/", "--"]
        return args

    def _wait(
        self, proc: subprocess.Popen[bytes], watch: Sequence[Path]
    ) -> tuple[bool, bool]:
        """Wait for ``proc``; ``(timed_out, disk_exceeded)``."""
        deadline = time.monotonic() + self.wall_time
        cap = self.max_disk_mb * 1024 * 1024
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True, False
            try:
                proc.wait(timeout=min(left, 0.1) if watch else left)
                return False, False
            except subprocess.TimeoutExpired:
                pass
            if watch and sum(_dir_size(d, cap) for d in watch) > cap:
                return False, True

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
        fsize = min(self.max_file_mb, self.max_disk_mb) * 1024 * 1024
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
