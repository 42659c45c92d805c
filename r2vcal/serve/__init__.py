"""An OpenAI-compatible proxy that routes every agent step: ``r2vcal serve``.

Most agents call an OpenAI-compatible chat endpoint once per step. Put this
proxy at that endpoint and every step is routed between a small model (SLM) and
a large one (LLM), without touching the agent's code. For each
``POST /v1/chat/completions`` request the proxy

1. asks the SLM endpoint for ``k`` candidates with token log-probabilities
   (``n=k``, ``logprobs=true``, ``top_logprobs``);
2. scores them with the verifier, when one is configured;
3. builds the router's features (:class:`~r2vcal.features.CandidateFeaturizer`,
   through the routing core :class:`~r2vcal.cascade.StepRouter`) with the step context read from
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
way (:mod:`r2vcal.serve.responses`).

Conversations (budget, step index, verifier trend) are identified by the
client's own id when it sends one (the ``x-r2vcal-conversation`` header,
``metadata.conversation_id``/``session_id``/``thread_id``, ``prompt_cache_key``,
Responses ``conversation``/``previous_response_id``), otherwise by the history:
a request whose history continues an answer of the proxy belongs to that
conversation, so interleaved rollouts, trimmed histories and agents without a
system prompt resolve (:mod:`r2vcal.serve.state`). ``user`` is an end-user
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

Modules: :mod:`~r2vcal.serve.app` (:func:`create_app`), :mod:`~r2vcal.serve.proxy`
(one routed step), :mod:`~r2vcal.serve.openai` (the Chat Completions schema),
:mod:`~r2vcal.serve.responses` (the Responses API), :mod:`~r2vcal.serve.sse`
(streaming), :mod:`~r2vcal.serve.upstream` (the HTTP client),
:mod:`~r2vcal.serve.verifier`, :mod:`~r2vcal.serve.state` (conversations),
:mod:`~r2vcal.serve.log` (the Parquet decision log), :mod:`~r2vcal.serve.metrics`
(Prometheus) and :mod:`~r2vcal.serve.server` (running it).

This package needs the ``serve`` extra (FastAPI, uvicorn, aiohttp); they are
imported when an app is built, never by ``import r2vcal``. The upstream client
is aiohttp rather than httpx: with 32 concurrent requests httpx's connection
pool spent more CPU than the rest of the proxy (``bench/bench_serve.py``).
"""

from __future__ import annotations

from r2vcal.serve.app import create_app
from r2vcal.serve.openai import CONVERSATION_HEADER, TOOL_ERROR_PATTERN
from r2vcal.serve.server import (
    BackgroundServer,
    check_upstreams,
    run_in_thread,
    run_server,
)
from r2vcal.serve.upstream import Upstream

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
