"""Tests for r2vcal.plotting: render on Agg and inspect the artists."""

from __future__ import annotations

import doctest
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import r2vcal.plotting as P
from r2vcal.metrics import reliability_curve
from r2vcal.plotting import FrontierDisplay, GroupDisplay, ReliabilityDisplay


@pytest.fixture
def data(rng):
    n = 3000
    X = rng.normal(size=(n, 2))
    p = 1 / (1 + np.exp(-(X[:, 0] - 1.0)))
    y = (rng.uniform(size=n) < p).astype(int)
    groups = np.arange(n) % 6
    return X, y, p, groups


def test_import_does_not_load_matplotlib():
    code = "import sys, r2vcal.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_doctests(pyplot):
    result = doctest.testmod(P)
    assert result.attempted > 0
    assert result.failed == 0


def test_rcparams_untouched(pyplot, data):
    import matplotlib

    _, y, p, groups = data
    before = dict(matplotlib.rcParams)
    ReliabilityDisplay.from_predictions(y, p)
    GroupDisplay.from_predictions(y, p, groups, n_resamples=20)
    after = dict(matplotlib.rcParams)
    assert before == after


# ---------------------------------------------------------------------------
# ReliabilityDisplay
# ---------------------------------------------------------------------------


def test_reliability_display_artists(pyplot, data, tmp_path):
    _, y, p, _ = data
    disp = ReliabilityDisplay.from_predictions(y, p, n_bins=10, name="router")
    curve = reliability_curve(y, p, n_bins=10)
    keep = curve.counts > 0
    np.testing.assert_allclose(disp.line_.get_xdata(), curve.prob_pred[keep])
    np.testing.assert_allclose(disp.line_.get_ydata(), curve.prob_true[keep])
    assert disp.figure_ is disp.ax_.figure
    assert disp.hist_ax_ is not None and disp.hist_ax_.figure is disp.figure_
    assert disp.band_ is not None
    assert disp.hist_ is not None
    assert disp.ax_.get_ylabel().startswith("Observed frequency")
    assert disp.hist_ax_.get_xlabel() == "Mean predicted probability"
    assert disp.hist_ax_.get_ylabel() == "Count"
    texts = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert texts[0] == "Perfectly calibrated"
    assert texts[1].startswith("router (ECE ")
    # the band brackets the curve in well-populated bins
    ok = keep & (curve.counts > 100)
    assert np.all(disp.band_low[ok] <= curve.prob_true[ok] + 1e-12)
    assert np.all(curve.prob_true[ok] <= disp.band_high[ok] + 1e-12)
    disp.figure_.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_reliability_display_several_routers_on_one_axes(pyplot, data):
    _, y, p, _ = data
    first = ReliabilityDisplay.from_predictions(y, p, name="router")
    second = ReliabilityDisplay.from_predictions(
        y, np.sqrt(p), name="entropy", ax=first.ax_
    )
    assert second.ax_ is first.ax_
    assert second.hist_ax_ is first.hist_ax_
    assert second.ref_line_ is None  # the diagonal is drawn once
    assert len(first.ax_.get_lines()) == 3
    assert len(first.hist_ax_.patches) == 2  # one step outline per router
    texts = [t.get_text() for t in first.ax_.get_legend().get_texts()]
    assert [t.split(" (")[0] for t in texts] == [
        "Perfectly calibrated",
        "router",
        "entropy",
    ]
    assert first.line_.get_color() != second.line_.get_color()
    # plotting an existing display again on the same axes works too
    second.plot(ax=first.ax_, name="again")
    assert len(first.ax_.get_lines()) == 4


def test_reliability_display_user_axes_and_options(pyplot, data):
    X, y, p, _ = data
    fig, ax = pyplot.subplots()
    disp = ReliabilityDisplay.from_predictions(y, p, ax=ax, n_resamples=0)
    assert disp.band_ is None
    assert disp.hist_ax_ is not None and disp.hist_ax_ is not ax
    assert len(fig.axes) == 2
    bare = ReliabilityDisplay.from_predictions(y, p, hist=False, strategy="quantile")
    assert bare.hist_ax_ is None and len(bare.figure_.axes) == 1
    assert bare.ax_.get_xlabel() == "Mean predicted probability"
    clf = LogisticRegression().fit(X, y)
    est = ReliabilityDisplay.from_estimator(clf, X, y, n_resamples=10)
    assert (
        est.ax_.get_legend().get_texts()[1].get_text().startswith("LogisticRegression")
    )


def test_reliability_display_errors(pyplot, data):
    X, y, p, _ = data
    with pytest.raises(ValueError, match="no predict_proba"):
        ReliabilityDisplay.from_estimator(object(), X, y)
    with pytest.raises(ValueError, match="'strategy' parameter"):
        ReliabilityDisplay.from_predictions(y, p, strategy="kmeans")
    with pytest.raises(ValueError, match="y_prob must contain probabilities"):
        ReliabilityDisplay.from_predictions(y, p * 2)


