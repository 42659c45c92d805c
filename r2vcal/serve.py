"""An OpenAI-compatible proxy that routes every agent step: ``r2vcal serve``.

Most agents call an OpenAI-compatible chat endpoint once per step. Put this
proxy at that endpoint and every step is routed between a small model (SLM) and
a large one (LLM), without touching the agent's code. For each
``POST /v1/chat/completions`` request the proxy

1. asks the SLM endpoint for ``k`` candidates with token log-probabilities
   (``n=k``, ``logprobs=true``, ``top_logprobs``);
2. scores them with the verifier, when one is configured;
3. builds the router's features (:class:`~r2vcal.features.CandidateFeaturizer`,
   through :class:`~r2vcal.cascade.StepCascade`) with the step context read from
   the conversation: the step index of the conversation, whether a tool message
   since the last assistant turn reports an error, and the context length (the
   SLM's ``usage.prompt_tokens``);
4. routes with the fitted router and its threshold, within the conversation's
   LLM budget;
5. answers with the SLM's best candidate or the LLM's answer as a normal chat
   completion (streamed when the request asks for it), with the headers
   ``x-r2vcal-escalated``, ``x-r2vcal-risk``, ``x-r2vcal-model`` (plus
   ``x-r2vcal-threshold``, ``x-r2vcal-step``, ``x-r2vcal-conversation`` and, after
   a failure, ``x-r2vcal-fallback``), and appends the decision to a JSONL or
   Parquet log with the feature columns of :mod:`r2vcal.schema`.

``POST /v1/responses`` (the Responses API, function tools) is routed the same
way (:mod:`r2vcal._serve_responses`).

Conversations (budget, step index, verifier trend) are identified by the
client's own id when it sends one (the ``x-r2vcal-conversation`` header,
``metadata.conversation_id``/``session_id``/``thread_id``, ``prompt_cache_key``,
Responses ``conversation``/``previous_response_id``), otherwise by the history:
a request whose history continues an answer of the proxy belongs to that
conversation, so interleaved rollouts, trimmed histories and agents without a
system prompt resolve (:mod:`r2vcal._serve_state`). ``user`` is an end-user
label (the decision's ``group``), never a conversation. A retry of the same
request gets the same answer again, without a new decision or upstream call.
At most ``max_conversations`` are kept (least recently used dropped first).

Accounting: every LLM call is charged to the conversation's budget and written
to the decision log exactly once, including calls made because the SLM failed
(an SLM failure with the budget spent is a 502, not a free LLM call) and calls
whose answer was malformed or whose client disconnected (the log line is
written whether or not the answer could be used). The answer's ``usage`` is
the SLM's (all ``k`` candidates) plus the LLM's tokens; ``x-r2vcal-cost`` gives
the step's cost and ``/metrics`` a cost counter per actor and model.

Faults: upstream timeouts, 429/5xx answers and broken connections are retried
with exponential backoff; then an SLM failure sends the step to the LLM and an
LLM failure answers with the SLM's best candidate (``x-r2vcal-fallback`` says
why). An upstream answer the proxy cannot read (no choices, wrong types, NaN
counts) is a failure like any other. An SLM 400/413/422 is the client's
request's fault (context too long, a field the server refuses) and is returned
to the client, not escalated. Every attempt has a hard time limit, so no
request hangs, and a client that disconnects cancels the upstream calls.
Every request field the proxy knows is validated before any upstream call;
refusals and failures use the OpenAI error JSON (also for 404/405), never name
an upstream URL, and header values carry no control characters. Tool calls and
function-calling fields pass through untouched in both directions.

Deployment: ``api_key`` (or ``$R2VCAL_API_KEY``) requires
``Authorization: Bearer <key>`` on ``/v1/*``; :func:`run_server` warns loudly
when it binds off loopback without one, and checks both upstreams at startup
(one line: reachable, model listed, ``n > 1`` and log-probs supported).
``/health`` reports both upstreams' state. There is no ``/docs`` or
``/openapi.json``.

The verifier is a URL (``POST {"context": messages, "candidates": [text, ...]}``
answered by ``{"scores": [float in [0, 1], ...]}``), an import string
``"module:callable"``, or a callable ``verifier(messages, texts) -> scores`` (an
object with ``score_candidates`` works too; coroutine functions are awaited).

Streaming: the proxy streams an answer once it has it whole. The SLM's
candidates must be complete to be routed, and the LLM's answer is fetched whole
so that a failure half-way can still fall back to the SLM; the client receives
ordinary ``chat.completion.chunk`` events.

This module needs the ``serve`` extra (FastAPI, uvicorn, aiohttp); they are
imported when an app is built, never by ``import r2vcal``. The upstream client
is aiohttp rather than httpx: with 32 concurrent requests httpx's connection
pool spent more CPU than the rest of the proxy (``bench/bench_serve.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r2vcal._serve_request import (
    MAX_BODY_BYTES,
    BadRequest,
    answer_problem,
    error_body,
    header_value,
    parse_json,
    scrub,
    validate_chat,
)
from r2vcal._serve_state import (
    ConversationTracker,
    ParquetLog,
    StateStore,
    explicit_id,
)
from r2vcal.cascade import BudgetRule, Decision, StepCascade
from r2vcal.features import topn_entropy

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp
    from fastapi import FastAPI

__all__ = [
    "CONVERSATION_HEADER",
    "TOOL_ERROR_PATTERN",
    "BackgroundServer",
    "Upstream",
    "check_upstreams",
    "create_app",
    "run_in_thread",
    "run_server",
]

#: Request header that names the conversation (episode) a step belongs to.
CONVERSATION_HEADER = "x-r2vcal-conversation"

#: A tool message since the last assistant turn matching this (case-insensitive)
#: sets the step's ``tool_error`` feature.
TOOL_ERROR_PATTERN = (
    r"\b(error|errors|exception|traceback|failed|failure|fatal|"
    r"not found|no such file|permission denied|timed out|invalid)\b"
)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: SLM answers with these statuses were caused by the client's request (a
#: context too long, a bad field): returned to the client, not escalated.
_CLIENT_FAULT_STATUS = frozenset({400, 413, 422})
_LOG = logging.getLogger("r2vcal.serve")
_OBSERVATION = "Observation:"
_MISSING_EXTRA = (
    "r2vcal serve needs FastAPI, uvicorn and aiohttp: pip install 'r2vcal[serve]'"
)


def _import_serve_deps() -> tuple[Any, Any]:
    try:
        import aiohttp
        import fastapi
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_MISSING_EXTRA) from exc
    return fastapi, aiohttp


# --------------------------------------------------------------------------- #
# Upstreams
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Upstream:
    """An OpenAI-compatible chat endpoint the proxy calls.

    Parameters
    ----------
    base_url : str
        Server root including ``/v1`` (``http://127.0.0.1:8001/v1``).
    model : str
        Model name sent in the requests.
    api_key : str or None, default=None
        Sent as a bearer token when given.
    timeout : float, default=60.0
        Hard limit in seconds of one attempt (connect, send, receive).
    max_retries : int, default=2
        Retries after the first attempt on timeouts, broken connections and
        408/409/425/429/5xx answers; other 4xx answers fail at once.
    backoff : float, default=0.25
        Delay before the first retry, in seconds; doubles with each retry.
    supports_n : bool, default=True
        The server answers ``n > 1`` in one request (vLLM, SGLang). False
        (llama.cpp's server, many hosted APIs) makes the proxy ask for the
        ``k`` SLM candidates with ``k`` parallel ``n=1`` requests.

    Examples
    --------
    >>> Upstream("http://127.0.0.1:8001/v1/", "qwen-0.5b").url
    'http://127.0.0.1:8001/v1/chat/completions'
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_retries: int = 2
    backoff: float = 0.25
    supports_n: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.supports_n, bool):
            raise ValueError(
                "The 'supports_n' parameter of Upstream must be a bool. Got "
                f"{self.supports_n!r} instead."
            )
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                "The 'base_url' parameter of Upstream must be an http(s) URL such "
                f"as 'http://127.0.0.1:8001/v1'. Got {self.base_url!r} instead."
            )
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(
                "The 'model' parameter of Upstream must be a non-empty str. "
                f"Got {self.model!r} instead."
            )
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ValueError(
                f"The 'timeout' parameter of Upstream must be > 0. Got "
                f"{self.timeout!r} instead."
            )
        if isinstance(self.max_retries, bool) or not (
            isinstance(self.max_retries, int) and self.max_retries >= 0
        ):
            raise ValueError(
                "The 'max_retries' parameter of Upstream must be an int >= 0. "
                f"Got {self.max_retries!r} instead."
            )
        if not (isinstance(self.backoff, (int, float)) and self.backoff >= 0):
            raise ValueError(
                "The 'backoff' parameter of Upstream must be >= 0. Got "
                f"{self.backoff!r} instead."
            )

    @property
    def url(self) -> str:
        """The chat completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def __repr__(self) -> str:  # never print the key
        key = None if self.api_key is None else "***"
        return (
            f"Upstream(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, timeout={self.timeout!r}, supports_n={self.supports_n})"
        )


class _UpstreamError(Exception):
    """An upstream call failed after its retries.

    ``message`` is client-facing (no URL, no control character); ``status`` is
    the upstream's last HTTP status, None for timeouts and broken connections.
    """

    def __init__(self, side: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.side = side
        self.status = status
        self.message = scrub(message)

    @property
    def client_fault(self) -> bool:
        return self.status in _CLIENT_FAULT_STATUS


async def _post_json(
    client: aiohttp.ClientSession,
    up: Upstream,
    payload: Mapping[str, Any],
    side: str,
    metrics: _Metrics,
    *,
    url: str | None = None,
) -> dict[str, Any]:
    """POST with retries and a hard per-attempt limit; the decoded JSON body."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if up.api_key:
        headers["Authorization"] = f"Bearer {up.api_key}"
    content = json.dumps(payload).encode()

    async def attempt() -> tuple[int, bytes]:
        async with client.post(url or up.url, data=content, headers=headers) as r:
            return r.status, await r.read()

    last = "no attempt"
    status: int | None = None
    for n in range(up.max_retries + 1):
        if n:
            await asyncio.sleep(up.backoff * 2 ** (n - 1))
        try:
            code, raw = await asyncio.wait_for(attempt(), timeout=up.timeout)
        except asyncio.TimeoutError:
            last, status = f"timed out after {up.timeout:g} s", None
        except (aiohttp.ClientError, OSError) as exc:
            last, status = f"connection failed ({type(exc).__name__})", None
            _LOG.warning("%s upstream %s: %s", side, up.base_url, exc)
        else:
            status = code
            if code < 400:
                try:
                    out = json.loads(raw)
                except (ValueError, RecursionError):
                    last = "answer is not JSON"
                else:
                    if isinstance(out, dict):
                        return out
                    last = "answer is not a JSON object"
            else:
                last = f"HTTP {code}: {_error_message(raw.decode(errors='replace'))}"
                if code not in _RETRY_STATUS:
                    metrics.inc("r2vcal_upstream_errors_total", side=side)
                    raise _UpstreamError(side, last, code)
        metrics.inc("r2vcal_upstream_errors_total", side=side)
    raise _UpstreamError(side, f"{last} ({up.max_retries + 1} attempts)", status)


