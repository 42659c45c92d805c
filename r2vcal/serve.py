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

Conversations: the ``x-r2vcal-conversation`` request header, else the request's
``user`` field, else a hash of the conversation's first two messages ties the
steps of one episode together (budget, step index, verifier trend). A request
whose conversation has fewer assistant turns than the last one seen under that
id starts a new episode.

Faults: upstream timeouts, 429/5xx answers and broken connections are retried
with exponential backoff; then an SLM failure sends the step to the LLM and an
LLM failure answers with the SLM's best candidate (``x-r2vcal-fallback`` says
why). Every attempt has a hard time limit, so no request hangs. Requests the
proxy cannot serve get the OpenAI error JSON (400 for malformed requests, 502
when both models failed). Tool calls and function-calling fields pass through
untouched in both directions.

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
import hashlib
import importlib
import inspect
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from r2vcal.cascade import BudgetRule, Decision, StepCascade

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp
    from fastapi import FastAPI

__all__ = [
    "CONVERSATION_HEADER",
    "TOOL_ERROR_PATTERN",
    "BackgroundServer",
    "Upstream",
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
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
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

    def __post_init__(self) -> None:
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


class _UpstreamError(Exception):
    """An upstream call failed after its retries."""

    def __init__(self, side: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.side = side
        self.status = status
        self.message = message


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
            last, status = f"{type(exc).__name__}: {exc}", None
        else:
            status = code
            if code < 400:
                try:
                    out = json.loads(raw)
                except ValueError:
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
    raise _UpstreamError(
        side, f"{last} ({up.max_retries + 1} attempts to {up.url})", status
    )


def _error_message(text: str) -> str:
    try:
        doc = json.loads(text)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return text[:300]


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
    "r2vcal_request_duration_seconds": ("histogram", "Request latency."),
    "r2vcal_proxy_overhead_seconds": (
        "histogram",
        "Request latency minus the time spent waiting for upstreams.",
    ),
}


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
                        lab = ",".join(f'{k}="{val}"' for k, val in labels)
                        lines.append(f"{name}{{{lab}}} {v:g}" if lab else f"{n} {v:g}")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Reading requests and answers
# --------------------------------------------------------------------------- #
class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _validate(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(
            "'messages' must be a non-empty list of message objects; got "
            f"{type(messages).__name__}.",
            "messages",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise _BadRequest(
                f"messages[{i}] must be an object whose 'role' is one of "
                f"{sorted(_ROLES)}; got {m!r:.80}.",
                f"messages[{i}].role",
            )
    n = body.get("n", 1)
    if n not in (None, 1):
        raise _BadRequest(
            f"The proxy returns one choice per request; 'n' must be 1, got {n!r}.",
            "n",
        )
    if not isinstance(body.get("stream", False), (bool, type(None))):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    return messages


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


def _conversation_id(headers: Mapping[str, str], body: dict[str, Any]) -> str:
    cid = headers.get(CONVERSATION_HEADER)
    if cid:
        return cid[:200]
    user = body.get("user")
    if isinstance(user, str) and user:
        return user[:200]
    head = json.dumps(
        [[m.get("role"), _content_text(m.get("content"))] for m in body["messages"][:2]]
    )
    return "h-" + hashlib.sha1(head.encode()).hexdigest()[:16]


def _turn_index(messages: Sequence[dict[str, Any]]) -> int:
    return sum(m.get("role") == "assistant" for m in messages)


def _tool_error(messages: Sequence[dict[str, Any]], pattern: re.Pattern[str]) -> bool:
    for m in reversed(messages):
        role = m.get("role")
        if role == "assistant":
            return False
        if role in ("tool", "function") and pattern.search(
            _content_text(m.get("content"))
        ):
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


def _choice_logprobs(choice: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-token log-probs and (from ``top_logprobs``) entropies of a choice."""
    tokens = (choice.get("logprobs") or {}).get("content") or []
    try:
        lp = np.array([t["logprob"] for t in tokens], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        lp = np.array(
            [t.get("logprob") if isinstance(t, dict) else None for t in tokens],
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
    top = np.where(np.isfinite(top), np.minimum(top, 0.0), -np.inf)
    p = np.exp(top)
    with np.errstate(invalid="ignore"):
        plogp = np.where(p > 0, p * top, 0.0).sum(axis=1)
    residual = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rlogr = np.where(residual > 0, residual * np.log(residual), 0.0)
    return lp, np.maximum(-plogp - rlogr, 0.0)


def _header_value(text: Any) -> str:
    out = str(text).encode("ascii", "replace").decode()
    return re.sub(r"[\r\n]+", " ", out)[:300]


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


# --------------------------------------------------------------------------- #
# Decision log
# --------------------------------------------------------------------------- #
class _ParquetLog:
    """Decisions written as row groups of one Parquet file (closed at shutdown)."""

    def __init__(self, path: Path, feature_names: Sequence[str], every: int) -> None:
        import pyarrow as pa

        self.path, self.every = path, max(int(every), 1)
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        self.lock = threading.Lock()
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
        self.schema = pa.schema(fields)

    def append(self, d: Decision) -> None:
        row = d.as_row()
        if not math.isfinite(row["threshold"]):
            row["threshold"] = None
        for key in ("episode_id", "group"):
            row[key] = None if row[key] is None else str(row[key])
        with self.lock:
            self.rows.append(row)
            if len(self.rows) >= self.every:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        import pyarrow.parquet as pq

        with self.lock:
            self._flush()
            if self.writer is None:  # no decision: an empty table with the columns
                pq.write_table(self.schema.empty_table(), self.path)
            else:
                self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- #
# The proxy
# --------------------------------------------------------------------------- #
def _proxy_only(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "The serve proxy calls the models itself; use decide()/resolve() on this "
        "cascade, not act()."
    )


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
        parquet: _ParquetLog | None,
        max_connections: int,
        conversation_ttl: float,
        keep_decisions: int,
        tool_error_pattern: str,
    ) -> None:
        self.cascade, self.slm, self.llm = cascade, slm, llm
        self.verifier = _make_verifier(verifier)
        self.verifier_timeout = verifier_timeout
        self.top_logprobs = top_logprobs
        self.served_model_name = served_model_name
        self.parquet = parquet
        self.max_connections = max_connections
        self.conversation_ttl = conversation_ttl
        self.keep_decisions = keep_decisions
        self.tool_error = re.compile(tool_error_pattern, re.IGNORECASE)
        self.metrics = _Metrics()
        self.client: aiohttp.ClientSession | None = None
        self.created = int(time.time())
        self._turns: dict[str, tuple[int, float]] = {}
        self._n_requests = 0

    # -------------------------------------------------------------- state
    def _track(self, conv: str, turn: int) -> None:
        """Step bookkeeping per conversation: new episodes and idle eviction."""
        now = time.monotonic()
        last = self._turns.get(conv)
        if last is not None and turn < last[0]:
            self.cascade.end_episode(conv)  # the history got shorter: a new episode
        self._turns[conv] = (turn, now)
        self._n_requests += 1
        if self._n_requests % 256 == 0:
            idle = [
                c
                for c, (_, t) in self._turns.items()
                if now - t > self.conversation_ttl
            ]
            for c in idle:
                self._turns.pop(c, None)
                self.cascade.end_episode(c)
        extra = len(self.cascade.decisions_) - self.keep_decisions
        if extra > 0:
            del self.cascade.decisions_[:extra]

    def _record(
        self, decision: Decision, action: str | None, error: str | None
    ) -> None:
        self.cascade.resolve(decision, action, error=error)
        if self.parquet is not None:
            self.parquet.append(decision)

    # ----------------------------------------------------------- upstream
    def _client(self) -> aiohttp.ClientSession:
        if self.client is None:
            raise RuntimeError("the proxy's HTTP client starts with the app")
        return self.client

    async def _call(
        self, up: Upstream, payload: dict[str, Any], side: str
    ) -> dict[str, Any]:
        out = await _post_json(self._client(), up, payload, side, self.metrics)
        usage = out.get("usage") or {}
        for kind in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(kind), (int, float)):
                self.metrics.inc(
                    "r2vcal_tokens_total", usage[kind], side=side, kind=kind[:-7]
                )
        if not isinstance(out.get("choices"), list) or not out["choices"]:
            raise _UpstreamError(side, "answer has no choices")
        return out

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
        except Exception:  # a broken verifier must not fail the step
            self.metrics.inc("r2vcal_upstream_errors_total", side="verifier")
            return None

    # ------------------------------------------------------------- handler
    async def chat(self, request: Any) -> Any:
        from fastapi.responses import JSONResponse, StreamingResponse

        t0 = time.perf_counter()
        waited = 0.0
        try:
            body = json.loads(await request.body())
            messages = _validate(body)
        except ValueError:
            return self._fail(400, "The request body is not valid JSON.", t0)
        except _BadRequest as exc:
            return self._fail(400, exc.message, t0, param=exc.param)
        conv = _conversation_id(request.headers, body)
        turn = _turn_index(messages)
        self._track(conv, turn)
        client_logprobs = bool(body.get("logprobs"))
        base = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        headers: dict[str, str] = {"x-r2vcal-conversation": _header_value(conv)}

        k = self.cascade.k
        slm_payload = {
            **base,
            "model": self.slm.model,
            "n": k,
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
            slm_doc: dict[str, Any] | None = await self._call(
                self.slm, slm_payload, "slm"
            )
            slm_error = None
        except _UpstreamError as exc:
            slm_doc, slm_error = None, exc
        waited += time.perf_counter() - t

        answer: dict[str, Any]
        if slm_doc is None or slm_error is not None:  # the LLM answers, no routing
            slm_error = slm_error or _UpstreamError("slm", "no answer")
            self.metrics.inc("r2vcal_fallbacks_total", side="llm")
            headers.update(
                {
                    "x-r2vcal-escalated": "true",
                    "x-r2vcal-risk": "nan",
                    "x-r2vcal-fallback": _header_value(f"slm: {slm_error.message}"),
                }
            )
            t = time.perf_counter()
            try:
                answer = await self._call(self.llm, llm_payload, "llm")
            except _UpstreamError as exc:
                waited += time.perf_counter() - t
                return self._fail(
                    exc.status if exc.status and 400 <= exc.status < 500 else 502,
                    f"Both models failed. SLM: {slm_error.message}; LLM: {exc.message}",
                    t0,
                    kind="upstream_error",
                    headers=headers,
                )
            waited += time.perf_counter() - t
            headers["x-r2vcal-model"] = _header_value(
                answer.get("model") or self.llm.model
            )
            self.metrics.inc("r2vcal_escalations_total")
        else:
            choices = sorted(slm_doc["choices"], key=lambda c: c.get("index", 0))
            choices = [choices[i % len(choices)] for i in range(k)]
            texts = [_choice_text(c) for c in choices]
            parts = [_choice_logprobs(c) for c in choices]
            ents = [p[1] for p in parts]
            t = time.perf_counter()
            scores = await self._score(messages, texts)
            waited += time.perf_counter() - t
            usage = slm_doc.get("usage") or {}
            ctx_len = usage.get("prompt_tokens")
            if not isinstance(ctx_len, (int, float)):
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
                group=body.get("user") if isinstance(body.get("user"), str) else None,
            )
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
                self.metrics.inc("r2vcal_escalations_total")
                t = time.perf_counter()
                try:
                    llm_doc = await self._call(self.llm, llm_payload, "llm")
                except _UpstreamError as exc:
                    self.metrics.inc("r2vcal_fallbacks_total", side="slm")
                    headers["x-r2vcal-fallback"] = _header_value(f"llm: {exc.message}")
                    self._record(decision, None, f"llm: {exc.message}")
                else:
                    self._record(decision, _choice_text(llm_doc["choices"][0]), None)
                waited += time.perf_counter() - t
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
                answer, who = llm_doc, llm_doc.get("model") or self.llm.model
            headers["x-r2vcal-model"] = _header_value(who)

        total = time.perf_counter() - t0
        self.metrics.inc("r2vcal_requests_total", status="200")
        self.metrics.observe("r2vcal_request_duration_seconds", total)
        self.metrics.observe("r2vcal_proxy_overhead_seconds", max(total - waited, 0.0))
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            events = _sse(answer, include_usage=bool(opts.get("include_usage")))
            return StreamingResponse(
                iter(events), media_type="text/event-stream", headers=headers
            )
        return JSONResponse(answer, headers=headers)

    def _fail(
        self,
        status: int,
        message: str,
        t0: float,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        from fastapi.responses import JSONResponse

        self.metrics.inc("r2vcal_requests_total", status=str(status))
        self.metrics.observe(
            "r2vcal_request_duration_seconds", time.perf_counter() - t0
        )
        return JSONResponse(
            _error_body(message, kind, param), status_code=status, headers=headers
        )


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
        LLM calls per conversation (None: unlimited).
    horizon : int, default=50
        The conversations' step limit (for ``step_fraction`` and paced budgets).
    top_logprobs : int, default=5
        Alternatives per token requested from the SLM (token entropies are
        computed from them); 0 asks for none and entropy falls back to surprisal.
    log_path : str or Path, default=None
        Decision log: ``.jsonl`` (one line per decision, appended and flushed)
        or ``.parquet`` (row groups of ``log_flush_every`` decisions; the file
        is complete once the server shuts down).
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
        else _ParquetLog(
            parquet, list(cascade.featurizer.get_feature_names_out()), log_flush_every
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
    )

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

    app = fastapi.FastAPI(
        title="r2vcal serve",
        description="OpenAI-compatible proxy with calibrated SLM->LLM escalation.",
        lifespan=lifespan,
    )
    app.state.cascade = cascade
    app.state.proxy = proxy

    # A plain Starlette route: the handler reads the raw request itself.
    app.router.add_route("/v1/chat/completions", proxy.chat, methods=["POST"])

    @app.get("/v1/models")
    async def models() -> Any:
        card = {"object": "model", "created": proxy.created, "owned_by": "r2vcal"}
        return {"object": "list", "data": [{"id": served_model_name, **card}]}

    @app.get("/health")
    async def health() -> Any:
        return {
            "status": "ok",
            "slm": slm.model,
            "llm": llm.model,
            "k": cascade.k,
            "threshold": cascade.threshold,
        }

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(
            proxy.metrics.render(), media_type="text/plain; version=0.0.4"
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Any, exc: Exception) -> Any:
        proxy.metrics.inc("r2vcal_requests_total", status="500")
        return JSONResponse(
            _error_body(f"{type(exc).__name__}: {exc}", "server_error"),
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


def run_server(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve an app in the foreground (what ``r2vcal serve`` does)."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(_MISSING_EXTRA) from exc
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