# ---------------------------------------------------------------------------
# FrontierDisplay
# ---------------------------------------------------------------------------


def _toy_frontier(p, slm, llm, groups=None, cost_slm=0.0, cost_llm=1.0):
    """Reference frontier with the columns of r2vcal.frontier."""
    p, slm, llm = (np.asarray(a, dtype=float) for a in (p, slm, llm))
    ths = np.r_[np.inf, np.sort(np.unique(p))[::-1]]
    rows = []
    for t in ths:
        esc = p >= t
        ok = np.where(esc, llm, slm)
        rows.append(
            {
                "threshold": min(t, 1.0),
                "escalation_rate": esc.mean(),
                "success": ok.mean(),
                "cost": np.mean(np.where(esc, cost_llm, cost_slm)),
                "worst_group_success": ok.mean(),
            }
        )
    return pd.DataFrame(rows)


def _toy_oracle(slm, llm, groups=None, cost_slm=0.0, cost_llm=1.0):
    slm, llm = np.asarray(slm, float), np.asarray(llm, float)
    gain = np.mean((slm == 0) & (llm == 1))
    return pd.DataFrame(
        {
            "escalation_rate": [0.0, gain, 1.0],
            "success": [slm.mean(), slm.mean() + gain, slm.mean() + gain],
        }
    )


@pytest.fixture
def outcomes(rng, data):
    X, _, p, _ = data
    slm = (rng.uniform(size=p.size) > p).astype(int)  # the SLM fails where p is high
    llm = (rng.uniform(size=p.size) < 0.95).astype(int)
    return X, p, slm, llm


def test_frontier_display_artists(pyplot, outcomes):
    _, p, slm, llm = outcomes
    frontier = _toy_frontier(p, slm, llm)
    disp = FrontierDisplay(
        frontier,
        oracle=_toy_oracle(slm, llm),
        thresholds={"Bayes": 0.3, "budget": 0.7},
        name="router",
    ).plot()
    fr = frontier.sort_values("escalation_rate", kind="stable")
    np.testing.assert_allclose(disp.line_.get_xdata(), fr["escalation_rate"])
    np.testing.assert_allclose(disp.line_.get_ydata(), fr["success"])
    assert disp.oracle_line_ is not None
    assert len(disp.markers_) == 2
    # each marker sits on the frontier row with the nearest threshold
    row = frontier.iloc[np.argmin(np.abs(frontier["threshold"] - 0.3))]
    np.testing.assert_allclose(
        disp.markers_[0].get_offsets()[0], [row["escalation_rate"], row["success"]]
    )
    assert disp.ax_.get_xlabel().startswith("Escalation rate")
    assert disp.ax_.get_ylabel() == "Task success"
    texts = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert texts[0] == "Oracle (hindsight)"
    assert "router" in texts
    assert any(t.startswith("Bayes (") and "escalated" in t for t in texts)
    # a second router on the same axes; the oracle is not drawn twice
    other = FrontierDisplay(frontier.assign(success=frontier["success"] - 0.05))
    other.plot(ax=disp.ax_, name="entropy", thresholds=[0.5])
    assert other.oracle_line_ is None
    assert len(disp.ax_.get_lines()) == 3
    assert len(other.markers_) == 1


def test_frontier_display_validates_columns(pyplot):
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['success'\]"):
        FrontierDisplay(pd.DataFrame({"escalation_rate": [0.0, 1.0]})).plot()
    with pytest.raises(ValueError, match="DataFrame"):
        FrontierDisplay([[0, 1]]).plot()


@pytest.fixture
def frontier_module(monkeypatch):
    """The real r2vcal.frontier when present, else a stand-in with its contract."""
    try:
        import r2vcal.frontier as real

        if hasattr(real, "reliability_cost_frontier") and hasattr(
            real, "oracle_frontier"
        ):
            return real
    except ImportError:
        pass
    fake = types.ModuleType("r2vcal.frontier")
    fake.reliability_cost_frontier = _toy_frontier
    fake.oracle_frontier = _toy_oracle
    monkeypatch.setitem(sys.modules, "r2vcal.frontier", fake)
    return fake


