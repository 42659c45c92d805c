"""The sandbox contains hostile programs and keeps going.

Rows X1-X7 are the attacks of issue 14, each run for real against this host;
each failed (escaped) on the namespace sandbox before bubblewrap.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _helpers import host_listener, listening, require_bwrap

import pipelines
from pipelines.sandbox import Sandbox, SandboxResult, isolation_capabilities

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the sandbox uses Linux rlimits"
)

REPO = Path(pipelines.__file__).resolve().parents[1]


def _bwrap_or_skip() -> None:
    require_bwrap(
        "bubblewrap (`bwrap`) is not installed: the attack rows need the real "
        "sandbox (apt-get install bubblewrap; .ci/run installs it)"
    )


@pytest.fixture(params=["bwrap", "weak"])
def sandbox(request) -> Sandbox:
    """The real sandbox, and the opted-in weak mode of a host without bubblewrap."""
    if request.param == "weak":
        request.getfixturevalue("no_bwrap")
        return Sandbox(
            wall_time=4.0, memory_mb=512, max_processes=16, allow_weak_isolation=True
        )
    _bwrap_or_skip()
    return Sandbox(wall_time=4.0, memory_mb=512, max_processes=16)


def _assert_runner_alive(sb: Sandbox) -> None:
    res = sb.run_python("print('alive')")
    assert res.ok, res.stderr
    assert res.stdout.strip() == "alive"


# ------------------------------------------------------------ X1-X7 (issue 14)
_REMOUNT_PY = """
import subprocess
points = sorted({ln.split()[4] for ln in open('/proc/self/mountinfo')})
for m in ['/', *points]:
    subprocess.run(['mount', '-o', 'remount,bind,rw', m], capture_output=True)
for target in TARGETS:
    try:
        with open(target, 'w') as fh:
            fh.write('x')
        print('WROTE', target)
    except OSError as exc:
        print('blocked', target, exc)
"""


def test_x1_remount_rw_then_write_host_file(tmp_path) -> None:
    """X1: undoing the read-only mounts needs capabilities the child lacks."""
    _bwrap_or_skip()
    targets = [str(tmp_path / "x1-python.txt"), str(tmp_path / "x1-bash.txt")]
    res = Sandbox().run_python(_REMOUNT_PY.replace("TARGETS", repr(targets[:1])))
    assert "WROTE" not in res.stdout
    script = (
        "for m in / $(awk '{print $5}' /proc/self/mountinfo); do "
        "mount -o remount,bind,rw $m 2>/dev/null; done; "
        f"echo x > {targets[1]}; "
        # a nested user namespace would give back capabilities: refused too
        f"unshare -r -m sh -c 'mount -o remount,rw /; echo x > {targets[1]}'"
    )
    res2 = Sandbox().run(["bash", "-c", script])
    assert not res2.ok
    for t in targets:
        assert not os.path.exists(t), f"host file {t} written from the sandbox"


def test_x1_visible_read_only_paths_stay_read_only(tmp_path) -> None:
    """X1 on a path the sandbox does see (a task's tests): remounting fails."""
    _bwrap_or_skip()
    ro = tmp_path / "tests"
    ro.mkdir()
    (ro / "test_x.py").write_text("def test(): pass\n")
    target = str(ro / "x1.txt")
    res = Sandbox().run(
        [
            "python3",
            "-c",
            _REMOUNT_PY.replace("TARGETS", repr([target, str(ro / "test_x.py")])),
        ],
        ro_paths=[ro],
    )
    assert "WROTE" not in res.stdout and res.stdout.count("blocked") == 2
    assert not os.path.exists(target)
    assert (ro / "test_x.py").read_text() == "def test(): pass\n"
    caps = res.isolation
    assert caps["mode"] == "bwrap" and caps["network"] == "netns"


def test_x3_host_secrets_are_not_visible(tmp_path) -> None:
    """X3: /etc/shadow, the repository, /root and host temp files are not there."""
    _bwrap_or_skip()
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    paths = ["/etc/shadow", str(REPO / "pyproject.toml"), str(secret)]
    res = Sandbox().run_python(
        "import os\n"
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        print('READ', p, open(p).read()[:20])\n"
        "    except OSError as exc:\n"
        "        print('blocked', p, type(exc).__name__)\n"
        "for d in ['/root', os.path.expanduser('~root'), '/home', '/run']:\n"
        "    try:\n"
        "        print('LIST', d, sorted(os.listdir(d)))\n"
        "    except OSError as exc:\n"
        "        print('blocked', d, type(exc).__name__)\n"
    )
    assert res.ok, res.stderr
    assert "READ" not in res.stdout and "hunter2" not in res.stdout
    # /root may hold only the path down to the interpreter (e.g. /root/.pyenv).
    allowed = {
        Path(p).relative_to("/root").parts[0]
        for p in {sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)}
        if p.startswith("/root/")
    }
    for line in res.stdout.splitlines():
        if line.startswith("LIST /root "):
            listed = set(eval(line.split(" ", 2)[2]))
            assert listed <= allowed, f"/root shows {listed - allowed}"
        elif line.startswith(("LIST /home", "LIST /run")):
            assert line.endswith("[]"), line


