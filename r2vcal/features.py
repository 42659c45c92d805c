"""Step features from K sampled candidates: :class:`CandidateFeaturizer`.

At every agent step the small model samples ``K`` candidate actions; a process
verifier scores them. :class:`CandidateFeaturizer` turns those candidates, their
per-token log-probabilities and the step context into the fixed, named feature
vector :data:`FEATURE_NAMES` that a router (``r2vcal.CVaRBrierRouter``) reads.

Input contract
--------------
``transform`` accepts either a :class:`pandas.DataFrame` with one row per step,
or a :class:`StepBatch` of padded numpy arrays. The DataFrame columns are
(``n`` steps, ``K`` candidates, ``T_k`` tokens of candidate ``k``):

=================== ============================== ===================================
column              value of one row               meaning
=================== ============================== ===================================
``token_logprobs``  K sequences of T_k floats      log-probability of each sampled
                                                   token (<= 0, finite); ragged in T
``token_entropies`` K sequences of T_k floats      optional: entropy of the next-token
                                                   distribution at each token (>= 0)
``top_logprobs``    K sequences of T_k sequences   optional: top-k log-probs at each
                    of k floats                    token (entropy is computed from
                                                   them when ``token_entropies`` is
                                                   absent)
``verifier_scores`` K floats in [0, 1]             process-verifier score per candidate
``candidate_texts`` K str                          optional: the candidate actions
                                                   (only for ``agreement``)
``episode_id``      hashable scalar                episode key (for ``verifier_trend``)
``step``            int >= 0                       0-based step index in the episode
``horizon``         int > ``step``                 the episode's step limit
``context_length``  number >= 0                    prompt/context length in tokens
``tool_error``      bool or {0, 1}                 the last tool call failed
``truncated``       bool or {0, 1}                 the observation was truncated
=================== ============================== ===================================

``K`` must be the same for every step (pad candidates yourself if your sampler
returned fewer). Cells may be lists, tuples or 1-d numpy arrays; the ragged token
dimension needs no padding. A column only has to be present when a selected
feature needs it (see :data:`FEATURE_INPUTS`). Extra columns are ignored.

Entropy source, in order of preference: ``token_entropies``; else the entropy of
the renormalised top-k distribution plus its residual mass (a lower bound of the
true entropy); else the surprisal ``-token_logprobs`` (an unbiased one-sample
estimate of the entropy when candidates are sampled at temperature 1).

This module imports numpy, pandas, pyarrow and scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Integral, Interval

__all__ = [
    "ENTROPY_TOP_N",
    "FEATURE_INPUTS",
    "FEATURE_NAMES",
    "INPUT_COLUMNS",
    "CandidateFeaturizer",
    "StepBatch",
    "topn_entropy",
]

#: Number of top log-probs per token that token entropies are computed from,
#: on every backend (local transformers, vLLM, OpenAI-compatible servers,
#: ``r2vcal serve``). Servers return at most 20 and often 5; a full-vocabulary
#: entropy on one backend and a top-5 one on another would give the router
#: different features for the same model (5.69 vs 1.57 nats on one tiny model).
ENTROPY_TOP_N = 5

#: The default named feature set, in output order.
FEATURE_NAMES: tuple[str, ...] = (
    "entropy_mean",
    "entropy_max",
    "logprob_mean",
    "logprob_min",
    "logprob_chosen",
    "verifier_max",
    "verifier_mean",
    "verifier_std",
    "verifier_spread",
    "verifier_margin",
    "agreement",
    "step_index",
    "step_fraction",
    "log_context_length",
    "verifier_trend",
    "tool_error",
    "truncated",
    "log_mean_length",
)

#: Input columns (DataFrame) / fields (:class:`StepBatch`) each feature needs.
FEATURE_INPUTS: dict[str, tuple[str, ...]] = {
    "entropy_mean": ("token_logprobs",),
    "entropy_max": ("token_logprobs",),
    "logprob_mean": ("token_logprobs",),
    "logprob_min": ("token_logprobs",),
    "logprob_chosen": ("token_logprobs", "verifier_scores"),
    "verifier_max": ("verifier_scores",),
    "verifier_mean": ("verifier_scores",),
    "verifier_std": ("verifier_scores",),
    "verifier_spread": ("verifier_scores",),
    "verifier_margin": ("verifier_scores",),
    "agreement": ("candidate_texts",),
    "step_index": ("step",),
    "step_fraction": ("step", "horizon"),
    "log_context_length": ("context_length",),
    "verifier_trend": ("verifier_scores", "episode_id", "step"),
    "tool_error": ("tool_error",),
    "truncated": ("truncated",),
    "log_mean_length": ("token_logprobs",),
}

#: Every input column the featurizer understands.
INPUT_COLUMNS: tuple[str, ...] = (
    "token_logprobs",
    "token_entropies",
    "top_logprobs",
    "verifier_scores",
    "candidate_texts",
    "episode_id",
    "step",
    "horizon",
    "context_length",
    "tool_error",
    "truncated",
)

# Log-probabilities up to this value are accepted (float rounding) and clipped to 0.
_LOGPROB_TOL = 1e-6
# Top-k probabilities may sum to at most 1 + this.
_PROB_SUM_TOL = 1e-4


@dataclass(frozen=True)
class StepBatch:
    """Padded numpy arrays describing ``n`` steps with ``K`` candidates each.

    All fields are optional; a field only has to be given when a selected
    feature needs it (see :data:`FEATURE_INPUTS`).

    Parameters
    ----------
    token_logprobs : ndarray of shape (n, K, T)
        Per-token log-probabilities, padded along the last axis. Values past
        ``lengths`` are ignored (they may be anything, NaN included).
    lengths : ndarray of shape (n, K), default=None
        Number of valid tokens of each candidate, in ``[1, T]``. None means every
        candidate has ``T`` tokens.
    verifier_scores : ndarray of shape (n, K), default=None
        Verifier score per candidate, in ``[0, 1]``.
    token_entropies : ndarray of shape (n, K, T), default=None
        Per-token entropies (>= 0), padded like ``token_logprobs``.
    top_logprobs : ndarray of shape (n, K, T, k), default=None
        Top-k log-probabilities per token; pad missing alternatives with ``-inf``.
    candidate_texts : array-like of shape (n, K), default=None
        Candidate action strings.
    episode_id, step, horizon, context_length, tool_error, truncated : \
