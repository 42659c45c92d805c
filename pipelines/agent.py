"""The frozen SLM as an agent: ``k`` candidates, verifier scores, one action.

* :class:`SLMAgent` — free generation: the SLM samples ``k`` candidates and
  the verifier picks the executed one.
* :class:`ScoringAgent` — the drop-in when the environment lists its commands:
  the ``k`` most likely admissible commands under the SLM
  (:class:`pipelines.policies.AdmissibleScoringPolicy`).
* :func:`build_agent` picks one by ``policy``; :func:`agent_decide` calls it at
  an environment's current state.

Both agents are deterministic functions of their inputs and memoise them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.policies import AdmissibleScoringPolicy, TransformersPolicy
from pipelines.verifier_model import Verifier
from r2vcal.cascade import SELECT_RULES

__all__ = ["POLICIES", "SLMAgent", "ScoringAgent", "agent_decide", "build_agent"]

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


class ScoringAgent:
    """The SLM choosing among admissible commands, with the verifier's scores.

    The drop-in for :class:`pipelines.rollout.SLMAgent` when the environment
    lists its commands: ``decide(prompt, commands)`` returns the same fields.

    Parameters
    ----------
    slm : str
        Model directory or id.
    verifier : str
        Directory of a saved :class:`pipelines.verifier.Verifier`.
    k : int, default=5
        Candidates (the ``k`` most likely admissible commands).
    select : {"logprob", "verifier"}, default="logprob"
        Which candidate is executed: the SLM's most likely, or the verifier's
        best-scored.

    Attributes
    ----------
    needs_commands : bool
        Always True: callers pass the admissible commands to :meth:`decide`.
    """

    needs_commands = True

    def __init__(
        self, slm: str, verifier: str, *, k: int = 5, select: str = "logprob"
    ) -> None:
        if k < 1:
            raise ValueError(f"The 'k' parameter must be >= 1; got {k!r}.")
        if select not in SELECT_RULES:
            raise ValueError(
                "The 'select' parameter of ScoringAgent must be a str among "
                f"{set(sorted(SELECT_RULES))}. Got {select!r} instead."
            )
        self.policy = AdmissibleScoringPolicy(slm)
        self.verifier = Verifier.load(verifier)
        self.k = k
        self.select = select
        self._memo: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}

    def decide(self, prompt: str, commands: list[str] | None = None) -> dict[str, Any]:
        """Candidates, their scores and the chosen action at ``prompt``.

        Parameters
        ----------
        prompt : str
        commands : list of str
            The admissible commands of the current state; when empty or None
            the agent falls back to ``["look"]``.

        Returns
        -------
        dict
            ``texts``, ``token_logprobs``, ``token_entropies`` (lists of lists),
            ``scores`` (verifier), ``chosen`` (index), ``action``,
            ``context_length``, ``n_commands``.
        """
        cmds = tuple(sorted({c.strip() for c in (commands or []) if c.strip()}))
        if not cmds:
            cmds = ("look",)
        key = (prompt, cmds)
        if key in self._memo:
            return self._memo[key]
        cands = self.policy.propose(prompt, self.k, commands=list(cmds))
        texts = [c.text for c in cands]
        scores = self.verifier.score_candidates(prompt, texts)
        chosen = 0 if self.select == "logprob" else int(np.argmax(scores))
        out = {
            "texts": texts,
            "token_logprobs": [c.token_logprobs.tolist() for c in cands],
            "token_entropies": [c.token_entropies.tolist() for c in cands],
            "scores": [float(s) for s in scores],
            "chosen": chosen,
            "action": texts[chosen],
            "context_length": len(self.policy._prompt_ids(prompt)),
            "n_commands": len(cmds),
        }
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[key] = out
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
