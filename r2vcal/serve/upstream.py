"""The upstream endpoints of ``r2vcal serve`` and the HTTP client that calls them.

:class:`Upstream` names an OpenAI-compatible endpoint; :func:`post_json` posts
to it with retries, exponential backoff and a hard per-attempt limit;
:func:`probe_models` and :func:`probe_slm` check an endpoint (``/health`` and
the start-up check).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from r2vcal.serve.openai import answer_problem, choice_logprobs, scrub

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

    from r2vcal.serve.metrics import Metrics

__all__ = ["Upstream"]

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: SLM answers with these statuses were caused by the client's request (a
#: context too long, a bad field): returned to the client, not escalated.
_CLIENT_FAULT_STATUS = frozenset({400, 413, 422})
_LOG = logging.getLogger("r2vcal.serve")


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
    supports_n : bool, default=True
        The server answers ``n > 1`` in one request (vLLM, SGLang). False
        (llama.cpp's server, many hosted APIs) makes the proxy ask for the
        ``k`` SLM candidates with ``k`` parallel ``n=1`` requests.

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
    supports_n: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.supports_n, bool):
            raise ValueError(
                "The 'supports_n' parameter of Upstream must be a bool. Got "
                f"{self.supports_n!r} instead."
            )
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

    def __repr__(self) -> str:  # never print the key
        key = None if self.api_key is None else "***"
        return (
            f"Upstream(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key={key}, timeout={self.timeout!r}, supports_n={self.supports_n})"
        )


class UpstreamError(Exception):
    """An upstream call failed after its retries.

    ``message`` is client-facing (no URL, no control character); ``status`` is
    the upstream's last HTTP status, None for timeouts and broken connections.
    """

    def __init__(self, side: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.side = side
        self.status = status
        self.message = scrub(message)

    @property
    def client_fault(self) -> bool:
        return self.status in _CLIENT_FAULT_STATUS


async def post_json(
    client: aiohttp.ClientSession,
    up: Upstream,
    payload: Mapping[str, Any],
    side: str,
    metrics: Metrics,
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
            last, status = f"connection failed ({type(exc).__name__})", None
            _LOG.warning("%s upstream %s: %s", side, up.base_url, exc)
        else:
            status = code
            if code < 400:
                try:
                    out = json.loads(raw)
                except (ValueError, RecursionError):
                    last = "answer is not JSON"
                else:
                    if isinstance(out, dict):
                        return out
                    last = "answer is not a JSON object"
            else:
                last = f"HTTP {code}: {error_message(raw.decode(errors='replace'))}"
                if code not in _RETRY_STATUS:
                    metrics.inc("r2vcal_upstream_errors_total", side=side)
                    raise UpstreamError(side, last, code)
        metrics.inc("r2vcal_upstream_errors_total", side=side)
    raise UpstreamError(side, f"{last} ({up.max_retries + 1} attempts)", status)


def error_message(text: str) -> str:
    try:
        doc = json.loads(text)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
        return scrub(msg)
    except (ValueError, RecursionError):
        return scrub(text)


async def probe_models(client: Any, up: Upstream) -> dict[str, Any]:
    """``GET /models`` of an upstream: reachable, status, model listed."""
    import aiohttp

    headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
    out: dict[str, Any] = {"model": up.model, "ok": False, "status": None}
    try:
        async with client.get(
            up.base_url.rstrip("/") + "/models",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=min(up.timeout, 2.0)),
        ) as r:
            out["status"] = r.status
            # a server without /models (404/405) is up all the same
            out["ok"] = r.status < 300 or r.status in (404, 405)
            if r.status == 200:
                doc = await r.json(content_type=None)
                ids = [
                    m.get("id") for m in (doc.get("data") or []) if isinstance(m, dict)
                ]
                out["model_listed"] = up.model in ids
    except asyncio.TimeoutError:
        out["error"] = "timed out"
    except (aiohttp.ClientError, OSError, ValueError, AttributeError) as exc:
        out["error"] = f"connection failed ({type(exc).__name__})"
    return out


async def probe_slm(
    client: Any, up: Upstream, top_logprobs: int
) -> tuple[str, bool | None]:
    """One tiny SLM request with ``n=2`` and log-probs: verdict, n supported."""
    import aiohttp

    headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
    payload: dict[str, Any] = {
        "model": up.model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "logprobs": True,
    }
    if top_logprobs:
        payload["top_logprobs"] = top_logprobs
    timeout = aiohttp.ClientTimeout(total=min(up.timeout, 30.0))
    results = []
    for n in (2, 1):
        try:
            async with client.post(
                up.url, json={**payload, "n": n}, headers=headers, timeout=timeout
            ) as r:
                raw = await r.read()
                doc = json.loads(raw) if r.status < 400 else None
                results.append((r.status, doc, raw))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return f"unreachable ({type(exc).__name__})", None
        except ValueError:
            return "answers that are not JSON", None
        if r.status < 400 and isinstance(doc, dict) and n == 2:
            break
    status, doc, raw = results[0]
    if not isinstance(doc, dict) or answer_problem(doc) is not None:
        if len(results) == 2 and isinstance(results[1][1], dict):
            status, doc = 200, results[1][1]
            supports = False
        else:
            msg = error_message(raw.decode(errors="replace"))
            return f"refused a test request (HTTP {status}: {msg})", None
    else:
        supports = len(doc["choices"]) >= 2
    lp = choice_logprobs(doc["choices"][0])[0]
    parts = ["n > 1 in one request" if supports else "n = 1 only: k parallel requests"]
    parts.append("log-probs" if lp.size else "NO log-probs (every step looks certain)")
    return "OK (" + ", ".join(parts) + ")", supports