def test_x4_host_unix_sockets_unreachable(tmp_path) -> None:
    """X4: a Unix socket under /tmp (and an abstract one) cannot be reached."""
    _bwrap_or_skip()
    path = str(tmp_path / "x4.sock")
    abstract = "\0r2vcal-x4-" + uuid.uuid4().hex
    servers = []
    for addr in (path, abstract):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(addr)
        servers.append(srv)
    with listening(servers, linger=0.5) as hits:
        res = Sandbox().run_python(
            "import socket\n"
            f"for addr in [{path!r}, {abstract!r}]:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n"
            "        s.connect(addr)\n"
            "        print('CONNECTED', repr(addr))\n"
            "    except OSError as exc:\n"
            "        print('blocked', type(exc).__name__)\n"
        )
    assert "CONNECTED" not in res.stdout, res.stdout
    assert res.stdout.count("blocked") == 2, res.stdout + res.stderr
    assert hits == []


def test_x5_fails_closed_without_namespaces(no_bwrap, tmp_path) -> None:
    """X5: without bubblewrap, untrusted code is refused unless opted in."""
    from pipelines.sandbox import SandboxUnavailableError

    marker = tmp_path / "x5-ran"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation=True"):
        Sandbox().run_python(code)
    with pytest.raises(SandboxUnavailableError, match="bwrap"):
        Sandbox().run(["bash", "-c", f"touch {marker}"])
    assert not marker.exists()
    assert Sandbox().isolation()["mode"] == "refused"
    weak = Sandbox(allow_weak_isolation=True)
    res = weak.run_python("print('trusted')")
    assert res.ok and res.stdout.strip() == "trusted"
    assert res.isolation["mode"] == "weak"
    assert res.isolation["allow_weak_isolation"] == "true"


def test_x5_attacks_that_beat_the_audit_hook_are_contained(
    tmp_path, monkeypatch
) -> None:
    """X5's bypasses, under the default sandbox: child shells, /dev/tcp, the
    parent's environment, killing the parent, seeing host processes."""
    _bwrap_or_skip()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-r2vcal-x5-secret")
    outside = tmp_path / "outside"
    with host_listener() as (port, hits):
        res = Sandbox(wall_time=8.0).run_python(
            "import os, signal, subprocess, sys\n"
            f"subprocess.run(['sh', '-c', 'echo x > {outside}'])\n"
            "subprocess.run(['bash', '-c', "
            f"'echo hi > /dev/tcp/127.0.0.1/{port}'])\n"
            "subprocess.run([sys.executable, '-I', '-c', 'import socket; "
            f'socket.create_connection(("127.0.0.1", {port}), timeout=2)\'])\n'
            "for pid in {'1', str(os.getppid()), 'self'}:\n"
            "    try:\n"
            "        print('ENV', pid, open(f'/proc/{pid}/environ').read())\n"
            "    except OSError as exc:\n"
            "        print('noenv', pid, exc)\n"
            "print('NPROC', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
            "for pid in (os.getppid(), 1, -1):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError as exc:\n"
            "        print('nokill', pid, exc)\n"
        )
    assert "sk-r2vcal-x5-secret" not in res.stdout + res.stderr
    assert not outside.exists()
    assert hits == []
    nproc = [int(ln.split()[1]) for ln in res.stdout.splitlines() if "NPROC" in ln]
    assert nproc and nproc[0] <= 5, res.stdout
    # The harness (this process) survived and the sandbox still works.
    _assert_runner_alive(Sandbox())


