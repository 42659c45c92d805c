"""State of ``r2vcal serve``: which conversation a request continues.

Conversation identity (:class:`ConversationTracker`), in this order:

1. an explicit id: the ``x-r2vcal-conversation`` header, then ``metadata``
   (``conversation_id``, ``conversation``, ``session_id``, ``thread_id``), then
   ``prompt_cache_key``. Under an explicit id a history with fewer assistant
   turns than the last request starts a new episode;
2. otherwise a fingerprint. After each answer the proxy remembers the hash of
   the history it answered followed by its answer (messages keyed by role,
   text and tool calls, so re-serialisation by the client does not matter). A
   request whose history starts with such a prefix continues that
   conversation; two interleaved rollouts of one task stay apart because each
   continues its own history (identical ones are handed out first come, first
   served). A trimmed history (system prompt + last turns) is matched by its
   newest answer of the proxy, preferring the conversation whose recent answers
   agree with the history's; then by tool-call ids sent back. A request with
   no answer of the proxy in its history starts a conversation;
3. a retry, i.e. the same history as a conversation's last request, arriving
   while its answer is the conversation's newest, gets the same answer again
   without a new decision or upstream call. The OpenAI SDKs say which attempt
   a request is (``x-stainless-retry-count``: 0 is a first attempt, never a
   retry); without that header a repeat within ``retry_window`` seconds is a
   retry.

``user`` is an end-user label (the decision's ``group``), never a conversation.
State is bounded: at most ``max_conversations`` (least recently used dropped
first) and ``max_turns`` remembered answers each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2vcal.serve.openai import CONVERSATION_HEADER, content_text

__all__: list[str] = []

#: What a tool-call id looks like inside re-rendered text.
_ID_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{7,}")

#: ``metadata`` keys read as a conversation id, in order.
METADATA_KEYS = ("conversation_id", "conversation", "session_id", "thread_id")


def _canonical_args(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args.strip()
    return args


def message_key(msg: Mapping[str, Any]) -> bytes:
    """A key of one message that survives client re-serialisation.

    Role, content text (stripped) and, for assistant messages, the tool calls'
    names and arguments (parsed when they are JSON); ids, ``name``, ``refusal``
    and formatting are left out.
    """
    text = content_text(msg.get("content")).strip()
    calls = msg.get("tool_calls") or []
    if msg.get("function_call"):
        calls = [*calls, {"function": msg["function_call"]}]
    if calls:
        fns = [
            [
                (c.get("function") or {}).get("name"),
                _canonical_args((c.get("function") or {}).get("arguments")),
            ]
            for c in calls
            if isinstance(c, dict)
        ]
        text += "\x01" + json.dumps(fns, sort_keys=True, default=str)
    return f"{msg.get('role')}\x00{text}".encode()


def _chain(prev: bytes, key: bytes) -> bytes:
    return hashlib.blake2b(prev + key, digest_size=12).digest()


def history_hashes(messages: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Rolling hashes of every prefix of a history: ``out[i]`` covers ``messages[:i+1]``."""
    out, h = [], b""
    for m in messages:
        h = _chain(h, message_key(m))
        out.append(h)
    return out


def explicit_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The client's own conversation id, if it sent one."""
    cid = headers.get(CONVERSATION_HEADER)
    if cid:
        return cid[:200]
    meta = body.get("metadata")
    if isinstance(meta, dict):
        for key in METADATA_KEYS:
            v = meta.get(key)
            if isinstance(v, str) and v:
                return v[:200]
    v = body.get("prompt_cache_key")
    if isinstance(v, str) and v:
        return v[:200]
    return None


@dataclass
class Conversation:
    """What the proxy remembers of one conversation (bounded by ``max_turns``)."""

    id: str
    explicit: bool
    #: history hash after each answer (the history a continuation starts with)
    prefixes: deque[bytes] = field(default_factory=deque)
    #: key of each answer
    answers: deque[bytes] = field(default_factory=deque)
    #: tool-call ids of the answers
    call_ids: deque[str] = field(default_factory=deque)
    #: the newest prefix, None while a continuation of it is being answered
    tip: bytes | None = None
    turns: int = 0
    last_request: bytes | None = None
    last_seen: float = 0.0
    cached: Any = None
    pending: asyncio.Future[Any] | None = None