def _error_message(text: str) -> str:
    try:
        doc = json.loads(text)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
        return scrub(msg)
    except (ValueError, RecursionError):
        return scrub(text)


# --------------------------------------------------------------------------- #
# Verifier
# --------------------------------------------------------------------------- #
def _make_verifier(verifier: Any) -> Callable[..., Any] | str | None:
    """None, a URL (str), or a callable ``(messages, texts) -> scores``."""
    if verifier is None:
        return None
    if isinstance(verifier, str):
        if verifier.startswith(("http://", "https://")):
            return verifier
        module, sep, name = verifier.partition(":")
        if not sep or not module or not name:
            raise ValueError(
                "The 'verifier' parameter must be an http(s) URL, a 'module:callable' "
                f"import string or a callable. Got {verifier!r} instead."
            )
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"Could not import the verifier {verifier!r}: {exc}."
            ) from None
        verifier = obj
    if hasattr(verifier, "score_candidates"):
        return verifier.score_candidates  # type: ignore[no-any-return]
    if callable(verifier):
        return verifier  # type: ignore[no-any-return]
    raise TypeError(
        "The 'verifier' parameter must be an http(s) URL, a 'module:callable' "
        f"import string or a callable. Got {type(verifier).__name__} instead."
    )


def _check_scores(scores: Any, n: int) -> list[float]:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,) or not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"the verifier must return {n} scores in [0, 1]")
    return arr.tolist()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- #
# Metrics (Prometheus text format, no dependency)
# --------------------------------------------------------------------------- #
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_HELP = {
    "r2vcal_requests_total": ("counter", "Chat completion requests by status."),
    "r2vcal_escalations_total": ("counter", "Steps the router sent to the LLM."),
    "r2vcal_fallbacks_total": ("counter", "Steps answered by the other model."),
    "r2vcal_upstream_errors_total": ("counter", "Failed upstream attempts."),
    "r2vcal_tokens_total": ("counter", "Tokens reported by the upstreams."),
    "r2vcal_cost_total": ("counter", "Cost units spent, by actor and model."),
    "r2vcal_missing_logprobs_total": (
        "counter",
        "SLM answers without token log-probs (scored as certain).",
    ),
    "r2vcal_replayed_total": ("counter", "Client retries answered from the cache."),
    "r2vcal_client_disconnects_total": (
        "counter",
        "Requests whose client left before the answer (upstream calls cancelled).",
    ),
    "r2vcal_request_duration_seconds": ("histogram", "Request latency."),
    "r2vcal_proxy_overhead_seconds": (
        "histogram",
        "Request latency minus the time spent waiting for upstreams.",
    ),
}


def _label(value: str) -> str:
    text = header_value(value, 120)
    return text.replace("\\", "\\\\").replace('"', '\\"')


