"""Shared pytest fixtures (STYLE §11): a fixed-seed generator and a pyplot fixture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh ``numpy`` generator with a fixed seed, so every test is reproducible."""
    return np.random.default_rng(0)


@pytest.fixture
def pyplot() -> Iterator[Any]:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; closes all figures.

    Skips the test when matplotlib is not installed.
    """
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.close("all")
    yield plt
    plt.close("all")
