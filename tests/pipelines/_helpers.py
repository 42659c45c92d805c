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
def host_listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on the host's loopback: ``(port, hits)``, one hit a connection.

    It accepts until the ``with`` block ends; a sandbox that must not reach the
    host's network leaves ``hits`` empty.
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1], hits
    finally:
        time.sleep(0.3)  # a late connection still counts
        stop.set()
        th.join(5)
        srv.close()