class _Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.hists: dict[str, list[float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            h = self.hists.setdefault(name, [0.0] * (len(_BUCKETS) + 2))
            for i, b in enumerate(_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += 1  # count (+Inf)
            h[-1] += seconds

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            names = sorted({k[0] for k in self.counters} | set(self.hists))
            for name in names:
                kind, text = _HELP.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if name in self.hists:
                    h = self.hists[name]
                    for b, c in zip(_BUCKETS, h):
                        lines.append(f'{name}_bucket{{le="{b:g}"}} {c:g}')
                    lines.append(f'{name}_bucket{{le="+Inf"}} {h[-2]:g}')
                    lines.append(f"{name}_sum {h[-1]:.6f}")
                    lines.append(f"{name}_count {h[-2]:g}")
                    continue
                for (n, labels), v in sorted(self.counters.items()):
                    if n == name:
                        lab = ",".join(f'{k}="{_label(val)}"' for k, val in labels)
                        lines.append(f"{name}{{{lab}}} {v:g}" if lab else f"{n} {v:g}")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Reading requests and answers
# --------------------------------------------------------------------------- #
def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
        )
    return str(content)


def _tool_error(messages: Sequence[dict[str, Any]], pattern: re.Pattern[str]) -> bool:
    """A tool result since the last assistant turn reports an error.

    Tool results are ``tool``/``function`` messages, and user messages that
    start with ``Observation:`` (how smolagents sends tool results).
    """
    for m in reversed(messages):
        role = m.get("role")
        if role == "assistant":
            return False
        if role in ("tool", "function"):
            text = _content_text(m.get("content"))
        elif role == "user":
            text = _content_text(m.get("content"))
            if not text.startswith(_OBSERVATION):
                continue
        else:
            continue
        if pattern.search(text):
            return True
    return False


def _choice_text(choice: Mapping[str, Any]) -> str:
    """The action of a choice: its content plus its tool calls, as one string."""
    msg = choice.get("message") or {}
    text = _content_text(msg.get("content"))
    calls = msg.get("tool_calls") or (
        [{"function": msg["function_call"]}] if msg.get("function_call") else []
    )
    if calls:
        fns = [
            {
                "name": (c.get("function") or {}).get("name"),
                "arguments": (c.get("function") or {}).get("arguments"),
            }
            for c in calls
            if isinstance(c, dict)
        ]
        text = (text + " " if text else "") + json.dumps(fns, sort_keys=True)
    return text


def _number(value: Any) -> float:
    """``value`` as a float, NaN for anything that is not a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _choice_logprobs(choice: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-token log-probs and (from ``top_logprobs``) entropies of a choice."""
    tokens = (choice.get("logprobs") or {}).get("content") or []
    try:
        lp = np.array([t["logprob"] for t in tokens], dtype=np.float64)
    except (KeyError, TypeError, ValueError):  # missing or non-numeric entries
        lp = np.array(
            [
                _number(t.get("logprob")) if isinstance(t, dict) else np.nan
                for t in tokens
            ],
            dtype=np.float64,
        )
    lp = np.where(np.isfinite(lp), np.minimum(lp, 0.0), -100.0)
    if not tokens:
        return lp, None
    try:
        rows = [[a["logprob"] for a in t["top_logprobs"]] for t in tokens]
    except (KeyError, TypeError):
        return lp, None
    width = max(map(len, rows))
    if width == 0:
        return lp, None
    try:
        if all(len(r) == width for r in rows):
            top = np.array(rows, dtype=np.float64)
        else:
            top = np.full((len(rows), width), -np.inf)
            for i, r in enumerate(rows):
                top[i, : len(r)] = r
    except (TypeError, ValueError):  # a null or non-numeric log-prob
        return lp, None
    return lp, _entropies(top)


def _entropies(top: np.ndarray) -> np.ndarray:
    """Token entropies from rows of top log-probs (padding is ``-inf``).

    :func:`r2vcal.features.topn_entropy`, the definition every backend uses;
    non-finite log-probs count as padding.
    """
    return topn_entropy(np.where(np.isfinite(top), top, -np.inf))


def _choices_logprobs(
    choices: Sequence[Mapping[str, Any]],
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """:func:`_choice_logprobs` of every choice, with one entropy computation."""
    lps: list[np.ndarray] = []
    rows: list[list[Any]] = []
    spans: list[tuple[int, int, int]] = []
    for j, choice in enumerate(choices):
        tokens = (choice.get("logprobs") or {}).get("content") or []
        try:
            lp = np.array([t["logprob"] for t in tokens], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return [_choice_logprobs(c) for c in choices]
        lps.append(np.where(np.isfinite(lp), np.minimum(lp, 0.0), -100.0))
        if not tokens:
            continue
        try:
            mine = [[a["logprob"] for a in t["top_logprobs"]] for t in tokens]
        except (KeyError, TypeError):
            continue
        if max(map(len, mine)) == 0:
            continue
        spans.append((j, len(rows), len(rows) + len(mine)))
        rows += mine
    ents: list[np.ndarray | None] = [None] * len(choices)
    if rows:
        width = max(map(len, rows))
        try:
            if all(len(r) == width for r in rows):
                top = np.array(rows, dtype=np.float64)
            else:
                top = np.full((len(rows), width), -np.inf)
                for i, r in enumerate(rows):
                    top[i, : len(r)] = r
        except (TypeError, ValueError):  # a null or non-numeric log-prob somewhere
            return [_choice_logprobs(c) for c in choices]
        ent = _entropies(top)
        for j, a, b in spans:
            ents[j] = ent[a:b]
    return list(zip(lps, ents, strict=True))


# --------------------------------------------------------------------------- #
# Streaming (server-sent events) from a complete answer
# --------------------------------------------------------------------------- #
def _sse(doc: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
    base = {
        "id": doc.get("id", "chatcmpl-r2vcal"),
        "object": "chat.completion.chunk",
        "created": doc.get("created", int(time.time())),
        "model": doc.get("model", ""),
    }
    if doc.get("system_fingerprint"):
        base["system_fingerprint"] = doc["system_fingerprint"]
    events: list[dict[str, Any]] = []
    for choice in doc.get("choices") or []:
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}

        def chunk(delta: dict[str, Any], finish: Any = None, **extra: Any) -> None:
            c = {"index": idx, "delta": delta, "finish_reason": finish, **extra}  # noqa: B023
            events.append({**base, "choices": [c]})

        chunk({"role": msg.get("role", "assistant"), "content": ""})
        if msg.get("content"):
            lp = choice.get("logprobs")
            chunk({"content": msg["content"]}, **({"logprobs": lp} if lp else {}))
        if msg.get("refusal"):
            chunk({"refusal": msg["refusal"]})
        if msg.get("tool_calls"):
            calls = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"]) if c]
            chunk({"tool_calls": calls})
        if msg.get("function_call"):
            chunk({"function_call": msg["function_call"]})
        chunk({}, choice.get("finish_reason") or "stop")
    if include_usage and doc.get("usage") is not None:
        events.append({**base, "choices": [], "usage": doc["usage"]})
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return [*out, b"data: [DONE]\n\n"]


def _add_usage(*docs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The summed ``usage`` of several answers (None when none reports one)."""
    out: dict[str, Any] = {}
    for doc in docs:
        usage = None if doc is None else doc.get("usage")
        if not isinstance(usage, dict):
            continue
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v = usage.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = out.get(key, 0) + int(v)
    if not out:
        return None
    out.setdefault("prompt_tokens", 0)
    out.setdefault("completion_tokens", 0)
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def _merge_answers(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One answer with the choices of several, re-indexed, usage summed."""
    if len(docs) == 1:
        return docs[0]
    choices = [
        dict(c, index=i) for i, c in enumerate(c for d in docs for c in d["choices"])
    ]
    return {**docs[0], "choices": choices, "usage": _add_usage(*docs)}


def _retry_count(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("x-stainless-retry-count")
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- #
# Decision log
# --------------------------------------------------------------------------- #
def _log_schema(feature_names: Sequence[str]) -> Any:
    import pyarrow as pa

    fields = [
        ("action", pa.string()),
        ("actor", pa.string()),
        ("escalated", pa.bool_()),
        ("risk", pa.float64()),
        ("threshold", pa.float64()),
        ("cost", pa.float64()),
        ("episode_id", pa.string()),
        ("step", pa.int64()),
        ("candidates", pa.list_(pa.string())),
        ("verifier_scores", pa.list_(pa.float64())),
        ("chosen", pa.int64()),
        ("budget_left", pa.int64()),
        ("fallback", pa.string()),
        ("group", pa.string()),
        ("outcome", pa.bool_()),
        ("token_logprobs", pa.list_(pa.list_(pa.float64()))),
    ]
    fields += [(f, pa.float64()) for f in feature_names]
    return pa.schema(fields)


def _parquet_row(d: Decision) -> dict[str, Any]:
    row = d.as_row()
    if not math.isfinite(row["threshold"]):
        row["threshold"] = None
    for key in ("episode_id", "group"):
        row[key] = None if row[key] is None else str(row[key])
    return row


# --------------------------------------------------------------------------- #
# The proxy
# --------------------------------------------------------------------------- #
def _proxy_only(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "The serve proxy calls the models itself; use decide()/resolve() on this "
        "cascade, not act()."
    )


@dataclass
class _Result:
    """What one step produced: an answer (status 200) or an error body."""

    status: int
    doc: dict[str, Any]
    headers: dict[str, str]
    kind: str = "chat"
    extra: dict[str, Any] = field(default_factory=dict)


async def _wait_disconnect(receive: Callable[[], Any]) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


class _Proxy:
    def __init__(
        self,
        cascade: StepCascade,
        slm: Upstream,
        llm: Upstream,
        verifier: Any,
        *,
        verifier_timeout: float,
        top_logprobs: int,
        served_model_name: str,
        parquet: ParquetLog | None,
        max_connections: int,
        conversation_ttl: float,
        keep_decisions: int,
        tool_error_pattern: str,
        max_conversations: int,
        max_turns: int,
        retry_window: float,
        api_keys: frozenset[str],
        max_body_bytes: int,
    ) -> None:
        self.cascade, self.slm, self.llm = cascade, slm, llm
        self.verifier = _make_verifier(verifier)
        self.verifier_timeout = verifier_timeout
        self.top_logprobs = top_logprobs
        self.served_model_name = served_model_name
        self.parquet = parquet
        self.max_connections = max_connections
        self.keep_decisions = keep_decisions
        self.tool_error = re.compile(tool_error_pattern, re.IGNORECASE)
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes
        self.metrics = _Metrics()
        self.client: aiohttp.ClientSession | None = None
        self.created = int(time.time())
        self.convs = ConversationTracker(
            max_conversations=max_conversations,
            max_turns=max_turns,
            retry_window=retry_window,
            ttl=conversation_ttl,
            on_evict=self._evict,
        )
        self.upstream_state: dict[str, dict[str, Any]] = {
            side: {"ok": None, "error": None, "at": None} for side in ("slm", "llm")
        }
        self._health: tuple[float, dict[str, Any]] | None = None
        self.responses_store: OrderedDict[str, Any] = OrderedDict()
        self.store: StateStore | None = None
        self._feature_names = list(cascade.featurizer.get_feature_names_out())

    # -------------------------------------------------------------- state
    def _evict(self, conv_id: str) -> None:
        self.cascade.end_episode(conv_id)
        if self.store is not None:
            self.store.delete(conv_id)

    def _save(self, conv: Any) -> None:
        live = self.convs.convs.get(conv.id)
        if self.store is None or live is None or live is not conv:
            return
        ep = self.cascade._episodes.get(live.id)
        self.store.save(
            live, 0 if ep is None else ep.used, 0 if ep is None else ep.step
        )

    def _restore(self) -> int:
        """Conversations of an earlier run (``state_path``); how many."""
        if self.store is None:
            return 0
        rows = self.store.load(self.convs.max_conversations)
        for row in rows:
            used, step = row.pop("used"), row.pop("step")
            self.convs.restore(**row)
            ep = self._episode(row["cid"])
            ep.used, ep.step = used, step
        return len(rows)

    def _episode(self, conv_id: str) -> Any:
        # StepCascade has no public way to charge a call made outside decide()
        # or to cap an episode's decision list; both read its episode record.
        return self.cascade._episode(conv_id, None)

    def _after_decision(self, conv_id: str) -> None:
        ep = self.cascade._episodes.get(conv_id)
        if ep is not None:  # the proxy never reads them back: keep memory flat
            ep.decisions.clear()
        extra = len(self.cascade.decisions_) - self.keep_decisions
        if extra > 0:
            del self.cascade.decisions_[:extra]

    def _charge_fallback(
        self, conv_id: str, reason: str, group: str | None
    ) -> Decision | None:
        """Charge an LLM call made because the SLM failed; None if the budget is spent."""
        c = self.cascade
        with c._lock:
            ep = self._episode(conv_id)
            tau = (
                c.threshold
                if c.budget is None
                else c.budget.threshold(
                    c.threshold, used=ep.used, step=ep.step, horizon=ep.horizon
                )
            )
            if not math.isfinite(tau):
                return None
            ep.used += 1
            step = ep.step
            ep.step += 1
            left = None if c.budget is None else c.budget.max_calls - ep.used
        decision = Decision(
            action="",
            actor="llm",
            escalated=True,
            risk=math.nan,
            threshold=float(tau),
            features=dict.fromkeys(self._feature_names, math.nan),
            cost=c.cost_slm + c.cost_llm,
            episode_id=conv_id,
            step=step,
            budget_left=left,
            fallback=reason,
            group=group,
        )
        with c._lock:
            c.decisions_.append(decision)
        self._after_decision(conv_id)
        return decision

    def _record(
        self, decision: Decision, action: str | None, error: str | None
    ) -> None:
        """Log a decision: exactly once per decision, whatever happened."""
        self.cascade.resolve(decision, action, error=error)
        if self.parquet is not None:
            self.parquet.append(_parquet_row(decision))

    # ----------------------------------------------------------- upstream
    def _client(self) -> aiohttp.ClientSession:
        if self.client is None:
            raise RuntimeError("the proxy's HTTP client starts with the app")
        return self.client

    def _note(self, side: str, error: str | None) -> None:
        state = self.upstream_state[side]
        state.update(ok=error is None, error=error, at=time.time())

    async def _call(
        self, up: Upstream, payload: dict[str, Any], side: str
    ) -> dict[str, Any]:
        try:
            out = await _post_json(self._client(), up, payload, side, self.metrics)
            problem = answer_problem(out)
            if problem is not None:
                self.metrics.inc("r2vcal_upstream_errors_total", side=side)
                raise _UpstreamError(side, f"malformed answer: {problem}")
        except _UpstreamError as exc:
            self._note(side, exc.message)
            raise
        self._note(side, None)
        usage = out.get("usage") or {}
        for kind in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(kind), (int, float)):
                self.metrics.inc(
                    "r2vcal_tokens_total", usage[kind], side=side, kind=kind[:-7]
                )
        return out

    async def _candidates(self, payload: dict[str, Any], k: int) -> dict[str, Any]:
        """The SLM's ``k`` candidates: one ``n=k`` request, or ``k`` in parallel.

        A server that refuses ``n > 1`` (while an ``n=1`` request of the same
        step works) or answers it with fewer choices is switched to parallel
        ``n=1`` requests for good, with a warning in the server log.
        """
        cost = self.cascade.cost_slm
        self.metrics.inc("r2vcal_cost_total", cost, actor="slm", model=self.slm.model)
        if k == 1:
            return await self._call(self.slm, {**payload, "n": 1}, "slm")
        if not self.slm.supports_n:
            return _merge_answers(await self._parallel(payload, k, 0))
        try:
            doc = await self._call(self.slm, {**payload, "n": k}, "slm")
        except _UpstreamError as exc:
            if not exc.client_fault:
                raise
            try:  # the client's fault, or only n > 1's?
                first = await self._parallel(payload, 1, 0)
            except _UpstreamError:
                raise exc from None
            self._no_n(f"refused n={k} ({exc.message})")
            return _merge_answers(first + await self._parallel(payload, k - 1, 1))
        have = len(doc["choices"])
        if have >= k:
            return doc
        self._no_n(f"answered n={k} with {have} choice(s)")
        return _merge_answers([doc, *await self._parallel(payload, k - have, have)])

    def _no_n(self, why: str) -> None:
        import dataclasses

        if self.slm.supports_n:
            _LOG.warning(
                "the SLM %s: asking for the candidates with parallel n=1 requests",
                why,
            )
            self.slm = dataclasses.replace(self.slm, supports_n=False)

    async def _parallel(
        self, payload: dict[str, Any], count: int, offset: int
    ) -> list[dict[str, Any]]:
        """``count`` ``n=1`` answers (seeds ``seed + offset + i`` when seeded)."""
        one = {key: v for key, v in payload.items() if key != "n"}
        seed = one.get("seed")
        tasks = [
            self._call(
                self.slm,
                one if seed is None else {**one, "seed": seed + offset + i},
                "slm",
            )
            for i in range(count)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        docs = [r for r in results if isinstance(r, dict)]
        if not docs:
            raise next(r for r in results if isinstance(r, BaseException))
        return docs

    async def _llm(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.metrics.inc(
            "r2vcal_cost_total",
            self.cascade.cost_llm,
            actor="llm",
            model=self.llm.model,
        )
        self.metrics.inc("r2vcal_escalations_total")
        return await self._call(self.llm, payload, "llm")

    async def _score(self, messages: Any, texts: list[str]) -> list[float] | None:
        if self.verifier is None:
            return None
        try:
            if isinstance(self.verifier, str):
                up = Upstream(
                    self.verifier,
                    "verifier",
                    timeout=self.verifier_timeout,
                    max_retries=1,
                    backoff=0.05,
                )
                doc = await _post_json(
                    self._client(),
                    up,
                    {"context": messages, "candidates": texts},
                    "verifier",
                    self.metrics,
                    url=self.verifier,
                )
                return _check_scores(doc.get("scores"), len(texts))
            fn = self.verifier
            if inspect.iscoroutinefunction(fn):
                res = await asyncio.wait_for(fn(messages, texts), self.verifier_timeout)
            else:
                res = await asyncio.wait_for(
                    asyncio.to_thread(fn, messages, texts), self.verifier_timeout
                )
            return _check_scores(res, len(texts))
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken verifier must not fail the step
            self.metrics.inc("r2vcal_upstream_errors_total", side="verifier")
            return None

    # ------------------------------------------------------------ helpers
    def _check_auth(self, headers: Mapping[str, str]) -> None:
        if not self.api_keys:
            return
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        token = token or headers.get("api-key", "")
        if not any(hmac.compare_digest(token, k) for k in self.api_keys):
            raise BadRequest(
                "Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                "with a key given to r2vcal serve (--api-key).",
                status=401,
                code="invalid_api_key",
            )

    async def _read_body(self, request: Any) -> bytes:
        limit = self.max_body_bytes
        size = request.headers.get("content-length")
        too_big = BadRequest(
            f"The request body is larger than the proxy's limit of {limit} bytes.",
            status=413,
        )
        if size is not None and size.isdigit() and int(size) > limit:
            raise too_big
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _until_disconnect(self, request: Any, coro: Any) -> _Result | None:
        """Run a step; cancel it (and its upstream calls) if the client leaves."""
        work = asyncio.ensure_future(coro)
        watch = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait(
                {work, watch}, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watch.cancel()
        if work in done:
            return work.result()  # type: ignore[no-any-return]
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        self.metrics.inc("r2vcal_client_disconnects_total")
        return None

    # ------------------------------------------------------------- handler
    async def chat(self, request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            self._check_auth(request.headers)
            body = parse_json(await self._read_body(request))
            messages = validate_chat(body)
        except BadRequest as exc:
            return self._fail(exc, t0)
        return await self._serve(request, body, messages, t0, "chat")

    async def _serve(
        self,
        request: Any,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        t0: float,
        kind: str,
        *,
        explicit: str | None = None,
        reply_body: dict[str, Any] | None = None,
    ) -> Any:
        """Route one step of a conversation; ``reply_body`` shapes the answer."""
        reply = body if reply_body is None else reply_body
        match = self.convs.match(
            explicit or explicit_id(request.headers, body),
            messages,
            retry_count=_retry_count(request.headers),
        )
        conv = match.conv
        if match.kind == "retry":
            res = conv.cached
            if res is None and conv.pending is not None:
                res = await asyncio.shield(conv.pending)
            if res is not None:
                self.metrics.inc("r2vcal_replayed_total")
                headers = {**res.headers, "x-r2vcal-retry": "true"}
                return self._respond(
                    _Result(200, res.doc, headers, res.kind, res.extra), reply, t0, 0.0
                )
        if match.kind == "new_episode":
            self.cascade.end_episode(conv.id)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conv.pending = fut
        res = None
        try:
            res = await self._until_disconnect(
                request, self._step(conv.id, body, messages, kind)
            )
        finally:
            conv.pending = None
            ok = res is not None and res.status == 200
            fut.set_result(res if ok else None)
            if not ok:
                self._save(conv)
        if res is None:  # the client left: nobody reads an answer
            from fastapi.responses import Response

            self.metrics.inc("r2vcal_requests_total", status="499")
            return Response(status_code=499)
        res.kind = kind
        if res.status == 200:
            if kind == "responses":  # kept for previous_response_id
                res.extra["messages"] = messages
            self.convs.answered(conv, res.extra["message"], res)
            self._save(conv)
        return self._respond(res, reply, t0, res.extra.get("waited", 0.0))

    async def _step(
        self, conv: str, body: dict[str, Any], messages: list[dict[str, Any]], kind: str
    ) -> _Result:
        waited = 0.0
        client_logprobs = bool(body.get("logprobs"))
        base = {
            k: v
            for k, v in body.items()
            if k not in ("stream", "stream_options", "metadata", "prompt_cache_key")
        }
        headers: dict[str, str] = {"x-r2vcal-conversation": header_value(conv)}
        user = body.get("user") if isinstance(body.get("user"), str) else None
        k = self.cascade.k
        slm_payload = {
            **base,
            "model": self.slm.model,
            "logprobs": True,
            "stream": False,
        }
        if self.top_logprobs:
            slm_payload["top_logprobs"] = max(
                self.top_logprobs, int(body.get("top_logprobs") or 0)
            )
        llm_payload = {**base, "model": self.llm.model, "stream": False}
        llm_payload.pop("n", None)

        t = time.perf_counter()
        try:
            slm_doc: dict[str, Any] | None = await self._candidates(slm_payload, k)
            slm_error = None
        except _UpstreamError as exc:
            slm_doc, slm_error = None, exc
        waited += time.perf_counter() - t

        if slm_error is not None and slm_error.client_fault:  # the client's fault
            return _Result(
                slm_error.status or 400,
                error_body(
                    f"The small model refused the request: {slm_error.message}",
                    "invalid_request_error",
                ),
                headers,
            )
        if slm_doc is None or slm_error is not None:  # the LLM answers, no routing
            slm_error = slm_error or _UpstreamError("slm", "no answer")
            return await self._llm_only(
                conv, llm_payload, slm_error, headers, user, waited
            )

        choices = sorted(slm_doc["choices"], key=lambda c: c.get("index", 0))
        choices = [choices[i % len(choices)] for i in range(k)]
        texts = [_choice_text(c) for c in choices]
        parts = _choices_logprobs(choices)
        if any(p[0].size == 0 for p in parts):
            self.metrics.inc("r2vcal_missing_logprobs_total")
            headers["x-r2vcal-logprobs"] = "missing"
        ents = [p[1] for p in parts]
        t = time.perf_counter()
        scores = await self._score(messages, texts)
        waited += time.perf_counter() - t
        usage = slm_doc.get("usage") or {}
        ctx_len = usage.get("prompt_tokens")
        if not isinstance(ctx_len, (int, float)) or isinstance(ctx_len, bool):
            ctx_len = sum(
                len(_content_text(m.get("content")).split()) for m in messages
            )
        decision = self.cascade.decide(
            messages,
            texts,
            [p[0] for p in parts],
            token_entropies=None if any(e is None for e in ents) else ents,
            verifier_scores=scores,
            episode_id=conv,
            context_length=float(ctx_len),
            tool_error=_tool_error(messages, self.tool_error),
            group=user,
        )
        self._after_decision(conv)
        headers.update(
            {
                "x-r2vcal-escalated": "true" if decision.escalated else "false",
                "x-r2vcal-risk": f"{decision.risk:.6f}",
                "x-r2vcal-threshold": f"{decision.threshold:.6f}",
                "x-r2vcal-step": str(decision.step),
            }
        )
        llm_doc: dict[str, Any] | None = None
        if decision.escalated:
            t = time.perf_counter()
            action: str | None = None
            error: str | None = "llm: internal error"
            try:
                llm_doc = await self._llm(llm_payload)
                action, error = _choice_text(llm_doc["choices"][0]), None
            except _UpstreamError as exc:
                self.metrics.inc("r2vcal_fallbacks_total", side="slm")
                error = f"llm: {exc.message}"
                headers["x-r2vcal-fallback"] = header_value(error)
            except asyncio.CancelledError:
                error = "llm: the client disconnected"
                raise
            finally:
                waited += time.perf_counter() - t
                self._record(decision, action, error)
        else:
            self._record(decision, None, None)
        if llm_doc is None:
            chosen = dict(choices[decision.chosen])
            chosen["index"] = 0
            if not client_logprobs:
                chosen["logprobs"] = None
            answer = {**slm_doc, "choices": [chosen]}
            who = slm_doc.get("model") or self.slm.model
        else:
            answer = {**llm_doc, "usage": _add_usage(slm_doc, llm_doc)}
            who = llm_doc.get("model") or self.llm.model
        headers["x-r2vcal-model"] = header_value(scrub(who))
        headers["x-r2vcal-cost"] = f"{decision.cost:g}"
        message = answer["choices"][0].get("message") or {}
        return _Result(
            200, answer, headers, extra={"message": message, "waited": waited}
        )

    async def _llm_only(
        self,
        conv: str,
        llm_payload: dict[str, Any],
        slm_error: _UpstreamError,
        headers: dict[str, str],
        user: str | None,
        waited: float,
    ) -> _Result:
        reason = f"slm: {slm_error.message}"
        headers.update(
            {
                "x-r2vcal-escalated": "true",
                "x-r2vcal-risk": "nan",
                "x-r2vcal-fallback": header_value(reason),
            }
        )
        decision = self._charge_fallback(conv, reason, user)
        if decision is None:
            headers["x-r2vcal-escalated"] = "false"
            return _Result(
                502,
                error_body(
                    f"The small model failed ({slm_error.message}) and this "
                    "conversation's LLM budget is spent.",
                    "upstream_error",
                ),
                headers,
            )
        headers["x-r2vcal-step"] = str(decision.step)
        headers["x-r2vcal-threshold"] = f"{decision.threshold:.6f}"
        self.metrics.inc("r2vcal_fallbacks_total", side="llm")
        t = time.perf_counter()
        action: str | None = None
        error: str | None = f"{reason}; llm: internal error"
        try:
            answer = await self._llm(llm_payload)
            action, error = _choice_text(answer["choices"][0]), None
        except _UpstreamError as exc:
            error = f"{reason}; llm: {exc.message}"
            status = exc.status if exc.status and 400 <= exc.status < 500 else 502
            return _Result(
                status,
                error_body(
                    f"Both models failed. SLM: {slm_error.message}; LLM: {exc.message}",
                    "upstream_error",
                ),
                headers,
            )
        except asyncio.CancelledError:
            error = f"{reason}; llm: the client disconnected"
            raise
        finally:
            waited += time.perf_counter() - t
            self._record(decision, action, error)
            decision.fallback = reason if action is not None else error
        headers["x-r2vcal-model"] = header_value(
            scrub(answer.get("model") or self.llm.model)
        )
        headers["x-r2vcal-cost"] = f"{decision.cost:g}"
        message = answer["choices"][0].get("message") or {}
        return _Result(
            200, answer, headers, extra={"message": message, "waited": waited}
        )

    def _respond(
        self, res: _Result, body: Mapping[str, Any], t0: float, waited: float
    ) -> Any:
        from fastapi.responses import JSONResponse, StreamingResponse

        total = time.perf_counter() - t0
        self.metrics.inc("r2vcal_requests_total", status=str(res.status))
        self.metrics.observe("r2vcal_request_duration_seconds", total)
        if res.status != 200:
            return JSONResponse(res.doc, status_code=res.status, headers=res.headers)
        self.metrics.observe("r2vcal_proxy_overhead_seconds", max(total - waited, 0.0))
        if res.kind == "responses":
            from r2vcal._serve_responses import response_from_chat

            cap = self.convs.max_conversations
            return response_from_chat(res, body, self.responses_store, cap)
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            events = _sse(res.doc, include_usage=bool(opts.get("include_usage")))
            return StreamingResponse(
                iter(events), media_type="text/event-stream", headers=res.headers
            )
        return JSONResponse(res.doc, headers=res.headers)

    def _fail(self, exc: BadRequest, t0: float) -> Any:
        from fastapi.responses import JSONResponse

        self.metrics.inc("r2vcal_requests_total", status=str(exc.status))
        self.metrics.observe(
            "r2vcal_request_duration_seconds", time.perf_counter() - t0
        )
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            error_body(exc.message, exc.kind, exc.param, exc.code),
            status_code=exc.status,
            headers=headers,
        )

    # -------------------------------------------------------------- health
    async def health(self) -> tuple[int, dict[str, Any]]:
        """Probe both upstreams (``GET /models``, cached 5 s)."""
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < 5.0:
            return self._health[1]["_code"], self._health[1]
        sides = await asyncio.gather(self._probe(self.slm), self._probe(self.llm))
        up = {"slm": sides[0], "llm": sides[1]}
        for side, state in up.items():
            state["last_call"] = dict(self.upstream_state[side])
        n_ok = sum(s["ok"] for s in up.values())
        status = {2: "ok", 1: "degraded", 0: "down"}[n_ok]
        doc: dict[str, Any] = {
            "status": status,
            **up,
            "k": self.cascade.k,
            "threshold": self.cascade.threshold,
            "conversations": len(self.convs),
            "_code": 200 if n_ok else 503,
        }
        self._health = (now, doc)
        return doc["_code"], doc

    async def _probe(self, up: Upstream, client: Any = None) -> dict[str, Any]:
        import aiohttp

        client = client or self._client()
        headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        out: dict[str, Any] = {"model": up.model, "ok": False, "status": None}
        try:
            async with client.get(
                up.base_url.rstrip("/") + "/models",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=min(up.timeout, 2.0)),
            ) as r:
                out["status"] = r.status
                # a server without /models (404/405) is up all the same
                out["ok"] = r.status < 300 or r.status in (404, 405)
                if r.status == 200:
                    doc = await r.json(content_type=None)
                    ids = [
                        m.get("id")
                        for m in (doc.get("data") or [])
                        if isinstance(m, dict)
                    ]
                    out["model_listed"] = up.model in ids
        except asyncio.TimeoutError:
            out["error"] = "timed out"
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
            out["error"] = f"connection failed ({type(exc).__name__})"
        return out


def _api_keys(api_key: str | Iterable[str] | None) -> frozenset[str]:
    if api_key is None:
        env = os.environ.get("R2VCAL_API_KEY")
        return frozenset([env]) if env else frozenset()
    keys = [api_key] if isinstance(api_key, str) else list(api_key)
    if not keys or not all(isinstance(k, str) and k.strip() for k in keys):
        raise ValueError(
            "The 'api_key' parameter of create_app must be a non-empty str or a "
            f"list of them. Got {api_key!r:.40} instead."
        )
    return frozenset(k.strip() for k in keys)


def create_app(
    router: Any,
    *,
    slm: Upstream,
    llm: Upstream,
    verifier: Any = None,
    k: int = 5,
    threshold: float | None = None,
    budget: int | BudgetRule | None = None,
    horizon: int = 50,
    top_logprobs: int = 5,
    log_path: str | Path | None = None,
    log_flush_every: int = 100,
    served_model_name: str = "r2vcal",
    max_connections: int = 64,
    verifier_timeout: float = 30.0,
    conversation_ttl: float = 3600.0,
    keep_decisions: int = 1000,
    tool_error_pattern: str = TOOL_ERROR_PATTERN,
    max_conversations: int = 10_000,
    max_turns: int = 64,
    retry_window: float = 30.0,
    api_key: str | Iterable[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    state_path: str | Path | None = None,
) -> FastAPI:
    """Build the proxy as a FastAPI app (serve it with uvicorn).

    Parameters
    ----------
    router : fitted router
        Any fitted r2vcal router (as for :class:`~r2vcal.cascade.StepCascade`).
    slm, llm : Upstream
        The small model's and the large model's endpoints.
    verifier : str, callable or None, default=None
        A URL, a ``"module:callable"`` string or a callable
        ``verifier(messages, texts) -> scores`` (see the module docstring).
        A verifier that fails or times out leaves the step unscored (neutral
        verifier features) instead of failing it.
    k : int, default=5
        SLM candidates per step.
    threshold : float, default=None
        Base escalation threshold; None takes the router's ``threshold_``.
    budget : int or BudgetRule, default=None
        LLM calls per conversation (None: unlimited). Every LLM call counts,
        including those made because the SLM failed.
    horizon : int, default=50
        The conversations' step limit (for ``step_fraction`` and paced budgets).
    top_logprobs : int, default=5
        Alternatives per token requested from the SLM (token entropies are
        computed from them); 0 asks for none and entropy falls back to surprisal.
    log_path : str or Path, default=None
        Decision log: ``.jsonl`` (one line per decision, appended and flushed;
        recommended) or ``.parquet`` (a part file per ``log_flush_every``
        decisions in ``<log_path>.parts/``, merged into ``log_path`` at a clean
        shutdown; a restart appends).
    log_flush_every : int, default=100
    served_model_name : str, default="r2vcal"
        The model id listed by ``GET /v1/models``.
    max_connections : int, default=64
        Size of the connection pool to each upstream.
    verifier_timeout : float, default=30.0
    conversation_ttl : float, default=3600.0
        Seconds after which an idle conversation's state is dropped.
    keep_decisions : int, default=1000
        Decisions kept in memory (``app.state.cascade.decisions_``).
    tool_error_pattern : str, default=TOOL_ERROR_PATTERN
        Regular expression that marks a tool message as an error.
    max_conversations : int, default=10_000
        Conversations kept in memory; the least recently used is dropped first
        (its next request starts a fresh budget).
    max_turns : int, default=64
        Answers remembered per conversation to recognise its next request.
    retry_window : float, default=30.0
        Seconds within which a repeated request is a retry, for clients that
        do not send ``x-stainless-retry-count``.
    api_key : str or list of str, default=None
        Keys a client must send as ``Authorization: Bearer <key>`` on
        ``/v1/*``; None reads ``$R2VCAL_API_KEY`` and, if unset, accepts any
        request (:func:`run_server` warns when that is off loopback).
    max_body_bytes : int, default=32 MiB
        Larger request bodies get 413.
    state_path : str or Path, default=None
        A SQLite file that keeps the conversations (identity, LLM calls used,
        step index) across restarts; None keeps them in memory only.

    Returns
    -------
    fastapi.FastAPI
        ``app.state.cascade`` is the :class:`~r2vcal.cascade.StepCascade` that
        holds the routing state.

    Examples
    --------
    >>> app = create_app(router, slm=Upstream("http://127.0.0.1:8001/v1", "small"),
    ...                  llm=Upstream("http://127.0.0.1:8002/v1", "large"),
    ...                  budget=3, log_path="decisions.jsonl")  # doctest: +SKIP
    """
    fastapi, aiohttp = _import_serve_deps()
    from contextlib import asynccontextmanager

    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    for name, up in (("slm", slm), ("llm", llm)):
        if not isinstance(up, Upstream):
            raise TypeError(
                f"The '{name}' parameter of create_app must be an Upstream. Got "
                f"{type(up).__name__} instead."
            )
    if isinstance(top_logprobs, bool) or not 0 <= int(top_logprobs) <= 20:
        raise ValueError(
            "The 'top_logprobs' parameter of create_app must be an int in [0, 20]. "
            f"Got {top_logprobs!r} instead."
        )
    for pname, value, lo in (
        ("max_conversations", max_conversations, 1),
        ("max_turns", max_turns, 1),
        ("max_body_bytes", max_body_bytes, 1024),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(
                f"The '{pname}' parameter of create_app must be an int >= {lo}. "
                f"Got {value!r} instead."
            )
    if not (isinstance(retry_window, (int, float)) and retry_window >= 0):
        raise ValueError(
            "The 'retry_window' parameter of create_app must be a number >= 0. "
            f"Got {retry_window!r} instead."
        )
    keys = _api_keys(api_key)
    parquet = None
    jsonl = None
    if log_path is not None:
        log_path = Path(log_path)
        if log_path.suffix == ".parquet":
            parquet = log_path
        elif log_path.suffix in (".jsonl", ".json"):
            jsonl = log_path
        else:
            raise ValueError(
                "The 'log_path' parameter of create_app must end in .jsonl or "
                f".parquet. Got {log_path.name!r} instead."
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
    cascade = StepCascade(
        _proxy_only,
        _proxy_only,
        router,
        k=k,
        threshold=threshold,
        budget=budget,
        horizon=horizon,
        log_path=jsonl,
    )
    plog = (
        None
        if parquet is None
        else ParquetLog(
            parquet,
            _log_schema(list(cascade.featurizer.get_feature_names_out())),
            log_flush_every,
        )
    )
    proxy = _Proxy(
        cascade,
        slm,
        llm,
        verifier,
        verifier_timeout=verifier_timeout,
        top_logprobs=int(top_logprobs),
        served_model_name=served_model_name,
        parquet=plog,
        max_connections=max_connections,
        conversation_ttl=conversation_ttl,
        keep_decisions=keep_decisions,
        tool_error_pattern=tool_error_pattern,
        max_conversations=max_conversations,
        max_turns=max_turns,
        retry_window=float(retry_window),
        api_keys=keys,
        max_body_bytes=max_body_bytes,
    )

    if state_path is not None:
        proxy.store = StateStore(Path(state_path))
        restored = proxy._restore()
        if restored:
            _LOG.info("restored %d conversations from %s", restored, state_path)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        proxy.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        try:
            yield
        finally:
            await proxy.client.close()
            if plog is not None:
                plog.close()
            if proxy.store is not None:
                proxy.store.close()

    app = fastapi.FastAPI(
        title="r2vcal serve",
        description="OpenAI-compatible proxy with calibrated SLM->LLM escalation.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.cascade = cascade
    app.state.proxy = proxy

    # Plain Starlette routes: the handlers read the raw request themselves.
    app.router.add_route("/v1/chat/completions", proxy.chat, methods=["POST"])
    try:
        from r2vcal._serve_responses import add_responses_route
    except ImportError:  # pragma: no cover
        pass
    else:
        add_responses_route(app, proxy)

    async def models(request: Any) -> Any:
        try:
            proxy._check_auth(request.headers)
        except BadRequest as exc:
            return proxy._fail(exc, time.perf_counter())
        card = {"object": "model", "created": proxy.created, "owned_by": "r2vcal"}
        return JSONResponse(
            {"object": "list", "data": [{"id": served_model_name, **card}]}
        )

    app.router.add_route("/v1/models", models, methods=["GET"])

    @app.get("/health")
    async def health() -> Any:
        code, doc = await proxy.health()
        return JSONResponse({k: v for k, v in doc.items() if k != "_code"}, code)

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(
            proxy.metrics.render(), media_type="text/plain; version=0.0.4"
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Any, exc: Any) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        where = header_value(f"{request.method} {request.url.path}", 200)
        message = {
            404: f"Unknown path: {where}. The proxy serves POST /v1/chat/completions, "
            "POST /v1/responses, GET /v1/models, /health and /metrics.",
            405: f"Method not allowed: {where}.",
        }.get(exc.status_code, scrub(str(exc.detail)))
        proxy.metrics.inc("r2vcal_requests_total", status=str(exc.status_code))
        return JSONResponse(
            error_body(message, "invalid_request_error", None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Any, exc: Exception) -> Any:
        if isinstance(exc, RecursionError):
            proxy.metrics.inc("r2vcal_requests_total", status="400")
            return JSONResponse(
                error_body(
                    "The request is nested too deeply.", "invalid_request_error"
                ),
                status_code=400,
            )
        _LOG.exception("internal error in r2vcal serve")
        proxy.metrics.inc("r2vcal_requests_total", status="500")
        return JSONResponse(
            error_body(
                f"Internal error in the r2vcal proxy ({type(exc).__name__}); "
                "the server log has the details.",
                "server_error",
            ),
            status_code=500,
        )

    return app  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- #
# Running
# --------------------------------------------------------------------------- #
@dataclass
class BackgroundServer:
    """A uvicorn server running in a daemon thread (see :func:`run_in_thread`).

    Attributes
    ----------
    url : str
        ``http://HOST:PORT``.
    port : int
    """

    url: str
    port: int
    _server: Any
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> BackgroundServer:
    """Serve an ASGI app from a daemon thread; return once it accepts requests.

    Parameters
    ----------
    app : ASGI app
    host : str, default="127.0.0.1"
    port : int, default=0
        0 binds a free port (see ``BackgroundServer.port``).
    timeout : float, default=30.0
        Seconds to wait for the server to start.

    Returns
    -------
    BackgroundServer
        Use as a context manager, or call ``stop()``.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_MISSING_EXTRA) from exc
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="r2vcal-serve"
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{bound} did not start")
        time.sleep(0.01)
    return BackgroundServer(f"http://{host}:{bound}", bound, server, thread)


def _warn_if_open(app: Any, host: str) -> None:
    proxy = getattr(getattr(app, "state", None), "proxy", None)
    if proxy is None or proxy.api_keys or _is_loopback(host):
        return
    message = (
        f"r2vcal serve is listening on {host} without an API key: anyone who can "
        "reach this port can spend your LLM budget. Set R2VCAL_API_KEY (or "
        "create_app(api_key=...)) or bind to 127.0.0.1."
    )
    print("\n" + "!" * 78 + f"\nWARNING: {message}\n" + "!" * 78, file=sys.stderr)
    warnings.warn(message, UserWarning, stacklevel=3)


async def _probe_slm(client: Any, proxy: Any) -> tuple[str, bool | None]:
    """One tiny SLM request with ``n=2`` and log-probs: verdict, n supported."""
    import aiohttp

    up = proxy.slm
    headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
    payload: dict[str, Any] = {
        "model": up.model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "logprobs": True,
    }
    if proxy.top_logprobs:
        payload["top_logprobs"] = proxy.top_logprobs
    timeout = aiohttp.ClientTimeout(total=min(up.timeout, 30.0))
    results = []
    for n in (2, 1):
        try:
            async with client.post(
                up.url, json={**payload, "n": n}, headers=headers, timeout=timeout
            ) as r:
                raw = await r.read()
                doc = json.loads(raw) if r.status < 400 else None
                results.append((r.status, doc, raw))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return f"unreachable ({type(exc).__name__})", None
        except ValueError:
            return "answers that are not JSON", None
        if r.status < 400 and isinstance(doc, dict) and n == 2:
            break
    status, doc, raw = results[0]
    if not isinstance(doc, dict) or answer_problem(doc) is not None:
        if len(results) == 2 and isinstance(results[1][1], dict):
            status, doc = 200, results[1][1]
            supports = False
        else:
            msg = _error_message(raw.decode(errors="replace"))
            return f"refused a test request (HTTP {status}: {msg})", None
    else:
        supports = len(doc["choices"]) >= 2
    lp = _choice_logprobs(doc["choices"][0])[0]
    parts = ["n > 1 in one request" if supports else "n = 1 only: k parallel requests"]
    parts.append("log-probs" if lp.size else "NO log-probs (every step looks certain)")
    return "OK (" + ", ".join(parts) + ")", supports


def check_upstreams(app: Any) -> str:
    """Check both upstreams once; return a one-line verdict.

    The SLM gets one tiny chat request (``max_tokens=1``, ``n=2``, log-probs):
    when it refuses or ignores ``n > 1`` the app switches to ``k`` parallel
    ``n=1`` requests. The LLM is only asked for its model list (no paid call).
    :func:`run_server` calls this before serving.

    Parameters
    ----------
    app : FastAPI
        Built by :func:`create_app`.

    Returns
    -------
    str
        E.g. ``"SLM small: OK (n > 1 in one request, log-probs); LLM large:
        reachable, model listed"``.
    """
    import dataclasses

    import aiohttp

    proxy = app.state.proxy

    async def run() -> str:
        async with aiohttp.ClientSession() as client:
            verdict, supports = await _probe_slm(client, proxy)
            llm = await proxy._probe(proxy.llm, client)
        if supports is False and proxy.slm.supports_n:
            proxy.slm = dataclasses.replace(proxy.slm, supports_n=False)
        if llm["ok"]:
            listed = llm.get("model_listed")
            llm_text = (
                "reachable"
                + {
                    True: ", model listed",
                    False: ", model NOT listed",
                    None: "",
                }[listed]
            )
        else:
            llm_text = f"NOT reachable ({llm.get('error') or llm['status']})"
        return f"SLM {proxy.slm.model}: {verdict}; LLM {proxy.llm.model}: {llm_text}"

    return asyncio.run(run())


def run_server(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve an app in the foreground (what ``r2vcal serve`` does).

    Warns loudly when ``host`` is not a loopback address and the app accepts
    requests without an API key (``create_app(api_key=...)`` or
    ``$R2VCAL_API_KEY``): anyone who reaches the port spends the LLM budget.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_MISSING_EXTRA) from exc
    _warn_if_open(app, host)
    if getattr(getattr(app, "state", None), "proxy", None) is not None:
        print(f"r2vcal serve: {check_upstreams(app)}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
