"""The router inside a running agent: :class:`StepCascade`.

An agent calls :meth:`StepCascade.act` once per step. The cascade samples ``k``
candidate actions from the small model, scores them with the process verifier,
turns them into the router's features (:class:`~r2vcal.features.CandidateFeaturizer`),
and asks the router for the probability that the small model's step leads to
failure. The step goes to the teacher only when that risk reaches the threshold
*and* the episode's LLM budget allows; otherwise the SLM's best candidate is
executed (the verifier's pick by default, or the SLM's most likely sequence with
``select="logprob"``). Every call returns a :class:`Decision` (probability, threshold,
features, who acted, cost), and the decisions form a log with the feature
columns of :mod:`r2vcal.schema`, so the steps taken *with the router in the loop*
can retrain it (DESIGN §1).

The models are plain callables, so the cascade drops into any loop:

* ``slm(context, k)`` returns ``k`` candidates, each an object with ``text`` and
  ``token_logprobs`` (and optionally ``token_entropies``) attributes — e.g.
  :class:`pipelines.policies.Candidate` —, a ``(text, token_logprobs)`` pair or a
  dict with those keys. An object with a ``propose(context, k)`` method works too;
* ``verifier(context, texts)`` returns one score in [0, 1] per text (an object
  with ``score_candidates(context, texts)`` works too); ``None`` ranks candidates
  by their mean token log-probability and leaves the verifier features at the
  featurizer's neutral value 0.5;
* ``teacher(context)`` returns the LLM's action as a string.

Budget rules decide the threshold at each step from the base threshold and what
is left of the episode's budget (:class:`FixedBudget`, :class:`PacedBudget`).

This module needs numpy and pandas only (pyarrow to write Parquet logs).
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from r2vcal.features import FEATURE_NAMES, CandidateFeaturizer, StepBatch

__all__ = [
    "SELECT_RULES",
    "BudgetRule",
    "Decision",
    "FixedBudget",
    "PacedBudget",
    "StepCascade",
    "StepRouter",
]

_NO_ESCALATION = math.inf

#: Rules for the executed candidate of a step that is not escalated.
SELECT_RULES = frozenset({"verifier", "logprob"})


class BudgetRule(Protocol):
    """What a per-episode budget rule provides (see :class:`FixedBudget`)."""

    @property
    def max_calls(self) -> int:
        """LLM calls allowed per episode."""
        ...

    def threshold(self, base: float, *, used: int, step: int, horizon: int) -> float:
        """The threshold at this step; ``math.inf`` forbids escalation."""
        ...


def _check_max_calls(max_calls: Any, owner: str) -> int:
    if isinstance(max_calls, bool) or not isinstance(max_calls, (int, np.integer)):
        raise TypeError(
            f"The 'max_calls' parameter of {owner} must be an int >= 0. "
            f"Got {max_calls!r} instead."
        )
    if max_calls < 0:
        raise ValueError(
            f"The 'max_calls' parameter of {owner} must be an int >= 0. "
            f"Got {max_calls!r} instead."
        )
    return int(max_calls)


@dataclass(frozen=True)
class FixedBudget:
    """At most ``max_calls`` LLM calls per episode, at the base threshold.

    Parameters
    ----------
    max_calls : int
        LLM calls allowed per episode (0 never escalates).

    Examples
    --------
    >>> rule = FixedBudget(2)
    >>> rule.threshold(0.3, used=1, step=5, horizon=10)
    0.3
    >>> rule.threshold(0.3, used=2, step=5, horizon=10)
    inf
    """

    max_calls: int

    def __post_init__(self) -> None:
        _check_max_calls(self.max_calls, "FixedBudget")

    def threshold(self, base: float, *, used: int, step: int, horizon: int) -> float:
        """``base`` while calls remain, else ``inf``."""
        return base if used < self.max_calls else _NO_ESCALATION


@dataclass(frozen=True)
class PacedBudget:
    """A budget that moves the threshold with the pace of spending.

    In the spirit of Tajwar et al. (arXiv 2502.04576), who spend a per-episode
    intervention budget where a process reward model says it matters most: with
    ``B`` calls per episode of horizon ``H``, the planned pace is ``B / H`` calls
    per step. At step ``t`` with ``b`` calls left, the current pace is
    ``b / (H - t)``; their ratio ``rho = (b / (H - t)) / (B / H)`` is above 1 when
    the episode is under-spending and below 1 when it is over-spending. The
    threshold moves in log-odds::

        logit(tau_t) = logit(tau) - strength * log(rho)

    so a budget spent early raises the bar for the remaining steps and an
    unspent budget near the end lowers it. ``tau_t`` is clipped to
    ``[min_threshold, max_threshold]``; with no call left it is ``inf``.

    Parameters
    ----------
    max_calls : int
        LLM calls allowed per episode.
    strength : float, default=1.0
        How strongly the pace moves the threshold (0 is :class:`FixedBudget`).
    min_threshold, max_threshold : float, default=0.01, 0.99
        Bounds of the adjusted threshold.

    Examples
    --------
    >>> rule = PacedBudget(2)
    >>> round(rule.threshold(0.5, used=0, step=0, horizon=10), 3)  # on pace
    0.5
    >>> round(rule.threshold(0.5, used=1, step=1, horizon=10), 3)  # spent early
    0.643
    >>> round(rule.threshold(0.5, used=0, step=8, horizon=10), 3)  # unspent, late
    0.167
    """

    max_calls: int
    strength: float = 1.0
    min_threshold: float = 0.01
    max_threshold: float = 0.99

    def __post_init__(self) -> None:
        _check_max_calls(self.max_calls, "PacedBudget")
        if not (np.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(
                "The 'strength' parameter of PacedBudget must be a finite float "
                f">= 0. Got {self.strength!r} instead."
            )
        if not 0.0 < self.min_threshold <= self.max_threshold < 1.0:
            raise ValueError(
                "PacedBudget needs 0 < min_threshold <= max_threshold < 1. Got "
                f"min_threshold={self.min_threshold!r}, "
                f"max_threshold={self.max_threshold!r}."
            )

    def threshold(self, base: float, *, used: int, step: int, horizon: int) -> float:
        """The paced threshold (see the class docstring)."""
        left = self.max_calls - used
        if left <= 0:
            return _NO_ESCALATION
        planned = self.max_calls / max(horizon, 1)
        current = left / max(horizon - step, 1)
        base = min(max(base, 1e-6), 1 - 1e-6)
        z = math.log(base / (1 - base)) - self.strength * math.log(current / planned)
        tau = 1.0 / (1.0 + math.exp(-z))
        return min(max(tau, self.min_threshold), self.max_threshold)


@dataclass
class Decision:
    """What :class:`StepCascade` decided at one step.

    Attributes
    ----------
    action : str
        The action to execute (the teacher's when escalated).
    actor : {"slm", "llm"}
        Who produced ``action``.
    escalated : bool
        The router asked for the teacher and the budget allowed it.
    risk : float
        The router's probability that the SLM's step leads to failure.
    threshold : float
        The threshold in force at this step (``inf`` when the budget is spent).
    features : dict of str to float
        The router's input at this step.
    cost : float
        ``cost_slm`` plus ``cost_llm`` when the teacher was called.
    episode_id : hashable
    step : int
        0-based step index in the episode.
    candidates : list of str
        The SLM's candidate actions.
    verifier_scores : list of float
        Their scores (empty without a verifier).
    chosen : int
        Index of the SLM's best candidate.
    budget_left : int or None
        LLM calls left in the episode after this step (None: unlimited).
    fallback : str or None
        Set when the teacher failed and the SLM's best candidate was used
        (``on_teacher_error="fallback"``): the error message.
    group : hashable or None
        Grouping key given to :meth:`StepCascade.act` (a perturbation seed, a
        user): the ``groups`` of a later ``fit``.
    outcome : bool or None
        Episode success, filled in by :meth:`StepCascade.end_episode`.
    """

    action: str
    actor: str
    escalated: bool
    risk: float
    threshold: float
    features: dict[str, float]
    cost: float
    episode_id: Hashable
    step: int
    candidates: list[str] = field(default_factory=list)
    verifier_scores: list[float] = field(default_factory=list)
    chosen: int = 0
    budget_left: int | None = None
    fallback: str | None = None
    group: Hashable | None = None
    outcome: bool | None = None
    token_logprobs: list[list[float]] = field(default_factory=list, repr=False)

    def as_row(self) -> dict[str, Any]:
        """A flat dict: decision fields, one column per feature, the inputs."""
        row = asdict(self)
        features = row.pop("features")
        row["threshold"] = float(row["threshold"])
        row.update(features)
        return row

    def log_row(self) -> dict[str, Any]:
        """:meth:`as_row` for a log file: no threshold (None) once the budget is spent.

        JSON has no ``inf``; the JSON-lines and Parquet logs write this row.
        """
        row = self.as_row()
        if not math.isfinite(row["threshold"]):
            row["threshold"] = None
        return row

    def arrow_row(self) -> dict[str, Any]:
        """:meth:`log_row` with ``episode_id`` and ``group`` as str (or None).

        The row of :meth:`arrow_schema`.
        """
        row = self.log_row()
        for key in ("episode_id", "group"):
            row[key] = None if row[key] is None else str(row[key])
        return row

    @classmethod
    def arrow_schema(cls, feature_names: Sequence[str]) -> Any:
        """The Arrow schema of :meth:`arrow_row`: one column per field, then features.

        Derived from the dataclass fields, so a new field is a new log column.

        Parameters
        ----------
        feature_names : sequence of str
            The feature columns, in order (``featurizer.get_feature_names_out()``).

        Returns
        -------
        pyarrow.Schema
        """
        import pyarrow as pa

        scalars = {
            "str": pa.string(),
            "Hashable": pa.string(),
            "bool": pa.bool_(),
            "float": pa.float64(),
            "int": pa.int64(),
        }

        def arrow_type(annotation: str) -> Any:
            annotation = annotation.removesuffix(" | None")
            if annotation.startswith("list[") and annotation.endswith("]"):
                return pa.list_(arrow_type(annotation[5:-1]))
            return scalars[annotation]

        columns = [
            (f.name, arrow_type(str(f.type)))
            for f in fields(cls)
            if f.name != "features"
        ]
        columns += [(name, pa.float64()) for name in feature_names]
        return pa.schema(columns)


def check_verifier_scores(scores: Any, n: int) -> list[float]:
    """``n`` verifier scores in [0, 1] as a list of floats, else ValueError.

    Parameters
    ----------
    scores : array-like
        What a verifier returned.
    n : int
        The number of candidates it scored.

    Returns
    -------
    list of float
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,) or not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(
            f"The verifier must return {n} scores in [0, 1]; got {arr.tolist()!r:.200}."
        )
    return arr.tolist()  # type: ignore[no-any-return]