array-like of shape (n,), default=None
        Step context, as in the DataFrame contract of :mod:`r2vcal.features`.

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.features import StepBatch
    >>> batch = StepBatch(
    ...     token_logprobs=np.full((2, 3, 4), -0.5),
    ...     lengths=np.array([[4, 2, 1], [3, 3, 3]]),
    ...     verifier_scores=np.array([[0.9, 0.2, 0.4], [0.5, 0.5, 0.1]]),
    ... )
    >>> batch.n_steps, batch.n_candidates
    (2, 3)
    """

    token_logprobs: Any = None
    lengths: Any = None
    verifier_scores: Any = None
    token_entropies: Any = None
    top_logprobs: Any = None
    candidate_texts: Any = None
    episode_id: Any = None
    step: Any = None
    horizon: Any = None
    context_length: Any = None
    tool_error: Any = None
    truncated: Any = None

    @property
    def n_steps(self) -> int:
        """Number of steps ``n`` (first dimension of the first field given)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return int(np.shape(value)[0]) if np.ndim(value) else 0
        return 0

    @property
    def n_candidates(self) -> int | None:
        """Number of candidates ``K``, or None when no per-candidate field is set."""
        if isinstance(self.candidate_texts, pa.FixedSizeListArray):
            return int(self.candidate_texts.type.list_size)
        for name in ("token_logprobs", "verifier_scores", "candidate_texts"):
            value = getattr(self, name)
            if value is not None and np.ndim(value) >= 2:
                return int(np.shape(value)[1])
        return None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> StepBatch:
        """Build a zero-padded batch from a DataFrame with list-valued columns.

        The conversion runs in pyarrow (no Python loop per step).

        Parameters
        ----------
        frame : DataFrame
            One row per step, columns as in the :mod:`r2vcal.features` contract.

        Returns
        -------
        batch : StepBatch

        Examples
        --------
        >>> import pandas as pd
        >>> from r2vcal.features import StepBatch
        >>> df = pd.DataFrame({
        ...     "token_logprobs": [[[-0.1, -0.2], [-1.0]], [[-0.3], [-0.4, -0.5]]],
        ...     "verifier_scores": [[0.9, 0.1], [0.6, 0.7]],
        ... })
        >>> batch = StepBatch.from_frame(df)
        >>> batch.token_logprobs.shape, batch.lengths.tolist()
        ((2, 2, 2), [[2, 1], [1, 2]])
        """
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                "StepBatch.from_frame expects a pandas DataFrame. "
                f"Got {type(frame).__name__} instead."
            )
        kw: dict[str, Any] = {}
        if "token_logprobs" in frame:
            values, lengths, k = _ragged_3d(frame["token_logprobs"], "token_logprobs")
            kw["token_logprobs"], kw["lengths"] = values, lengths
        else:
            k = None
        per_token = {"token_entropies": _ragged_3d, "top_logprobs": _ragged_4d}
        for col, ragged in per_token.items():
            if col not in frame:
                continue
            if "token_logprobs" not in frame:
                raise ValueError(
                    f"Column '{col}' needs column 'token_logprobs' "
                    "(token counts are taken from it)."
                )
            values, col_len, k_col = ragged(frame[col], col)
            _check_same_lengths(col_len, kw["lengths"], col, k_col, k)
            kw[col] = values
        if "verifier_scores" in frame:
            kw["verifier_scores"] = _ragged_2d(
                frame["verifier_scores"], "verifier_scores", numeric=True
            )
        if "candidate_texts" in frame:
            kw["candidate_texts"] = _ragged_2d(
                frame["candidate_texts"], "candidate_texts", numeric=False
            )
        for name in ("episode_id", "step", "horizon", "context_length"):
            if name in frame:
                kw[name] = frame[name].to_numpy()
        for name in ("tool_error", "truncated"):
            if name in frame:
                kw[name] = frame[name].to_numpy()
        return cls(**kw)


