"""Shared fixtures of the serve tests: a canned upstream, a router, a proxy.

``Canned`` answers chat completions with ``n`` candidates and log-probs; a test
changes ``handler`` to return any status and body (wrong shapes, 4xx, slow).
A test module uses the fixtures by importing them::

    from tests.r2vcal._serve_helpers import router, servers, ups  # noqa: F401
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from r2vcal.baselines import EntropyRouter
from r2vcal.features import FEATURE_NAMES

#: Candidates per step in the serve tests.
K = 3


def token(tok: str, lp: float) -> dict:
    alts = [{"token": tok, "logprob": lp, "bytes": None}]
    alts.append(
        {"token": "x", "logprob": float(np.log1p(-np.exp(lp)) - 1), "bytes": None}
    )
    return {"token": tok, "logprob": lp, "bytes": None, "top_logprobs": alts}


def ok_answer(name: str, body: dict, text: str = "look") -> dict:
    n = body.get("n") or 1
    choices = []
    for i in range(n):
        lp = -0.1 - 0.5 * i
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{name}: {text}"},
                "logprobs": {"content": [token("a", lp), token("b", lp)]}
                if body.get("logprobs")
                else None,
                "finish_reason": "stop",
            }
        )
    return {
        "id": f"chatcmpl-{name}",
        "object": "chat.completion",
        "created": 1,
        "model": name,
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2 * n, "total_tokens": 0},
    }


class Canned:
    """An upstream app: ``handler(body) -> (status, doc or raw bytes)``."""

    def __init__(self, name: str) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.name = name
        self.lock = threading.Lock()
        self.reset()

        async def chat(request: Any) -> Any:
            body = json.loads(await request.body())
            with self.lock:
                self.calls += 1
                self.bodies.append(body)
            if self.delay:
                await asyncio.sleep(self.delay)
            with self.lock:
                self.finished += 1
            status, doc = self.handler(body)
            raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            return Response(raw, status, media_type="application/json")

        async def models(request: Any) -> Any:
            return JSONResponse({"object": "list", "data": [{"id": self.name}]})

        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/models", models),
            ]
        )

    def reset(self) -> None:
        self.calls, self.finished, self.bodies, self.delay = 0, 0, [], 0.0
        self.handler = lambda body: (200, ok_answer(self.name, body))


def tool_error_router() -> EntropyRouter:
    """A router that escalates exactly the steps that follow a failed tool call."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.uniform(size=(300, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    X["tool_error"] = rng.integers(0, 2, len(X)).astype(float)
    return EntropyRouter("tool_error").fit(X, X["tool_error"] > 0.5)


@pytest.fixture(scope="module")
def router() -> EntropyRouter:
    """:func:`tool_error_router`, once per module."""
    return tool_error_router()


@pytest.fixture(scope="module")
def servers() -> Any:
    """A canned SLM and LLM upstream, each served from a thread."""
    from r2vcal.serve import run_in_thread

    slm, llm = Canned("slm"), Canned("llm")
    with run_in_thread(slm.app) as s1, run_in_thread(llm.app) as s2:
        slm.url, llm.url = s1.url, s2.url
        yield slm, llm


@pytest.fixture
def ups(servers: Any) -> Any:
    """:func:`servers`, reset to their default answers."""
    for s in servers:
        s.reset()
    return servers


def make_app(
    router: Any,
    ups: Any,
    *,
    slm_kw: dict[str, Any] | None = None,
    llm_kw: dict[str, Any] | None = None,
    **kw: Any,
) -> Any:
    """A proxy app on the canned upstreams (no retries, ``k=K``, threshold 0.5)."""
    from r2vcal.serve import Upstream, create_app

    slm, llm = ups
    kw.setdefault("k", K)
    kw.setdefault("threshold", 0.5)
    return create_app(
        router,
        slm=Upstream(slm.url + "/v1", "small", **{"max_retries": 0, **(slm_kw or {})}),
        llm=Upstream(llm.url + "/v1", "large", **{"max_retries": 0, **(llm_kw or {})}),
        **kw,
    )


def start_proxy(router: Any, ups: Any, **kw: Any) -> tuple[Any, Any]:
    """:func:`make_app` and its server running in a thread."""
    from r2vcal.serve import run_in_thread

    app = make_app(router, ups, **kw)
    return app, run_in_thread(app)


@contextlib.contextmanager
def tiny_upstreams(corpus: list[str]) -> Iterator[tuple[str, str]]:
    """Two tiny transformers models learnt on ``corpus``, served by
    ``pipelines.openai_server`` from threads: yields the SLM's and the LLM's
    base URLs (``.../v1``, models ``tiny-slm`` and ``tiny-llm``)."""
    from pipelines.models import build_tiny_causal_lm
    from pipelines.openai_server import create_app
    from r2vcal.serve import run_in_thread

    small = build_tiny_causal_lm(corpus, seed=0)
    large = build_tiny_causal_lm(corpus, seed=1, hidden_size=96)
    with (
        run_in_thread(create_app(*small, served_model_name="tiny-slm")) as s,
        run_in_thread(create_app(*large, served_model_name="tiny-llm")) as l_,
    ):
        yield s.url + "/v1", l_.url + "/v1"
