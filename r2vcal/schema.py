"""The contract of trajectory-feature tables: columns, dtypes, :func:`validate_table`.

A *trajectory-feature table* (Parquet, one row per agent step) is what the
pipelines write after rolling out the frozen SLM under many perturbation seeds,
and what ``r2vcal fit`` / :class:`r2vcal.CVaRBrierRouter` read. Every producer
validates its output with :func:`validate_table` before writing it; every
consumer validates what it reads.

Columns
-------
Identifiers (:data:`ID_COLUMNS`, required):

================= ======== ==================================================
column            dtype    meaning
================= ======== ==================================================
``episode_id``    str      one rollout (task x seed x repetition); unique key
                           of an episode together with ``step``
``task_id``       str      the task the episode solves
``seed``          int64    the perturbation seed z (the CVaR *group*)
``step``          int64    0-based step index, ``0 <= step < horizon``
``horizon``       int64    the episode's step limit, ``>= 1``
================= ======== ==================================================

Features (:data:`FEATURE_COLUMNS`, required): the columns
:data:`r2vcal.features.FEATURE_NAMES`, float64, finite (see
:class:`r2vcal.features.CandidateFeaturizer` for their definitions).

Labels (:data:`LABEL_COLUMNS`, int8 in {0, 1}; at least one is required when
``require_labels=True``):

``y_counterfactual``
    1 when escalating this step would have helped: replay the seeded episode to
    step t, then (a) let the SLM finish, (b) take the teacher's action at t and
    let the SLM finish; 1 when (b) succeeds and (a) fails. The best label.
``y_verifier``
    The cheaper verifier-comparison label of the R2V paper: 1 when the
    verifier scores the teacher's action above every SLM candidate by the
    pipeline's margin. Named as such so that it is never mistaken for the
    counterfactual one.

Episode outcomes (:data:`OUTCOME_COLUMNS`, bool, required with labels):
``slm_success`` (the SLM-only episode succeeded) and ``teacher_success`` (the
teacher-only episode succeeded), repeated on every step of the episode.

Optional columns (:data:`OPTIONAL_COLUMNS`):

``split`` (str)
    ``"train"``, ``"calib"``, ``"val"`` or ``"test"`` (see :data:`SPLITS`).
``slm_step_success``, ``llm_step_success`` (bool)
    Step-level outcomes for reliability-cost frontiers
    (:func:`r2vcal.frontier.reliability_cost_frontier`): the counterfactual
    branches (a) and (b) above. When present with ``y_counterfactual`` they must
    satisfy ``y_counterfactual == llm_step_success & ~slm_step_success``.

Other columns are allowed and kept (e.g. ``perturbation``, ``context_hash``).
``(episode_id, step)`` must be unique.

Featurizer input contract
-------------------------
The raw per-step input of :class:`r2vcal.features.CandidateFeaturizer` (before
it becomes a feature table) is a DataFrame with the columns
:data:`FEATURIZER_INPUT_COLUMNS`:

=================== ========================================================
column              value of one row
=================== ========================================================
``token_logprobs``  K sequences of T_k per-token log-probs (<= 0, finite)
``token_entropies`` optional: K sequences of T_k per-token entropies (>= 0)
``top_logprobs``    optional: K sequences of T_k lists of top-k log-probs
``verifier_scores`` K verifier scores in [0, 1]
``candidate_texts`` optional: K candidate action strings (or integer ids)
``episode_id``      episode key
``step``            0-based step index
``horizon``         step limit (> ``step``)
``context_length``  context length in tokens (>= 0)
``tool_error``      bool: the last tool call failed
``truncated``       bool: the observation was truncated
=================== ========================================================

``K`` is constant over steps; ``T_k`` may differ (ragged). Padded numpy arrays
go through :class:`r2vcal.features.StepBatch` instead (``token_logprobs`` of
shape (n, K, T) plus ``lengths`` (n, K)).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from r2vcal.features import FEATURE_NAMES
from r2vcal.features import INPUT_COLUMNS as FEATURIZER_INPUT_COLUMNS

__all__ = [
    "COLUMN_DTYPES",
    "FEATURE_COLUMNS",
    "FEATURIZER_INPUT_COLUMNS",
    "GROUP_COLUMN",
    "ID_COLUMNS",
    "LABEL_COLUMNS",
    "OPTIONAL_COLUMNS",
    "OUTCOME_COLUMNS",
    "SCHEMA_VERSION",
    "SPLITS",
    "STEP_OUTCOME_COLUMNS",
    "validate_table",
]

#: Version of this contract (bump on incompatible changes).
SCHEMA_VERSION = 1
#: Identifier columns.
ID_COLUMNS: tuple[str, ...] = ("episode_id", "task_id", "seed", "step", "horizon")
#: Feature columns (float64), in :data:`r2vcal.features.FEATURE_NAMES` order.
FEATURE_COLUMNS: tuple[str, ...] = FEATURE_NAMES
#: Label columns (int8 in {0, 1}).
LABEL_COLUMNS: tuple[str, ...] = ("y_counterfactual", "y_verifier")
#: Episode-level outcomes (bool).
OUTCOME_COLUMNS: tuple[str, ...] = ("slm_success", "teacher_success")
#: Step-level counterfactual outcomes (bool, optional), for frontiers.
STEP_OUTCOME_COLUMNS: tuple[str, ...] = ("slm_step_success", "llm_step_success")
#: Optional columns.
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", *STEP_OUTCOME_COLUMNS)
#: The column holding the CVaR groups.
GROUP_COLUMN = "seed"
#: Allowed values of ``split``.
SPLITS: tuple[str, ...] = ("train", "calib", "val", "test")

#: Target dtype of every known column ("str" means a string column).
COLUMN_DTYPES: dict[str, str] = {
    "episode_id": "str",
    "task_id": "str",
    "seed": "int64",
    "step": "int64",
    "horizon": "int64",
    **dict.fromkeys(FEATURE_COLUMNS, "float64"),
    **dict.fromkeys(LABEL_COLUMNS, "int8"),
    **dict.fromkeys(OUTCOME_COLUMNS, "bool"),
    **dict.fromkeys(STEP_OUTCOME_COLUMNS, "bool"),
    "split": "str",
}


def _first_row(df: pd.DataFrame, bad: np.ndarray) -> object:
    return df.index[int(np.flatnonzero(bad)[0])]


def _check_str(df: pd.DataFrame, col: str) -> pd.Series:
    s = df[col]
    missing = s.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"Column '{col}' must be str without missing values. Got "
            f"{int(missing.sum())} missing value(s), first at row "
            f"{_first_row(df, missing)!r}, instead."
        )
    is_str = pd.api.types.is_string_dtype(s.dtype)
    if is_str and s.dtype == object:
        is_str = bool(s.map(type).eq(str).all())
    if not is_str:
        raise ValueError(
            f"Column '{col}' must have dtype str. Got dtype {s.dtype} instead "
            f"(convert with df[{col!r}] = df[{col!r}].astype(str))."
        )
    return s


def _non_bool(s: pd.Series, is_kind: Callable[[Any], bool]) -> bool:
    """Whether ``s`` has a dtype of the kind ``is_kind`` tests, booleans excluded."""
    return not pd.api.types.is_bool_dtype(s.dtype) and is_kind(s.dtype)


def _check_int(df: pd.DataFrame, col: str) -> pd.Series:
    s = df[col]
    if not _non_bool(s, pd.api.types.is_integer_dtype):
        raise ValueError(
            f"Column '{col}' must have an integer dtype (int64). Got dtype "
            f"{s.dtype} instead."
        )
    if s.isna().any():
        raise ValueError(
            f"Column '{col}' must be int64 without missing values. Got "
            f"{int(s.isna().sum())} missing value(s) instead."
        )
    return s.astype(np.int64)


def _check_binary(df: pd.DataFrame, col: str, dtype: str) -> pd.Series:
    s = df[col]
    ok_dtype = pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_integer_dtype(
        s.dtype
    )
    if not ok_dtype:
        raise ValueError(
            f"Column '{col}' must be {dtype} with values in {{0, 1}}. Got dtype "
            f"{s.dtype} instead."
        )
    if s.isna().any():
        raise ValueError(
            f"Column '{col}' must be {dtype} with values in {{0, 1}}. Got "
            f"{int(s.isna().sum())} missing value(s) instead."
        )
    values = s.to_numpy().astype(np.int64)
    bad = (values != 0) & (values != 1)
    if bad.any():
        raise ValueError(
            f"Column '{col}' must be {dtype} with values in {{0, 1}}. Got "
            f"{values[bad][0]} at row {_first_row(df, bad)!r} instead."
        )
    return s.astype(np.int8 if dtype == "int8" else bool)


def _check_float(df: pd.DataFrame, col: str) -> pd.Series:
    s = df[col]
    if not _non_bool(s, pd.api.types.is_numeric_dtype):
        raise ValueError(
            f"Column '{col}' must have dtype float64. Got dtype {s.dtype} instead."
        )
    values = s.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f"Column '{col}' must be float64 with finite values. Got "
            f"{int(bad.sum())} NaN/inf value(s), first {values[bad][0]} at row "
            f"{_first_row(df, bad)!r}, instead."
        )
    return pd.Series(values, index=s.index, name=col)


def _missing_error(missing: list[str], present: Sequence[str], what: str) -> str:
    hints = []
    for m in missing:
        close = difflib.get_close_matches(m, present, n=1)
        if close:
            hints.append(f"Did you mean {close[0]!r} for {m!r}?")
    msg = f"The table is missing {what} column(s) {missing}."
    return msg + (" " + "; ".join(hints) if hints else "")


def _check_columns(
    df: pd.DataFrame, feats: tuple[str, ...], require_labels: bool
) -> None:
    """Unique column names; identifier, feature (and label/outcome) columns."""
    present = [str(c) for c in df.columns]
    dup = sorted({c for c in present if present.count(c) > 1})
    if dup:
        raise ValueError(f"The table has duplicated column name(s) {dup}.")
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(_missing_error(missing, present, "identifier"))
    missing = [c for c in feats if c not in df.columns]
    if missing:
        raise ValueError(_missing_error(missing, present, "feature"))
    if require_labels:
        if not any(c in df.columns for c in LABEL_COLUMNS):
            raise ValueError(
                "The table must have at least one label column among "
                f"{list(LABEL_COLUMNS)} (int8 in {{0, 1}}). Got none of them; "
                "pass require_labels=False for unlabelled tables."
            )
        missing = [c for c in OUTCOME_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(_missing_error(missing, present, "outcome"))


def _check_step_keys(df: pd.DataFrame, out: pd.DataFrame) -> None:
    """``0 <= step < horizon`` and unique ``(episode_id, step)`` pairs."""
    step = out["step"].to_numpy()
    horizon = out["horizon"].to_numpy()
    bad = (step < 0) | (horizon < 1) | (step >= horizon)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "Columns 'step' and 'horizon' must satisfy 0 <= step < horizon and "
            f"horizon >= 1. Got step {step[i]} with horizon {horizon[i]} at row "
            f"{df.index[i]!r} instead."
        )
    dup_keys = out.duplicated(subset=["episode_id", "step"]).to_numpy()
    if dup_keys.any():
        i = int(np.flatnonzero(dup_keys)[0])
        raise ValueError(
            "The pairs ('episode_id', 'step') must be unique. Got a repeated pair "
            f"({out['episode_id'].iloc[i]!r}, {step[i]}) at row {df.index[i]!r} "
            "instead."
        )


def validate_table(
    df: pd.DataFrame,
    *,
    require_labels: bool = True,
    feature_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Check a trajectory-feature table against the contract and coerce dtypes.

    Parameters
    ----------
    df : DataFrame
        One row per agent step, columns as documented in :mod:`r2vcal.schema`.
    require_labels : bool, default=True
        Require at least one label column and the episode outcomes. Use False
        for tables scored at inference time.
    feature_columns : sequence of str, default=None
        Feature columns to require. None means :data:`FEATURE_COLUMNS` (all of
        :data:`r2vcal.features.FEATURE_NAMES`).

    Returns
    -------
    table : DataFrame
        A copy with the contract's dtypes (ints as int64, features float64,
        labels int8, outcomes bool). Unknown columns are kept unchanged.

    Raises
    ------
    TypeError
        If ``df`` is not a DataFrame.
    ValueError
        Naming the column, the expected dtype or range, and what was found.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from r2vcal.schema import FEATURE_COLUMNS, validate_table
    >>> df = pd.DataFrame({
    ...     "episode_id": ["e0", "e0"], "task_id": ["t0", "t0"],
    ...     "seed": [3, 3], "step": [0, 1], "horizon": [10, 10],
    ...     **{f: [0.0, 0.5] for f in FEATURE_COLUMNS},
    ...     "y_counterfactual": [0, 1],
    ...     "slm_success": [False, False], "teacher_success": [True, True],
    ... })
    >>> validate_table(df)["y_counterfactual"].dtype
    dtype('int8')
    >>> validate_table(df.rename(columns={"seed": "seeds"}))
    Traceback (most recent call last):
    ...
    ValueError: The table is missing identifier column(s) ['seed']. Did you mean 'seeds' for 'seed'?
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            "validate_table expects a pandas DataFrame. Got "
            f"{type(df).__name__} instead."
        )
    feats = FEATURE_COLUMNS if feature_columns is None else tuple(feature_columns)
    _check_columns(df, feats, require_labels)
    if len(df) == 0:
        raise ValueError("The table must have at least one row. Got 0 rows instead.")

    out = df.copy()
    for col in ("episode_id", "task_id"):
        out[col] = _check_str(df, col)
    for col in ("seed", "step", "horizon"):
        out[col] = _check_int(df, col)
    _check_step_keys(df, out)
    for col in feats:
        out[col] = _check_float(df, col)
    for col in LABEL_COLUMNS:
        if col in df.columns:
            out[col] = _check_binary(df, col, "int8")
    for col in (*OUTCOME_COLUMNS, *STEP_OUTCOME_COLUMNS):
        if col in df.columns:
            out[col] = _check_binary(df, col, "bool")
    if "split" in df.columns:
        split = _check_str(df, "split")
        bad = ~split.isin(SPLITS).to_numpy()
        if bad.any():
            raise ValueError(
                f"Column 'split' must take values in {list(SPLITS)}. Got "
                f"{split[bad].iloc[0]!r} at row {_first_row(df, bad)!r} instead."
            )
    if all(c in out.columns for c in (*STEP_OUTCOME_COLUMNS, "y_counterfactual")):
        implied = out["llm_step_success"] & ~out["slm_step_success"]
        bad = (out["y_counterfactual"].astype(bool) != implied).to_numpy()
        if bad.any():
            raise ValueError(
                "Column 'y_counterfactual' must equal llm_step_success & "
                f"~slm_step_success. Got {int(bad.sum())} disagreeing row(s), first "
                f"at row {_first_row(df, bad)!r}, instead."
            )
    return out