def test_frontier_display_from_predictions_and_estimator(
    pyplot, outcomes, frontier_module
):
    X, p, slm, llm = outcomes
    disp = FrontierDisplay.from_predictions(
        p, slm, llm, thresholds={"Bayes": 0.5}, name="router"
    )
    x = np.asarray(disp.line_.get_xdata())
    y = np.asarray(disp.line_.get_ydata())
    assert x.min() == pytest.approx(0.0) and x.max() == pytest.approx(1.0)
    assert y[np.argmin(x)] == pytest.approx(slm.mean())
    assert y[np.argmax(x)] == pytest.approx(llm.mean())
    assert disp.oracle_line_ is not None
    assert len(disp.markers_) == 1
    clf = LogisticRegression().fit(X, (slm == 0).astype(int))
    est = FrontierDisplay.from_estimator(clf, X, slm, llm, oracle=False)
    assert est.oracle_line_ is None
    assert est.ax_.get_legend().get_texts()[0].get_text() == "LogisticRegression"


# ---------------------------------------------------------------------------
# GroupDisplay
# ---------------------------------------------------------------------------


def test_group_display_brier(pyplot, data):
    _, y, p, groups = data
    disp = GroupDisplay.from_predictions(y, p, groups, n_resamples=100, name="router")
    assert disp.groups == [0, 1, 2, 3, 4, 5]
    for k, g in enumerate(disp.groups):
        m = groups == g
        assert disp.values[k] == pytest.approx(np.mean((p[m] - y[m]) ** 2))
        assert disp.low[k] <= disp.values[k] <= disp.high[k]
    np.testing.assert_allclose(disp.line_.get_ydata(), disp.values)
    assert disp.worst_group_ == disp.groups[int(np.argmax(disp.values))]
    assert [t.get_text() for t in disp.ax_.get_xticklabels()] == list("012345")
    assert disp.ax_.get_ylabel().startswith("Brier score")
    assert disp.ax_.get_xlabel() == "Group"
    # a second router is dodged to the right on the same axes
    other = GroupDisplay.from_predictions(
        y, np.sqrt(p), groups, n_resamples=20, name="entropy", ax=disp.ax_
    )
    np.testing.assert_allclose(
        np.asarray(other.line_.get_xdata()) - np.asarray(disp.line_.get_xdata()), 0.15
    )
    texts = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert texts == ["router", "entropy"]


def test_group_display_success_callable_and_estimator(pyplot, data):
    X, y, p, groups = data
    labels = np.array(["seed-a", "seed-b", "seed-c"])[np.arange(y.size) % 3]
    succ = GroupDisplay.from_predictions(y, None, labels, metric="success")
    assert succ.ax_.get_ylabel() == "Success rate"
    assert succ.worst_group_ == succ.groups[int(np.argmin(succ.values))]
    for k, g in enumerate(succ.groups):
        assert succ.values[k] == pytest.approx(y[labels == g].mean())

    def abs_gap(y_true, y_prob):
        return abs(float(np.mean(y_true) - np.mean(y_prob)))

    gap = GroupDisplay.from_predictions(y, p, groups, metric=abs_gap, n_resamples=20)
    assert gap.ax_.get_ylabel() == "abs_gap"
    ece = GroupDisplay.from_predictions(y, p, groups, metric="ece", n_resamples=20)
    assert ece.ax_.get_ylabel().startswith("ECE")
    clf = LogisticRegression().fit(X, y)
    est = GroupDisplay.from_estimator(clf, X, y, groups, n_resamples=20)
    assert est.ax_.get_legend().get_texts()[0].get_text() == "LogisticRegression"


def test_group_display_errors(pyplot, data):
    _, y, p, groups = data
    with pytest.raises(ValueError, match="'metric' parameter"):
        GroupDisplay.from_predictions(y, p, groups, metric="auc")
    with pytest.raises(ValueError, match="groups must be 1-D"):
        GroupDisplay.from_predictions(y, p, groups[:10])


def test_group_display_many_groups_is_horizontal_and_sorted(pyplot):
    rng = np.random.default_rng(0)
    groups = np.array([f"category-{k:02d}" for k in range(14)])[np.arange(2800) % 14]
    p = rng.uniform(size=2800)
    noise = (np.arange(2800) % 14) / 40.0  # later groups are worse calibrated
    y = (rng.uniform(size=2800) < np.clip(p + noise, 0, 1)).astype(float)
    disp = GroupDisplay.from_predictions(
        y, p, groups, n_resamples=20, group_label="Category"
    )
    ticks = [t.get_text() for t in disp.ax_.get_yticklabels()]
    assert len(ticks) == 14 and disp.ax_.get_ylabel() == "Category"
    assert disp.ax_.yaxis_inverted()
    # rows sorted by Brier, worst first; the points sit on their own label's row
    values = dict(zip(disp.groups, disp.values))
    shown = [values[t] for t in ticks]
    assert shown == sorted(shown, reverse=True)
    assert ticks[0] == disp.worst_group_
    rows = np.asarray(disp.line_.get_ydata())
    for g, row in zip(disp.groups, rows):
        assert ticks[int(row)] == g
    np.testing.assert_allclose(disp.line_.get_xdata(), disp.values)
