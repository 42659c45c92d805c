"""Policies that propose K candidate actions with token log-probs and entropies.

Every policy has ``propose(context, k) -> list[Candidate]``:

* :class:`TransformersPolicy` — local Hugging Face model; log-probs are the
  model's true log-probabilities (``log_softmax`` of the raw ``output_logits``),
  not the temperature/top-p processed scores used for sampling.
* :class:`VLLMPolicy` — vLLM ``SamplingParams(n=k, logprobs=...)``; vLLM is
  imported only when the policy is built.
* :class:`OpenAIPolicy` — any OpenAI-compatible server (a provider, a vLLM
  server), with timeouts, retries with exponential backoff on 429/5xx/timeouts,
  and a clear :class:`PolicyError` after the last try.
* :class:`ExpertPolicy` — the environment's expert (TextWorld plan, HumanEval+
  canonical solution, terminal ``solution.sh``), optionally degraded by noise.

Token entropies are computed the same way on every backend, from the top
:data:`r2vcal.features.ENTROPY_TOP_N` log-probs per token plus the residual
mass (:func:`r2vcal.features.topn_entropy`): what a server returns, so a router
trained on local rollouts sees the same features behind ``r2vcal serve``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.models import load_causal_lm
from r2vcal.features import ENTROPY_TOP_N, topn_entropy

__all__ = [
    "AdmissibleScoringPolicy",
    "Candidate",
    "ExpertPolicy",
    "OpenAIPolicy",
    "PolicyError",
    "TransformersPolicy",
    "VLLMPolicy",
    "generate_kwargs",
]


class PolicyError(RuntimeError):
    """A policy could not produce candidates (e.g. the server kept failing)."""


@dataclass
class Candidate:
    """One proposed action.

    Attributes
    ----------
    text : str
        The action text.
    token_logprobs : ndarray of shape (n_tokens,)
        Log-probability of each generated token under the model.
    token_entropies : ndarray of shape (n_tokens,)
        Entropy (nats) of the model's next-token distribution at each step.
    tokens : list of str or None
        The generated tokens, when known.
    metadata : dict
        Source-specific extras (``source``, ``finish_reason``, ``noisy``...).
    """

    text: str
    token_logprobs: np.ndarray
    token_entropies: np.ndarray
    tokens: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_logprobs = np.asarray(self.token_logprobs, dtype=float)
        self.token_entropies = np.asarray(self.token_entropies, dtype=float)
        if self.token_logprobs.shape != self.token_entropies.shape:
            raise ValueError(
                "token_logprobs and token_entropies must have the same shape; got "
                f"{self.token_logprobs.shape} and {self.token_entropies.shape}."
            )

    @property
    def sum_logprob(self) -> float:
        """Sequence log-probability (0 for an empty candidate)."""
        return float(self.token_logprobs.sum())

    @property
    def mean_entropy(self) -> float:
        """Mean token entropy (``nan`` when no tokens)."""
        if self.token_entropies.size == 0:
            return float("nan")
        return float(self.token_entropies.mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly representation."""
        return {
            "text": self.text,
            "token_logprobs": self.token_logprobs.tolist(),
            "token_entropies": self.token_entropies.tolist(),
            "tokens": self.tokens,
            "metadata": self.metadata,
        }


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"The 'k' parameter must be an int >= 1; got {k!r}.")
    return int(k)


def _topn_entropy(logprobs: list[float]) -> float:
    """:func:`r2vcal.features.topn_entropy` of one token's top log-probs."""
    lp = np.asarray(logprobs, dtype=float)
    if lp.size == 0:
        return float("nan")
    return float(topn_entropy(lp[None, :])[0])


def generate_kwargs(
    tokenizer: Any,
    max_new_tokens: int,
    n: int,
    *,
    temperature: float,
    top_p: float = 1.0,
) -> dict[str, Any]:
    """``model.generate`` keywords for ``n`` candidates with their raw logits.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Its pad token (else its EOS token) pads the candidates.
    max_new_tokens : int
        Longest candidate.
    n : int
        Candidates (``num_return_sequences``).
    temperature : float
        Sampling temperature; ``0`` decodes greedily.
    top_p : float, default=1.0
        Nucleus sampling mass (with ``temperature > 0``; ``top_k`` is off).

    Returns
    -------
    dict
    """
    pad = tokenizer.pad_token_id
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_return_sequences": n,
        "output_logits": True,
        "return_dict_in_generate": True,
        "pad_token_id": pad if pad is not None else tokenizer.eos_token_id,
    }
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False)
    return kw


