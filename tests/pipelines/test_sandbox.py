"""The sandbox contains hostile programs and keeps going."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest

from pipelines import sandbox as sandbox_mod
from pipelines.sandbox import Sandbox, SandboxResult, isolation_capabilities

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the sandbox uses Linux rlimits"
)


@pytest.fixture(params=["host", "fallback"])
def sandbox(request, monkeypatch) -> Sandbox:
    """The host's best isolation, and the audit-hook fallback without namespaces."""
    if request.param == "fallback":
        monkeypatch.setattr(sandbox_mod, "_unshare_works", lambda: False)
    return Sandbox(wall_time=4.0, memory_mb=512, max_processes=16)


def _assert_runner_alive(sb: Sandbox) -> None:
    res = sb.run_python("print('alive')")
    assert res.ok, res.stderr
    assert res.stdout.strip() == "alive"


def test_ok_program_and_output(sandbox: Sandbox) -> None:
    res = sandbox.run_python(
        "import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
        "open('made.txt', 'w').write('x')",
        read_files=["made.txt"],
    )
    assert isinstance(res, SandboxResult)
    assert res.ok
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


def test_infinite_loop_hits_wall_time() -> None:
    sb = Sandbox(wall_time=1.5)
    start = time.perf_counter()
    res = sb.run_python("while True:\n    pass\n")
    assert res.timed_out and not res.ok
    assert time.perf_counter() - start < 6
    _assert_runner_alive(sb)


def test_sleeping_children_are_killed() -> None:
    sb = Sandbox(wall_time=1.0)
    res = sb.run_python(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "import time; time.sleep(60)\n"
    )
    assert res.timed_out


def test_network_socket(sandbox: Sandbox) -> None:
    # A real server on the host: the sandbox must not reach it.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    hits: list[int] = []

    def accept() -> None:
        srv.settimeout(5)
        try:
            conn, _ = srv.accept()
            hits.append(1)
            conn.close()
        except OSError:
            pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    res = sandbox.run_python(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        "\nprint('connected')"
    )
    srv.close()
    th.join(6)
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


def test_isolation_reported() -> None:
    caps = isolation_capabilities()
    assert set(caps) == {"network", "filesystem", "processes"}
    res = Sandbox().run_python("pass")
    assert res.isolation == caps


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"wall_time": 0}, "wall_time"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"max_processes": 0}, "max_processes"),
        ({"cpu_time": 0}, "cpu_time"),
    ],
)
def test_invalid_parameters(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        Sandbox(**kwargs)
