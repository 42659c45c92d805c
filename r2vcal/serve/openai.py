"""The OpenAI Chat Completions schema as ``r2vcal serve`` reads it.

Requests in: every field the proxy knows is checked before any upstream call
(:func:`validate_chat`), refusals are OpenAI error bodies (:class:`BadRequest`,
:func:`error_body`) and header values carry no control characters
(:func:`header_value`, :func:`scrub`). Field tables are the single source of
the valid values (errors and docs read them).

Answers back: an upstream answer the proxy reads has the shape it reads
(:func:`answer_problem`); :func:`choice_text`, :func:`choices_logprobs` and
:func:`add_usage` read a checked answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from r2vcal.features import topn_entropy

__all__ = ["CONVERSATION_HEADER", "TOOL_ERROR_PATTERN"]

#: Roles a chat message may have.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: Numeric sampling fields and their closed ranges.
NUMBER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.0, 10.0),
    "min_p": (0.0, 1.0),
}
#: Integer fields and their closed ranges (None: unbounded).
INT_FIELDS: dict[str, tuple[int | None, int | None]] = {
    "max_tokens": (1, None),
    "max_completion_tokens": (1, None),
    "top_logprobs": (0, 20),
    "seed": (None, None),
    "top_k": (-1, None),
    "n": (1, 1),
}
BOOL_FIELDS = frozenset({"stream", "logprobs", "parallel_tool_calls", "store", "echo"})
STR_FIELDS: dict[str, int] = {  # max length
    "model": 256,
    "user": 512,
    "prompt_cache_key": 512,
    "reasoning_effort": 32,
    "service_tier": 32,
}
OBJECT_FIELDS = frozenset(
    {"stream_options", "response_format", "logit_bias", "metadata", "prediction"}
)
TOOL_CHOICES = frozenset({"none", "auto", "required"})

#: Most characters of a request body (bytes) the proxy reads.
MAX_BODY_BYTES = 32 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_URL = re.compile(r"\b(?:https?|wss?)://[^\s'\"<>]+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?")


class BadRequest(Exception):
    """A request the proxy refuses: HTTP ``status`` with the OpenAI error body."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status
        self.kind, self.code = kind, code


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def header_value(text: Any, limit: int = 300) -> str:
    """``text`` as a safe HTTP header value: ASCII, no control characters."""
    out = str(text).encode("ascii", "replace").decode()
    return _CONTROL.sub(" ", out).strip()[:limit]


def scrub(text: Any, limit: int = 300) -> str:
    """A client-facing message: no URLs or host addresses, no control characters."""
    return _CONTROL.sub(" ", _URL.sub("<upstream>", str(text))).strip()[:limit]


