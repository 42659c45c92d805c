"""Tests for r2vcal.datasets (the shipped mmlu_pro_cascade table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils import Bunch

from r2vcal.datasets import get_data_home, load_mmlu_pro_cascade
from r2vcal.frontier import frontier_auc, oracle_frontier, reliability_cost_frontier


def test_bunch_contents():
    ds = load_mmlu_pro_cascade()
    assert isinstance(ds, Bunch)
    n = 12_032
    assert ds.data.shape == (n, len(ds.feature_names)) and ds.data.shape[1] >= 10
    assert ds.data.dtype == np.float64 and np.isfinite(ds.data).all()
    assert set(np.unique(ds.target)) == {0, 1}
    assert len(np.unique(ds.groups)) == 14
    assert ds.slm_success.dtype == bool and ds.llm_success.dtype == bool
    np.testing.assert_array_equal(ds.target, ~ds.slm_success & ds.llm_success)
    assert ds.frame is None
    assert "MMLU-Pro" in ds.DESCR
    assert ds.target.mean() == pytest.approx(3056 / n)


def test_as_frame_and_return_x_y():
    ds = load_mmlu_pro_cascade(as_frame=True)
    assert (
        isinstance(ds.data, pd.DataFrame) and list(ds.data.columns) == ds.feature_names
    )
    assert isinstance(ds.frame, pd.DataFrame) and "question_id" in ds.frame
    X, y = load_mmlu_pro_cascade(return_X_y=True)
    assert X.shape[0] == y.shape[0]
    X, y, g = load_mmlu_pro_cascade(return_X_y=True, return_groups=True, as_frame=True)
    assert g.name == "category" and len(g) == len(y)
    with pytest.raises(ValueError, match="'return_groups'"):
        load_mmlu_pro_cascade(return_groups=True)
    with pytest.raises(ValueError, match=r"'as_frame'.*bool"):
        load_mmlu_pro_cascade(as_frame="yes")


def test_missing_file_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("R2VCAL_DATA", str(tmp_path))
    assert get_data_home() == tmp_path
    with pytest.raises(FileNotFoundError, match="R2VCAL_DATA"):
        load_mmlu_pro_cascade()


def _router():
    try:
        from r2vcal import CVaRBrierRouter
    except ImportError:  # pragma: no cover - router not merged yet
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), False
    return CVaRBrierRouter(random_state=0), True


def test_router_beats_random_on_frontier_auc():
    ds = load_mmlu_pro_cascade()
    rng = np.random.default_rng(0)
    perm = rng.permutation(ds.target.size)
    train, test = perm[:8000], perm[8000:]
    # standardise with training statistics (the linear router is scale-sensitive)
    mu, sd = ds.data[train].mean(0), ds.data[train].std(0) + 1e-12
    X = (ds.data - mu) / sd
    router, takes_groups = _router()
    if takes_groups:
        router.fit(X[train], ds.target[train], groups=ds.groups[train])
    else:
        router.fit(X[train], ds.target[train])
    p = router.predict_proba(X[test])[:, 1]
    slm, llm, g = ds.slm_success[test], ds.llm_success[test], ds.groups[test]
    kw = {"groups": g, "cost_slm": 1.0, "cost_llm": 10.0}
    auc = frontier_auc(reliability_cost_frontier(p, slm, llm, **kw))
    from r2vcal import RandomRouter

    rand = RandomRouter(rate=0.3, random_state=0).fit(X[train], ds.target[train])
    auc_random = frontier_auc(
        reliability_cost_frontier(rand.predict_proba(X[test])[:, 1], slm, llm, **kw)
    )
    auc_oracle = frontier_auc(oracle_frontier(slm, llm, **kw))
    assert auc_random == pytest.approx((slm.mean() + llm.mean()) / 2)
    assert auc_random + 0.005 < auc < auc_oracle


# ------------------------------------------------------------- textworld_tiny
def test_textworld_tiny_shipped_tables():
    from r2vcal import CVaRBrierRouter
    from r2vcal.datasets import load_textworld_tiny
    from r2vcal.features import FEATURE_NAMES
    from r2vcal.schema import validate_table

    for subset in ("router", "test"):
        ds = load_textworld_tiny(subset=subset, as_frame=True)
        validate_table(ds.frame)
        assert list(ds.data.columns) == list(FEATURE_NAMES)
        assert np.isfinite(ds.data.to_numpy()).all()
        assert set(np.unique(ds.target)) <= {0, 1}
        # the counterfactual label is "teacher branch succeeds, SLM branch fails"
        np.testing.assert_array_equal(
            ds.target.to_numpy(bool), ds.llm_success & ~ds.slm_success
        )
        assert ds.groups.name == "seed"
        assert "TextWorld" in ds.DESCR
    router_seeds = set(load_textworld_tiny(as_frame=True).groups)
    test = load_textworld_tiny(subset="test", as_frame=True)
    assert router_seeds.isdisjoint(set(test.groups))  # held-out seeds
    target = "y_counterfactual"
    if (
        load_textworld_tiny().target.min() == 1
        or load_textworld_tiny().target.max() == 0
    ):
        target = "y_verifier"  # a weak SLM: one teacher step never rescues it
    X, y, g = load_textworld_tiny(target=target, return_X_y=True, return_groups=True)
    router = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    assert router.predict_proba(test.data).shape == (len(test.data), 2)


def test_textworld_tiny_bad_arguments(tmp_path):
    from r2vcal.datasets import load_textworld_tiny

    with pytest.raises(ValueError, match="'subset' parameter"):
        load_textworld_tiny(subset="train")
    with pytest.raises(ValueError, match="'target' parameter"):
        load_textworld_tiny(target="y")
    with pytest.raises(FileNotFoundError, match=r"pipelines\.demo --ship"):
        load_textworld_tiny(data_home=tmp_path)
