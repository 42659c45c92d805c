"""Tests for r2vcal.features: hand-computed values, input paths, errors, fuzzing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from r2vcal.features import (
    FEATURE_INPUTS,
    FEATURE_NAMES,
    INPUT_COLUMNS,
    CandidateFeaturizer,
    StepBatch,
)

# Rows in the order B, C, A (see `expected`), to exercise the trend's sorting.
STEPS = pd.DataFrame(
    {
        "token_logprobs": [
            [[-0.1, -0.1, -0.1], [-0.3]],
            [[-1.0], [-1.0]],
            [[-0.5, -1.5], [-2.0]],
        ],
        "verifier_scores": [[0.4, 0.5], [0.3, 0.3], [0.8, 0.2]],
        "candidate_texts": [["x", "y"], ["z", "z"], ["a", " a "]],
        "episode_id": ["e1", "e2", "e1"],
        "step": [1, 0, 0],
        "horizon": [4, 2, 4],
        "context_length": [0, 10, 99],
        "tool_error": [True, False, False],
        "truncated": [False, False, True],
    },
    index=[10, 11, 12],
)

EXPECTED = {  # hand-computed, row order B, C, A
    "entropy_mean": [0.2, 1.0, 1.5],
    "entropy_max": [0.3, 1.0, 2.0],
    "logprob_mean": [-0.2, -1.0, -1.5],
    "logprob_min": [-0.3, -1.0, -2.0],
    "logprob_chosen": [-0.3, -1.0, -1.0],
    "verifier_max": [0.5, 0.3, 0.8],
    "verifier_mean": [0.45, 0.3, 0.5],
    "verifier_std": [0.05, 0.0, 0.3],
    "verifier_spread": [0.1, 0.0, 0.6],
    "verifier_margin": [0.1, 0.0, 0.6],
    "agreement": [0.5, 1.0, 1.0],
    "step_index": [1.0, 0.0, 0.0],
    "step_fraction": [0.25, 0.0, 0.0],
    "log_context_length": [0.0, np.log(11.0), np.log(100.0)],
    "verifier_trend": [0.5 - 0.8, 0.0, 0.0],
    "tool_error": [1.0, 0.0, 0.0],
    "truncated": [0.0, 0.0, 1.0],
    "log_mean_length": [np.log(2.0), 0.0, np.log(1.5)],
}


def padded_batch(pad_value: float = np.nan) -> StepBatch:
    lp = np.full((3, 2, 3), pad_value)
    lp[0, 0, :3] = -0.1
    lp[0, 1, 0] = -0.3
    lp[1, :, 0] = -1.0
    lp[2, 0, :2] = [-0.5, -1.5]
    lp[2, 1, 0] = -2.0
    return StepBatch(
        token_logprobs=lp,
        lengths=np.array([[3, 1], [1, 1], [2, 1]]),
        verifier_scores=np.array([[0.4, 0.5], [0.3, 0.3], [0.8, 0.2]]),
        candidate_texts=np.array([["x", "y"], ["z", "z"], ["a", " a "]], dtype=object),
        episode_id=np.array(["e1", "e2", "e1"], dtype=object),
        step=np.array([1, 0, 0]),
        horizon=np.array([4, 2, 4]),
        context_length=np.array([0, 10, 99]),
        tool_error=np.array([True, False, False]),
        truncated=np.array([0, 0, 1]),
    )


def test_feature_names_contract():
    assert len(FEATURE_NAMES) >= 15
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(FEATURE_INPUTS) == set(FEATURE_NAMES)
    assert {c for cols in FEATURE_INPUTS.values() for c in cols} <= set(INPUT_COLUMNS)


def test_hand_computed_example_dataframe():
    out = CandidateFeaturizer().set_output(transform="pandas").fit_transform(STEPS)
    assert list(out.columns) == list(FEATURE_NAMES)
    assert list(out.index) == [10, 11, 12]
    for name, values in EXPECTED.items():
        np.testing.assert_allclose(out[name], values, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("pad", [np.nan, 5.0, -np.inf, 0.0])
def test_padded_arrays_match_dataframe(pad):
    """Padding values are ignored whatever they are (NaN, positive, -inf)."""
    fz = CandidateFeaturizer()
    expected = fz.transform(STEPS)
    got = fz.transform(padded_batch(pad))
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_float32_input_close_to_float64():
    b = padded_batch(0.0)
    b32 = StepBatch(
        **{**b.__dict__, "token_logprobs": b.token_logprobs.astype(np.float32)}
    )
    fz = CandidateFeaturizer()
    got = fz.transform(b32)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, fz.transform(b), atol=1e-6)


def test_token_entropies_used_when_given():
    df = STEPS.assign(
        token_entropies=[[[1.0, 2.0, 3.0], [4.0]], [[0.5], [1.5]], [[0.0, 0.0], [9.0]]]
    )
    out = CandidateFeaturizer(features=["entropy_mean", "entropy_max"]).transform(df)
    np.testing.assert_allclose(out[:, 0], [(2.0 + 4.0) / 2, 1.0, 4.5])
    np.testing.assert_allclose(out[:, 1], [4.0, 1.5, 9.0])


def test_entropy_from_top_logprobs():
    # one step, one candidate, one token: top-2 probs 0.5, 0.25 + residual 0.25
    top = np.log(np.array([0.5, 0.25]))
    df = pd.DataFrame(
        {"token_logprobs": [[[np.log(0.5)]]], "top_logprobs": [[[list(top)]]]}
    )
    out = CandidateFeaturizer(features=["entropy_mean"]).transform(df)
    h = -(0.5 * np.log(0.5) + 0.25 * np.log(0.25) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(out[:, 0], [h])
    # padded ragged top-k: the missing alternative is -inf (probability 0)
    df2 = pd.DataFrame(
        {
            "token_logprobs": [[[-0.1, -0.2]]],
            "top_logprobs": [[[[np.log(0.9)], [np.log(0.5), np.log(0.5)]]]],
        }
    )
    out2 = CandidateFeaturizer(features=["entropy_max"]).transform(df2)
    np.testing.assert_allclose(out2[:, 0], [np.log(2.0)])


def test_integer_action_ids_for_agreement():
    b = padded_batch()
    ids = StepBatch(
        **{**b.__dict__, "candidate_texts": np.array([[1, 2], [3, 3], [4, 4]])}
    )
    out = CandidateFeaturizer(features=["agreement"]).transform(ids)
    np.testing.assert_allclose(out[:, 0], [0.5, 1.0, 1.0])


def test_trend_is_row_order_invariant():
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame(
        {
            "verifier_scores": list(rng.random((n, 3))),
            "episode_id": np.repeat(["a", "b", "c"], 20),
            "step": np.tile(np.arange(20), 3),
        }
    )
    fz = CandidateFeaturizer(features=["verifier_trend"], trend_window=2)
    base = fz.transform(df)
    perm = rng.permutation(n)
    shuffled = fz.transform(df.iloc[perm])
    np.testing.assert_allclose(shuffled, base[perm])
    vmax = np.array([v.max() for v in df["verifier_scores"]])
    # step 5 of episode "a": vmax[5] - mean(vmax[3], vmax[4])
    assert base[5, 0] == pytest.approx(vmax[5] - (vmax[3] + vmax[4]) / 2)
    assert base[20, 0] == 0.0  # first step of episode "b"


def test_subset_and_names():
    fz = CandidateFeaturizer(features=["verifier_max", "entropy_mean"])
    # output follows FEATURE_NAMES order
    assert list(fz.get_feature_names_out()) == ["entropy_mean", "verifier_max"]
    only_verifier = STEPS[["verifier_scores"]]
    out = CandidateFeaturizer(features=["verifier_max"]).fit(only_verifier)
    assert out.n_features_out_ == 1


def test_sklearn_plumbing():
    fz = CandidateFeaturizer(trend_window=5)
    c = clone(fz)
    assert c.get_params() == {"features": None, "trend_window": 5}
    tags = fz.__sklearn_tags__()
    assert tags.requires_fit is False
    assert tags.input_tags.two_d_array is False
    # transform without fit (stateless)
    assert CandidateFeaturizer().transform(STEPS).shape == (3, len(FEATURE_NAMES))
    pipe = make_pipeline(CandidateFeaturizer(), LogisticRegression())
    pipe.fit(STEPS, [0, 1, 1])
    assert pipe.predict_proba(STEPS).shape == (3, 2)


def test_bad_parameters():
    with pytest.raises(ValueError, match="did you mean 'verifier_max'"):
        CandidateFeaturizer(features=["verifer_max"]).transform(STEPS)
    with pytest.raises(ValueError, match="trend_window"):
        CandidateFeaturizer(trend_window=0).transform(STEPS)
    with pytest.raises(ValueError, match="at least one feature"):
        CandidateFeaturizer(features=[]).transform(STEPS)


def _with(col, value, row=0):
    df = STEPS.copy()
    df[col] = df[col].astype(object)
    df.at[df.index[row], col] = value
    return df


@pytest.mark.parametrize(
    "df, match",
    [
        (
            _with("token_logprobs", [[-0.1], [-0.2], [-0.3]]),
            "same number of candidates",
        ),
        (_with("token_logprobs", [[-0.1, np.nan], [-0.2]]), "'token_logprobs'.*NaN"),
        (_with("token_logprobs", [[-0.1, 0.5], [-0.2]]), "'token_logprobs'.*<= 0"),
        (_with("token_logprobs", [[-0.1, np.inf], [-0.2]]), "'token_logprobs'"),
        (_with("token_logprobs", [[], [-0.2]]), "'lengths'.*at least one token"),
        (_with("token_logprobs", None), "'token_logprobs'.*missing"),
        (_with("token_logprobs", [["a"], ["b"]]), "'token_logprobs'.*list"),
        (_with("verifier_scores", [1.2, 0.1]), "'verifier_scores'.*\\[0, 1\\]"),
        (_with("verifier_scores", [-0.1, 0.1]), "'verifier_scores'"),
        (_with("verifier_scores", [np.nan, 0.1]), "'verifier_scores'.*NaN"),
        (_with("verifier_scores", [0.1, 0.2, 0.3]), "'verifier_scores'"),
        (_with("candidate_texts", ["a", None]), "'candidate_texts'"),
        (_with("step", 7), "'horizon'.*greater than 'step'"),
        (_with("step", -1), "'step'"),
        (_with("context_length", -3), "'context_length'"),
        (_with("tool_error", 2), "'tool_error'"),
        (_with("step", 0, row=0), "unique"),
    ],
)
def test_bad_input_names_field(df, match):
    with pytest.raises(ValueError, match=match):
        CandidateFeaturizer().transform(df)


def test_bad_input_other():
    with pytest.raises(ValueError, match=r"'candidate_texts'.*CandidateFeaturizer"):
        CandidateFeaturizer().transform(STEPS.drop(columns="candidate_texts"))
    with pytest.raises(TypeError, match="DataFrame"):
        CandidateFeaturizer().transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least one step"):
        CandidateFeaturizer().transform(STEPS.iloc[:0])
    neg = STEPS.assign(
        token_entropies=[[[1.0, -2.0, 0.0], [1.0]], [[1.0], [1.0]], [[1.0, 1.0], [1.0]]]
    )
    with pytest.raises(ValueError, match=r"'token_entropies'.*>= 0"):
        CandidateFeaturizer().transform(neg)
    big = pd.DataFrame(
        {"token_logprobs": [[[-0.1]]], "top_logprobs": [[[[-0.1, -0.2]]]]}
    )
    with pytest.raises(ValueError, match=r"'top_logprobs'.*at most 1"):
        CandidateFeaturizer(features=["entropy_mean"]).transform(big)
    b = padded_batch()
    ragged = StepBatch(
        **{**b.__dict__, "verifier_scores": [[0.1, 0.2], [0.3], [0.4, 0.5]]}
    )
    with pytest.raises(ValueError, match="'verifier_scores'"):
        CandidateFeaturizer().transform(ragged)
    wrong_k = StepBatch(**{**b.__dict__, "verifier_scores": np.full((3, 3), 0.5)})
    with pytest.raises(ValueError, match=r"leading shape.*'verifier_scores'"):
        CandidateFeaturizer().transform(wrong_k)
    bad_len = StepBatch(**{**b.__dict__, "lengths": np.array([[4, 1], [1, 1], [1, 1]])})
    with pytest.raises(ValueError, match="'lengths'"):
        CandidateFeaturizer().transform(bad_len)


def test_import_is_light():
    code = (
        "import sys, r2vcal.features, r2vcal.schema, r2vcal.frontier, "
        "r2vcal.datasets; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- #
# Hypothesis: random shapes and values -> a finite result or a clear ValueError
# ----------------------------------------------------------------------------- #
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-5, 0),
)


@st.composite
def step_batches(draw):
    n = draw(st.integers(0, 6))
    k = draw(st.integers(0, 4))
    t = draw(st.integers(0, 5))
    lp = draw(hnp.arrays(np.float64, (n, k, t), elements=floats))
    lengths = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(-1, t + 1)))
    v = draw(
        hnp.arrays(np.float64, (n, k), elements=st.one_of(st.floats(0, 1), floats))
    )
    ent = draw(st.none() | hnp.arrays(np.float64, (n, k, t), elements=floats))
    steps = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, 4)))
    horizon = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 6)))
    ctx = draw(hnp.arrays(np.float64, (n,), elements=floats))
    texts = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 2)))
    ep = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    flag = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    return StepBatch(
        token_logprobs=lp,
        lengths=lengths,
        verifier_scores=v,
        token_entropies=ent,
        candidate_texts=texts,
        episode_id=ep,
        step=steps,
        horizon=horizon,
        context_length=ctx,
        tool_error=flag,
        truncated=np.zeros(n, dtype=bool),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step_batches())
def test_fuzz_step_batch(batch):
    try:
        out = CandidateFeaturizer().transform(batch)
    except ValueError as exc:
        assert str(exc)
        return
    assert out.shape == (batch.n_steps, len(FEATURE_NAMES))
    assert np.isfinite(out).all()


ragged_candidates = st.lists(
    st.lists(st.one_of(st.floats(-3, 0), floats), min_size=0, max_size=4),
    min_size=0,
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            ragged_candidates,
            st.lists(st.one_of(st.floats(-0.5, 1.5), st.just(np.nan)), max_size=3),
            st.lists(st.sampled_from(["a", "b", " a"]), min_size=0, max_size=3),
        ),
        min_size=0,
        max_size=5,
    )
)
def test_fuzz_dataframe_of_lists(rows):
    n = len(rows)
    df = pd.DataFrame(
        {
            "token_logprobs": [r[0] for r in rows],
            "verifier_scores": [r[1] for r in rows],
            "candidate_texts": [r[2] for r in rows],
            "episode_id": ["e"] * n,
            "step": np.arange(n),
            "horizon": np.full(n, 10),
            "context_length": np.full(n, 3),
            "tool_error": np.zeros(n, dtype=bool),
            "truncated": np.zeros(n, dtype=bool),
        }
    )
    try:
        out = CandidateFeaturizer().transform(df)
    except ValueError as exc:
        assert str(exc)
        return
    assert out.shape == (n, len(FEATURE_NAMES))
    assert np.isfinite(out).all()
