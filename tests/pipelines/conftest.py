"""Shared fixtures for pipeline tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def he_cache(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide HumanEval+ ground-truth cache directory."""
    return tmp_path_factory.mktemp("humaneval_gt")