# ---------------------------------------------------------------- transformers
class TransformersPolicy:
    """Sample K candidates from a local transformers causal LM.

    Parameters
    ----------
    model : str or transformers.PreTrainedModel
        A model id / directory, or a loaded model.
    tokenizer : transformers tokenizer, optional
        Required when ``model`` is an object; loaded from ``model`` otherwise.
    max_new_tokens : int, default=32
    temperature : float, default=1.0
        Sampling temperature (``0`` = greedy; then ``k`` must be 1).
    top_p : float, default=1.0
    stop : str or None, default="\\n"
        Cut each candidate at the first occurrence (the scored tokens are cut
        at the same token).
    seed : int, default=0
        Seed for sampling (reset on every call, so calls are reproducible).
    device : str, default="cpu"
    entropy_top_n : int or None, default=ENTROPY_TOP_N
        Token entropies from the top-n log-probs plus the residual mass, as
        OpenAI-compatible servers allow (:func:`r2vcal.features.topn_entropy`);
        ``None`` uses the full vocabulary (features then differ from a served
        model's).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: str | None = "\n",
        seed: int = 0,
        device: str = "cpu",
        entropy_top_n: int | None = ENTROPY_TOP_N,
    ) -> None:
        model, tokenizer = load_causal_lm(model, tokenizer)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens!r}.")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0; got {temperature!r}.")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.stop = stop
        self.seed = seed
        self.device = device
        self.entropy_top_n = entropy_top_n

    def propose(self, context: str, k: int = 5) -> list[Candidate]:
        """Sample ``k`` continuations of ``context``.

        Parameters
        ----------
        context : str
            The prompt.
        k : int, default=5

        Returns
        -------
        list of Candidate
        """
        import torch

        k = _check_k(k)
        if self.temperature == 0 and k > 1:
            raise ValueError("temperature=0 (greedy) gives one candidate; use k=1.")
        tok = self.tokenizer
        enc = tok(context, return_tensors="pt").to(self.device)
        if enc["input_ids"].shape[1] == 0:
            bos = tok.bos_token_id if tok.bos_token_id is not None else 0
            enc = {
                "input_ids": torch.tensor([[bos]], device=self.device),
                "attention_mask": torch.ones(1, 1, dtype=torch.long),
            }
        torch.manual_seed(self.seed)
        gen_kwargs = generate_kwargs(
            tok, self.max_new_tokens, k, temperature=self.temperature, top_p=self.top_p
        )
        with torch.no_grad():
            out = self.model.generate(**enc, **gen_kwargs)
        prompt_len = enc["input_ids"].shape[1]
        seqs = out.sequences[:, prompt_len:]
        logits = torch.stack(out.logits, dim=1).float()  # (k, T, V) raw logits
        logp = torch.log_softmax(logits, dim=-1)
        if self.entropy_top_n:
            top = logp.topk(min(self.entropy_top_n, logp.shape[-1]), dim=-1).values
            ent = torch.from_numpy(topn_entropy(top.numpy()))  # (k, T)
        else:
            ent = -(logp.exp() * logp).sum(-1)  # (k, T), full vocabulary
        chosen = logp.gather(-1, seqs[:, : logp.shape[1]].unsqueeze(-1)).squeeze(-1)
        eos = tok.eos_token_id
        cands = []
        for i in range(k):
            ids = seqs[i].tolist()
            n = len(ids)
            finish = "length"
            if eos is not None and eos in ids:
                n = ids.index(eos)
                finish = "eos"
            # Cut at the stop string, keeping whole tokens up to it.
            pieces = [tok.decode(ids[: j + 1]) for j in range(n)] if self.stop else []
            if self.stop:
                for j, text_j in enumerate(pieces):
                    if self.stop in text_j:
                        n = j + 1
                        finish = "stop"
                        break
            text = tok.decode(ids[:n], skip_special_tokens=True)
            if self.stop and self.stop in text:
                text = text[: text.index(self.stop)]
            cands.append(
                Candidate(
                    text=text,
                    token_logprobs=chosen[i, :n].numpy(),
                    token_entropies=ent[i, :n].numpy(),
                    tokens=tok.convert_ids_to_tokens(ids[:n]),
                    metadata={"source": "transformers", "finish_reason": finish},
                )
            )
        return cands


# ------------------------------------------------------------------------ vLLM
class VLLMPolicy:
    """Sample K candidates with vLLM (imported on construction).

    Parameters
    ----------
    model : str
        Model id or directory.
    max_new_tokens : int, default=32
    temperature : float, default=1.0
    top_p : float, default=1.0
    logprobs : int, default=ENTROPY_TOP_N
        Top log-probs returned per token; token entropies use the top
        ``logprobs`` of them (vLLM adds the sampled token when it is not among
        them), as every other backend does.
    stop : list of str, optional
    seed : int, default=0
    **llm_kwargs
        Passed to :class:`vllm.LLM` (``dtype``, ``enforce_eager``, ...).
    """

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        logprobs: int = ENTROPY_TOP_N,
        stop: list[str] | None = None,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "VLLMPolicy needs vllm: `pip install r2vcal[vllm]` (GPU) or "
                "`make test-vllm` (CPU build in .venv-vllm)."
            ) from exc
        self.llm = LLM(model=model, seed=seed, **llm_kwargs)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.logprobs = logprobs
        self.stop = stop
        self.seed = seed

    def propose(self, context: str, k: int = 5) -> list[Candidate]:
        """Sample ``k`` continuations of ``context``."""
        from vllm import SamplingParams

        k = _check_k(k)
        params = SamplingParams(
            n=k,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_new_tokens,
            logprobs=self.logprobs,
            stop=self.stop,
            seed=self.seed,
        )
        (result,) = self.llm.generate([context], params, use_tqdm=False)
        cands = []
        for comp in result.outputs:
            lps, ents, toks = [], [], []
            for tid, top in zip(comp.token_ids, comp.logprobs or []):
                lps.append(top[tid].logprob)
                values = sorted((v.logprob for v in top.values()), reverse=True)
                ents.append(_topn_entropy(values[: self.logprobs]))
                toks.append(top[tid].decoded_token or "")
            cands.append(
                Candidate(
                    text=comp.text,
                    token_logprobs=np.asarray(lps),
                    token_entropies=np.asarray(ents),
                    tokens=toks,
                    metadata={"source": "vllm", "finish_reason": comp.finish_reason},
                )
            )
        return cands


# ----------------------------------------------------------- OpenAI-compatible
class OpenAIPolicy:
    """K candidates from an OpenAI-compatible HTTP server.

    Parameters
    ----------
    model : str
        Model name sent in the request.
    base_url : str, default="http://127.0.0.1:8000/v1"
        Server root (``.../v1``).
    api_key : str or None, default=None
        Sent as a bearer token when given.
    mode : {"chat", "completions"}, default="chat"
        Endpoint: ``/chat/completions`` (context = one user message) or
        ``/completions`` (context = raw prompt).
    max_new_tokens : int, default=64
    temperature : float, default=1.0
    top_logprobs : int, default=5
        Top log-probs requested per token (entropy over these).
    timeout : float, default=30.0
        Seconds per request.
    max_retries : int, default=3
        Retries after the first attempt on 429, 5xx, timeouts and connection
        errors (other 4xx fail at once).
    backoff : float, default=0.5
        First retry delay in seconds; doubles each retry.
    """

    _RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        mode: str = "chat",
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_logprobs: int = ENTROPY_TOP_N,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if mode not in ("chat", "completions"):
            raise ValueError(
                "The 'mode' parameter of OpenAIPolicy must be a str among "
                f"{{'chat', 'completions'}}. Got {mode!r} instead."
            )
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0; got {max_retries!r}.")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0; got {timeout!r}.")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff

    @property
    def url(self) -> str:
        """The endpoint requests go to."""
        path = "/chat/completions" if self.mode == "chat" else "/completions"
        return self.base_url + path

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            import httpx
        except ImportError:  # pragma: no cover - depends on the install
            httpx = None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                if httpx is not None:
                    resp = httpx.post(
                        self.url, content=body, headers=headers, timeout=self.timeout
                    )
                    status, text = resp.status_code, resp.text
                else:
                    import requests

                    r = requests.post(
                        self.url, data=body, headers=headers, timeout=self.timeout
                    )
                    status, text = r.status_code, r.text
            except Exception as exc:
                if not _is_transient(exc):
                    raise PolicyError(f"request to {self.url} failed: {exc}") from exc
                last = f"{type(exc).__name__}: {exc}"
                continue
            if status == 200:
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise PolicyError(
                        f"{self.url} returned invalid JSON: {text[:200]!r}"
                    ) from exc
            last = f"HTTP {status}: {text[:200]}"
            if status not in self._RETRY_STATUS:
                raise PolicyError(f"request to {self.url} failed with {last}")
        raise PolicyError(
            f"request to {self.url} failed after {self.max_retries + 1} attempts; "
            f"last status: {last}"
        )

    def propose(self, context: str, k: int = 5) -> list[Candidate]:
        """Ask the server for ``k`` completions of ``context``."""
        k = _check_k(k)
        payload: dict[str, Any] = {
            "model": self.model,
            "n": k,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }
        if self.mode == "chat":
            payload["messages"] = [{"role": "user", "content": context}]
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        else:
            payload["prompt"] = context
            payload["logprobs"] = self.top_logprobs
        data = self._post(payload)
        cands = []
        for choice in data.get("choices", []):
            lps: list[float] = []
            ents: list[float] = []
            toks: list[str] = []
            lp = choice.get("logprobs") or {}
            if self.mode == "chat":
                text = (choice.get("message") or {}).get("content") or ""
                for item in lp.get("content") or []:
                    toks.append(item.get("token", ""))
                    lps.append(float(item["logprob"]))
                    tops = [t["logprob"] for t in item.get("top_logprobs") or []]
                    ents.append(_topn_entropy(tops or [item["logprob"]]))
            else:
                text = choice.get("text", "")
                toks = list(lp.get("tokens") or [])
                lps = [float(x) for x in lp.get("token_logprobs") or []]
                for top in lp.get("top_logprobs") or [None] * len(lps):
                    ents.append(_topn_entropy(list((top or {}).values())))
            cands.append(
                Candidate(
                    text=text,
                    token_logprobs=np.asarray(lps, dtype=float),
                    token_entropies=np.asarray(ents[: len(lps)], dtype=float),
                    tokens=toks or None,
                    metadata={
                        "source": "openai",
                        "finish_reason": choice.get("finish_reason"),
                    },
                )
            )
        if len(cands) != k:
            raise PolicyError(f"{self.url} returned {len(cands)} choices; asked {k}.")
        return cands


def _is_transient(exc: Exception) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    transient = {
        "TimeoutException",  # httpx
        "TransportError",  # httpx (connection errors)
        "Timeout",  # requests
        "ConnectionError",  # requests / builtins
        "TimeoutError",
    }
    return bool(names & transient)


# --------------------------------------------------------------------- expert
_NOISE_ACTIONS = {
    "humaneval": ("RUN", "SUBMIT", "WRITE\n    pass\n"),
    "terminal": ("ls", "SUBMIT", "cat /dev/null"),
}


class ExpertPolicy:
    """The environment's own expert, optionally degraded by noise.

    Parameters
    ----------
    env : Env
        An environment with ``expert_action()`` (possibly wrapped).
    noise_rate : float, default=0.0
        Probability that each candidate is replaced by a random other action
        (TextWorld: an admissible command; others: a fixed bank).
    seed : int, default=0
        Seed of the noise.

    Notes
    -----
    Expert candidates have no token scores (empty arrays).
    """

    def __init__(self, env: Any, *, noise_rate: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1]; got {noise_rate!r}.")
        self.env = env
        self.noise_rate = noise_rate
        self.rng = np.random.default_rng(seed)

    def _alternatives(self, expert: str) -> list[str]:
        inner = self.env
        while hasattr(inner, "env") and not hasattr(inner, "admissible_commands"):
            inner = inner.env
        if hasattr(inner, "admissible_commands"):
            alts = list(inner.admissible_commands())
        else:
            alts = list(_NOISE_ACTIONS.get(getattr(self.env, "name", ""), ()))
        return [a for a in alts if a != expert]

    def propose(self, context: Any = None, k: int = 1) -> list[Candidate]:
        """``k`` candidates: the expert action, each noised with ``noise_rate``."""
        k = _check_k(k)
        expert = self.env.expert_action()
        if expert is None:
            raise PolicyError("the environment has no expert action (episode over?).")
        cands = []
        for _ in range(k):
            text, noisy = expert, False
            if self.noise_rate and self.rng.random() < self.noise_rate:
                alts = self._alternatives(expert)
                if alts:
                    text, noisy = alts[int(self.rng.integers(len(alts)))], True
            cands.append(
                Candidate(
                    text=text,
                    token_logprobs=np.zeros(0),
                    token_entropies=np.zeros(0),
                    metadata={"source": "expert", "noisy": noisy},
                )
            )
        return cands


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
        model, tokenizer = load_causal_lm(model, tokenizer)
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
        k = _check_k(k)
        uniq = sorted({c.strip() for c in commands if c.strip()})
        cands = self.score(context, uniq)
        cands.sort(key=lambda c: (-c.sum_logprob, c.text))
        return cands[:k]
