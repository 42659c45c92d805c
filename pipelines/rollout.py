"""Roll out the frozen SLM under many seeds into a trajectory-feature table.

Usage::

    python -m pipelines.rollout --slm runs/bc --verifier runs/verifier \\
        --split test --seeds 1000 1001 1002 --out runs/rollout_test.parquet

The agent at each step (DESIGN §1, inference): the SLM samples ``k``
candidates for the prompt (:func:`pipelines.prompting.format_prompt`), the verifier
scores them, and the best-scored candidate is executed. Every step gives one
row of the table of :mod:`r2vcal.schema`:

* features from :class:`r2vcal.features.CandidateFeaturizer` (token log-probs
  and entropies of the ``k`` candidates, verifier scores, agreement, step
  context, ``tool_error``/``truncated`` flags of the observation the step
  sees);
* ``y_counterfactual`` (DESIGN §6): replay the seeded, deterministic episode to
  step t, then (a) let the SLM finish, (b) take the teacher's action at t and
  let the SLM finish; 1 when (b) succeeds and (a) fails. The SLM agent is a
  deterministic function of its prompt (sampling is re-seeded on every call,
  the verifier is deterministic), so (a) is the SLM episode itself and only
  (b) is re-run, and skipped when the teacher's action equals the SLM's;
  ``slm_step_success`` / ``llm_step_success`` hold (a) and (b);
* ``y_verifier``, the R2V paper's cheaper label: 1 when the verifier scores the
  teacher's action above every SLM candidate by more than ``label_margin``;
* ``slm_success`` / ``teacher_success``: the SLM-only and teacher-only
  episodes under the same seed.

Extra columns: ``prompt``, ``candidate_texts``, ``verifier_scores`` (lists),
``action`` (executed), ``teacher_action``, ``verifier_teacher``,
``perturbations`` (what fired on the step's observation, comma-joined) and
``split``; :mod:`pipelines.dpo` builds its preference pairs from them.

Episodes run in parallel with :class:`joblib.Parallel` (backend
configurable); each worker loads the SLM and verifier once.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._cli import cli_options, config_parser, run_cli
from pipelines.agent import POLICIES, SLMAgent, agent_decide, build_agent
from pipelines.envs import make_env, shared_env
from pipelines.labels import counterfactual_label, label_confusion, verifier_label
from pipelines.prompting import PromptConfig, format_prompt, prompt_kwargs_of
from r2vcal.cascade import SELECT_RULES

__all__ = [
    "POLICIES",
    "RolloutConfig",
    "SLMAgent",
    "agent_decide",
    "build_agent",
    "cached_agent",
    "cached_env",
    "label_confusion",
    "main",
    "make_parser",
    "play_episode",
    "rollout_episode",
    "verifier_label",
]

_SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}
_AGENTS: dict[tuple[Any, ...], Any] = {}
_ENVS: dict[str, Any] = {}


def cached_agent(cfg: dict[str, Any]) -> Any:
    """The agent of a rollout config dict, memoised (the last one per process).

    Parameters
    ----------
    cfg : dict
        ``asdict(RolloutConfig)``: its ``slm``, ``verifier``, ``policy``,
        ``select``, ``k``, ``temperature``, ``max_new_tokens`` and
        ``sample_seed`` select the agent (:func:`pipelines.agent.build_agent`).

    Returns
    -------
    SLMAgent or ScoringAgent
    """
    key = (
        cfg["slm"],
        cfg["verifier"],
        cfg.get("policy", "generate"),
        cfg.get("select", "logprob"),
        cfg["k"],
        cfg["temperature"],
        cfg["max_new_tokens"],
        cfg["sample_seed"],
    )
    if key not in _AGENTS:
        _AGENTS.clear()
        _AGENTS[key] = build_agent(
            cfg["slm"],
            cfg["verifier"],
            policy=cfg.get("policy", "generate"),
            select=cfg.get("select", "logprob"),
            k=cfg["k"],
            temperature=cfg["temperature"],
            max_new_tokens=cfg["max_new_tokens"],
            seed=cfg["sample_seed"],
        )
    return _AGENTS[key]


def cached_env(cfg: dict[str, Any]) -> Any:
    """The perturbed environment of ``cfg``, memoised (one per process and setting).

    Counterfactual branches replay prefixes that earlier episodes played:
    :class:`pipelines.envs.MemoEnv` serves those transitions from memory.
    """
    key = json.dumps(
        [cfg["env"], cfg["env_kwargs"], cfg["families"], cfg["rate"], cfg["max_steps"]],
        sort_keys=True,
        default=str,
    )
    if key not in _ENVS:
        _ENVS.clear()
        # Its own environment: nothing else may move it behind MemoEnv's back.
        _ENVS[key] = make_env(
            cfg["env"],
            perturb=(cfg["families"], cfg["rate"]),
            step_limit=cfg["max_steps"],
            memo=True,
            **cfg["env_kwargs"],
        )
    return _ENVS[key]


def play_episode(
    env: Any,
    agent: Any,
    task: str,
    seed: int,
    *,
    script: list[str] = (),  # type: ignore[assignment]
    record: bool = False,
    prompt_kwargs: dict[str, Any] | None = None,
) -> tuple[bool, list[dict[str, Any]]]:
    """Play one seeded episode: ``script`` actions first, then the agent.

    Parameters
    ----------
    env : PerturbedEnv
    agent : SLMAgent or None
        ``None`` plays the teacher (environment expert) after the script.
    task, seed
        The episode (deterministic under both).
    script : list of str
        Actions forced at the first steps (a replayed prefix, a teacher step).
    record : bool, default=False
        Return per-step details (decisions, teacher action, flags).
    prompt_kwargs : dict, optional
        Passed to :func:`pipelines.prompting.format_prompt`.

    Returns
    -------
    success : bool
    steps : list of dict
        Empty unless ``record``.
    """
    prompt_kwargs = prompt_kwargs or {}
    obs0 = env.reset(task, seed)
    truncated = bool(
        set(getattr(env, "reset_perturbations", []))
        & {"truncate", "drop_lines", "mask"}
    )
    flags = {
        "tool_error": False,
        "truncated": truncated,
        "perturbations": list(getattr(env, "reset_perturbations", [])),
    }
    history: list[tuple[str, str]] = []
    steps: list[dict[str, Any]] = []
    done, success, t = False, False, 0
    while not done:
        teacher = env.expert_action()
        if t < len(script):
            action, decision, prompt = script[t], None, None
        elif agent is None:
            action, decision, prompt = teacher or "look", None, None
        else:
            prompt = format_prompt(obs0, history, **prompt_kwargs)
            decision = agent_decide(agent, prompt, env)
            action = decision["action"] or "look"
        if record:
            steps.append(
                {
                    "t": t,
                    "prompt": prompt,
                    "decision": decision,
                    "action": action,
                    "teacher_action": teacher,
                    **flags,
                }
            )
        obs, done, success, info = env.step(action)
        flags = {
            "tool_error": bool(info.get("tool_error", False)),
            "truncated": bool(info.get("truncated", False)),
            "perturbations": list(info.get("perturbations", [])),
        }
        history.append((action, obs))
        t += 1
    return bool(success), steps


def _succeeds(
    env: Any,
    agent: Any,
    task: str,
    seed: int,
    script: list[str],
    prompt_kwargs: dict[str, Any],
) -> bool:
    """Does the agent win after playing ``script`` (:func:`play_episode`)?"""
    return play_episode(
        env, agent, task, seed, script=script, prompt_kwargs=prompt_kwargs
    )[0]


def rollout_episode(cfg: dict[str, Any], task: str, seed: int) -> list[dict[str, Any]]:
    """All table rows of one ``(task, seed)`` episode (labels included).

    Parameters
    ----------
    cfg : dict
        :class:`RolloutConfig` as a dict.
    task : str
    seed : int

    Returns
    -------
    list of dict
    """
    start = time.perf_counter()
    if cfg["n_jobs"] != 1:
        import torch

        torch.set_num_threads(1)
    agent = cached_agent(cfg)
    env = cached_env(cfg)
    pk = prompt_kwargs_of(cfg)
    slm_success, steps = play_episode(
        env, agent, task, seed, record=True, prompt_kwargs=pk
    )
    teacher_success, _ = play_episode(env, None, task, seed)
    actions = [s["action"] for s in steps]
    horizon = int(env.max_steps)
    episode_id = f"{task}|{seed}"
    rows = []
    for s in steps:
        d = s["decision"]
        t = s["t"]
        teacher = s["teacher_action"]
        v_teacher = (
            float(agent.verifier.score_candidates(s["prompt"], [teacher])[0])
            if teacher
            else 0.0
        )
        cf = None
        if cfg["counterfactual"]:
            script = [*actions[:t], teacher]
            cf = counterfactual_label(
                slm_success,
                actions[t],
                teacher,
                partial(_succeeds, env, agent, task, seed, script, pk),
            )
        row = {
            "episode_id": episode_id,
            "task_id": task,
            "seed": int(seed),
            "step": t,
            "horizon": horizon,
            "token_logprobs": d["token_logprobs"],
            "token_entropies": d["token_entropies"],
            "verifier_scores": d["scores"],
            "candidate_texts": d["texts"],
            "context_length": d["context_length"],
            "tool_error": s["tool_error"],
            "truncated": s["truncated"],
            "prompt": s["prompt"],
            "action": actions[t],
            "teacher_action": teacher or "",
            "verifier_teacher": v_teacher,
            "perturbations": ",".join(s["perturbations"]),
            "y_verifier": int(
                bool(teacher)
                and verifier_label(v_teacher, d["scores"], cfg["label_margin"])
            ),
            "slm_success": slm_success,
            "teacher_success": teacher_success,
        }
        if cf is not None:
            row["slm_step_success"] = slm_success
            row["llm_step_success"] = cf[2]
            row["y_counterfactual"] = cf[0]
        rows.append(row)
    elapsed = time.perf_counter() - start
    for row in rows:
        row["episode_seconds"] = elapsed
    return rows


@dataclass
class RolloutConfig:
    """Configuration of SLM rollouts.

    Parameters
    ----------
    slm : str
        Frozen SLM (directory or id), e.g. the output of :mod:`pipelines.bc`.
    verifier : str
        Directory of the verifier (:mod:`pipelines.verifier`).
    out : str
        Output Parquet path.
    env : str
        Environment name (TextWorld for now).
    env_kwargs : dict
        Environment constructor arguments.
    split : str
        Task split (``"test"`` for evaluation, ``"train"`` for DPO/router data).
    tasks : list of str or None
        Explicit tasks (override ``split``).
    limit : int or None
        First ``limit`` tasks.
    seeds : list of int
        Perturbation seeds (use seeds never used in training for evaluation).
    families : list of str
        Perturbation families (``["all"]``; ``[]`` for clean episodes).
    rate : float
        Firing probability per operator and step.
    max_steps : int or None
        Episode step limit (default: the environment's).
    policy : {"generate", "score"}
        How the SLM proposes candidates (see :func:`build_agent`).
    select : {"logprob", "verifier"}
        Executed candidate when ``policy="score"``.
    k, temperature, max_new_tokens, sample_seed
        SLM sampling.
    label_margin : float
        Margin of the verifier-comparison label.
    counterfactual : bool
        Compute counterfactual labels (one branch per step where the teacher
        disagrees with the SLM).
    prompt : PromptConfig
        The prompt template (:func:`pipelines.prompting.format_prompt`); on the
        command line, one option per field (``--n-turns``, ...).
    n_jobs : int
    backend : str or None
        ``joblib`` backend (``loky``; ``dask``/``ray`` on a cluster).
    progress : bool
        Show a progress bar over episodes.
    """

    slm: str = "runs/bc"
    verifier: str = "runs/verifier"
    out: str = "runs/rollout.parquet"
    env: str = "textworld"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    tasks: list[str] | None = field(default=None, metadata=cli_options(nargs="*"))
    limit: int | None = None
    seeds: list[int] = field(default_factory=lambda: [1000, 1001, 1002])
    families: list[str] = field(
        default_factory=lambda: ["all"], metadata=cli_options(nargs="*")
    )
    rate: float = 0.05
    max_steps: int | None = None
    policy: str = field(
        default="generate", metadata=cli_options(choices=sorted(POLICIES))
    )
    select: str = field(
        default="logprob", metadata=cli_options(choices=sorted(SELECT_RULES))
    )
    k: int = 5
    temperature: float = 0.5
    max_new_tokens: int = 12
    sample_seed: int = 0
    label_margin: float = 0.0
    counterfactual: bool = True
    prompt: PromptConfig = field(default_factory=PromptConfig)
    n_jobs: int = 1
    backend: str | None = "loky"
    progress: bool = False


def summarize(table: Any, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Success rates with episode-bootstrap CIs, label balance and confusion.

    Parameters
    ----------
    table : DataFrame
        A rollout table.
    n_resamples : int, default=1000
    seed : int, default=0

    Returns
    -------
    dict
    """
    from r2vcal.metrics import bootstrap_ci

    ep = table.groupby("episode_id")[["slm_success", "teacher_success"]].first()
    out: dict[str, Any] = {"n_steps": len(table), "n_episodes": len(ep)}
    for col in ("slm_success", "teacher_success"):
        x = ep[col].to_numpy(dtype=float)
        ci = bootstrap_ci(np.mean, x, n_resamples=n_resamples, random_state=seed)
        out[col] = {"rate": float(x.mean()), "ci": [float(ci.low), float(ci.high)]}
    for col in ("y_counterfactual", "y_verifier"):
        if col in table:
            out[f"{col}_rate"] = float(table[col].mean())
    if "y_counterfactual" in table and "y_verifier" in table:
        out["confusion_cf_vs_verifier"] = label_confusion(table)
    if "episode_seconds" in table:
        secs = table.groupby("episode_id")["episode_seconds"].first().sum()
        out["seconds_per_step"] = float(secs / max(len(table), 1))
    return out


def main(cfg: RolloutConfig) -> dict[str, Any]:
    """Roll out, label, featurize, validate and write the table.

    Parameters
    ----------
    cfg : RolloutConfig
        The SLM and verifier to roll out, the episodes to play, the
        labelling rule and the Parquet table to write.

    Returns
    -------
    dict
        :func:`summarize` of the table plus ``seconds`` and ``out``.
    """
    import pandas as pd
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from r2vcal.features import FEATURE_NAMES, CandidateFeaturizer
    from r2vcal.schema import validate_table

    if not cfg.seeds:
        raise ValueError("RolloutConfig.seeds must list at least one seed.")
    if cfg.k < 1:
        raise ValueError(f"The 'k' parameter must be >= 1; got {cfg.k!r}.")
    for name in ("slm", "verifier"):
        if not Path(getattr(cfg, name)).exists():
            raise FileNotFoundError(
                f"RolloutConfig.{name} = {getattr(cfg, name)!r} does not exist; "
                f"train it first (python -m pipelines."
                f"{'bc' if name == 'slm' else 'verifier'})."
            )
    start = time.perf_counter()
    env = shared_env(cfg.env, cfg.env_kwargs)
    tasks = list(cfg.tasks) if cfg.tasks else env.tasks(cfg.split)
    if cfg.limit is not None:
        tasks = tasks[: cfg.limit]
    if not tasks:
        raise ValueError(f"no tasks in split {cfg.split!r}; check env_kwargs n_games.")
    cfg_dict = asdict(cfg)
    par: dict[str, Any] = {"n_jobs": cfg.n_jobs, "return_as": "generator_unordered"}
    if cfg.backend is not None:
        par["backend"] = cfg.backend
    jobs = [(t, s) for t in tasks for s in cfg.seeds]
    chunks = Parallel(**par)(delayed(rollout_episode)(cfg_dict, t, s) for t, s in jobs)
    rows = [
        r
        for c in tqdm(chunks, total=len(jobs), desc="rollout", disable=not cfg.progress)
        for r in c
    ]
    order = {job: i for i, job in enumerate(jobs)}
    rows.sort(key=lambda r: (order[(r["task_id"], r["seed"])], r["step"]))
    df = pd.DataFrame(rows)
    feats = CandidateFeaturizer().fit_transform(df)
    for j, name in enumerate(FEATURE_NAMES):
        df[name] = feats[:, j]
    # Wall times go to the summary, not the table: the same inputs give the
    # same table, byte for byte.
    secs = df.groupby("episode_id")["episode_seconds"].first().sum()
    df = df.drop(columns=["token_logprobs", "token_entropies", "episode_seconds"])
    if cfg.split in _SPLIT_NAMES and not cfg.tasks:
        df["split"] = _SPLIT_NAMES[cfg.split]
    table = validate_table(df)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    summary = summarize(table)
    summary.update(
        seconds=round(time.perf_counter() - start, 2),
        seconds_per_step=float(secs / max(len(table), 1)),
        out=str(out),
    )
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`RolloutConfig`."""
    return config_parser(RolloutConfig, "Roll out the frozen SLM to a table.")


if __name__ == "__main__":
    run_cli(make_parser(), RolloutConfig, main)
