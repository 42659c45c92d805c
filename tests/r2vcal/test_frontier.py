"""Tests for r2vcal.frontier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2vcal.frontier import (
    FRONTIER_COLUMNS,
    cost_to_reach,
    frontier_auc,
    gap_recovered,
    oracle_frontier,
    reliability_cost_frontier,
    success_at,
)


def brute_force(p, slm, llm, groups, t, cost_slm, cost_llm):
    esc = p >= t
    succ = np.where(esc, llm, slm).astype(float)
    worst = min(succ[groups == g].mean() for g in np.unique(groups))
    return esc.mean(), succ.mean(), cost_slm + cost_llm * esc.mean(), worst


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 300
    slm = rng.random(n) < 0.5
    llm = rng.random(n) < 0.8
    p = np.round(rng.random(n), 2)  # ties on purpose
    groups = rng.integers(0, 4, n)
    return p, slm, llm, groups


def test_matches_brute_force(data):
    p, slm, llm, groups = data
    fr = reliability_cost_frontier(p, slm, llm, groups=groups, cost_slm=1, cost_llm=9)
    assert list(fr.columns) == list(FRONTIER_COLUMNS)
    assert fr["escalation_rate"].is_monotonic_increasing
    assert fr["escalation_rate"].iloc[0] == 0 and fr["escalation_rate"].iloc[-1] == 1
    assert fr["success"].iloc[0] == pytest.approx(slm.mean())
    assert fr["success"].iloc[-1] == pytest.approx(llm.mean())
    for row in fr.itertuples():
        rate, succ, cost, worst = brute_force(p, slm, llm, groups, row.threshold, 1, 9)
        assert row.escalation_rate == pytest.approx(rate)
        assert row.success == pytest.approx(succ)
        assert row.cost == pytest.approx(cost)
        assert row.worst_group_success == pytest.approx(worst)


def test_custom_thresholds_always_have_endpoints(data):
    p, slm, llm, _ = data
    fr = reliability_cost_frontier(
        p, slm, llm, cost_slm=1, cost_llm=9, thresholds=[0.5, 0.25]
    )
    assert fr["escalation_rate"].tolist()[0] == 0.0
    assert fr["escalation_rate"].tolist()[-1] == 1.0
    assert len(fr) == 4
    # no groups: worst group = everyone
    np.testing.assert_allclose(fr["worst_group_success"], fr["success"])


def test_oracle_dominates_and_random_is_the_chord(data):
    p, slm, llm, groups = data
    fr = reliability_cost_frontier(p, slm, llm, cost_slm=1, cost_llm=9)
    orc = oracle_frontier(slm, llm, groups=groups, cost_slm=1, cost_llm=9)
    assert frontier_auc(orc) >= frontier_auc(fr)
    for rate in np.linspace(0, 1, 11):
        assert success_at(orc, rate) >= success_at(fr, rate) - 1e-12
    const = reliability_cost_frontier(
        np.full(p.size, 0.3), slm, llm, cost_slm=1, cost_llm=9
    )
    assert frontier_auc(const) == pytest.approx((slm.mean() + llm.mean()) / 2)
    # oracle peak: every helpful step escalated
    assert orc["success"].max() == pytest.approx(np.mean(slm | llm))


def test_summaries(data):
    _, slm, llm, _ = data
    orc = oracle_frontier(slm, llm, cost_slm=1, cost_llm=9)
    assert gap_recovered(orc, 0.0) == pytest.approx(0.0)
    assert gap_recovered(orc, 1.0) == pytest.approx(1.0)
    helps = np.mean(~slm & llm)
    # the oracle closes the whole gap before escalating everything
    assert gap_recovered(orc, helps) >= 1.0 - 1e-12
    assert gap_recovered(orc, 0.1, slm_only_success=0.0, llm_only_success=1.0) > 0
    target = slm.mean() + 0.5 * (llm.mean() - slm.mean())
    c = cost_to_reach(orc, target)
    assert 1.0 < c < 10.0
    # cost of reaching the SLM-only level is the SLM cost
    assert cost_to_reach(orc, slm.mean()) == pytest.approx(1.0)
    assert cost_to_reach(orc, 1.0) == np.inf or np.mean(slm | llm) == 1.0


def test_errors():
    with pytest.raises(ValueError, match=r"'y_prob'.*\[0, 1\]"):
        reliability_cost_frontier([1.5], [0], [1], cost_slm=1, cost_llm=2)
    with pytest.raises(ValueError, match=r"'slm_success'.*0/1"):
        reliability_cost_frontier([0.5], [2], [1], cost_slm=1, cost_llm=2)
    with pytest.raises(ValueError, match=r"'llm_success'.*length"):
        reliability_cost_frontier([0.5], [0], [1, 0], cost_slm=1, cost_llm=2)
    with pytest.raises(ValueError, match="'cost_llm'"):
        reliability_cost_frontier([0.5], [0], [1], cost_slm=1, cost_llm=-2)
    with pytest.raises(ValueError, match="'groups'"):
        reliability_cost_frontier(
            [0.5], [0], [1], groups=[1, 2], cost_slm=1, cost_llm=2
        )
    with pytest.raises(ValueError, match="'thresholds'"):
        reliability_cost_frontier(
            [0.5], [0], [1], cost_slm=1, cost_llm=2, thresholds=[np.nan]
        )
    with pytest.raises(ValueError, match="empty"):
        reliability_cost_frontier([], [], [], cost_slm=1, cost_llm=2)
    with pytest.raises(TypeError, match="DataFrame"):
        frontier_auc([0.1, 0.2])
    partial = pd.DataFrame({"escalation_rate": [0.2, 0.5], "success": [0.5, 0.6]})
    with pytest.raises(ValueError, match="span escalation rates 0 to 1"):
        frontier_auc(partial)
    orc = oracle_frontier([1, 1], [1, 1], cost_slm=1, cost_llm=2)
    with pytest.raises(ValueError, match="gap to recover"):
        gap_recovered(orc, 0.5)
    with pytest.raises(ValueError, match="'escalation_rate'"):
        success_at(orc, 1.5)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.booleans(), st.booleans(), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    )
)
def test_fuzz_frontier_invariants(rows):
    p, slm, llm, g = (np.array(c) for c in zip(*rows))
    fr = reliability_cost_frontier(p, slm, llm, groups=g, cost_slm=1, cost_llm=3)
    assert np.isfinite(fr.drop(columns="threshold").to_numpy()).all()
    assert (fr["worst_group_success"] <= fr["success"] + 1e-12).all()
    auc = frontier_auc(fr)
    assert 0.0 <= auc <= 1.0
    assert (
        frontier_auc(oracle_frontier(slm, llm, cost_slm=1, cost_llm=3)) >= auc - 1e-12
    )
