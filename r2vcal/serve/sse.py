"""Server-sent events of a complete chat completion (``stream=true``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

__all__: list[str] = []


def chat_events(doc: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
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