@dataclass
class _Episode:
    used: int = 0
    step: int = 0
    horizon: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def _candidate_parts(item: Any, i: int) -> tuple[str, np.ndarray, np.ndarray | None]:
    if isinstance(item, dict):
        text, lp, ent = (
            item.get("text"),
            item.get("token_logprobs"),
            item.get("token_entropies"),
        )
    elif isinstance(item, tuple) and len(item) in (2, 3):
        text, lp = item[0], item[1]
        ent = item[2] if len(item) == 3 else None
    else:
        text = getattr(item, "text", None)
        lp = getattr(item, "token_logprobs", None)
        ent = getattr(item, "token_entropies", None)
    if not isinstance(text, str) or lp is None:
        raise TypeError(
            "The slm callable of StepCascade must return candidates with a str "
            "'text' and 'token_logprobs' (objects, (text, logprobs) pairs or "
            f"dicts). Got {type(item).__name__} at position {i}: {item!r:.80}."
        )
    lp_arr = np.asarray(lp, dtype=np.float64).reshape(-1)
    ent_arr = None if ent is None else np.asarray(ent, dtype=np.float64).reshape(-1)
    if lp_arr.size == 0:
        # An empty completion (EOS at once): one certain token.
        lp_arr = np.zeros(1)
        ent_arr = None if ent_arr is None else np.zeros(1)
    if ent_arr is not None and ent_arr.shape != lp_arr.shape:
        ent_arr = None
    return text, lp_arr, ent_arr


