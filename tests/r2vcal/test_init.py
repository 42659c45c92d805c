"""The package's public namespace."""

import importlib

import pytest

MODULES = [
    "r2vcal",
    "r2vcal.baselines",
    "r2vcal.cascade",
    "r2vcal.cli",
    "r2vcal.datasets",
    "r2vcal.features",
    "r2vcal.frontier",
    "r2vcal.metrics",
    "r2vcal.persist",
    "r2vcal.plotting",
    "r2vcal.report",
    "r2vcal.router",
    "r2vcal.schema",
    "r2vcal.serve",
    "r2vcal.thresholds",
]


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name):
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
