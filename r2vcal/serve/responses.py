"""The OpenAI Responses API (``POST /v1/responses``) on top of the chat proxy.

A Responses request is translated into a chat completions request (``input``
items and ``instructions`` into messages, function tools and ``tool_choice``,
``max_output_tokens``, ``text.format``), routed per step exactly like chat, and
the chat answer is translated back into a ``response`` object (streamed as
Responses events when ``stream`` is true). Function tools only: hosted tools
(web search, file search, computer use) are refused with 400.

Conversation identity: ``conversation`` (an id or ``{"id": ...}``) names the
conversation; ``previous_response_id`` continues a response this proxy
returned (the proxy keeps the history of its last ``max_conversations``
responses, so ``store`` need not be set).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from r2vcal.serve.openai import BadRequest, header_value, validate_chat

__all__: list[str] = []

#: Responses fields copied to the chat request under the same name.
_SAME = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "metadata",
    "prompt_cache_key",
    "seed",
    "top_logprobs",
    "service_tier",
)
#: Responses fields accepted and not forwarded.
_IGNORED = frozenset(
    {"store", "include", "reasoning", "truncation", "background", "stream_options"}
)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or not isinstance(p.get("text", ""), str):
                raise BadRequest(
                    f"{where}.content[{j}] must be an object with a str 'text' "
                    f"(input_text or output_text); got {p!r:.80}.",
                    f"{where}.content",
                )
            if p.get("type") not in ("input_text", "output_text", "text", "refusal"):
                raise BadRequest(
                    f"{where}.content[{j}] has type {p.get('type')!r}; the proxy "
                    "routes text only (input_text, output_text).",
                    f"{where}.content",
                )
            refusal = p.get("refusal")
            parts.append(p.get("text") or (refusal if isinstance(refusal, str) else ""))
        return "".join(parts)
    raise BadRequest(
        f"{where}.content must be a str or a list of content parts; got "
        f"{type(content).__name__}.",
        f"{where}.content",
    )


def input_messages(items: Any) -> list[dict[str, Any]]:
    """Chat messages from a Responses ``input``."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise BadRequest(
            "'input' must be a str or a non-empty list of input items; got "
            f"{type(items).__name__}.",
            "input",
        )
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object; got {item!r:.80}.", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(
                    f"{where}.role must be one of user, system, developer, "
                    f"assistant; got {role!r:.40}.",
                    f"{where}.role",
                )
            text = _text_of(item.get("content"), where)
            if role == "assistant" and out and out[-1].get("_merge"):
                out[-1]["content"] = text  # text of a turn that also called tools
                continue
            out.append({"role": role, "content": text})
        elif kind == "function_call":
            name, args, cid = (
                item.get("name"),
                item.get("arguments"),
                item.get("call_id"),
            )
            if not (
                isinstance(name, str) and isinstance(args, str) and isinstance(cid, str)
            ):
                raise BadRequest(
                    f"{where} (function_call) needs str 'name', 'arguments' and "
                    f"'call_id'; got {item!r:.80}.",
                    where,
                )
            call = {
                "id": cid,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            last = out[-1] if out else None
            if (
                last is not None
                and last.get("role") == "assistant"
                and last.get("_merge")
            ):
                last["tool_calls"].append(call)
            elif (
                last is not None
                and last.get("role") == "assistant"
                and not last.get("tool_calls")
            ):
                last.update(tool_calls=[call], _merge=True)
            else:
                out.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call],
                        "_merge": True,
                    }
                )
        elif kind == "function_call_output":
            cid, output = item.get("call_id"), item.get("output")
            if not isinstance(cid, str):
                raise BadRequest(
                    f"{where}.call_id must be a str; got {cid!r:.40}.",
                    f"{where}.call_id",
                )
            if not isinstance(output, str):
                output = json.dumps(output)
            out.append({"role": "tool", "tool_call_id": cid, "content": output})
        elif kind in ("reasoning", "item_reference"):
            continue
        else:
            raise BadRequest(
                f"{where} has type {kind!r}; the proxy routes message, function_call "
                "and function_call_output items.",
                f"{where}.type",
            )
    for m in out:
        m.pop("_merge", None)
    return out