def _as_call(obj: Any, method: str, role: str) -> Callable[..., Any]:
    if hasattr(obj, method):
        return getattr(obj, method)  # type: ignore[no-any-return]
    if callable(obj):
        return obj  # type: ignore[no-any-return]
    raise TypeError(
        f"The '{role}' parameter of StepCascade must be a callable or an object "
        f"with a {method}() method. Got {type(obj).__name__} instead."
    )


class StepRouter:
    """The routing core of a cascade: decide and record steps, call no model.

    :class:`StepCascade` adds the models (SLM, verifier, teacher) around it;
    an async server that calls the models itself (``r2vcal serve``) uses this
    class directly: :meth:`decide` on sampled candidates, :meth:`resolve` with
    the teacher's answer.

    Parameters
    ----------
    router : fitted router
        Any fitted r2vcal router (:class:`~r2vcal.router.CVaRBrierRouter`,
        :mod:`r2vcal.baselines`): ``predict_proba`` over the columns it was
        fitted on (``feature_names_in_``; a router fitted on a plain array gets
        all of :data:`~r2vcal.features.FEATURE_NAMES`, in order).
    k : int, default=5
        Candidates per step.
    threshold : float, default=None
        Base escalation threshold; None takes the router's ``threshold_``.
    budget : int or BudgetRule, default=None
        LLM calls per episode: None is unlimited, an int is :class:`FixedBudget`.
    horizon : int, default=50
        The episodes' step limit (the ``horizon`` the router was trained with;
        :meth:`decide` may override it per episode).
    cost_slm, cost_llm : float, default=None
        Cost of an SLM step and of a teacher call; None takes the router's
        ``cost_slm`` / ``cost_llm`` (else 1 and 10).
    log_path : str or Path, default=None
        A JSON-lines file that receives every decision as it is made (appended
        and flushed, so nothing is lost if the agent crashes).
    featurizer : CandidateFeaturizer, default=None
        Defaults to ``CandidateFeaturizer()``.
    select : {"verifier", "logprob"}, default="verifier"
        Which candidate the SLM executes when the step is not escalated:
        ``"verifier"`` takes the best verifier score (the mean token log-prob
        without a verifier); ``"logprob"`` takes the SLM's most likely sequence
        (the largest sum of token log-probs; the first on ties), i.e. the agent
        the router table was rolled out with when it executes its top choice.

    Attributes
    ----------
    decisions_ : list of Decision
        Every decision so far, in order (:meth:`to_frame` makes the log table).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from r2vcal.baselines import EntropyRouter
    >>> from r2vcal.features import FEATURE_NAMES
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.uniform(size=(200, 18)), columns=FEATURE_NAMES)
    >>> core = StepRouter(EntropyRouter().fit(X, X["entropy_mean"] > 0.5),
    ...                   k=2, threshold=0.5, budget=1)
    >>> d = core.decide("ctx", ["look", "go"], [[-2.0, -2.0], [-2.5, -2.0]])
    >>> d.escalated, core.llm_calls()
    (True, 1)
    >>> core.resolve(d, "go north").action
    'go north'
    """

    def __init__(
        self,
        router: Any,
        *,
        k: int = 5,
        threshold: float | None = None,
        budget: int | BudgetRule | None = None,
        horizon: int = 50,
        cost_slm: float | None = None,
        cost_llm: float | None = None,
        log_path: str | Path | None = None,
        featurizer: CandidateFeaturizer | None = None,
        select: str = "verifier",
    ) -> None:
        owner = type(self).__name__
        if select not in SELECT_RULES:
            raise ValueError(
                f"The 'select' parameter of {owner} must be a str among "
                f"{set(sorted(SELECT_RULES))}. Got {select!r} instead."
            )
        self.select = select
        if not hasattr(router, "predict_proba"):
            raise TypeError(
                f"The 'router' parameter of {owner} must be a fitted router "
                f"with predict_proba. Got {type(router).__name__} instead."
            )
        self.router = router
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(
                f"The 'k' parameter of {owner} must be an int >= 1. Got {k!r}."
            )
        self.k = int(k)
        self.threshold = _base_threshold(router, threshold, owner)
        self.budget = _budget_rule(budget, owner)
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise TypeError(f"'horizon' must be an int >= 1; got {horizon!r}.")
        if horizon < 1:
            raise ValueError(f"'horizon' must be an int >= 1; got {horizon!r}.")
        self.horizon = int(horizon)
        self.cost_slm = float(
            getattr(router, "cost_slm", 1.0) if cost_slm is None else cost_slm
        )
        self.cost_llm = float(
            getattr(router, "cost_llm", 10.0) if cost_llm is None else cost_llm
        )
        self.log_path = None if log_path is None else Path(log_path)
        self.featurizer = featurizer or CandidateFeaturizer()
        self._out_names = list(self.featurizer.get_feature_names_out())
        self._columns = _router_columns(router, self._out_names)
        self.decisions_: list[Decision] = []
        self._episodes: dict[Hashable, _Episode] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------- episodes
    def _episode(self, episode_id: Hashable, horizon: int | None) -> _Episode:
        ep = self._episodes.get(episode_id)
        if ep is None:
            ep = self._episodes[episode_id] = _Episode(horizon=horizon or self.horizon)
        elif horizon is not None:
            ep.horizon = int(horizon)
        return ep

    def _threshold_at(self, ep: _Episode) -> float:
        if self.budget is None:
            return self.threshold
        return self.budget.threshold(
            self.threshold, used=ep.used, step=ep.step, horizon=ep.horizon
        )

    def open_episodes(self) -> list[Hashable]:
        """The ids of the episodes not yet ended, oldest first."""
        with self._lock:
            return list(self._episodes)

    def episode_state(self, episode_id: Hashable = "default") -> tuple[int, int]:
        """``(llm_calls, step)`` of an open episode; ``(0, 0)`` if none is open."""
        ep = self._episodes.get(episode_id)
        return (0, 0) if ep is None else (ep.used, ep.step)

    def restore_episode(
        self, episode_id: Hashable, *, llm_calls: int, step: int
    ) -> None:
        """Reopen an episode where an earlier process left it (see :meth:`episode_state`)."""
        with self._lock:
            ep = self._episode(episode_id, None)
            ep.used, ep.step = int(llm_calls), int(step)

    def release_decisions(self, episode_id: Hashable, *, keep: int) -> None:
        """Free memory in a long-running process.

        Forgets the decisions of ``episode_id`` (its :meth:`end_episode` then
        returns only later ones) and keeps the last ``keep`` of ``decisions_``.
        """
        with self._lock:
            ep = self._episodes.get(episode_id)
            if ep is not None:
                ep.decisions.clear()
            extra = len(self.decisions_) - keep
            if extra > 0:
                del self.decisions_[:extra]

    # ------------------------------------------------------------- decide
    def _features(self, ep: _Episode, entry: dict[str, Any]) -> np.ndarray:
        window = [*ep.history[-self.featurizer.trend_window :], entry]
        k = self.k
        t_max = max(lp.size for e in window for lp in e["token_logprobs"])
        lp = np.zeros((len(window), k, t_max))
        lengths = np.zeros((len(window), k), dtype=np.intp)
        have_ent = all(x is not None for e in window for x in e["token_entropies"])
        ent = np.zeros_like(lp) if have_ent else None
        for i, e in enumerate(window):
            for j, row in enumerate(e["token_logprobs"]):
                lp[i, j, : row.size] = row
                lengths[i, j] = row.size
                if ent is not None:
                    ent[i, j, : row.size] = e["token_entropies"][j]
        scores = np.array([e["verifier_scores"] for e in window], dtype=np.float64)
        batch = StepBatch(
            token_logprobs=lp,
            lengths=lengths,
            token_entropies=ent,
            verifier_scores=scores,
            candidate_texts=np.array([e["texts"] for e in window], dtype=object),
            episode_id=np.zeros(len(window), dtype=np.intp),
            step=np.array([e["step"] for e in window]),
            horizon=np.full(len(window), max(ep.horizon, entry["step"] + 1)),
            context_length=np.array([e["context_length"] for e in window], float),
            tool_error=np.array([e["tool_error"] for e in window], dtype=bool),
            truncated=np.array([e["truncated"] for e in window], dtype=bool),
        )
        return np.asarray(self.featurizer.transform(batch))[-1]

    def _risk(
        self, ep: _Episode, entry: dict[str, Any]
    ) -> tuple[dict[str, float], float]:
        """The step's named features and the router's probability of failure."""
        f = self._features(ep, entry)
        named = dict(zip(self._out_names, f.tolist(), strict=True))
        x = (
            np.array([[named[c] for c in self._columns]])
            if self._columns is not None
            else f.reshape(1, -1)
        )
        with warnings.catch_warnings():
            # Columns are in the router's order; a one-row DataFrame would
            # cost ~3 ms of validation per step for nothing.
            warnings.filterwarnings("ignore", "X does not have valid feature")
            risk = float(self.router.predict_proba(x)[0, 1])
        return named, risk

    def _candidates(
        self,
        texts: Sequence[str],
        token_logprobs: Sequence[Any],
        token_entropies: Sequence[Any] | None,
        verifier_scores: Sequence[float] | None,
    ) -> tuple[dict[str, Any], int]:
        """The step's checked candidates (a history entry) and the SLM's pick."""
        parts = [
            _candidate_parts(
                (t, lp, None if token_entropies is None else token_entropies[i]), i
            )
            for i, (t, lp) in enumerate(zip(texts, token_logprobs, strict=True))
        ]
        if len(parts) != self.k:
            raise ValueError(
                f"decide() got {len(parts)} candidates; the cascade has k={self.k}."
            )
        lps = [p[1] for p in parts]
        if verifier_scores is None:
            scores = [0.5] * self.k
        else:
            scores = [float(s) for s in verifier_scores]
            if len(scores) != self.k:
                raise ValueError(
                    f"verifier_scores has {len(scores)} values; expected k={self.k}."
                )
        if self.select == "logprob":  # the SLM's most likely sequence
            rank = [lp.sum() for lp in lps]
        elif verifier_scores is None:
            rank = [lp.mean() for lp in lps]
        else:
            rank = scores
        entry = {
            "texts": [p[0] for p in parts],
            "token_logprobs": lps,
            "token_entropies": [p[2] for p in parts],
            "verifier_scores": scores,
        }
        return entry, int(np.argmax(rank))

    def decide(
        self,
        context: Any,
        texts: Sequence[str],
        token_logprobs: Sequence[Any],
        *,
        token_entropies: Sequence[Any] | None = None,
        verifier_scores: Sequence[float] | None = None,
        episode_id: Hashable = "default",
        horizon: int | None = None,
        context_length: float | None = None,
        tool_error: bool = False,
        truncated: bool = False,
        group: Hashable | None = None,
    ) -> Decision:
        """Route one step whose candidates are already sampled (no model calls).

        The building block of :meth:`StepCascade.act` for callers that sample
        and call the teacher themselves (an async server): it featurizes,
        routes, spends the budget and records the decision. When ``escalated``
        is True the caller calls the teacher and reports the result with
        :meth:`resolve`.

        Parameters
        ----------
        context : any
            The step's context (only its length is used, when
            ``context_length`` is None: ``len(str(context).split())``).
        texts, token_logprobs : sequences of length ``k``
        token_entropies : sequence of length ``k``, default=None
        verifier_scores : sequence of ``k`` floats, default=None
            None: candidates are ranked by mean token log-prob and the verifier
            features take the neutral score 0.5.
        episode_id : hashable, default="default"
            Steps of one episode share it (budget, step index, verifier trend).
        horizon : int, default=None
            Overrides the cascade's ``horizon`` for this episode.
        context_length : float, default=None
        tool_error, truncated : bool, default=False
            Flags of the observation this step sees.
        group : hashable, default=None
            Grouping key recorded with the decision.

        Returns
        -------
        Decision
            ``action`` is the SLM's best candidate, ``actor`` is "llm" when
            escalated (the action is the teacher's once resolved).
        """
        entry, chosen = self._candidates(
            texts, token_logprobs, token_entropies, verifier_scores
        )
        if context_length is None:
            context_length = float(len(str(context).split()))
        entry["context_length"] = context_length
        entry["tool_error"], entry["truncated"] = bool(tool_error), bool(truncated)
        with self._lock:
            ep = self._episode(episode_id, horizon)
            entry["step"] = ep.step
            named, risk = self._risk(ep, entry)
            tau = self._threshold_at(ep)
            escalated = bool(risk >= tau)
            decision = Decision(
                action=entry["texts"][chosen],
                actor="llm" if escalated else "slm",
                escalated=escalated,
                risk=risk,
                threshold=float(tau),
                features=named,
                cost=self.cost_slm + (self.cost_llm if escalated else 0.0),
                episode_id=episode_id,
                step=ep.step,
                candidates=entry["texts"],
                verifier_scores=[]
                if verifier_scores is None
                else entry["verifier_scores"],
                chosen=chosen,
                group=group,
                token_logprobs=[lp.tolist() for lp in entry["token_logprobs"]],
            )
            ep.history.append(entry)
            del ep.history[: -self.featurizer.trend_window]
            self._spend(ep, decision)
        return decision

    def _spend(self, ep: _Episode, decision: Decision) -> None:
        """Charge a decision to its episode (under the lock) and keep it."""
        ep.used += int(decision.escalated)
        if self.budget is not None:
            decision.budget_left = self.budget.max_calls - ep.used
        ep.step += 1
        ep.decisions.append(decision)
        self.decisions_.append(decision)

    def charge_llm_call(
        self,
        episode_id: Hashable = "default",
        *,
        fallback: str,
        group: Hashable | None = None,
    ) -> Decision | None:
        """Charge an LLM call made without routing (e.g. the SLM failed).

        The call counts as an escalated step of the episode, within its budget.

        Parameters
        ----------
        episode_id : hashable, default="default"
        fallback : str
            Why the LLM was called (recorded in :attr:`Decision.fallback`).
        group : hashable, default=None

        Returns
        -------
        Decision or None
            The step's decision (NaN risk and features; pass it to
            :meth:`resolve`), or None when the budget forbids an LLM call.
        """
        with self._lock:
            ep = self._episode(episode_id, None)
            tau = self._threshold_at(ep)
            if not math.isfinite(tau):
                return None
            decision = Decision(
                action="",
                actor="llm",
                escalated=True,
                risk=math.nan,
                threshold=float(tau),
                features=dict.fromkeys(self._out_names, math.nan),
                cost=self.cost_slm + self.cost_llm,
                episode_id=episode_id,
                step=ep.step,
                fallback=fallback,
                group=group,
            )
            self._spend(ep, decision)
        return decision

    def resolve(
        self, decision: Decision, action: str | None, *, error: str | None = None
    ) -> Decision:
        """Record the teacher's answer to an escalated decision.

        Parameters
        ----------
        decision : Decision
            Returned by :meth:`decide`. A decision that was not escalated is
            only logged (``action`` and ``error`` are ignored), so an async
            caller can pass every decision through here.
        action : str or None
            The teacher's action; None when the call failed.
        error : str, default=None
            Why the call failed; the SLM's best candidate stays the action and
            ``fallback`` records the error.

        Returns
        -------
        Decision
            The same object, updated.
        """
        if not decision.escalated:
            self._append_log(decision)
            return decision
        if action is None:
            decision.actor = "slm"
            decision.fallback = error or "teacher call failed"
        else:
            decision.action = str(action)
            decision.actor = "llm"
        self._append_log(decision)
        return decision

    def end_episode(
        self, episode_id: Hashable = "default", *, success: bool | None = None
    ) -> list[Decision]:
        """Close an episode: record its outcome and free its state.

        Parameters
        ----------
        episode_id : hashable, default="default"
        success : bool, default=None
            The episode's outcome, copied to every decision's ``outcome``.

        Returns
        -------
        list of Decision
            The episode's decisions.
        """
        with self._lock:
            ep = self._episodes.pop(episode_id, None)
        if ep is None:
            return []
        for d in ep.decisions:
            d.outcome = None if success is None else bool(success)
        return ep.decisions

    def llm_calls(self, episode_id: Hashable = "default") -> int:
        """LLM calls spent so far in an open episode."""
        return self.episode_state(episode_id)[0]

    # ---------------------------------------------------------------- log
    def _append_log(self, decision: Decision) -> None:
        if self.log_path is None:
            return
        line = json.dumps(decision.log_row(), default=_json_default)
        with self._lock, self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def to_frame(self) -> pd.DataFrame:
        """The decisions so far, one row per step.

        Columns: the router's features (:data:`~r2vcal.features.FEATURE_NAMES`),
        ``episode_id``, ``step``, ``group``, ``risk``, ``threshold``,
        ``escalated``, ``actor``, ``action``, ``cost``, ``budget_left``,
        ``fallback``, ``outcome``, and the inputs ``candidates``,
        ``verifier_scores``, ``token_logprobs`` (lists). Fit a router on it with
        a label column you add (e.g. counterfactual labels from replay).
        """
        rows = [d.as_row() for d in self.decisions_]
        cols = [c for c in FEATURE_NAMES if c in self._out_names]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=[*cols, "episode_id", "step", "risk"])
        return frame

    def write_log(self, path: str | Path) -> Path:
        """Write :meth:`to_frame` to ``.parquet`` or ``.jsonl`` (by suffix)."""
        path = Path(path)
        frame = self.to_frame()
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        elif path.suffix in (".jsonl", ".json"):
            frame.to_json(path, orient="records", lines=True)
        else:
            raise ValueError(
                f"write_log writes .parquet or .jsonl files; got {path.name!r}."
            )
        return path


