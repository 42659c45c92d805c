"""Helpers shared by the pipeline tests (imported as ``from _helpers import ...``)."""

from __future__ import annotations

import os
import shutil

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


def sandbox_or_skip(request: pytest.FixtureRequest, no_exec: set[str]) -> None:
    """:func:`require_bwrap` unless the test runs no code (named in ``no_exec``)."""
    if request.node.originalname not in no_exec:
        require_bwrap()