def _chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest(
            f"'tools' must be a list; got {type(tools).__name__}.", "tools"
        )
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else type(t).__name__
            raise BadRequest(
                f"tools[{i}] has type {kind!r}; the proxy supports function tools "
                "only (hosted tools run at OpenAI).",
                f"tools[{i}]",
            )
        fn = {
            k: t[k] for k in ("name", "description", "parameters", "strict") if k in t
        }
        out.append({"type": "function", "function": fn})
    return out


def chat_request(body: Any, history: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The chat completions request equivalent to a Responses request."""
    if not isinstance(body, dict):
        raise BadRequest(
            f"The request body must be a JSON object; got {type(body).__name__}."
        )
    known = {
        "model", "input", "instructions", "tools", "tool_choice", "stream",
        "max_output_tokens", "text", "previous_response_id", "conversation",
        *_SAME, *_IGNORED,
    }  # fmt: skip
    chat: dict[str, Any] = {k: body[k] for k in _SAME if body.get(k) is not None}
    chat["model"] = body.get("model", "r2vcal")
    messages = [*(history or [])]
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest(
                f"'instructions' must be a str; got {type(instructions).__name__}.",
                "instructions",
            )
        messages = [m for m in messages if m.get("role") not in ("system", "developer")]
        messages.insert(0, {"role": "system", "content": instructions})
    messages += input_messages(body.get("input"))
    chat["messages"] = messages
    tools = _chat_tools(body.get("tools"))
    if tools is not None:
        chat["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {
            "type": "function",
            "function": {"name": choice.get("name")},
        }
    elif choice is not None:
        chat["tool_choice"] = choice
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = (
        (body.get("text") or {}).get("format")
        if isinstance(body.get("text"), dict)
        else None
    )
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt
        }
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.get("stream") is not None:
        chat["stream"] = body["stream"]
    for key in body:
        if key not in known:  # vLLM-style extras pass through, as for chat
            chat[key] = body[key]
    chat.pop("stream_options", None)
    validate_chat(chat)
    return chat


def conversation_of(body: Mapping[str, Any]) -> str | None:
    conv = body.get("conversation")
    if isinstance(conv, dict):
        conv = conv.get("id")
    if conv is None:
        return None
    if not isinstance(conv, str) or not conv:
        raise BadRequest(
            f"'conversation' must be a str id or {{'id': str}}; got {conv!r:.60}.",
            "conversation",
        )
    return conv[:200]


# --------------------------------------------------------------------------- #
# Answers
# --------------------------------------------------------------------------- #
def response_doc(
    answer: Mapping[str, Any], body: Mapping[str, Any], rid: str
) -> dict[str, Any]:
    """A ``response`` object from a chat completion."""
    choice = answer["choices"][0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    text = msg.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text or not msg.get("tool_calls"):  # an empty answer is an empty message
        output.append(
            {
                "type": "message",
                "id": "msg_" + rid[5:],
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text or "", "annotations": []}
                ],
            }
        )
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{rid[5:]}_{i}",
                "call_id": call.get("id") or f"call_{rid[5:]}_{i}",
                "name": fn.get("name"),
                "arguments": fn.get("arguments") or "{}",
                "status": "completed",
            }
        )
    usage = answer.get("usage") or {}
    inp, out = (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
    finish = choice.get("finish_reason")
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if finish == "length" else "completed",
        "incomplete_details": {"reason": "max_output_tokens"}
        if finish == "length"
        else None,
        "error": None,
        "model": answer.get("model", ""),
        "output": output,
        "instructions": body.get("instructions"),
        "previous_response_id": body.get("previous_response_id"),
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "usage": {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        },
    }


def response_events(doc: Mapping[str, Any]) -> list[bytes]:
    """Server-sent Responses events for a complete response."""
    events: list[dict[str, Any]] = []
    start = {**doc, "status": "in_progress", "output": [], "usage": None}
    events.append({"type": "response.created", "response": start})
    events.append({"type": "response.in_progress", "response": start})
    for i, item in enumerate(doc["output"]):
        if item["type"] == "message":
            empty = {**item, "status": "in_progress", "content": []}
            events.append(
                {"type": "response.output_item.added", "output_index": i, "item": empty}
            )
            text = item["content"][0]["text"]
            at = {"item_id": item["id"], "output_index": i, "content_index": 0}
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append({"type": "response.content_part.added", **at, "part": part})
            events.append(
                {
                    "type": "response.output_text.delta",
                    **at,
                    "delta": text,
                    "logprobs": [],
                }
            )
            events.append(
                {
                    "type": "response.output_text.done",
                    **at,
                    "text": text,
                    "logprobs": [],
                }
            )
            events.append(
                {"type": "response.content_part.done", **at, "part": item["content"][0]}
            )
        else:
            empty = {**item, "status": "in_progress", "arguments": ""}
            events.append(
                {"type": "response.output_item.added", "output_index": i, "item": empty}
            )
            at = {"item_id": item["id"], "output_index": i}
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    **at,
                    "delta": item["arguments"],
                }
            )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **at,
                    "arguments": item["arguments"],
                }
            )
        events.append(
            {"type": "response.output_item.done", "output_index": i, "item": item}
        )
    end = (
        "response.incomplete" if doc["status"] == "incomplete" else "response.completed"
    )
    events.append({"type": end, "response": doc})
    out = []
    for n, e in enumerate(events):
        e["sequence_number"] = n
        out.append(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
    return out


def response_from_chat(
    doc: Mapping[str, Any],
    headers: Mapping[str, str],
    extra: dict[str, Any],
    body: Mapping[str, Any],
    store: OrderedDict[str, Any],
    cap: int,
) -> Any:
    """The HTTP answer to a Responses request; remembers it for continuations.

    ``doc`` is the step's chat answer; ``extra`` holds its ``messages`` and
    answer ``message`` and keeps the ``response`` (so a retry gets the same).
    """
    from fastapi.responses import JSONResponse, StreamingResponse

    resp = extra.get("response")
    if resp is None:
        rid = "resp_" + secrets.token_hex(12)
        resp = extra["response"] = response_doc(doc, body, rid)
        history = [*extra["messages"], extra["message"]]
        store[rid] = (headers.get("x-r2vcal-conversation"), history)
        while len(store) > cap:
            store.popitem(last=False)
    headers = {**headers, "x-r2vcal-response-id": header_value(resp["id"])}
    if body.get("stream"):
        return StreamingResponse(
            iter(response_events(resp)), media_type="text/event-stream", headers=headers
        )
    return JSONResponse(resp, headers=headers)


def read_request(
    body: Any, store: OrderedDict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """A Responses request as a chat request, and its explicit conversation id.

    ``previous_response_id`` continues a response in ``store`` (the history it
    answered plus its answer).
    """
    if not isinstance(body, dict):
        raise BadRequest(
            f"The request body must be a JSON object; got {type(body).__name__}."
        )
    explicit = conversation_of(body)
    prev = body.get("previous_response_id")
    history = None
    if prev is not None:
        known = store.get(prev) if isinstance(prev, str) else None
        if known is None:
            raise BadRequest(
                f"'previous_response_id' {prev!r:.60} is not a response of "
                "this proxy (unknown, or dropped after max_conversations "
                "newer ones); send the whole input instead.",
                "previous_response_id",
                status=404 if isinstance(prev, str) else 400,
            )
        store.move_to_end(prev)
        explicit = explicit or known[0]
        history = known[1]
    return chat_request(body, history), explicit
