"""Roll out the frozen SLM under many seeds into a trajectory-feature table.

Usage::

    python -m pipelines.rollout --slm runs/bc --verifier runs/verifier \\
        --split test --seeds 1000 1001 1002 --out runs/rollout_test.parquet

The agent at each step (DESIGN §1, inference): the SLM samples ``k``
candidates for the prompt (:func:`pipelines.bc.format_prompt`), the verifier
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
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bc import (
    PROMPT_DEFAULTS,
    config_from_args,
    format_prompt,
    prompt_kwargs_of,
)

__all__ = [
    "POLICIES",
    "RolloutConfig",
    "SLMAgent",
    "agent_decide",
    "build_agent",
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

#: How the SLM proposes its ``k`` candidates: free generation (sampling) or
#: scoring the environment's admissible commands (:mod:`pipelines.scoring`).
POLICIES = frozenset({"generate", "score"})


class SLMAgent:
    """The SLM with K candidates and verifier selection (deterministic per prompt).

    Parameters
    ----------
    slm : str
        Model directory or id (loaded with ``from_pretrained``).
    verifier : str
        Directory of a saved :class:`pipelines.verifier.Verifier`.
    k : int, default=5
    temperature : float, default=0.5
    max_new_tokens : int, default=12
    seed : int, default=0
        Sampling seed (re-applied on every call).
    """

    def __init__(
        self,
        slm: str,
        verifier: str,
        *,
        k: int = 5,
        temperature: float = 0.5,
        max_new_tokens: int = 12,
        seed: int = 0,
    ) -> None:
        from pipelines.policies import TransformersPolicy
        from pipelines.verifier import Verifier

        if k < 1:
            raise ValueError(f"The 'k' parameter must be >= 1; got {k!r}.")
        self.policy = TransformersPolicy(
            slm,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop="\n",
            seed=seed,
        )
        self.verifier = Verifier.load(verifier)
        self.k = k
        self._memo: dict[str, dict[str, Any]] = {}

    def _eos_scores(self, prompt: str) -> tuple[float, float]:
        import torch

        tok, model = self.policy.tokenizer, self.policy.model
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        ent = float(-(logp.exp() * logp).sum())
        return float(logp[tok.eos_token_id]), ent

    def decide(self, prompt: str) -> dict[str, Any]:
        """Candidates, their scores and the chosen action at ``prompt``.

        Returns
        -------
        dict
            ``texts``, ``token_logprobs``, ``token_entropies`` (lists of
            lists; an empty candidate — the SLM emitted EOS at once — gets the
            EOS token's log-prob and entropy), ``scores``, ``chosen``
            (index), ``action``, ``context_length`` (prompt tokens).
        """
        if prompt in self._memo:
            return self._memo[prompt]
        cands = self.policy.propose(prompt, k=self.k)
        texts = [c.text.strip() for c in cands]
        lps = [c.token_logprobs.tolist() for c in cands]
        ents = [c.token_entropies.tolist() for c in cands]
        if any(not lp for lp in lps):
            eos_lp, eos_ent = self._eos_scores(prompt)
            for i, lp in enumerate(lps):
                if not lp:
                    lps[i], ents[i] = [min(eos_lp, 0.0)], [max(eos_ent, 0.0)]
        scores = self.verifier.score_candidates(prompt, texts)
        chosen = int(np.argmax(scores))
        out = {
            "texts": texts,
            "token_logprobs": lps,
            "token_entropies": ents,
            "scores": scores.tolist(),
            "chosen": chosen,
            "action": texts[chosen],
            "context_length": len(self.policy.tokenizer(prompt)["input_ids"]),
        }
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[prompt] = out
        return out


def build_agent(
    slm: str,
    verifier: str,
    *,
    policy: str = "generate",
    k: int = 5,
    temperature: float = 0.5,
    max_new_tokens: int = 12,
    seed: int = 0,
    select: str = "logprob",
) -> Any:
    """The SLM agent of ``policy``: :class:`SLMAgent` or a ScoringAgent.

    Parameters
    ----------
    slm, verifier : str
        Model and verifier directories.
    policy : {"generate", "score"}, default="generate"
        ``"generate"`` samples ``k`` candidates (:class:`SLMAgent`);
        ``"score"`` ranks the admissible commands by the SLM's sequence
        log-probability (:class:`pipelines.scoring.ScoringAgent`).
    k, temperature, max_new_tokens, seed
        Sampling settings (``"generate"`` only).
    select : {"logprob", "verifier"}, default="logprob"
        Executed candidate of ``"score"``.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"The 'policy' parameter must be a str among {set(sorted(POLICIES))}. "
            f"Got {policy!r} instead."
        )
    if policy == "score":
        from pipelines.scoring import ScoringAgent

        return ScoringAgent(slm, verifier, k=k, select=select)
    return SLMAgent(
        slm,
        verifier,
        k=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )


