"""Tests for r2vcal.schema.validate_table and the column constants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from r2vcal.features import FEATURE_NAMES
from r2vcal.schema import (
    COLUMN_DTYPES,
    FEATURE_COLUMNS,
    FEATURIZER_INPUT_COLUMNS,
    GROUP_COLUMN,
    ID_COLUMNS,
    LABEL_COLUMNS,
    OUTCOME_COLUMNS,
    STEP_OUTCOME_COLUMNS,
    validate_table,
)


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 12
    slm_step = rng.random(n) < 0.5
    llm_step = rng.random(n) < 0.7
    return pd.DataFrame(
        {
            "episode_id": np.repeat(["e0", "e1", "e2"], 4),
            "task_id": np.repeat(["t0", "t0", "t1"], 4),
            "seed": np.repeat(np.array([0, 1, 0], dtype=np.int32), 4),
            "step": np.tile(np.arange(4), 3),
            "horizon": np.full(n, 8),
            **{f: rng.random(n) for f in FEATURE_COLUMNS},
            "y_counterfactual": (llm_step & ~slm_step).astype(int),
            "y_verifier": rng.integers(0, 2, n).astype(bool),
            "slm_success": np.repeat([True, False, False], 4),
            "teacher_success": np.ones(n, dtype=bool),
            "slm_step_success": slm_step,
            "llm_step_success": llm_step,
            "split": np.repeat(["train", "calib", "test"], 4),
            "extra": np.arange(n),
        }
    )


def test_constants():
    assert FEATURE_COLUMNS == FEATURE_NAMES
    assert GROUP_COLUMN in ID_COLUMNS
    for col in (*ID_COLUMNS, *FEATURE_COLUMNS, *LABEL_COLUMNS, *OUTCOME_COLUMNS):
        assert col in COLUMN_DTYPES
    assert "token_logprobs" in FEATURIZER_INPUT_COLUMNS
    assert set(STEP_OUTCOME_COLUMNS) <= set(COLUMN_DTYPES)


def test_valid_table_coerced(table):
    out = validate_table(table)
    assert out["seed"].dtype == np.int64
    assert out["y_counterfactual"].dtype == np.int8
    assert out["y_verifier"].dtype == np.int8
    assert out["slm_step_success"].dtype == bool
    assert all(out[f].dtype == np.float64 for f in FEATURE_COLUMNS)
    assert "extra" in out
    assert table["seed"].dtype == np.int32  # input untouched


def test_parquet_round_trip(table, tmp_path):
    path = tmp_path / "t.parquet"
    validate_table(table).to_parquet(path)
    back = validate_table(pd.read_parquet(path))
    pd.testing.assert_frame_equal(back, validate_table(table), check_dtype=False)


def test_unlabelled_table(table):
    bare = table.drop(columns=[*LABEL_COLUMNS, *OUTCOME_COLUMNS])
    with pytest.raises(ValueError, match="at least one label column"):
        validate_table(bare)
    validate_table(bare, require_labels=False)


def test_feature_subset(table):
    sub = table.drop(columns=["agreement"])
    with pytest.raises(
        ValueError, match=r"missing feature column\(s\) \['agreement'\]"
    ):
        validate_table(sub)
    validate_table(
        sub, feature_columns=[f for f in FEATURE_COLUMNS if f != "agreement"]
    )


def _set(table, col, values):
    t = table.copy()
    t[col] = values
    return t


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t.drop(columns="seed"), r"identifier column\(s\) \['seed'\]"),
        (
            lambda t: t.rename(columns={"step": "steps"}),
            "Did you mean 'steps' for 'step'",
        ),
        (lambda t: t.drop(columns="slm_success"), "slm_success"),
        (lambda t: _set(t, "episode_id", np.arange(12)), "'episode_id'.*dtype str"),
        (lambda t: _set(t, "task_id", [None] + ["t"] * 11), "'task_id'.*missing"),
        (lambda t: _set(t, "seed", np.zeros(12)), "'seed'.*integer"),
        (lambda t: _set(t, "step", np.full(12, 9)), "0 <= step < horizon"),
        (lambda t: _set(t, "step", np.zeros(12, dtype=int)), "unique"),
        (
            lambda t: _set(t, "entropy_mean", [np.nan] + [0.0] * 11),
            "'entropy_mean'.*finite",
        ),
        (lambda t: _set(t, "entropy_mean", ["a"] * 12), "'entropy_mean'.*float64"),
        (lambda t: _set(t, "y_verifier", np.full(12, 2)), "'y_verifier'.*\\{0, 1\\}"),
        (lambda t: _set(t, "y_verifier", np.full(12, 0.5)), "'y_verifier'"),
        (lambda t: _set(t, "slm_success", ["yes"] * 12), "'slm_success'"),
        (lambda t: _set(t, "split", ["training"] * 12), "'split'.*train"),
        (
            lambda t: _set(t, "y_counterfactual", 1 - t["y_counterfactual"]),
            "llm_step_success & ~slm_step_success",
        ),
        (lambda t: t.iloc[:0], "at least one row"),
    ],
)
def test_errors_name_the_column(table, mutate, match):
    with pytest.raises(ValueError, match=match):
        validate_table(mutate(table))


def test_not_a_dataframe():
    with pytest.raises(TypeError, match="DataFrame"):
        validate_table({"a": [1]})
