"""Score the environment's admissible commands under the SLM (choice-based policy).

Free generation makes a tiny SLM name its action letter by letter; one wrong
token ("take red appel") and the step is wasted. When the environment lists
the commands it accepts (TextWorld's ``admissible_commands``), a policy can
instead **score** each of them by its sequence log-probability under the SLM,

    log π_θ(" " + command + EOS | prompt) = Σ_j log π_θ(token_j | prompt, token_<j),

and propose the ``k`` best as candidates. The log-probs and entropies of the
candidates are the model's real ones at the command's tokens (``log_softmax``
of the raw logits), and token entropies follow r2vcal's one definition
(:func:`r2vcal.features.topn_entropy` of the top :data:`~r2vcal.features.ENTROPY_TOP_N`
log-probs), so the router features (:class:`r2vcal.features.CandidateFeaturizer`)
keep their meaning. The
completion format is :mod:`pipelines.bc`'s (a space, the command, EOS).

* :class:`AdmissibleScoringPolicy` — ``score(context, commands)`` /
  ``propose(context, k, commands=...)``, one batched forward pass per call.
* :class:`ScoringAgent` — the drop-in for :class:`pipelines.rollout.SLMAgent`
  (``decide(prompt, commands)``), deterministic, memoised per
  ``(prompt, commands)``; the executed candidate is the SLM's most likely
  command (``select="logprob"``) or the verifier's favourite among the ``k``
  (``select="verifier"``, DESIGN §1).

Free generation stays available (``policy="generate"`` in
:mod:`pipelines.run`, :mod:`pipelines.rollout`): it is what a user with a real
SLM and no command list runs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from pipelines.policies import Candidate
from r2vcal.cascade import SELECT_RULES
from r2vcal.features import ENTROPY_TOP_N, topn_entropy

__all__ = ["SELECT_RULES", "AdmissibleScoringPolicy", "ScoringAgent"]


class AdmissibleScoringPolicy:
    """Rank a list of commands by their sequence log-probability under a causal LM.

    Parameters
    ----------
    model : str or transformers.PreTrainedModel
        A model directory / id, or a loaded model.
    tokenizer : transformers tokenizer, optional
        Required when ``model`` is an object.
    batch_size : int, default=64
        Commands scored per forward pass.
    device : str, default="cpu"

    Notes
    -----
    Candidates are sorted by sequence log-probability (ties by command text, so
    the order is a pure function of the inputs). Each candidate's
    ``token_logprobs`` / ``token_entropies`` cover the command's tokens and
    the EOS token that ends it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("tokenizer is required when 'model' is a model object.")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; commands need an end.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}.")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device

    def _prompt_ids(self, context: str) -> list[int]:
        ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit:  # keep the end of the prompt (the Action: cue), room for a command
            ids = ids[-max(1, int(limit) - 32) :]
        if not ids:
            bos = self.tokenizer.bos_token_id
            ids = [bos if bos is not None else self.tokenizer.eos_token_id]
        return list(ids)

    def score(self, context: str, commands: list[str]) -> list[Candidate]:
        """Every command as a scored candidate, in the order given.

        Parameters
        ----------
        context : str
            The prompt (ends with the action cue).
        commands : list of str
            Commands to score (non-empty).

        Returns
        -------
        list of Candidate
        """
        import torch

        if not commands:
            raise ValueError("commands must list at least one command to score.")
        tok = self.tokenizer
        p = self._prompt_ids(context)
        eos = int(tok.eos_token_id)
        conts = [
            [*tok(" " + c.strip(), add_special_tokens=False)["input_ids"], eos]
            for c in commands
        ]
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        cands: list[Candidate] = []
        with torch.no_grad():
            # The prompt once (its KV cache is shared), then every command's
            # tokens in one padded batch on top of it.
            pre = self.model(
                input_ids=torch.tensor([p], device=self.device), use_cache=True
            )
            first = pre.logits[0, -1].float()
            for b in range(0, len(conts), self.batch_size):
                chunk = conts[b : b + self.batch_size]
                width = max(len(c) for c in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), len(p) + width), dtype=torch.long)
                mask[:, : len(p)] = 1
                for i, c in enumerate(chunk):
                    ids[i, : len(c)] = torch.tensor(c)
                    mask[i, len(p) : len(p) + len(c)] = 1
                cache = copy.deepcopy(pre.cache)
                cache.batch_repeat_interleave(len(chunk))
                logits = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    cache=cache,
                    use_cache=True,
                ).logits.float()
                # position j predicts token j + 1; the prompt's last logit, token 0
                logits = torch.cat(
                    [first.expand(len(chunk), 1, -1), logits[:, :-1]], dim=1
                )
                logp = torch.log_softmax(logits, dim=-1)
                top = logp.topk(min(ENTROPY_TOP_N, logp.shape[-1]), dim=-1).values
                ent = topn_entropy(top.cpu().numpy())
                for i, c in enumerate(chunk):
                    n = len(c)
                    tgt = torch.tensor(c, device=logp.device).unsqueeze(-1)
                    lp = logp[i, :n].gather(-1, tgt).squeeze(-1)
                    cands.append(
                        Candidate(
                            text=commands[b + i].strip(),
                            token_logprobs=lp.cpu().numpy(),
                            token_entropies=ent[i, :n],
                            tokens=tok.convert_ids_to_tokens(c),
                            metadata={"source": "admissible_scoring"},
                        )
                    )
        return cands

    def propose(
        self, context: str, k: int = 5, *, commands: list[str]
    ) -> list[Candidate]:
        """The ``k`` most likely commands (all of them when fewer).

        Parameters
        ----------
        context : str
        k : int, default=5
        commands : list of str
            The admissible commands of the current state.

        Returns
        -------
        list of Candidate
            Best first.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"The 'k' parameter must be an int >= 1; got {k!r}.")
        uniq = sorted({c.strip() for c in commands if c.strip()})
        cands = self.score(context, uniq)
        cands.sort(key=lambda c: (-c.sum_logprob, c.text))
        return cands[: int(k)]


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
        from pipelines.verifier import Verifier

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