def test_x6_disk_quota(tmp_path) -> None:
    """X6: 32 files of 16 MB against a 64 MiB working directory."""
    _bwrap_or_skip()
    sb = Sandbox(wall_time=30.0, max_disk_mb=64, max_file_mb=64)
    start = time.perf_counter()
    res = sb.run_python(
        "import os\n"
        "total = 0\n"
        "chunk = b'x' * (1 << 20)\n"
        "for i in range(32):\n"
        "    try:\n"
        "        with open(f'f{i}', 'wb') as fh:\n"
        "            for _ in range(16):\n"
        "                fh.write(chunk)\n"
        "                fh.flush()\n"
        "                total += len(chunk)\n"
        "    except OSError as exc:\n"
        "        print('stopped', exc)\n"
        "        break\n"
        "print('written', total)\n"
    )
    elapsed = time.perf_counter() - start
    written = [int(ln.split()[1]) for ln in res.stdout.splitlines() if "written" in ln]
    cap = 64 * 1024 * 1024
    if res.isolation["disk"] == "tmpfs":
        assert written and written[0] <= cap, res.stdout + res.stderr
        assert "stopped" in res.stdout
    else:  # the watchdog kills the program instead
        assert res.disk_exceeded and (not written or written[0] <= 2 * cap)
    assert elapsed < 30


def test_x7_stale_dirs_swept_after_parent_sigkill(tmp_path) -> None:
    """X7: SIGKILL the parent mid-run: the sandbox dies with it, and its temp
    directory is swept by the next run."""
    _bwrap_or_skip()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    run = (
        "from pipelines.sandbox import Sandbox\n"
        "Sandbox(wall_time=60).run_python('import time; time.sleep(60)')\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", run], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(tmp.glob("r2vcal-sandbox-*")):
            time.sleep(0.1)
        left = list(tmp.glob("r2vcal-sandbox-*"))
        assert left, "the sandbox never started"
        time.sleep(1.0)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def sandboxed_alive() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp).encode() in cmdline:
                found.append(pid)
        return found

    deadline = time.monotonic() + 10
    while sandboxed_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandboxed_alive() == [], "the sandboxed program outlived its parent"
    assert all(p.exists() for p in left)  # left behind by the kill ...
    follow = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipelines.sandbox import Sandbox\n"
            "assert Sandbox().run_python('pass').ok\n",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert follow.returncode == 0, follow.stderr
    assert not any(p.exists() for p in left)  # ... and swept at the next run
    assert list(tmp.iterdir()) == []


def test_sweep_leaves_live_processes_dirs_alone(tmp_path) -> None:
    from pipelines.sandbox import sweep_stale_dirs

    mine = tmp_path / f"r2vcal-sandbox-{os.getpid()}-abc123"
    dead = subprocess.Popen(["true"])
    dead.wait()
    theirs = tmp_path / f"r2vcal-sandbox-{dead.pid}-abc123"
    other = tmp_path / "r2vcal-sandbox-unrelated"
    for d in (mine, theirs, other):
        d.mkdir()
    assert sweep_stale_dirs(tmp_path) == [str(theirs)]
    assert mine.exists() and other.exists() and not theirs.exists()


# ------------------------------------------------- both modes: limits hold
def test_ok_program_and_output(sandbox: Sandbox) -> None:
    res = sandbox.run_python(
        "import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
        "open('made.txt', 'w').write('x')",
        read_files=["made.txt"],
    )
    assert isinstance(res, SandboxResult)
    assert res.ok, res.stderr
    env_keys = eval(res.stdout.splitlines()[0])
    assert "R2VCAL_SECRET" not in env_keys
    assert all(not k.startswith("VIRTUAL_ENV") for k in env_keys)
    assert res.files == {"made.txt": b"x"}


def test_environment_is_scrubbed(sandbox: Sandbox, monkeypatch) -> None:
    monkeypatch.setenv("R2VCAL_SECRET", "hunter2")
    res = sandbox.run_python("import os; print(os.environ.get('R2VCAL_SECRET'))")
    assert res.stdout.strip() == "None"


def test_fork_bomb(sandbox: Sandbox) -> None:
    start = time.perf_counter()
    res = sandbox.run_python("import os\nwhile True:\n    os.fork()\n")
    assert not res.ok
    assert time.perf_counter() - start < 15
    _assert_runner_alive(sandbox)


