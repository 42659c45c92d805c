"""Shared fixtures for pipeline tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def he_cache(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide HumanEval+ ground-truth cache directory."""
    return tmp_path_factory.mktemp("humaneval_gt")


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch) -> Path:
    """This host as if bubblewrap were not installed: PATH without ``bwrap``."""
    bindir = tmp_path / "path-without-bwrap"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bindir / name
            if name != "bwrap" and not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.join(d, name))
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("bwrap") is None
    return bindir
