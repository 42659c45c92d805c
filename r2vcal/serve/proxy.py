"""The proxy of ``r2vcal serve``: one routed step per chat request.

:class:`Proxy` reads a request, finds its conversation
(:mod:`r2vcal.serve.state`), asks the SLM for ``k`` candidates
(:mod:`r2vcal.serve.upstream`), scores them (:mod:`r2vcal.serve.verifier`),
routes with the routing core (:class:`~r2vcal.cascade.StepRouter`), calls the
LLM when the step is escalated, and answers as a chat completion or a
Responses object. Every LLM call is charged and logged exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from r2vcal.cascade import Decision, StepRouter
from r2vcal.serve.log import ParquetLog
from r2vcal.serve.metrics import Metrics
from r2vcal.serve.openai import (
    BadRequest,
    add_usage,
    answer_problem,
    choice_text,
    choices_logprobs,
    content_text,
    error_body,
    has_tool_error,
    header_value,
    merge_answers,
    parse_json,
    retry_count,
    scrub,
    validate_chat,
)
from r2vcal.serve.responses import read_request, response_from_chat
from r2vcal.serve.sse import chat_events
from r2vcal.serve.state import ConversationTracker, StateStore, explicit_id
from r2vcal.serve.upstream import Upstream, UpstreamError, post_json, probe_models
from r2vcal.serve.verifier import Verifier

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

__all__: list[str] = []

_LOG = logging.getLogger("r2vcal.serve")


@dataclass
class Result:
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


class Proxy:
    def __init__(
        self,
        cascade: StepRouter,
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
        self.verifier = Verifier(verifier, timeout=verifier_timeout)
        self.top_logprobs = top_logprobs
        self.served_model_name = served_model_name
        self.parquet = parquet
        self.max_connections = max_connections
        self.keep_decisions = keep_decisions
        self.tool_error = re.compile(tool_error_pattern, re.IGNORECASE)
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics()
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

    # -------------------------------------------------------------- state
    def _evict(self, conv_id: str) -> None:
        self.cascade.end_episode(conv_id)
        if self.store is not None:
            self.store.delete(conv_id)

    def _save(self, conv: Any) -> None:
        live = self.convs.convs.get(conv.id)
        if self.store is None or live is None or live is not conv:
            return
        used, step = self.cascade.episode_state(live.id)
        self.store.save(live, used, step)

    def restore(self) -> int:
        """Conversations of an earlier run (``state_path``); how many."""
        if self.store is None:
            return 0
        rows = self.store.load(self.convs.max_conversations)
        for row in rows:
            used, step = row.pop("used"), row.pop("step")
            self.convs.restore(**row)
            self.cascade.restore_episode(row["cid"], llm_calls=used, step=step)
        return len(rows)

    def _after_decision(self, conv_id: str) -> None:
        # the proxy never reads the decisions back: keep memory flat
        self.cascade.release_decisions(conv_id, keep=self.keep_decisions)

    def _record(
        self, decision: Decision, action: str | None, error: str | None
    ) -> None:
        """Log a decision: exactly once per decision, whatever happened."""
        self.cascade.resolve(decision, action, error=error)
        if self.parquet is not None:
            self.parquet.add(decision)

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
            out = await post_json(self._client(), up, payload, side, self.metrics)
            problem = answer_problem(out)
            if problem is not None:
                self.metrics.inc("r2vcal_upstream_errors_total", side=side)
                raise UpstreamError(side, f"malformed answer: {problem}")
        except UpstreamError as exc:
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
            return merge_answers(await self._parallel(payload, k, 0))
        try:
            doc = await self._call(self.slm, {**payload, "n": k}, "slm")
        except UpstreamError as exc:
            if not exc.client_fault:
                raise
            try:  # the client's fault, or only n > 1's?
                first = await self._parallel(payload, 1, 0)
            except UpstreamError:
                raise exc from None
            self._no_n(f"refused n={k} ({exc.message})")
            return merge_answers(first + await self._parallel(payload, k - 1, 1))
        have = len(doc["choices"])
        if have >= k:
            return doc
        self._no_n(f"answered n={k} with {have} choice(s)")
        return merge_answers([doc, *await self._parallel(payload, k - have, have)])

    def _no_n(self, why: str) -> None:

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
        if not self.verifier:
            return None
        return await self.verifier.score(self._client(), self.metrics, messages, texts)

    # ------------------------------------------------------------ helpers
    def check_auth(self, headers: Mapping[str, str]) -> None:
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

    async def _until_disconnect(self, request: Any, coro: Any) -> Result | None:
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
        """``POST /v1/chat/completions``: route one step."""
        t0 = time.perf_counter()
        try:
            self.check_auth(request.headers)
            body = parse_json(await self._read_body(request))
            messages = validate_chat(body)
        except BadRequest as exc:
            return self.fail(exc, t0)
        return await self._serve(request, body, messages, t0, "chat")

    async def responses(self, request: Any) -> Any:
        """``POST /v1/responses``: a Responses request routed as a chat step."""
        t0 = time.perf_counter()
        try:
            self.check_auth(request.headers)
            body = parse_json(await self._read_body(request))
            chat, explicit = read_request(body, self.responses_store)
        except BadRequest as exc:
            return self.fail(exc, t0)
        return await self._serve(
            request,
            chat,
            chat["messages"],
            t0,
            "responses",
            explicit=explicit,
            reply_body=body,
        )

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
            retry_count=retry_count(request.headers),
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
                    Result(200, res.doc, headers, res.kind, res.extra), reply, t0, 0.0
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

    def _payloads(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """The SLM's request (``k`` candidates, log-probs) and the LLM's."""
        base = {
            k: v
            for k, v in body.items()
            if k not in ("stream", "stream_options", "metadata", "prompt_cache_key")
        }
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
        return slm_payload, llm_payload

    async def _step(
        self, conv: str, body: dict[str, Any], messages: list[dict[str, Any]], kind: str
    ) -> Result:
        headers: dict[str, str] = {"x-r2vcal-conversation": header_value(conv)}
        user = body.get("user") if isinstance(body.get("user"), str) else None
        slm_payload, llm_payload = self._payloads(body)
        t = time.perf_counter()
        try:
            slm_doc = await self._candidates(slm_payload, self.cascade.k)
        except UpstreamError as exc:
            waited = time.perf_counter() - t
            if exc.client_fault:  # the client's fault
                return Result(
                    exc.status or 400,
                    error_body(
                        f"The small model refused the request: {exc.message}",
                        "invalid_request_error",
                    ),
                    headers,
                )
            # the LLM answers, no routing
            return await self._llm_only(conv, llm_payload, exc, headers, user, waited)
        waited = time.perf_counter() - t
        choices = sorted(slm_doc["choices"], key=lambda c: c.get("index", 0))
        choices = [choices[i % len(choices)] for i in range(self.cascade.k)]
        decision, scoring = await self._decide(
            conv, choices, slm_doc, messages, headers, user
        )
        waited += scoring
        llm_doc = None
        if decision.escalated:
            t = time.perf_counter()
            out = await self._teacher(decision, llm_payload, "")
            waited += time.perf_counter() - t
            if isinstance(out, UpstreamError):
                self.metrics.inc("r2vcal_fallbacks_total", side="slm")
                headers["x-r2vcal-fallback"] = header_value(decision.fallback)
            else:
                llm_doc = out
        else:
            self._record(decision, None, None)
        if llm_doc is None:
            chosen = dict(choices[decision.chosen])
            chosen["index"] = 0
            if not body.get("logprobs"):
                chosen["logprobs"] = None
            answer = {**slm_doc, "choices": [chosen]}
            who = slm_doc.get("model") or self.slm.model
        else:
            answer = {**llm_doc, "usage": add_usage(slm_doc, llm_doc)}
            who = llm_doc.get("model") or self.llm.model
        return self._answer(answer, who, decision, headers, waited)

    async def _decide(
        self,
        conv: str,
        choices: list[dict[str, Any]],
        slm_doc: Mapping[str, Any],
        messages: list[dict[str, Any]],
        headers: dict[str, str],
        user: str | None,
    ) -> tuple[Decision, float]:
        """Score the SLM's candidates and route the step (headers updated).

        The decision, and the seconds spent waiting for the verifier.
        """
        texts = [choice_text(c) for c in choices]
        parts = choices_logprobs(choices)
        if any(p[0].size == 0 for p in parts):
            self.metrics.inc("r2vcal_missing_logprobs_total")
            headers["x-r2vcal-logprobs"] = "missing"
        ents = [p[1] for p in parts]
        t = time.perf_counter()
        scores = await self._score(messages, texts)
        waited = time.perf_counter() - t
        usage = slm_doc.get("usage") or {}
        ctx_len = usage.get("prompt_tokens")
        if not isinstance(ctx_len, (int, float)) or isinstance(ctx_len, bool):
            ctx_len = sum(len(content_text(m.get("content")).split()) for m in messages)
        decision = self.cascade.decide(
            messages,
            texts,
            [p[0] for p in parts],
            token_entropies=None if any(e is None for e in ents) else ents,
            verifier_scores=scores,
            episode_id=conv,
            context_length=float(ctx_len),
            tool_error=has_tool_error(messages, self.tool_error),
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
        return decision, waited

    async def _teacher(
        self, decision: Decision, payload: dict[str, Any], prefix: str
    ) -> dict[str, Any] | UpstreamError:
        """The LLM's answer to an escalated step, logged exactly once.

        The answer, or the error when the call failed (the decision's
        ``fallback`` then says why, after ``prefix``).
        """
        action: str | None = None
        error: str | None = f"{prefix}llm: internal error"
        try:
            doc = await self._llm(payload)
            action, error = choice_text(doc["choices"][0]), None
            return doc
        except UpstreamError as exc:
            error = f"{prefix}llm: {exc.message}"
            return exc
        except asyncio.CancelledError:
            error = f"{prefix}llm: the client disconnected"
            raise
        finally:
            self._record(decision, action, error)

    def _answer(
        self,
        answer: dict[str, Any],
        who: str,
        decision: Decision,
        headers: dict[str, str],
        waited: float,
    ) -> Result:
        headers["x-r2vcal-model"] = header_value(scrub(who))
        headers["x-r2vcal-cost"] = f"{decision.cost:g}"
        message = answer["choices"][0].get("message") or {}
        return Result(
            200, answer, headers, extra={"message": message, "waited": waited}
        )

    async def _llm_only(
        self,
        conv: str,
        llm_payload: dict[str, Any],
        slm_error: UpstreamError,
        headers: dict[str, str],
        user: str | None,
        waited: float,
    ) -> Result:
        """The SLM failed: the LLM answers the step, within the budget."""
        reason = f"slm: {slm_error.message}"
        headers.update(
            {
                "x-r2vcal-escalated": "true",
                "x-r2vcal-risk": "nan",
                "x-r2vcal-fallback": header_value(reason),
            }
        )
        decision = self.cascade.charge_llm_call(conv, fallback=reason, group=user)
        if decision is None:
            headers["x-r2vcal-escalated"] = "false"
            return Result(
                502,
                error_body(
                    f"The small model failed ({slm_error.message}) and this "
                    "conversation's LLM budget is spent.",
                    "upstream_error",
                ),
                headers,
            )
        self._after_decision(conv)
        headers["x-r2vcal-step"] = str(decision.step)
        headers["x-r2vcal-threshold"] = f"{decision.threshold:.6f}"
        self.metrics.inc("r2vcal_fallbacks_total", side="llm")
        t = time.perf_counter()
        answer = await self._teacher(decision, llm_payload, f"{reason}; ")
        waited += time.perf_counter() - t
        if isinstance(answer, UpstreamError):
            exc = answer
            status = exc.status if exc.status and 400 <= exc.status < 500 else 502
            return Result(
                status,
                error_body(
                    f"Both models failed. SLM: {slm_error.message}; LLM: {exc.message}",
                    "upstream_error",
                ),
                headers,
            )
        who = answer.get("model") or self.llm.model
        return self._answer(answer, who, decision, headers, waited)

    def _respond(
        self, res: Result, body: Mapping[str, Any], t0: float, waited: float
    ) -> Any:
        from fastapi.responses import JSONResponse, StreamingResponse

        total = time.perf_counter() - t0
        self.metrics.inc("r2vcal_requests_total", status=str(res.status))
        self.metrics.observe("r2vcal_request_duration_seconds", total)
        if res.status != 200:
            return JSONResponse(res.doc, status_code=res.status, headers=res.headers)
        self.metrics.observe("r2vcal_proxy_overhead_seconds", max(total - waited, 0.0))
        if res.kind == "responses":
            cap = self.convs.max_conversations
            return response_from_chat(
                res.doc, res.headers, res.extra, body, self.responses_store, cap
            )
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            events = chat_events(res.doc, include_usage=bool(opts.get("include_usage")))
            return StreamingResponse(
                iter(events), media_type="text/event-stream", headers=res.headers
            )
        return JSONResponse(res.doc, headers=res.headers)

    def fail(self, exc: BadRequest, t0: float) -> Any:
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
        client = self._client()
        sides = await asyncio.gather(
            probe_models(client, self.slm), probe_models(client, self.llm)
        )
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