def _base_threshold(router: Any, threshold: float | None, owner: str) -> float:
    base = getattr(router, "threshold_", None) if threshold is None else threshold
    if base is None or not 0.0 <= float(base) <= 1.0:
        raise ValueError(
            f"The 'threshold' parameter of {owner} must be a float in [0, 1] "
            "(or None with a fitted router that has threshold_). "
            f"Got {threshold!r} (router threshold_={base!r})."
        )
    return float(base)


def _budget_rule(budget: int | BudgetRule | None, owner: str) -> BudgetRule | None:
    if budget is None or isinstance(budget, (int, np.integer)):
        return None if budget is None else FixedBudget(int(budget))
    if hasattr(budget, "threshold") and hasattr(budget, "max_calls"):
        return budget
    raise TypeError(
        f"The 'budget' parameter of {owner} must be None, an int or a "
        f"budget rule (FixedBudget, PacedBudget). Got {budget!r} instead."
    )


def _router_columns(router: Any, out_names: list[str]) -> list[str] | None:
    """The router's input columns (None: all features, in order), checked."""
    names = getattr(router, "feature_names_in_", None)
    if names is not None:
        columns = [str(c) for c in names]
        missing = [c for c in columns if c not in out_names]
        if missing:
            raise ValueError(
                f"The router was fitted on columns {missing} that the featurizer "
                f"does not produce (it produces {out_names})."
            )
        return columns
    if getattr(router, "n_features_in_", len(out_names)) != len(out_names):
        raise ValueError(
            f"The router expects {router.n_features_in_} features but the "
            f"featurizer produces {len(out_names)} ({out_names})."
        )
    return None