def test_memory_bomb(sandbox: Sandbox) -> None:
    res = sandbox.run_python("x = bytearray(8 * 1024**3)\nprint('allocated')")
    assert not res.ok
    assert "allocated" not in res.stdout
    assert "MemoryError" in res.stderr
    _assert_runner_alive(sandbox)


def test_infinite_loop_hits_wall_time(sandbox: Sandbox) -> None:
    sandbox.wall_time = 1.5
    start = time.perf_counter()
    res = sandbox.run_python("while True:\n    pass\n")
    assert res.timed_out and not res.ok
    assert time.perf_counter() - start < 6
    _assert_runner_alive(sandbox)


def test_sleeping_children_are_killed(sandbox: Sandbox) -> None:
    sandbox.wall_time = 1.0
    res = sandbox.run_python(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "import time; time.sleep(60)\n"
    )
    assert res.timed_out


def test_network_socket(sandbox: Sandbox) -> None:
    # A real server on the host: the sandbox must not reach it.
    with host_listener() as (port, hits):
        res = sandbox.run_python(
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)"
            "\nprint('connected')"
        )
    assert not res.ok
    assert "connected" not in res.stdout
    assert hits == []
    _assert_runner_alive(sandbox)


def test_write_outside_workdir(sandbox: Sandbox, tmp_path) -> None:
    target = tmp_path / "escaped.txt"
    res = sandbox.run_python(f"open({str(target)!r}, 'w').write('pwned')")
    assert not res.ok
    assert not target.exists()
    _assert_runner_alive(sandbox)


def test_delete_files_outside_workdir(sandbox: Sandbox, tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    res = sandbox.run_python(
        f"import os, shutil\nos.remove({str(victim / 'keep.txt')!r})\n"
        f"shutil.rmtree({str(victim)!r})\n"
    )
    assert not res.ok
    assert (victim / "keep.txt").read_text() == "precious"
    _assert_runner_alive(sandbox)


def test_os_exit(sandbox: Sandbox) -> None:
    res = sandbox.run_python("import os\nprint('bye', flush=True)\nos._exit(3)")
    assert res.returncode == 3 and not res.ok
    _assert_runner_alive(sandbox)


def test_workdir_removed_afterwards(sandbox: Sandbox) -> None:
    res = sandbox.run_python("import os; print(os.getcwd())")
    assert not os.path.exists(res.stdout.strip())


def test_workspace_persists_and_is_capped(sandbox: Sandbox) -> None:
    from pipelines.sandbox import Workspace

    with Workspace(max_disk_mb=8) as ws:
        sandbox.run(["bash", "-c", "echo kept > state.txt"], workdir=ws)
        res = sandbox.run(["bash", "-c", "cat state.txt"], workdir=ws)
        assert res.stdout.strip() == "kept"
        sandbox.wall_time = 10.0
        res = sandbox.run(
            ["bash", "-c", "head -c 32000000 /dev/zero > big; echo rc=$?"],
            workdir=ws,
        )
        assert res.disk_exceeded or "rc=1" in res.stdout
        assert sum(f.stat().st_size for f in ws.path.iterdir()) <= 9 * 2**20 or (
            res.disk_exceeded
        )
        path = ws.path
    assert not path.exists()


def test_isolation_reported() -> None:
    caps = isolation_capabilities()
    assert set(caps) == {"mode", "network", "filesystem", "user", "processes", "disk"}
    if caps["mode"] == "bwrap":
        res = Sandbox().run_python("pass")
        assert res.isolation == {**caps, "allow_weak_isolation": "false"}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"wall_time": 0}, "wall_time"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"max_processes": 0}, "max_processes"),
        ({"cpu_time": 0}, "cpu_time"),
        ({"max_disk_mb": 0}, "max_disk_mb"),
        ({"max_file_mb": 0}, "max_file_mb"),
    ],
)
def test_invalid_parameters(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        Sandbox(**kwargs)


def test_invalid_arguments(tmp_path) -> None:
    with pytest.raises(TypeError, match="allow_weak_isolation must be a bool"):
        Sandbox(allow_weak_isolation="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="argv"):
        Sandbox().run("echo hi")
    _bwrap_or_skip()
    with pytest.raises(FileNotFoundError, match="'workdir'"):
        Sandbox().run(["true"], workdir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="'ro_paths'"):
        Sandbox().run(["true"], ro_paths=[tmp_path / "missing"])
