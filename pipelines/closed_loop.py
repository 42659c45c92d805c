"""The closed-loop simulator: seeded episodes with a decision rule in the loop.

:class:`ClosedLoop` plays the frozen SLM agent on a deterministic environment;
at each step a :class:`r2vcal.cascade.StepCascade` (or the hindsight oracle)
decides whether the teacher re-executes the step. Hindsight replays ("does the
SLM alone still win from here?") give the oracle and the counterfactual labels
(:func:`pipelines.labels.counterfactual_label`). Used by
:mod:`pipelines.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from pipelines.envs import MemoEnv
from pipelines.labels import counterfactual_label, verifier_label
from pipelines.prompting import format_prompt

__all__ = ["ClosedLoop"]


class ClosedLoop:
    """Seeded episodes of the frozen SLM with a decision rule in the loop.

    Parameters
    ----------
    agent : pipelines.agent.SLMAgent or pipelines.agent.ScoringAgent
        The SLM with ``k`` candidates and verifier selection (memoised per prompt).
    make_env : callable
        ``make_env()`` → a seeded, deterministic environment (a
        :class:`pipelines.perturb.PerturbedEnv`). One is made and wrapped in a
        :class:`pipelines.envs.MemoEnv` of its own: hindsight replays use it
        too, and the episode in play is restored afterwards by replaying its
        actions (served from memory).
    prompt_kwargs : dict
        Passed to :func:`pipelines.prompting.format_prompt`.
    """

    def __init__(
        self,
        agent: Any,
        make_env: Callable[[], Any],
        prompt_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.agent = agent
        self.env = MemoEnv(make_env())
        self._dirty = False
        self.prompt_kwargs = dict(prompt_kwargs or {})
        self.horizon = int(self.env.max_steps)
        self._alone: dict[tuple[Any, ...], bool] = {}
        self._teacher_now: str | None = None
        self._cmds_now: list[str] = []

    def _decide(self, prompt: str, commands: list[str] | None = None) -> Any:
        """``agent.decide`` (with the current state's commands when it needs them)."""
        if getattr(self.agent, "needs_commands", False):
            cmds = self._cmds_now if commands is None else commands
            return self.agent.decide(prompt, cmds)
        return self.agent.decide(prompt)

    # ------------------------------------------------------ SLM as callables
    def slm(self, context: str, k: int) -> list[dict[str, Any]]:
        """The agent's ``k`` candidates at ``context`` (StepCascade ``slm``)."""
        d = self._decide(context)
        return [
            {"text": t, "token_logprobs": lp, "token_entropies": ent}
            for t, lp, ent in zip(
                d["texts"], d["token_logprobs"], d["token_entropies"], strict=True
            )
        ]

    def verifier(self, context: str, texts: list[str]) -> list[float]:
        """The verifier's scores of the agent's candidates (StepCascade ``verifier``)."""
        return list(self._decide(context)["scores"])

    def teacher(self, context: str) -> str:
        """The environment expert's action in the current state."""
        return self._teacher_now or "look"

    # -------------------------------------------------------------- hindsight
    def slm_alone(self, task: str, seed: int, actions: tuple[str, ...]) -> bool:
        """Does the SLM alone succeed after replaying ``actions``? (memoised)

        The SLM's own continuation visits states whose answer is the same, so
        every prefix along it is memoised too.
        """
        key = (task, seed, actions)
        if key in self._alone:
            return self._alone[key]
        env = self.env
        self._dirty = True
        obs0 = env.reset(task, seed)
        history: list[tuple[str, str]] = []
        done, success = False, False
        for a in actions:
            obs, done, success, _ = env.step(a)
            history.append((a, obs))
            if done:
                break
        path = [actions]
        cur = actions
        while not done:
            prompt = format_prompt(obs0, history, **self.prompt_kwargs)
            a = self._decide(prompt, env.admissible_commands())["action"] or "look"
            obs, done, success, _ = env.step(a)
            history.append((a, obs))
            cur = (*cur, a)
            path.append(cur)
            if cur and (task, seed, cur) in self._alone and not done:
                success = self._alone[(task, seed, cur)]
                break
        for p in path:
            self._alone[(task, seed, p)] = bool(success)
        return bool(success)

    def label(
        self,
        task: str,
        seed: int,
        prefix: tuple[str, ...],
        slm_action: str,
        teacher: str,
    ) -> tuple[int, bool, bool]:
        """Counterfactual label at a visited state: ``(y, slm_ok, llm_ok)``.

        See :func:`pipelines.labels.counterfactual_label`.
        """
        return counterfactual_label(
            self.slm_alone(task, seed, (*prefix, slm_action)),
            slm_action,
            teacher,
            partial(self.slm_alone, task, seed, (*prefix, teacher)),
        )

    # ---------------------------------------------------------------- episode
    def _oracle(
        self, task: str, seed: int, actions: tuple[str, ...], slm_action: str
    ) -> tuple[bool, str, dict[str, Any]]:
        """The hindsight oracle's step: escalate when the SLM's action loses."""
        teacher = self._teacher_now
        escalate = (
            teacher is not None
            and slm_action.strip() != teacher.strip()
            and not self.slm_alone(task, seed, (*actions, slm_action))
        )
        action = teacher if escalate and teacher is not None else slm_action
        return escalate, action, {"escalated": escalate, "risk": float(escalate)}

    def _cascade_step(
        self,
        cascade: Any,
        prompt: str,
        episode_id: str,
        seed: int,
        flags: dict[str, bool],
    ) -> tuple[bool, str, dict[str, Any]]:
        """``cascade.act`` at the current state: escalation, action and row fields."""
        d = cascade.act(
            prompt,
            episode_id=episode_id,
            horizon=self.horizon,
            context_length=self._decide(prompt)["context_length"],
            tool_error=flags["tool_error"],
            truncated=flags["truncated"],
            group=seed,
        )
        row = {
            "escalated": d.escalated,
            "risk": d.risk,
            "threshold": d.threshold,
            **d.features,
        }
        return d.escalated, d.action or "look", row

    def _label_fields(
        self,
        task: str,
        seed: int,
        actions: tuple[str, ...],
        prompt: str,
        slm_action: str,
        teacher: str,
    ) -> dict[str, Any]:
        """The counterfactual and verifier labels of a visited step."""
        y, slm_ok, llm_ok = self.label(task, seed, actions, slm_action, teacher)
        scores = self._decide(prompt)["scores"]
        v_teacher = float(self.agent.verifier.score_candidates(prompt, [teacher])[0])
        return {
            "y_counterfactual": y,
            "y_verifier": verifier_label(v_teacher, scores),
            "slm_step_success": slm_ok,
            "llm_step_success": llm_ok,
        }

    def _restore(self, task: str, seed: int, actions: tuple[str, ...]) -> None:
        """After a hindsight replay moved the env: replay the episode's prefix."""
        if self._dirty:
            self.env.reset(task, seed)
            for a in actions:
                self.env.step(a)
            self._dirty = False

    def run_episode(
        self, task: str, seed: int, cascade: Any = None, *, label: bool = False
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Play one episode with ``cascade`` deciding (None: the hindsight oracle).

        Returns
        -------
        episode : dict
            ``task``, ``seed``, ``success``, ``steps``, ``llm_calls``.
        steps : list of dict
            Per step: decision fields and features (cascade arms), the SLM's
            and the teacher's action; with ``label``, the counterfactual label.
        """
        env = self.env
        obs0 = env.reset(task, seed)
        flags = {
            "tool_error": False,
            "truncated": bool(
                set(getattr(env, "reset_perturbations", []))
                & {"truncate", "drop_lines", "mask"}
            ),
        }
        history: list[tuple[str, str]] = []
        actions: tuple[str, ...] = ()
        rows: list[dict[str, Any]] = []
        episode_id = f"{task}|{seed}"
        done, success, calls = False, False, 0
        while not done:
            prompt = format_prompt(obs0, history, **self.prompt_kwargs)
            teacher = env.expert_action()
            self._teacher_now = teacher
            self._cmds_now = list(env.admissible_commands())
            slm_action = self._decide(prompt)["action"] or "look"
            if cascade is None:
                escalate, action, row = self._oracle(task, seed, actions, slm_action)
            else:
                escalate, action, row = self._cascade_step(
                    cascade, prompt, episode_id, seed, flags
                )
            calls += int(escalate)
            row.update(
                task_id=task,
                seed=int(seed),
                episode_id=episode_id,
                step=len(actions),
                action=action,
                slm_action=slm_action,
                teacher_action=teacher or "",
            )
            if label and teacher is not None:
                row.update(
                    self._label_fields(task, seed, actions, prompt, slm_action, teacher)
                )
            rows.append(row)
            self._restore(task, seed, actions)
            obs, done, success, info = env.step(action)
            flags = {
                "tool_error": bool(info.get("tool_error", False)),
                "truncated": bool(info.get("truncated", False)),
            }
            history.append((action, obs))
            actions = (*actions, action)
        if cascade is not None:
            cascade.end_episode(episode_id, success=success)
        episode = {
            "task_id": task,
            "seed": int(seed),
            "success": bool(success),
            "steps": len(actions),
            "llm_calls": calls,
        }
        return episode, rows