def agent_decide(agent: Any, prompt: str, env: Any) -> dict[str, Any]:
    """``agent.decide`` at the current state of ``env``.

    Agents that choose among the environment's commands (``needs_commands``)
    get ``env.admissible_commands()``.
    """
    if getattr(agent, "needs_commands", False):
        return agent.decide(prompt, env.admissible_commands())
    return agent.decide(prompt)


def _get_agent(cfg: dict[str, Any]) -> Any:
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


def _make_env(cfg: dict[str, Any]) -> Any:
    """The perturbed environment of ``cfg``, memoised (one per process and setting).

    Counterfactual branches replay prefixes that earlier episodes played:
    :class:`pipelines.envs.MemoEnv` serves those transitions from memory.
    """
    from pipelines.envs import MemoEnv, make_env
    from pipelines.perturb import PerturbedEnv, make_family

    key = json.dumps(
        [cfg["env"], cfg["env_kwargs"], cfg["families"], cfg["rate"], cfg["max_steps"]],
        sort_keys=True,
        default=str,
    )
    if key not in _ENVS:
        _ENVS.clear()
        # Its own environment: nothing else may move it behind MemoEnv's back.
        base = make_env(cfg["env"], **cfg["env_kwargs"])
        ops = [op for fam in cfg["families"] for op in make_family(fam, cfg["rate"])]
        _ENVS[key] = MemoEnv(PerturbedEnv(base, ops, max_steps=cfg["max_steps"]))
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
        Passed to :func:`pipelines.bc.format_prompt`.

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
    agent = _get_agent(cfg)
    env = _make_env(cfg)
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
        if not cfg["counterfactual"]:
            llm_ok = None
        elif teacher is None or teacher.strip() == actions[t].strip():
            llm_ok = slm_success
        else:
            llm_ok, _ = play_episode(
                env, agent, task, seed, script=[*actions[:t], teacher], prompt_kwargs=pk
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
        if llm_ok is not None:
            row["slm_step_success"] = slm_success
            row["llm_step_success"] = bool(llm_ok)
            row["y_counterfactual"] = int(bool(llm_ok) and not slm_success)
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
    n_turns, n_actions, max_goal_chars, max_obs_chars, drop_prompt_lines
        Prompt template (must match BC).
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
    tasks: list[str] | None = None
    limit: int | None = None
    seeds: list[int] = field(default_factory=lambda: [1000, 1001, 1002])
    families: list[str] = field(default_factory=lambda: ["all"])
    rate: float = 0.05
    max_steps: int | None = None
    policy: str = "generate"
    select: str = "logprob"
    k: int = 5
    temperature: float = 0.5
    max_new_tokens: int = 12
    sample_seed: int = 0
    label_margin: float = 0.0
    counterfactual: bool = True
    n_turns: int = PROMPT_DEFAULTS["n_turns"]
    n_actions: int = PROMPT_DEFAULTS["n_actions"]
    max_goal_chars: int = PROMPT_DEFAULTS["max_goal_chars"]
    max_obs_chars: int = PROMPT_DEFAULTS["max_obs_chars"]
    drop_prompt_lines: bool = PROMPT_DEFAULTS["drop_prompt_lines"]
    n_jobs: int = 1
    backend: str | None = "loky"
    progress: bool = False


def verifier_label(v_teacher: float, scores: Any, margin: float = 0.0) -> int:
    """The R2V paper's step label from verifier scores.

    1 when the verifier scores the teacher's action above every SLM candidate
    by more than ``margin``.

    >>> verifier_label(0.9, [0.2, 0.5]), verifier_label(0.4, [0.2, 0.5])
    (1, 0)
    """
    return int(v_teacher > max(scores) + margin)


def label_confusion(table: Any) -> dict[str, int]:
    """Counts of ``y_counterfactual`` × ``y_verifier`` (keys ``cf{a}_ver{b}``)."""
    cf = table["y_counterfactual"].astype(int)
    vf = table["y_verifier"].astype(int)
    return {
        f"cf{a}_ver{b}": int(((cf == a) & (vf == b)).sum())
        for a in (0, 1)
        for b in (0, 1)
    }


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
    from pipelines.collect import _get_env

    env = _get_env(cfg.env, cfg.env_kwargs)
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
    """Command-line parser mirroring :class:`RolloutConfig`."""
    p = argparse.ArgumentParser(description="Roll out the frozen SLM to a table.")
    p.add_argument("--slm", default=None)
    p.add_argument("--verifier", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--env", default=None)
    p.add_argument("--env-kwargs", type=json.loads, default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--families", nargs="*", default=None)
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--policy", choices=sorted(POLICIES), default=None)
    p.add_argument("--select", choices=["logprob", "verifier"], default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--label-margin", type=float, default=None)
    p.add_argument(
        "--no-counterfactual", dest="counterfactual", action="store_false", default=None
    )
    p.add_argument("--n-jobs", type=int, default=None)
    p.add_argument("--backend", default=None)
    return p


if __name__ == "__main__":
    print(json.dumps(main(config_from_args(make_parser().parse_args(), RolloutConfig))))