# --------------------------------------------------------------------------- #
# Ragged list columns -> padded numpy, via pyarrow (vectorised)
# --------------------------------------------------------------------------- #
def _to_arrow(column: pd.Series, name: str) -> pa.Array:
    values = column.to_numpy(dtype=object)
    try:
        arr = pa.array(values, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as first:
        # Cells that pyarrow cannot read directly (e.g. 2-d ndarrays): one
        # conversion per cell, then the same vectorised path.
        try:
            arr = pa.array(
                [None if v is None else np.asarray(v).tolist() for v in values],
                from_pandas=False,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            raise ValueError(
                f"Column '{name}' must hold one list (or array) of numbers per "
                f"step, nested as documented. Got values pyarrow cannot read "
                f"({first}) instead."
            ) from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr


def _list_level(arr: pa.Array, name: str, what: str) -> tuple[np.ndarray, pa.Array]:
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ValueError(
            f"Column '{name}' must hold {what}. Got elements of Arrow type "
            f"{arr.type} instead."
        )
    if arr.null_count:
        raise ValueError(
            f"Column '{name}' has {arr.null_count} missing (None) entries where "
            f"{what} were expected."
        )
    lengths = arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, arr.flatten()


def _leaf_numeric(arr: pa.Array, name: str) -> np.ndarray:
    if pa.types.is_null(arr.type) and len(arr) == 0:
        return np.empty(0)
    if not (
        pa.types.is_floating(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        raise ValueError(
            f"Column '{name}' must contain numbers. Got Arrow type {arr.type} instead."
        )
    if arr.null_count:
        raise ValueError(
            f"Column '{name}' has {arr.null_count} missing (None) values; "
            "use finite numbers."
        )
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)


def _constant_k(k_per_step: np.ndarray, name: str) -> int:
    if k_per_step.size == 0:
        return 0
    k = int(k_per_step[0])
    bad = np.flatnonzero(k_per_step != k)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"Column '{name}' must have the same number of candidates K at every "
            f"step. Got {k} at row 0 and {int(k_per_step[i])} at row {i} instead; "
            "pad the candidates so every step has the same K."
        )
    if k == 0:
        raise ValueError(f"Column '{name}' must have at least one candidate per step.")
    return k


def _scatter_pad(
    flat: np.ndarray, lengths: np.ndarray, width: int, fill: float
) -> np.ndarray:
    """Scatter ``flat`` (concatenated rows of ``lengths``) into (len, width)."""
    out = np.full((lengths.size, width), fill, dtype=np.float64)
    if flat.size:
        rows = np.repeat(np.arange(lengths.size), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(flat.size) - np.repeat(starts, lengths)
        out[rows, cols] = flat
    return out


def _ragged_2d(column: pd.Series, name: str, *, numeric: bool) -> Any:
    arr = _to_arrow(column, name)
    n = len(arr)
    what = "a list of K numbers per step" if numeric else "a list of K strings per step"
    k_per_step, leaf = _list_level(arr, name, what)
    k = _constant_k(k_per_step, name)
    if numeric:
        return _leaf_numeric(leaf, name).reshape(n, k)
    if pa.types.is_integer(leaf.type) and not leaf.null_count:
        return np.asarray(leaf.to_numpy(), dtype=np.int64).reshape(n, k)
    if not (pa.types.is_string(leaf.type) or pa.types.is_large_string(leaf.type)):
        if not (pa.types.is_null(leaf.type) and len(leaf) == 0):
            raise ValueError(
                f"Column '{name}' must contain strings. Got Arrow type {leaf.type} "
                "instead."
            )
    if leaf.null_count:
        raise ValueError(
            f"Column '{name}' has {leaf.null_count} missing (None) texts; use strings."
        )
    return pa.FixedSizeListArray.from_arrays(leaf, k)


def _token_sequences(
    column: pd.Series, name: str
) -> tuple[int, int, np.ndarray, pa.Array]:
    """Steps ``n``, candidates per step ``k``, tokens per candidate (flat, of
    length ``n * k``) and the Arrow array of the tokens of a list-of-K-token-
    sequences column."""
    arr = _to_arrow(column, name)
    k_per_step, cand = _list_level(arr, name, "a list of K token sequences per step")
    k = _constant_k(k_per_step, name)
    tok_len, tokens = _list_level(cand, name, "one token sequence per candidate")
    return len(arr), k, tok_len, tokens


def _pad_width(lengths: np.ndarray) -> int:
    """The longest of ``lengths``, at least 1 (the width of a padded array)."""
    return max(int(lengths.max()) if lengths.size else 0, 1)


def _ragged_3d(column: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    n, k, tok_len, leaf = _token_sequences(column, name)
    flat = _leaf_numeric(leaf, name)
    padded = _scatter_pad(flat, tok_len, _pad_width(tok_len), 0.0)
    return padded.reshape(n, k, -1), tok_len.reshape(n, k), k


def _ragged_4d(column: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    n, k, tok_len, tokens = _token_sequences(column, name)
    top_len, leaf = _list_level(tokens, name, "one list of top-k log-probs per token")
    flat = _leaf_numeric(leaf, name)
    width_k = _pad_width(top_len)
    per_token = _scatter_pad(flat, top_len, width_k, -np.inf)  # (n_tokens, k_top)
    width_t = _pad_width(tok_len)
    out = np.full((tok_len.size, width_t, width_k), -np.inf)
    if per_token.shape[0]:
        rows = np.repeat(np.arange(tok_len.size), tok_len)
        starts = np.cumsum(tok_len) - tok_len
        cols = np.arange(per_token.shape[0]) - np.repeat(starts, tok_len)
        out[rows, cols] = per_token
    return out.reshape(n, k, width_t, width_k), tok_len.reshape(n, k), k


def _check_same_lengths(
    lengths: np.ndarray, ref: np.ndarray, name: str, k: int, k_ref: int | None
) -> None:
    if k != k_ref or lengths.shape != ref.shape or not np.array_equal(lengths, ref):
        raise ValueError(
            f"Column '{name}' must have the same shape as 'token_logprobs' (same K "
            "and the same number of tokens per candidate). Got a different shape "
            "instead."
        )


# --------------------------------------------------------------------------- #
# Validation of a StepBatch (errors name the field)
# --------------------------------------------------------------------------- #
def _as_float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"The '{name}' field must be a numeric array with {ndim} dimensions. "
            "Got a ragged or unreadable sequence instead; pad it (and pass "
            "'lengths') or pass a DataFrame of lists."
        ) from None
    if arr.dtype == object:
        raise ValueError(
            f"The '{name}' field must be a numeric array with {ndim} dimensions. "
            "Got an object array (ragged input?) instead; pad it and pass "
            "'lengths', or pass a DataFrame of lists."
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"The '{name}' field must be numeric. Got dtype {arr.dtype} instead."
        )
    if arr.ndim != ndim:
        raise ValueError(
            f"The '{name}' field must have {ndim} dimensions. Got shape "
            f"{arr.shape} instead."
        )
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    return arr


def _first_bad(bad: np.ndarray, offset: int = 0) -> str:
    idx = list(int(i) for i in np.argwhere(bad)[0])
    idx[0] += offset
    labels = ("step", "candidate", "token", "alternative")
    return ", ".join(f"{lab} {i}" for lab, i in zip(labels, idx))


def _describe(value: float) -> str:
    return "NaN" if np.isnan(value) else repr(float(value))


def _as_1d(value: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"The '{name}' field must have shape ({n},), one value per step. Got "
            f"shape {arr.shape} instead."
        )
    return arr


def _as_int_1d(value: Any, name: str, n: int) -> np.ndarray:
    arr = _as_1d(value, name, n)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" or arr.dtype == object:
        try:
            num = arr.astype(np.float64)
        except (TypeError, ValueError):
            num = None
        if (
            num is not None
            and np.all(np.isfinite(num))
            and np.all(num == np.round(num))
        ):
            return num.astype(np.int64)
    raise ValueError(
        f"The '{name}' field must contain integers. Got dtype {arr.dtype}"
        + (" with non-integral or missing values" if arr.dtype.kind == "f" else "")
        + " instead."
    )


def _as_flag(value: Any, name: str, n: int) -> np.ndarray:
    arr = _as_1d(value, name, n)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    try:
        num = arr.astype(np.float64)
    except (TypeError, ValueError):
        num = None
    if num is None or not np.all((num == 0) | (num == 1)):
        raise ValueError(
            f"The '{name}' field must be boolean or 0/1. Got dtype {arr.dtype} with "
            "other values instead."
        )
    return num


def _require(batch: StepBatch, needed: Iterable[str]) -> None:
    missing = [name for name in needed if getattr(batch, name) is None]
    if missing:
        feats = sorted(
            {f for f, ins in FEATURE_INPUTS.items() for m in missing if m in ins}
        )
        raise ValueError(
            f"Input field(s) {missing} are required by the selected feature(s) "
            f"{feats}. Provide them, or drop those features with "
            "CandidateFeaturizer(features=[...])."
        )


_CHUNK = 4096  # steps per chunk: keeps the (chunk, K, T) temporaries in cache


def _token_reduce(
    lp: np.ndarray,
    lengths: np.ndarray,
    ent: np.ndarray | None,
    *,
    padded: bool,
    surprisal_max: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Masked per-candidate sums (and per-step max) over the token axis.

    Works in chunks of steps (a loop over chunks, never over steps) so that the
    temporaries stay in cache. Returns the per-candidate log-prob sums (n, K), the
    per-candidate entropy sums (n, K) or None, and the per-step max entropy
    (given entropies, else surprisal ``-lp`` when ``surprisal_max``) or None.
    """
    n, k, t = lp.shape
    lp_sum = np.empty((n, k))
    ent_sum = np.empty((n, k)) if ent is not None else None
    ent_max = np.empty(n) if (ent is not None or surprisal_max) else None
    tri = np.arange(t) < np.arange(t + 1)[:, None] if padded else None
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        mask = tri[lengths[s:e]] if tri is not None else None
        chunk, csum = _masked_sum(lp[s:e], mask)
        if not np.isfinite(csum).all() or float(chunk.max()) > _LOGPROB_TOL:
            _raise_bad_tokens(
                chunk,
                ~np.isfinite(chunk) | (chunk > _LOGPROB_TOL),
                "token_logprobs",
                "finite log-probabilities <= 0 within each candidate's length",
                offset=s,
            )
        lp_sum[s:e] = csum
        if ent is not None and ent_sum is not None and ent_max is not None:
            echunk, esum = _masked_sum(ent[s:e], mask)
            if not np.isfinite(esum).all() or float(echunk.min()) < -_LOGPROB_TOL:
                _raise_bad_tokens(
                    echunk,
                    ~np.isfinite(echunk) | (echunk < -_LOGPROB_TOL),
                    "token_entropies",
                    "finite entropies >= 0 within each candidate's length",
                    offset=s,
                )
            ent_sum[s:e] = np.maximum(esum, 0.0)
            ent_max[s:e] = np.maximum(echunk.reshape(e - s, -1).max(axis=1), 0.0)
        elif ent_max is not None:
            # surprisal -lp; padding is 0 so it never wins the max
            ent_max[s:e] = np.maximum(-chunk.reshape(e - s, -1).min(axis=1), 0.0)
    return lp_sum, ent_sum, ent_max


def _masked_sum(
    arr: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Zero the padding and sum over tokens: ``(masked array, sums (n, K))``.

    A multiply by the mask is the fast path; when a sum comes out non-finite
    (NaN/inf hiding in the padding turns into NaN) the padding is zeroed with
    ``np.where`` instead, so only values within each candidate's length count.
    """
    if mask is None:
        return arr, np.einsum("nkt->nk", arr)
    out = arr * mask
    sums = np.einsum("nkt->nk", out)
    if not np.isfinite(sums).all():
        out = np.where(mask, arr, 0.0).astype(arr.dtype, copy=False)
        sums = np.einsum("nkt->nk", out)
    return out, sums


def _raise_bad_tokens(
    arr: np.ndarray, bad: np.ndarray, name: str, what: str, offset: int = 0
) -> None:
    if bad.any():
        raise ValueError(
            f"The '{name}' field must contain {what}. Got "
            f"{_describe(arr[bad][0])} at {_first_bad(bad, offset)} instead."
        )
    raise ValueError(
        f"The '{name}' field must contain {what}. Got values whose sum over a "
        "candidate overflows instead."
    )


def topn_entropy(top_logprobs: Any) -> np.ndarray:
    """Token entropy from the top-n log-probs: the one definition r2vcal uses.

    ``-sum_i p_i log p_i - r log r`` over the top-n probabilities ``p_i`` and
    the residual mass ``r = 1 - sum_i p_i`` counted as one more outcome: a lower
    bound of the full-vocabulary entropy that every backend can compute from
    what an OpenAI-compatible server returns (``top_logprobs``), so training
    (local models) and serving (servers) give the same features. Use
    :data:`ENTROPY_TOP_N` log-probs per token.

    Parameters
    ----------
    top_logprobs : array-like of shape (..., n)
        Top-n log-probabilities per token along the last axis (``-inf`` pads).

    Returns
    -------
    ndarray of shape (...)

    Examples
    --------
    >>> import numpy as np
    >>> from r2vcal.features import topn_entropy
    >>> float(topn_entropy(np.log([[0.5, 0.5]]))[0])  # no residual: log 2
    0.6931471805599453
    """
    top = np.asarray(top_logprobs, dtype=np.float64)
    return np.maximum(_entropy_from_top(np.minimum(top, 0.0)), 0.0)


def _entropy_from_top(top: np.ndarray) -> np.ndarray:
    """Entropy of top-k probabilities plus the residual mass as one outcome."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(top)
        plogp = np.where(p > 0, p * top, 0.0)
    total = p.sum(axis=-1)
    residual = np.clip(1.0 - total, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rlogr = np.where(residual > 0, residual * np.log(residual), 0.0)
    return -plogp.sum(axis=-1) - rlogr


# --------------------------------------------------------------------------- #
# The transformer
# --------------------------------------------------------------------------- #
class CandidateFeaturizer(TransformerMixin, BaseEstimator):
    """Turn K sampled candidates per step into the router's feature vector.

    Stateless: ``fit`` only validates the parameters and the input. The input is
    a DataFrame with list-valued columns or a :class:`StepBatch` of padded
    arrays; see :mod:`r2vcal.features` (and :mod:`r2vcal.schema`) for the
    contract. All computation is vectorised over steps.

    Features (``n`` steps; ``K`` candidates; ``H`` per-token entropy, see the
    module notes for its source; ``lp`` per-token log-prob; ``v`` verifier
    scores; per-candidate means over its valid tokens):

    - ``entropy_mean``: mean over candidates of the mean token entropy;
      ``entropy_max``: max token entropy over all candidates' tokens.
    - ``logprob_mean`` / ``logprob_min``: mean / min over candidates of the
      length-normalised sequence log-prob (mean token log-prob);
      ``logprob_chosen``: the same for the verifier's choice ``argmax v``.
    - ``verifier_max``, ``verifier_mean``, ``verifier_std`` (``ddof=0``),
      ``verifier_spread`` (max − min), ``verifier_margin`` (best − second best;
      for ``K == 1`` the runner-up counts as 0).
    - ``agreement``: share of candidates whose text equals the most frequent
      text (whitespace-trimmed, exact match otherwise).
    - ``step_index``; ``step_fraction`` = ``step / horizon`` (in [0, 1));
      ``log_context_length`` = ``log1p(context_length)``.
    - ``verifier_trend``: ``verifier_max`` minus the mean ``verifier_max`` over
      the previous ``trend_window`` steps of the same episode present in the
      input (0 at an episode's first step). Needs each episode's steps in the
      same call; ``(episode_id, step)`` must be unique.
    - ``tool_error``, ``truncated``: 0/1 flags.
    - ``log_mean_length``: log of the mean candidate length in tokens.

    Parameters
    ----------
    features : sequence of str, default=None
        Subset of :data:`FEATURE_NAMES` to compute, in the order of
        ``FEATURE_NAMES``. None computes all of them. Only the inputs the
        selected features need are required (:data:`FEATURE_INPUTS`).
    trend_window : int, default=3
        Number of previous steps of the episode averaged by ``verifier_trend``.

    Attributes
    ----------
    n_features_out_ : int
        Number of output features (set by ``fit``).

    Notes
    -----
    Invalid input raises ``ValueError`` naming the field: ``K`` differing per
    step, fewer than one token per candidate, NaN/inf or positive log-probs
    (up to a 1e-6 rounding tolerance, clipped to 0), negative entropies, top-k
    probabilities summing above 1, verifier scores outside [0, 1], ``step``
    outside ``[0, horizon)``, negative context lengths, non-0/1 flags.

    The input is not a 2-d numeric array, so ``__sklearn_tags__`` declares
    ``two_d_array=False`` and ``requires_fit=False``; sklearn's generic
    ``check_estimator`` array checks do not apply (the parameter, cloning and
    ``set_output`` behaviour is tested directly). Works in a ``Pipeline``
    before a router, and ``set_output(transform="pandas")`` returns a
    DataFrame with :data:`FEATURE_NAMES` columns and the input's index.

    Examples
    --------
    >>> import pandas as pd
    >>> from r2vcal.features import CandidateFeaturizer
    >>> steps = pd.DataFrame({
    ...     "token_logprobs": [[[-0.1, -0.3], [-1.0], [-0.2, -0.2]]] * 2,
    ...     "verifier_scores": [[0.9, 0.3, 0.6], [0.4, 0.5, 0.2]],
    ...     "candidate_texts": [["ls", "ls", "cat a"], ["cd b", "ls", "pwd"]],
    ...     "episode_id": ["e1", "e1"],
    ...     "step": [0, 1],
    ...     "horizon": [10, 10],
    ...     "context_length": [120, 180],
    ...     "tool_error": [False, True],
    ...     "truncated": [False, False],
    ... })
    >>> fz = CandidateFeaturizer().set_output(transform="pandas")
    >>> out = fz.fit_transform(steps)
    >>> out.shape
    (2, 18)
    >>> out[["verifier_max", "verifier_margin", "agreement", "verifier_trend"]]
       verifier_max  verifier_margin  agreement  verifier_trend
    0           0.9              0.3   0.666667             0.0
    1           0.5              0.1   0.333333            -0.4
    """

    _parameter_constraints: dict = {
        "features": [list, tuple, None],
        "trend_window": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self, *, features: Sequence[str] | None = None, trend_window: int = 3
    ) -> None:
        self.features = features
        self.trend_window = trend_window

    # -- sklearn plumbing ------------------------------------------------- #
    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.dict = False
        tags.input_tags.string = True
        tags.input_tags.allow_nan = False
        tags.target_tags.required = False
        return tags

    def _selected(self) -> tuple[str, ...]:
        self._validate_params()
        if self.features is None:
            return FEATURE_NAMES
        chosen = list(self.features)
        unknown = [f for f in chosen if f not in FEATURE_NAMES]
        if unknown:
            import difflib

            hints = {
                u: difflib.get_close_matches(str(u), FEATURE_NAMES, n=1)
                for u in unknown
            }
            hint = "; ".join(
                f"did you mean {h[0]!r} for {u!r}?" for u, h in hints.items() if h
            )
            raise ValueError(
                f"The 'features' parameter of CandidateFeaturizer must be a subset "
                f"of {list(FEATURE_NAMES)}. Got unknown name(s) {unknown} instead."
                + (f" ({hint})" if hint else "")
            )
        if not chosen:
            raise ValueError(
                "The 'features' parameter of CandidateFeaturizer must name at least "
                "one feature. Got an empty sequence instead."
            )
        if len(set(chosen)) != len(chosen):
            raise ValueError(
                "The 'features' parameter of CandidateFeaturizer must not repeat "
                f"names. Got {chosen} instead."
            )
        return tuple(f for f in FEATURE_NAMES if f in set(chosen))

    def fit(self, X: pd.DataFrame | StepBatch, y: Any = None) -> CandidateFeaturizer:
        """Validate the parameters and the input; learns nothing.

        Parameters
        ----------
        X : DataFrame or StepBatch
            Steps, as in the input contract.
        y : None
            Ignored.

        Returns
        -------
        self : CandidateFeaturizer
        """
        self.transform(X)
        self.n_features_out_ = len(self._selected())
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output features.

        Parameters
        ----------
        input_features : ignored
            Present for API compatibility.

        Returns
        -------
        names : ndarray of str
        """
        return np.asarray(self._selected(), dtype=object)

    # -- the computation --------------------------------------------------- #
    def transform(self, X: pd.DataFrame | StepBatch) -> np.ndarray:
        """Compute the features of every step.

        Parameters
        ----------
        X : DataFrame or StepBatch
            Steps, as in the input contract.

        Returns
        -------
        features : ndarray of shape (n_steps, n_features), float64
        """
        selected = self._selected()
        if isinstance(X, pd.DataFrame):
            if len(X) == 0:
                raise ValueError(
                    "CandidateFeaturizer needs at least one step. Got an empty "
                    "DataFrame instead."
                )
            batch = StepBatch.from_frame(X)
            zero_padded = True
        elif isinstance(X, StepBatch):
            batch = X
            zero_padded = False
        else:
            raise TypeError(
                "CandidateFeaturizer expects a pandas DataFrame with list-valued "
                "columns or an r2vcal.features.StepBatch. Got "
                f"{type(X).__name__} instead."
            )
        needed = sorted({c for f in selected for c in FEATURE_INPUTS[f]})
        _require(batch, needed)
        if batch.n_steps == 0:
            raise ValueError(
                "CandidateFeaturizer needs at least one step. Got 0 steps instead."
            )
        cols = _compute(batch, selected, self.trend_window, zero_padded)
        return np.column_stack([cols[f] for f in selected]).astype(np.float64)


def _users_of(field: str) -> frozenset[str]:
    """The features that read ``field`` (from :data:`FEATURE_INPUTS`)."""
    return frozenset(f for f, inputs in FEATURE_INPUTS.items() if field in inputs)


_VERIFIER_USERS = _users_of("verifier_scores")
_TOKEN_FEATURES = _users_of("token_logprobs")


class _Shapes:
    """The (n_steps, K) of the first per-candidate field; later ones must match."""

    def __init__(self) -> None:
        self.n: int | None = None
        self.k: int | None = None
        self.first = ""

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        if self.n is None:
            self.n, self.k, self.first = shape[0], shape[1], name
        elif shape[:2] != (self.n, self.k):
            raise ValueError(
                f"The '{name}' field must have leading shape (n_steps, K) = "
                f"({self.n}, {self.k}) like the '{self.first}' field. Got "
                f"{shape[:2]} instead."
            )


def _compute(
    batch: StepBatch, selected: tuple[str, ...], window: int, zero_padded: bool
) -> dict[str, np.ndarray]:
    sel = set(selected)
    out: dict[str, np.ndarray] = {}
    shapes = _Shapes()
    v = None
    if batch.verifier_scores is not None and sel & _VERIFIER_USERS:
        v = _checked_verifier_scores(batch.verifier_scores, shapes)
    if sel & _TOKEN_FEATURES:
        out.update(_token_features(batch, sel, v, shapes, zero_padded))
    if v is not None:
        out.update(_verifier_features(v, sel))
    if "agreement" in sel:
        out["agreement"] = _agreement(batch.candidate_texts, shapes)
    n_steps = shapes.n if shapes.n is not None else batch.n_steps
    out.update(_context_features(batch, sel, n_steps, v, window))

    lengths_seen = {name: arr.shape[0] for name, arr in out.items()}
    if len(set(lengths_seen.values())) > 1:
        raise ValueError(
            "All input fields must describe the same number of steps. Got "
            f"{lengths_seen} instead."
        )
    return out


def _checked_verifier_scores(scores: Any, shapes: _Shapes) -> np.ndarray:
    v = _as_float_array(scores, "verifier_scores", 2).astype(np.float64, copy=False)
    shapes.check("verifier_scores", v.shape)
    if v.shape[1] == 0:
        raise ValueError(
            "The 'verifier_scores' field must have at least one candidate per "
            "step. Got K = 0 instead."
        )
    bad = ~((v >= 0.0) & (v <= 1.0))
    if bad.any():
        raise ValueError(
            "The 'verifier_scores' field must contain scores in [0, 1]. Got "
            f"{_describe(v[bad][0])} at {_first_bad(bad)} instead."
        )
    return v


def _checked_lengths(lengths: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Token counts per candidate, ``(n, K)`` integers in ``[1, T]``."""
    n_, k_, t_ = shape
    if lengths is None:
        return np.full((n_, k_), t_, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (n_, k_) or lengths.dtype.kind not in "iu":
        raise ValueError(
            f"The 'lengths' field must be an integer array of shape "
            f"({n_}, {k_}). Got shape {lengths.shape} and dtype "
            f"{lengths.dtype} instead."
        )
    lengths = lengths.astype(np.int64, copy=False)
    bad = (lengths < 1) | (lengths > t_)
    if bad.any():
        raise ValueError(
            f"The 'lengths' field must be in [1, {t_}] (every candidate "
            f"needs at least one token). Got {int(lengths[bad][0])} at "
            f"{_first_bad(bad)} instead."
        )
    return lengths


def _token_features(
    batch: StepBatch,
    sel: set[str],
    v: np.ndarray | None,
    shapes: _Shapes,
    zero_padded: bool,
) -> dict[str, np.ndarray]:
    """Log-prob, length and entropy features from the candidates' tokens."""
    out: dict[str, np.ndarray] = {}
    lp = _as_float_array(batch.token_logprobs, "token_logprobs", 3)
    shapes.check("token_logprobs", lp.shape)
    n_, k_, t_ = lp.shape
    if k_ == 0 or (t_ == 0 and n_ > 0):
        raise ValueError(
            "The 'token_logprobs' field must have at least one candidate and one "
            f"token per candidate. Got shape {lp.shape} instead."
        )
    lengths = _checked_lengths(batch.lengths, lp.shape)
    padded = not zero_padded and bool((lengths < t_).any())
    ent_in = None
    want_ent = bool(sel & {"entropy_mean", "entropy_max"})
    if want_ent and batch.token_entropies is not None:
        ent_in = _as_float_array(batch.token_entropies, "token_entropies", 3)
        if ent_in.shape != lp.shape:
            raise ValueError(
                "The 'token_entropies' field must have the shape of "
                f"'token_logprobs' {lp.shape}. Got {ent_in.shape} instead."
            )
    use_top = want_ent and ent_in is None and batch.top_logprobs is not None
    lp_sum, ent_sum_c, ent_max_c = _token_reduce(
        lp,
        lengths,
        ent_in,
        padded=padded,
        surprisal_max=want_ent and ent_in is None and not use_top,
    )
    lp_sum = np.minimum(lp_sum, 0.0)
    len_f = np.ascontiguousarray(lengths.T, dtype=np.float64)  # (K, n)
    lp_mean_c = np.ascontiguousarray(lp_sum.T) / len_f  # (K, n)
    if "logprob_mean" in sel:
        out["logprob_mean"] = lp_mean_c.mean(axis=0)
    if "logprob_min" in sel:
        out["logprob_min"] = lp_mean_c.min(axis=0)
    if "logprob_chosen" in sel:
        if v is None:  # pragma: no cover - guaranteed by _require
            raise ValueError("'logprob_chosen' needs 'verifier_scores'.")
        chosen = np.argmax(v, axis=1)  # first best on ties
        out["logprob_chosen"] = lp_mean_c[chosen, np.arange(n_)]
    if "log_mean_length" in sel:
        out["log_mean_length"] = np.log(len_f.mean(axis=0))
    if not want_ent:
        return out
    if ent_in is not None:
        ent_sum, ent_max = ent_sum_c, ent_max_c
    elif use_top:
        ent_sum, ent_max = _top_entropy(batch.top_logprobs, lp.shape, lengths, padded)
    else:
        ent_sum, ent_max = -lp_sum, ent_max_c
    if ent_sum is None or ent_max is None:  # pragma: no cover
        raise RuntimeError("entropy statistics were not computed")
    if "entropy_mean" in sel:
        out["entropy_mean"] = (ent_sum.T / len_f).mean(axis=0)
    if "entropy_max" in sel:
        out["entropy_max"] = ent_max.astype(np.float64)
    return out


def _top_entropy(
    top_logprobs: Any,
    shape: tuple[int, ...],
    lengths: np.ndarray,
    padded: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate entropy sum ``(n, K)`` and per-step max ``(n,)`` from the
    top-k log-probabilities (the tail mass as one extra outcome)."""
    n_, _, t_ = shape
    top = _as_float_array(top_logprobs, "top_logprobs", 4)
    if top.shape[:3] != shape:
        raise ValueError(
            "The 'top_logprobs' field must have shape (n, K, T, k) with "
            f"(n, K, T) = {shape} like 'token_logprobs'. Got "
            f"{top.shape} instead."
        )
    if top.shape[3] == 0:
        raise ValueError(
            "The 'top_logprobs' field must hold at least one "
            "alternative per token. Got k = 0 instead."
        )
    mask = np.arange(t_) < lengths[..., None] if padded else None
    if mask is not None:
        top = np.where(mask[..., None], top, -np.inf)
    bad_val = np.isnan(top) | (top > _LOGPROB_TOL)
    if bad_val.any():
        _raise_bad_tokens(
            top,
            bad_val,
            "top_logprobs",
            "log-probabilities <= 0 (-inf for padding)",
        )
    top = np.minimum(top, 0.0)
    psum = np.exp(top).sum(axis=-1)
    bad = psum > 1.0 + _PROB_SUM_TOL
    if bad.any():
        raise ValueError(
            "The 'top_logprobs' field must describe probabilities "
            "summing to at most 1 per token. Got a sum of "
            f"{float(psum[bad][0]):.6g} at {_first_bad(bad)} instead."
        )
    ent = _entropy_from_top(top)
    if mask is not None:
        ent = np.where(mask, ent, 0.0)
    return ent.sum(axis=-1, dtype=np.float64), ent.reshape(n_, -1).max(axis=1)


def _verifier_features(v: np.ndarray, sel: set[str]) -> dict[str, np.ndarray]:
    """Verifier statistics, on the (K, n) transpose (fast row-wise ops)."""
    out: dict[str, np.ndarray] = {}
    vt = np.ascontiguousarray(v.T)
    vmax = vt.max(axis=0)
    if "verifier_max" in sel:
        out["verifier_max"] = vmax
    if "verifier_mean" in sel:
        out["verifier_mean"] = vt.mean(axis=0)
    if "verifier_std" in sel:
        out["verifier_std"] = vt.std(axis=0)
    if "verifier_spread" in sel:
        out["verifier_spread"] = vmax - vt.min(axis=0)
    if "verifier_margin" in sel:
        if vt.shape[0] == 1:
            out["verifier_margin"] = vmax.copy()
        else:
            first = vt[0].copy()
            second = np.full_like(first, -np.inf)
            for row in vt[1:]:  # loop over K, exact top-2 with ties
                np.maximum(second, np.minimum(first, row), out=second)
                np.maximum(first, row, out=first)
            out["verifier_margin"] = first - second
    return out


def _agreement(texts: Any, shapes: _Shapes) -> np.ndarray:
    """Share of the K candidates agreeing with the most common one."""
    codes = _text_codes(texts)
    shapes.check("candidate_texts", codes.shape)
    ct = np.ascontiguousarray(codes.T)
    best = np.zeros(ct.shape[1], dtype=np.int64)
    for j in range(ct.shape[0]):  # loop over K pairs
        count = np.zeros(ct.shape[1], dtype=np.int64)
        for i in range(ct.shape[0]):
            count += ct[i] == ct[j]
        np.maximum(best, count, out=best)
    return best / float(ct.shape[0])


def _context_features(
    batch: StepBatch,
    sel: set[str],
    n_steps: int,
    v: np.ndarray | None,
    window: int,
) -> dict[str, np.ndarray]:
    """Step index and fraction, context length, flags, verifier trend."""
    out: dict[str, np.ndarray] = {}
    step = None
    if sel & {"step_index", "step_fraction", "verifier_trend"}:
        step = _as_int_1d(batch.step, "step", n_steps)
        if (step < 0).any():
            i = int(np.flatnonzero(step < 0)[0])
            raise ValueError(
                "The 'step' field must contain 0-based step indices >= 0. Got "
                f"{int(step[i])} at step {i} instead."
            )
        if "step_index" in sel:
            out["step_index"] = step.astype(np.float64)
    if "step_fraction" in sel:
        assert step is not None
        out["step_fraction"] = _step_fraction(batch.horizon, step, n_steps)
    if "log_context_length" in sel:
        out["log_context_length"] = _log_context_length(batch.context_length, n_steps)
    for flag in ("tool_error", "truncated"):
        if flag in sel:
            out[flag] = _as_flag(getattr(batch, flag), flag, n_steps)
    if "verifier_trend" in sel:
        assert v is not None and step is not None
        out["verifier_trend"] = _verifier_trend(
            v.max(axis=1), batch.episode_id, step, window
        )
    return out


def _step_fraction(horizon: Any, step: np.ndarray, n_steps: int) -> np.ndarray:
    h = _as_int_1d(horizon, "horizon", n_steps)
    bad = (h < 1) | (step >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "The 'horizon' field must be an integer >= 1 and greater than "
            f"'step'. Got horizon {int(h[i])} with step {int(step[i])} at "
            f"step {i} instead."
        )
    return step / h.astype(np.float64)


def _log_context_length(context_length: Any, n_steps: int) -> np.ndarray:
    ctx = _as_1d(context_length, "context_length", n_steps)
    try:
        ctx_f = ctx.astype(np.float64)
    except (TypeError, ValueError):
        ctx_f = np.full(ctx.shape, np.nan)
    if ctx.dtype == bool:
        ctx_f = np.full(ctx.shape, np.nan)
    bad = ~(np.isfinite(ctx_f) & (ctx_f >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "The 'context_length' field must contain finite token counts >= 0. "
            f"Got {ctx[i]!r} at step {i} instead."
        )
    return np.log1p(ctx_f)


def _text_codes(texts: Any) -> np.ndarray:
    """Integer codes (n, K) of candidate texts, equal exactly when texts are equal.

    Accepts an (n, K) array of str (whitespace-trimmed before comparison), an
    (n, K) integer array of canonical action ids (used as is), or a pyarrow
    ``FixedSizeListArray`` of strings (what :meth:`StepBatch.from_frame` makes).
    """
    if isinstance(texts, pa.FixedSizeListArray):
        n_rows, k = len(texts), texts.type.list_size
        strings = texts.flatten()
    else:
        arr = np.asarray(texts)
        if arr.ndim != 2:
            raise ValueError(
                "The 'candidate_texts' field must have shape (n_steps, K). Got "
                f"shape {arr.shape} instead."
            )
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64, copy=False)
        n_rows, k = arr.shape
        flat = arr.astype(object).ravel()
        try:
            strings = pa.array(flat, type=pa.string(), from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            kinds = sorted({type(x).__name__ for x in flat if not isinstance(x, str)})
            raise ValueError(
                "The 'candidate_texts' field must contain strings (or integer "
                f"action ids). Got values of type {kinds} instead."
            ) from None
    if strings.null_count:
        raise ValueError(
            "The 'candidate_texts' field must contain strings. Got "
            f"{strings.null_count} missing (None) texts instead."
        )
    if len(strings) == 0:
        return np.zeros((n_rows, k), dtype=np.int64)
    trimmed = pc.utf8_trim_whitespace(strings)
    codes = pc.dictionary_encode(trimmed).indices.to_numpy(zero_copy_only=False)
    return np.asarray(codes, dtype=np.int64).reshape(n_rows, k)


def _verifier_trend(
    vmax: np.ndarray, episode_id: Any, step: np.ndarray, window: int
) -> np.ndarray:
    n = vmax.shape[0]
    ep = _as_1d(episode_id, "episode_id", n)
    if pd.isna(ep).any():
        i = int(np.flatnonzero(pd.isna(ep))[0])
        raise ValueError(
            f"The 'episode_id' field must not contain missing values. Got {ep[i]!r} "
            f"at step {i} instead."
        )
    try:
        codes, _ = pd.factorize(ep)
    except TypeError:
        raise ValueError(
            "The 'episode_id' field must contain hashable scalars (str or int). Got "
            "unhashable values instead."
        ) from None
    order = np.lexsort((step, codes))
    c_sorted = codes[order]
    s_sorted = step[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = c_sorted[1:] != c_sorted[:-1]
    dup = ~new_group & np.r_[False, s_sorted[1:] == s_sorted[:-1]]
    if dup.any():
        i = int(order[np.flatnonzero(dup)[0]])
        raise ValueError(
            "The ('episode_id', 'step') pairs must be unique for 'verifier_trend'. "
            f"Got a repeated pair ({ep[i]!r}, {int(step[i])}) instead."
        )
    start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    pos = np.arange(n) - start
    m = np.minimum(pos, window)
    vs = vmax[order]
    csum = np.concatenate(([0.0], np.cumsum(vs)))
    idx = np.arange(n)
    prev_sum = csum[idx] - csum[idx - m]
    with np.errstate(invalid="ignore", divide="ignore"):
        trend_sorted = np.where(m > 0, vs - prev_sum / np.maximum(m, 1), 0.0)
    trend = np.empty(n)
    trend[order] = trend_sorted
    return trend
