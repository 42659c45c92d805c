"""A canned OpenAI-compatible upstream for the serve tests (a test fixture).

``Canned`` answers chat completions with ``n`` candidates and log-probs; a test
changes ``handler`` to return any status and body (wrong shapes, 4xx, slow).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np


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