@dataclass
class Match:
    """The tracker's verdict on a request."""

    conv: Conversation
    kind: str  # "new", "continue", "new_episode", "retry"


def _suffix(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class ConversationTracker:
    """Resolve requests to conversations; bounded LRU state.

    Parameters
    ----------
    max_conversations : int
        Conversations kept; the least recently used is dropped first.
    max_turns : int
        Answers remembered per conversation.
    retry_window : float
        Seconds within which a repeated history is a retry, for clients that do
        not number their attempts.
    ttl : float
        Seconds after which an idle conversation is dropped.
    on_evict : callable
        Called with the id of every dropped conversation.
    """

    def __init__(
        self,
        *,
        max_conversations: int,
        max_turns: int,
        retry_window: float,
        ttl: float,
        on_evict: Callable[[str], None],
    ) -> None:
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self.retry_window = retry_window
        self.ttl = ttl
        self.on_evict = on_evict
        self.convs: OrderedDict[str, Conversation] = OrderedDict()
        self._by_prefix: dict[bytes, list[str]] = {}
        self._by_answer: dict[bytes, list[str]] = {}
        self._by_call: dict[str, list[str]] = {}
        self._by_request: dict[bytes, str] = {}
        self._n = 0

    def __len__(self) -> int:
        return len(self.convs)

    # ------------------------------------------------------------- lookup
    def match(
        self,
        explicit: str | None,
        messages: Sequence[Mapping[str, Any]],
        *,
        retry_count: int | None = None,
        previous: str | None = None,
    ) -> Match:
        """The conversation of a request (see the module docstring)."""
        now = time.monotonic()
        self._n += 1
        if self._n % 256 == 0:
            self._expire(now)
        hashes = history_hashes(messages)
        req = hashes[-1] if hashes else b""
        turns = sum(m.get("role") == "assistant" for m in messages)
        if explicit is not None:
            conv = self.convs.get(explicit)
            if conv is None:
                conv = self._new(explicit, True)
                return self._touch(Match(conv, "new"), req, turns, now)
            if self._is_retry(conv, req, retry_count, now):
                return self._touch(Match(conv, "retry"), None, turns, now)
            if turns < conv.turns:
                self._forget_answers(conv)
                return self._touch(Match(conv, "new_episode"), req, turns, now)
            return self._touch(Match(conv, "continue"), req, turns, now)
        cid = self._by_request.get(req)
        if cid is not None:
            conv = self.convs[cid]
            if self._is_retry(conv, req, retry_count, now):
                return self._touch(Match(conv, "retry"), None, turns, now)
        found = self._find(messages, hashes, previous)
        if found is not None:
            return self._touch(Match(found, "continue"), req, turns, now)
        conv = self._new("c-" + secrets.token_hex(8), False)
        return self._touch(Match(conv, "new"), req, turns, now)

    def _is_retry(
        self, conv: Conversation, req: bytes, retry_count: int | None, now: float
    ) -> bool:
        if conv.last_request != req or (conv.cached is None and conv.pending is None):
            return False
        if retry_count is not None:
            return retry_count > 0
        return now - conv.last_seen <= self.retry_window

    def _find(
        self,
        messages: Sequence[Mapping[str, Any]],
        hashes: Sequence[bytes],
        previous: str | None,
    ) -> Conversation | None:
        # 1. the whole history up to one of our answers (full histories)
        for h in reversed(hashes):
            ids = self._by_prefix.get(h)
            if ids:
                return self._pick(ids, h)
        # 2. the newest of our answers in a trimmed history, the conversation
        #    whose recent answers agree with the history's
        mine = [
            _chain(b"", message_key(m))
            for m in messages
            if m.get("role") == "assistant"
        ]
        for key in reversed(mine):
            ids = self._by_answer.get(key)
            if ids:
                scores = [self._score(self.convs[i], mine, key) for i in ids]
                best = max(scores)
                return self.convs[ids[scores.index(best)]]
        # 3. tool-call ids the client sent back, as fields or in the text of
        #    the assistant turns it re-rendered (smolagents: "Calling tools:
        #    [{'id': 'call_...', ...}]")
        if not self._by_call:
            return None
        calls: list[Any] = [previous] if previous else []
        for m in reversed(messages):
            if m.get("role") in ("tool", "function"):
                calls.append(m.get("tool_call_id"))
            for c in m.get("tool_calls") or []:
                if isinstance(c, dict):
                    calls.append(c.get("id"))
        for cid in calls:
            ids = self._by_call.get(cid) if isinstance(cid, str) else None
            if ids:
                return self.convs[ids[-1]]
        seen = 0
        for m in reversed(messages):
            if m.get("role") != "assistant":
                continue
            for token in _ID_TOKEN.findall(content_text(m.get("content"))):
                ids = self._by_call.get(token)
                if ids:
                    return self.convs[ids[-1]]
            seen += 1
            if seen == 4:
                break
        return None

    @staticmethod
    def _score(
        c: Conversation, mine: Sequence[bytes], key: bytes
    ) -> tuple[bool, bool, int]:
        """Agreement of a conversation's answers with a trimmed history's."""
        s = _suffix(mine, c.answers)
        fits = s >= min(len(mine), len(c.answers))
        return fits, c.tip is not None and c.answers[-1] == key, s

    def _pick(self, ids: Sequence[str], tip: bytes) -> Conversation:
        """The oldest conversation whose unclaimed tip is ``tip``, else the newest."""
        for cid in ids:
            if self.convs[cid].tip == tip:
                return self.convs[cid]
        return self.convs[ids[-1]]

    # ------------------------------------------------------------ updates
    def _new(self, cid: str, explicit: bool) -> Conversation:
        conv = Conversation(cid, explicit)
        self.convs[cid] = conv
        while len(self.convs) > self.max_conversations:
            self._drop(next(iter(self.convs)))
        return conv

    def _touch(self, match: Match, req: bytes | None, turns: int, now: float) -> Match:
        conv = match.conv
        self.convs.move_to_end(conv.id)
        conv.last_seen = now
        if req is not None:  # a new step: its request is the one a retry repeats
            if conv.last_request is not None:
                if self._by_request.get(conv.last_request) == conv.id:
                    del self._by_request[conv.last_request]
            conv.last_request, conv.turns, conv.cached = req, turns, None
            conv.tip = None  # claimed until this step is answered
            self._by_request[req] = conv.id
        return match

    def answered(
        self, conv: Conversation, message: Mapping[str, Any], cached: Any
    ) -> None:
        """Remember the answer a conversation's last step returned."""
        if self.convs.get(conv.id) is not conv or conv.last_request is None:
            return  # dropped meanwhile
        full = message_key({**message, "role": "assistant"})
        prefix = _chain(conv.last_request, full)
        key = _chain(b"", full)
        if len(conv.prefixes) >= self.max_turns:
            _unlist(self._by_prefix, conv.prefixes.popleft(), conv.id)
            _unlist(self._by_answer, conv.answers.popleft(), conv.id)
        conv.prefixes.append(prefix)
        conv.answers.append(key)
        self._by_prefix.setdefault(prefix, []).append(conv.id)
        self._by_answer.setdefault(key, []).append(conv.id)
        for c in message.get("tool_calls") or []:
            if isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"]:
                if len(conv.call_ids) >= self.max_turns:
                    _unlist(self._by_call, conv.call_ids.popleft(), conv.id)
                conv.call_ids.append(c["id"])
                self._by_call.setdefault(c["id"], []).append(conv.id)
        conv.tip = prefix
        conv.cached = cached

    def restore(
        self,
        cid: str,
        *,
        explicit: bool,
        turns: int,
        last_request: bytes | None,
        prefixes: Sequence[bytes],
        answers: Sequence[bytes],
        call_ids: Sequence[str],
    ) -> Conversation:
        """Re-create a conversation saved by :class:`StateStore` (oldest first)."""
        conv = self._new(cid, explicit)
        conv.turns, conv.last_request = turns, last_request
        conv.last_seen = time.monotonic()
        for index, keys, values in (
            (self._by_prefix, conv.prefixes, prefixes[-self.max_turns :]),
            (self._by_answer, conv.answers, answers[-self.max_turns :]),
            (self._by_call, conv.call_ids, call_ids[-self.max_turns :]),
        ):
            for v in values:
                keys.append(v)  # type: ignore[arg-type]
                index.setdefault(v, []).append(cid)  # type: ignore[arg-type]
        conv.tip = conv.prefixes[-1] if conv.prefixes else None
        if last_request is not None:
            self._by_request[last_request] = cid
        return conv

    def _forget_answers(self, conv: Conversation) -> None:
        for index, keys in (
            (self._by_prefix, conv.prefixes),
            (self._by_answer, conv.answers),
            (self._by_call, conv.call_ids),
        ):
            for k in keys:
                _unlist(index, k, conv.id)  # type: ignore[arg-type]
            keys.clear()
        conv.tip = None

    def _drop(self, cid: str) -> None:
        conv = self.convs.pop(cid)
        self._forget_answers(conv)
        if conv.last_request is not None:
            if self._by_request.get(conv.last_request) == cid:
                del self._by_request[conv.last_request]
        self.on_evict(cid)

    def _expire(self, now: float) -> None:
        while self.convs:
            cid, conv = next(iter(self.convs.items()))
            if now - conv.last_seen <= self.ttl:
                break
            self._drop(cid)


def _unlist(index: dict[Any, list[str]], key: Any, cid: str) -> None:
    ids = index.get(key)
    if ids is None:
        return
    try:
        ids.remove(cid)
    except ValueError:
        pass
    if not ids:
        del index[key]


# --------------------------------------------------------------------------- #
# Persistent state: budgets and identities survive a restart
# --------------------------------------------------------------------------- #
class StateStore:
    """Conversations saved in SQLite, so a restarted proxy keeps their budgets.

    One row per conversation: its identity state (history prefixes, answer
    keys, tool-call ids) and its budget state (LLM calls used, step index).
    Written after every step (WAL journal; a crash loses at most the step in
    flight), read back at start-up, deleted when the conversation is dropped.
    The verifier trend of the last steps is not kept.
    """

    def __init__(self, path: Path) -> None:
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, "
            "explicit INTEGER, turns INTEGER, last_request BLOB, prefixes BLOB, "
            "answers BLOB, call_ids TEXT, used INTEGER, step INTEGER, seen REAL)"
        )
        self.db.commit()
        self.lock = threading.Lock()

    def save(self, conv: Conversation, used: int, step: int) -> None:
        row = (
            conv.id,
            int(conv.explicit),
            conv.turns,
            conv.last_request,
            b"".join(conv.prefixes),
            b"".join(conv.answers),
            "\n".join(conv.call_ids),
            used,
            step,
            time.time(),
        )
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO conversations VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            self.db.commit()

    def delete(self, cid: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM conversations WHERE id = ?", (cid,))
            self.db.commit()

    def load(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recently seen conversations, oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, explicit, turns, last_request, prefixes, answers, "
                "call_ids, used, step FROM conversations ORDER BY seen DESC LIMIT ?",
                (limit,),
            ).fetchall()
        out = []
        for cid, explicit, turns, last, prefixes, answers, calls, used, step in rows:
            out.append(
                {
                    "cid": cid,
                    "explicit": bool(explicit),
                    "turns": int(turns),
                    "last_request": last,
                    "prefixes": _split(prefixes),
                    "answers": _split(answers),
                    "call_ids": [c for c in (calls or "").split("\n") if c],
                    "used": int(used),
                    "step": int(step),
                }
            )
        return out[::-1]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _split(blob: bytes | None, size: int = 12) -> list[bytes]:
    blob = blob or b""
    return [blob[i : i + size] for i in range(0, len(blob), size)]