def _got(value: Any) -> str:
    return f"{value!r:.80} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def parse_json(raw: bytes) -> Any:
    """Decode a request body; :class:`BadRequest` for anything but JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest("The request body is not valid JSON.") from None


def _check_content(content: Any, where: str, *, nullable: bool) -> None:
    if (content is None and nullable) or isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(
                    f"{where}.content[{j}] must be an object with a str 'type' "
                    f"(e.g. {{'type': 'text', 'text': '...'}}); got {_got(part)}.",
                    f"{where}.content",
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise BadRequest(
                    f"{where}.content[{j}].text must be a str; got "
                    f"{_got(part.get('text'))}.",
                    f"{where}.content",
                )
        return
    raise BadRequest(
        f"{where}.content must be a str, a list of content parts"
        f"{' or null' if nullable else ''}; got {_got(content)}.",
        f"{where}.content",
    )


def _check_tool_calls(calls: Any, where: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise BadRequest(
            f"{where}.tool_calls must be a list; got {_got(calls)}.",
            f"{where}.tool_calls",
        )
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not (
            isinstance(fn, dict)
            and isinstance(fn.get("name"), str)
            and isinstance(fn.get("arguments", ""), str)
        ):
            raise BadRequest(
                f"{where}.tool_calls[{j}] must be an object with 'function': "
                f"{{'name': str, 'arguments': str}}; got {_got(c)}.",
                f"{where}.tool_calls",
            )


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check ``messages``; the list itself."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "'messages' must be a non-empty list of message objects; got "
            f"{_got(messages)}.",
            "messages",
        )
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not (
            isinstance(m.get("role"), str) and m["role"] in ROLES
        ):
            raise BadRequest(
                f"{where} must be an object whose 'role' is one of {sorted(ROLES)}; "
                f"got {m!r:.80}.",
                f"{where}.role",
            )
        role = m["role"]
        nullable = role == "assistant" or "content" not in m
        _check_content(m.get("content"), where, nullable=nullable)
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise BadRequest(
                    f"{where}.{key} must be a str; got {_got(m[key])}.",
                    f"{where}.{key}",
                )
        if role == "assistant":
            _check_tool_calls(m.get("tool_calls"), where)
    return messages


def validate_chat(body: Any) -> list[dict[str, Any]]:
    """Check every field of a chat completions request the proxy knows.

    Unknown fields pass through to the upstreams untouched (servers such as vLLM
    accept extra sampling fields).

    Returns
    -------
    list of dict
        The messages.

    Raises
    ------
    BadRequest
        Naming the field, what was expected and what came.
    """
    if not isinstance(body, dict):
        raise BadRequest(
            f"The request body must be a JSON object; got {type(body).__name__}."
        )
    messages = validate_messages(body.get("messages"))
    validate_fields(body)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest(f"'tools' must be a list; got {_got(tools)}.", "tools")
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
                raise BadRequest(
                    f"tools[{i}] must be {{'type': 'function', 'function': "
                    f"{{'name': str, ...}}}}; got {_got(t)}.",
                    f"tools[{i}]",
                )
    choice = body.get("tool_choice")
    if choice is not None and not (
        (isinstance(choice, str) and choice in TOOL_CHOICES) or isinstance(choice, dict)
    ):
        raise BadRequest(
            f"'tool_choice' must be one of {sorted(TOOL_CHOICES)} or an object; "
            f"got {_got(choice)}.",
            "tool_choice",
        )
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (
            isinstance(stop, list)
            and len(stop) <= 16
            and all(isinstance(s, str) for s in stop)
        )
    ):
        raise BadRequest(
            f"'stop' must be a str or a list of at most 16 str; got {_got(stop)}.",
            "stop",
        )
    return messages


def validate_fields(body: Mapping[str, Any]) -> None:
    """Check the typed scalar and object fields shared by both APIs."""
    for name, (lo, hi) in NUMBER_FIELDS.items():
        v = body.get(name)
        if v is not None and not (_is_number(v) and lo <= v <= hi):
            raise BadRequest(
                f"'{name}' must be a number in [{lo:g}, {hi:g}]; got {_got(v)}.", name
            )
    for name, (ilo, ihi) in INT_FIELDS.items():
        v = body.get(name)
        if v is None:
            continue
        if not (_is_int(v) and (ilo is None or v >= ilo) and (ihi is None or v <= ihi)):
            if name == "n":
                msg = f"The proxy returns one choice per request; 'n' must be 1, got {v!r}."
            else:
                lo_s = "-inf" if ilo is None else str(ilo)
                hi_s = "inf" if ihi is None else str(ihi)
                msg = f"'{name}' must be an int in [{lo_s}, {hi_s}]; got {_got(v)}."
            raise BadRequest(msg, name)
    for name in BOOL_FIELDS:
        v = body.get(name)
        if v is not None and not isinstance(v, bool):
            raise BadRequest(f"'{name}' must be a boolean; got {_got(v)}.", name)
    for name, limit in STR_FIELDS.items():
        v = body.get(name)
        if v is not None and not (isinstance(v, str) and len(v) <= limit):
            raise BadRequest(
                f"'{name}' must be a str of at most {limit} characters; got {_got(v)}.",
                name,
            )
    for name in OBJECT_FIELDS:
        v = body.get(name)
        if v is not None and not isinstance(v, dict):
            raise BadRequest(f"'{name}' must be an object; got {_got(v)}.", name)
    opts = body.get("stream_options")
    if opts and not isinstance(opts.get("include_usage", False), (bool, type(None))):
        raise BadRequest(
            "'stream_options.include_usage' must be a boolean; got "
            f"{_got(opts.get('include_usage'))}.",
            "stream_options.include_usage",
        )
    meta = body.get("metadata")
    if meta and not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in meta.items()
    ):
        raise BadRequest(
            "'metadata' must map str keys (<= 64 characters) to str values "
            f"(<= 512 characters); got {_got(meta)}.",
            "metadata",
        )


# --------------------------------------------------------------------------- #
# Upstream answers
# --------------------------------------------------------------------------- #
def answer_problem(doc: Mapping[str, Any], *, want: int = 1) -> str | None:
    """Why a chat completion cannot be used, or None when it can.

    The proxy reads ``choices[*].message`` (``content``, ``tool_calls``,
    ``function_call``), ``choices[*].logprobs`` and ``usage``; everything else
    passes through.
    """
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        return "answer has no choices"
    if len(choices) < want:
        return f"answer has {len(choices)} choices, asked for {want}"
    for i, c in enumerate(choices):
        if not isinstance(c, dict):
            return f"choices[{i}] is not an object"
        msg = c.get("message")
        if not isinstance(msg, dict):
            return f"choices[{i}].message is not an object"
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"choices[{i}].message.content is {type(content).__name__}"
        calls = msg.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list)
            and all(
                isinstance(tc, dict) and isinstance(tc.get("function"), dict)
                for tc in calls
            )
        ):
            return f"choices[{i}].message.tool_calls is malformed"
        fc = msg.get("function_call")
        if fc is not None and not isinstance(fc, dict):
            return f"choices[{i}].message.function_call is malformed"
        lp = c.get("logprobs")
        if lp is not None and not (
            isinstance(lp, dict)
            and (lp.get("content") is None or isinstance(lp.get("content"), list))
        ):
            return f"choices[{i}].logprobs is malformed"
        if not isinstance(c.get("index", 0), int):
            return f"choices[{i}].index is not an int"
    usage = doc.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            return "usage is not an object"
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v = usage.get(key)
            if v is not None and not (_is_number(v) and v >= 0):
                return f"usage.{key} is not a count"
    return None


CONVERSATION_HEADER = "x-r2vcal-conversation"

#: A tool message since the last assistant turn matching this (case-insensitive)
#: sets the step's ``tool_error`` feature.
TOOL_ERROR_PATTERN = (
    r"\b(error|errors|exception|traceback|failed|failure|fatal|"
    r"not found|no such file|permission denied|timed out|invalid)\b"
)

_OBSERVATION = "Observation:"


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
        )
    return str(content)


def has_tool_error(
    messages: Sequence[dict[str, Any]], pattern: re.Pattern[str]
) -> bool:
    """A tool result since the last assistant turn reports an error.

    Tool results are ``tool``/``function`` messages, and user messages that
    start with ``Observation:`` (how smolagents sends tool results).
    """
    for m in reversed(messages):
        role = m.get("role")
        if role == "assistant":
            return False
        if role in ("tool", "function"):
            text = content_text(m.get("content"))
        elif role == "user":
            text = content_text(m.get("content"))
            if not text.startswith(_OBSERVATION):
                continue
        else:
            continue
        if pattern.search(text):
            return True
    return False


def choice_text(choice: Mapping[str, Any]) -> str:
    """The action of a choice: its content plus its tool calls, as one string."""
    msg = choice.get("message") or {}
    text = content_text(msg.get("content"))
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


def choice_logprobs(choice: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
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
        top = _padded(rows, width)
    except (TypeError, ValueError):  # a null or non-numeric log-prob
        return lp, None
    return lp, _entropies(top)


def _padded(rows: Sequence[Sequence[Any]], width: int) -> np.ndarray:
    """Rows of top log-probs as one ``(n, width)`` array padded with ``-inf``."""
    if all(len(r) == width for r in rows):
        return np.array(rows, dtype=np.float64)
    top = np.full((len(rows), width), -np.inf)
    for i, r in enumerate(rows):
        top[i, : len(r)] = r
    return top


def _entropies(top: np.ndarray) -> np.ndarray:
    """Token entropies from rows of top log-probs (padding is ``-inf``).

    :func:`r2vcal.features.topn_entropy`, the definition every backend uses;
    non-finite log-probs count as padding.
    """
    return topn_entropy(np.where(np.isfinite(top), top, -np.inf))


def choices_logprobs(
    choices: Sequence[Mapping[str, Any]],
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """:func:`choice_logprobs` of every choice, with one entropy computation."""
    lps: list[np.ndarray] = []
    rows: list[list[Any]] = []
    spans: list[tuple[int, int, int]] = []
    for j, choice in enumerate(choices):
        tokens = (choice.get("logprobs") or {}).get("content") or []
        try:
            lp = np.array([t["logprob"] for t in tokens], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return [choice_logprobs(c) for c in choices]
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
        try:
            top = _padded(rows, max(map(len, rows)))
        except (TypeError, ValueError):  # a null or non-numeric log-prob somewhere
            return [choice_logprobs(c) for c in choices]
        ent = _entropies(top)
        for j, a, b in spans:
            ents[j] = ent[a:b]
    return list(zip(lps, ents, strict=True))


def add_usage(*docs: Mapping[str, Any] | None) -> dict[str, Any] | None:
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


def merge_answers(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One answer with the choices of several, re-indexed, usage summed."""
    if len(docs) == 1:
        return docs[0]
    choices = [
        dict(c, index=i) for i, c in enumerate(c for d in docs for c in d["choices"])
    ]
    return {**docs[0], "choices": choices, "usage": add_usage(*docs)}


def retry_count(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("x-stainless-retry-count")
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None
