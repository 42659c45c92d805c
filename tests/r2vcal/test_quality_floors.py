"""Quality floors on every real table the project ships (issue 12).

The default :class:`~r2vcal.CVaRBrierRouter` against sklearn's
``LogisticRegression`` on the same features, out-of-fold by hold-out unit
(``bench/bench_quality.py --quick``): never worse than LR beyond the 95 % CI of
the paired Brier difference, and at least as good on worst-group Brier. These are
the figures a user checks first; a change that breaks calibration, shrinkage or
the CVaR term on real data fails here, not in a synthetic test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TABLES = [
    "mmlu_pro_cascade",
    "mmlu_pro_agreement",
    "textworld_tiny[y_verifier]",
    "textworld_tiny[y_counterfactual]",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLES)
def test_default_router_holds_against_logistic_regression(bench, name):
    table = bench.load_tables()[name]()
    comparison, diff, _ = bench.evaluate_table(
        table, n_splits=3, n_resamples=100, quick=True
    )
    est = comparison.set_index(["router", "metric"])["estimate"]
    brier, low, high = diff["brier"]
    assert low <= 0.0, f"{name}: Brier worse than LR by {brier:+.4f} [{low}, {high}]"
    worst = est["CVaRBrierRouter", "worst_group_brier"]
    worst_lr = est["LogisticRegression", "worst_group_brier"]
    assert worst <= worst_lr + 1e-3, (name, worst, worst_lr)
    # better than the constant base-rate forecast, i.e. it learned something,
    # where there is enough to learn from (textworld_tiny's counterfactual label
    # has 13 positives: no router, LR included, beats the base rate there)
    base = float(((table.y.mean() - table.y) ** 2).mean())
    if table.y.sum() >= 100:
        assert est["CVaRBrierRouter", "brier"] < base
