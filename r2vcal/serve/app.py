"""The ``r2vcal serve`` app: :func:`create_app` wires the proxy into FastAPI."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r2vcal.cascade import BudgetRule, StepRouter
from r2vcal.serve.log import ParquetLog, log_paths
from r2vcal.serve.openai import (
    MAX_BODY_BYTES,
    TOOL_ERROR_PATTERN,
    BadRequest,
    error_body,
    header_value,
    scrub,
)
from r2vcal.serve.proxy import Proxy
from r2vcal.serve.state import StateStore
from r2vcal.serve.upstream import Upstream

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

__all__ = ["create_app"]

_LOG = logging.getLogger("r2vcal.serve")

MISSING_EXTRA = (
    "r2vcal serve needs FastAPI, uvicorn and aiohttp: pip install 'r2vcal[serve]'"
)


def import_serve_deps() -> tuple[Any, Any]:
    """``(fastapi, aiohttp)``, or an ImportError that names the ``serve`` extra."""
    try:
        import aiohttp
        import fastapi
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(MISSING_EXTRA) from exc
    return fastapi, aiohttp


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


def _check_params(
    slm: Any,
    llm: Any,
    top_logprobs: Any,
    retry_window: Any,
    ints: dict[str, tuple[Any, int]],
) -> None:
    """create_app's checks of the upstreams and the limits (``name: (value, min)``)."""
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
    for pname, (value, lo) in ints.items():
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
        Any fitted r2vcal router (as for :class:`~r2vcal.cascade.StepRouter`).
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
        ``app.state.cascade`` is the :class:`~r2vcal.cascade.StepRouter` that
        holds the routing state.

    Examples
    --------
    >>> app = create_app(router, slm=Upstream("http://127.0.0.1:8001/v1", "small"),
    ...                  llm=Upstream("http://127.0.0.1:8002/v1", "large"),
    ...                  budget=3, log_path="decisions.jsonl")  # doctest: +SKIP
    """
    fastapi, aiohttp = import_serve_deps()
    _check_params(
        slm,
        llm,
        top_logprobs,
        retry_window,
        {
            "max_conversations": (max_conversations, 1),
            "max_turns": (max_turns, 1),
            "max_body_bytes": (max_body_bytes, 1024),
        },
    )
    keys = _api_keys(api_key)
    jsonl, parquet = log_paths(log_path)
    core = StepRouter(
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
        else ParquetLog.for_decisions(
            parquet, list(core.featurizer.get_feature_names_out()), log_flush_every
        )
    )
    proxy = Proxy(
        core,
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
        restored = proxy.restore()
        if restored:
            _LOG.info("restored %d conversations from %s", restored, state_path)

    app = fastapi.FastAPI(
        title="r2vcal serve",
        description="OpenAI-compatible proxy with calibrated SLM->LLM escalation.",
        lifespan=_lifespan(proxy, aiohttp, max_connections),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.cascade = core
    app.state.proxy = proxy
    _add_routes(app, proxy)
    _add_error_handlers(app, proxy)
    return app  # type: ignore[no-any-return]


def _lifespan(proxy: Proxy, aiohttp: Any, max_connections: int) -> Any:
    """The app's lifespan: the upstream client; logs and state closed at exit."""
    from contextlib import asynccontextmanager

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
            if proxy.parquet is not None:
                proxy.parquet.close()
            if proxy.store is not None:
                proxy.store.close()

    return lifespan


def _add_routes(app: Any, proxy: Proxy) -> None:
    """The OpenAI routes, ``/health`` and ``/metrics``."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    # Plain Starlette routes: the handlers read the raw request themselves.
    app.router.add_route("/v1/chat/completions", proxy.chat, methods=["POST"])
    app.router.add_route("/v1/responses", proxy.responses, methods=["POST"])

    async def models(request: Any) -> Any:
        try:
            proxy.check_auth(request.headers)
        except BadRequest as exc:
            return proxy.fail(exc, time.perf_counter())
        card = {"object": "model", "created": proxy.created, "owned_by": "r2vcal"}
        return JSONResponse(
            {"object": "list", "data": [{"id": proxy.served_model_name, **card}]}
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


def _add_error_handlers(app: Any, proxy: Proxy) -> None:
    """OpenAI error bodies for 404/405, too-deep requests and internal errors."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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
