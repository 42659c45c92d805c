"""Helpers shared by the pipeline tests (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

_BWRAP_MISSING = (
    "bubblewrap (`bwrap`) is not installed and the sandbox refuses to run "
    "untrusted code without it (apt-get install bubblewrap)"
)


def require_bwrap(msg: str = _BWRAP_MISSING) -> None:
    """Skip without bubblewrap, except in CI (which installs it): fail there."""
    if shutil.which("bwrap") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def sandbox_or_skip(no_exec: set[str]) -> Any:
    """An autouse fixture: :func:`require_bwrap` unless the test runs no code.

    Parameters
    ----------
    no_exec : set of str
        Names of the module's tests that run no code (they run without
        bubblewrap).
    """

    @pytest.fixture(autouse=True)
    def _sandbox_or_skip(request: pytest.FixtureRequest) -> None:
        if request.node.originalname not in no_exec:
            require_bwrap()

    return _sandbox_or_skip


@contextlib.contextmanager
def listening(servers: list[socket.socket], linger: float = 0.3) -> Iterator[list[str]]:
    """Accept connections on the bound sockets ``servers`` until the block ends.

    Yields ``hits``: one entry a connection, the address (``repr``) of the
    socket it reached; a sandbox that must not reach them leaves it empty. On
    leaving, it waits ``linger`` seconds (a late connection still counts), then
    closes the sockets.
    """
    for srv in servers:
        srv.listen(4)
        srv.settimeout(0.2)
    hits: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            for srv in servers:
                try:
                    conn, _ = srv.accept()
                    hits.append(repr(srv.getsockname()))
                    conn.close()
                except OSError:
                    pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        yield hits
    finally:
        time.sleep(linger)
        stop.set()
        th.join(5)
        for srv in servers:
            srv.close()


@contextlib.contextmanager
def host_listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on the host's loopback: ``(port, hits)``, see :func:`listening`."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    with listening([srv]) as hits:
        yield srv.getsockname()[1], hits
