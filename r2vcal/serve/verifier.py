"""The verifier of ``r2vcal serve``: a URL, an import string or a callable.

The verifier is a URL (``POST {"context": messages, "candidates": [text, ...]}``
answered by ``{"scores": [float in [0, 1], ...]}``), an import string
``"module:callable"``, or a callable ``verifier(messages, texts) -> scores`` (an
object with ``score_candidates`` works too; coroutine functions are awaited).
A verifier that fails or times out leaves the step unscored.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from r2vcal.cascade import check_verifier_scores
from r2vcal.serve.metrics import Metrics
from r2vcal.serve.upstream import Upstream, post_json

__all__: list[str] = []


def _as_verifier(verifier: Any) -> Callable[..., Any] | str | None:
    """None, a URL (str), or a callable ``(messages, texts) -> scores``."""
    if verifier is None:
        return None
    if isinstance(verifier, str):
        if verifier.startswith(("http://", "https://")):
            return verifier
        module, sep, name = verifier.partition(":")
        if not sep or not module or not name:
            raise ValueError(
                "The 'verifier' parameter must be an http(s) URL, a 'module:callable' "
                f"import string or a callable. Got {verifier!r} instead."
            )
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(
                f"Could not import the verifier {verifier!r}: {exc}."
            ) from None
        verifier = obj
    if hasattr(verifier, "score_candidates"):
        return verifier.score_candidates  # type: ignore[no-any-return]
    if callable(verifier):
        return verifier  # type: ignore[no-any-return]
    raise TypeError(
        "The 'verifier' parameter must be an http(s) URL, a 'module:callable' "
        f"import string or a callable. Got {type(verifier).__name__} instead."
    )


class Verifier:
    """Scores a step's candidates; None when there is no verifier or it fails.

    Parameters
    ----------
    verifier : str, callable or None
        See the module docstring.
    timeout : float
        Seconds one scoring may take.
    """

    def __init__(self, verifier: Any, *, timeout: float) -> None:
        self.fn = _as_verifier(verifier)
        self.timeout = timeout

    def __bool__(self) -> bool:
        return self.fn is not None

    async def score(
        self, client: Any, metrics: Metrics, messages: Any, texts: list[str]
    ) -> list[float] | None:
        """Scores in [0, 1] of ``texts``, or None (counted as a verifier error)."""
        fn = self.fn
        if fn is None:
            return None
        try:
            if isinstance(fn, str):
                up = Upstream(
                    fn, "verifier", timeout=self.timeout, max_retries=1, backoff=0.05
                )
                doc = await post_json(
                    client,
                    up,
                    {"context": messages, "candidates": texts},
                    "verifier",
                    metrics,
                    url=fn,
                )
                return check_verifier_scores(doc.get("scores"), len(texts))
            if inspect.iscoroutinefunction(fn):
                res = await asyncio.wait_for(fn(messages, texts), self.timeout)
            else:
                res = await asyncio.wait_for(
                    asyncio.to_thread(fn, messages, texts), self.timeout
                )
            return check_verifier_scores(res, len(texts))
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken verifier must not fail the step
            metrics.inc("r2vcal_upstream_errors_total", side="verifier")
            return None