class StepCascade(StepRouter):
    """Step-level SLM→LLM escalation around an existing agent loop.

    A :class:`StepRouter` with the models: :meth:`act` samples the SLM's
    candidates, scores them, routes and calls the teacher.

    Parameters
    ----------
    slm : callable or object with ``propose``
        ``slm(context, k)`` → ``k`` candidates (see the module docstring).
    teacher : callable
        ``teacher(context)`` → the LLM's action (str).
    router : fitted router
        As for :class:`StepRouter`.
    verifier : callable or object with ``score_candidates``, default=None
        ``verifier(context, texts)`` → scores in [0, 1].
    k : int, default=5
        Candidates sampled per step.
    threshold, budget, horizon, cost_slm, cost_llm, log_path, featurizer, select
        As for :class:`StepRouter` (:meth:`act` may override ``horizon`` per
        episode).
    on_teacher_error : {"raise", "fallback"}, default="raise"
        What a failing teacher call does: propagate, or execute the SLM's best
        candidate and record the error in :attr:`Decision.fallback`.

    Attributes
    ----------
    decisions_ : list of Decision
        Every decision so far, in order (:meth:`to_frame` makes the log table).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from r2vcal.baselines import EntropyRouter
    >>> from r2vcal.features import FEATURE_NAMES
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.uniform(size=(200, 18)), columns=FEATURE_NAMES)
    >>> router = EntropyRouter().fit(X, X["entropy_mean"] > 0.5)
    >>> def slm(context, k):  # confident on "look", unsure elsewhere
    ...     lp = -0.05 if context.endswith("room") else -2.0
    ...     return [("look", [lp, lp])] * k
    >>> cascade = StepCascade(slm, teacher=lambda c: "go north", router=router,
    ...                       threshold=0.5, budget=1, horizon=10)
    >>> [cascade.act(c, episode_id="e1").actor for c in ["a room", "a hall", "?"]]
    ['slm', 'llm', 'slm']
    >>> cascade.decisions_[2].budget_left, cascade.decisions_[2].threshold
    (0, inf)
    """

    def __init__(
        self,
        slm: Any,
        teacher: Any,
        router: Any,
        *,
        verifier: Any = None,
        k: int = 5,
        threshold: float | None = None,
        budget: int | BudgetRule | None = None,
        horizon: int = 50,
        cost_slm: float | None = None,
        cost_llm: float | None = None,
        on_teacher_error: str = "raise",
        log_path: str | Path | None = None,
        featurizer: CandidateFeaturizer | None = None,
        select: str = "verifier",
    ) -> None:
        self._slm = _as_call(slm, "propose", "slm")
        self._teacher = _as_call(teacher, "__call__", "teacher")
        self._verifier = (
            None
            if verifier is None
            else _as_call(verifier, "score_candidates", "verifier")
        )
        if on_teacher_error not in ("raise", "fallback"):
            raise ValueError(
                "The 'on_teacher_error' parameter of StepCascade must be a str "
                f"among {{'raise', 'fallback'}}. Got {on_teacher_error!r} instead."
            )
        self.on_teacher_error = on_teacher_error
        super().__init__(
            router,
            k=k,
            threshold=threshold,
            budget=budget,
            horizon=horizon,
            cost_slm=cost_slm,
            cost_llm=cost_llm,
            log_path=log_path,
            featurizer=featurizer,
            select=select,
        )

    # ------------------------------------------------------------ pieces
    def propose(self, context: Any) -> tuple[list[str], list[np.ndarray], list[Any]]:
        """Sample ``k`` SLM candidates: texts, token log-probs, token entropies."""
        items = list(self._slm(context, self.k))
        if len(items) != self.k:
            raise ValueError(
                f"The slm callable returned {len(items)} candidates; StepCascade "
                f"asked for k={self.k}."
            )
        parts = [_candidate_parts(item, i) for i, item in enumerate(items)]
        return [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]

    def score(self, context: Any, texts: Sequence[str]) -> list[float] | None:
        """Verifier scores of ``texts`` (None without a verifier)."""
        if self._verifier is None:
            return None
        return check_verifier_scores(self._verifier(context, list(texts)), len(texts))

    # ---------------------------------------------------------------- act
    def act(
        self,
        context: Any,
        *,
        episode_id: Hashable = "default",
        horizon: int | None = None,
        context_length: float | None = None,
        tool_error: bool = False,
        truncated: bool = False,
        group: Hashable | None = None,
    ) -> Decision:
        """Decide and produce the action for one agent step.

        Samples ``k`` SLM candidates, scores them, routes, and calls the
        teacher when the step is escalated. Parameters as in :meth:`decide`.

        Returns
        -------
        Decision
            ``decision.action`` is what the agent executes.
        """
        texts, lps, ents = self.propose(context)
        scores = self.score(context, texts)
        decision = self.decide(
            context,
            texts,
            lps,
            token_entropies=ents,
            verifier_scores=scores,
            episode_id=episode_id,
            horizon=horizon,
            context_length=context_length,
            tool_error=tool_error,
            truncated=truncated,
            group=group,
        )
        if not decision.escalated:
            self._append_log(decision)
            return decision
        try:
            answer = self._teacher(context)
        except Exception as exc:
            if self.on_teacher_error == "raise":
                raise
            return self.resolve(decision, None, error=f"{type(exc).__name__}: {exc}")
        if not isinstance(answer, str):
            answer = getattr(answer, "text", answer)
        return self.resolve(decision, str(answer))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
