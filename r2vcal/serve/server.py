"""Running ``r2vcal serve``: in the foreground, in a thread, after a start-up check."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from r2vcal.serve.app import MISSING_EXTRA
from r2vcal.serve.upstream import probe_models, probe_slm

__all__ = ["BackgroundServer", "check_upstreams", "run_in_thread", "run_server"]


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class BackgroundServer:
    """A uvicorn server running in a daemon thread (see :func:`run_in_thread`).

    Attributes
    ----------
    url : str
        ``http://HOST:PORT``.
    port : int
    """

    url: str
    port: int
    _server: Any
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> BackgroundServer:
    """Serve an ASGI app from a daemon thread; return once it accepts requests.

    Parameters
    ----------
    app : ASGI app
    host : str, default="127.0.0.1"
    port : int, default=0
        0 binds a free port (see ``BackgroundServer.port``).
    timeout : float, default=30.0
        Seconds to wait for the server to start.

    Returns
    -------
    BackgroundServer
        Use as a context manager, or call ``stop()``.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(MISSING_EXTRA) from exc
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="r2vcal-serve"
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{bound} did not start")
        time.sleep(0.01)
    return BackgroundServer(f"http://{host}:{bound}", bound, server, thread)


def warn_if_open(app: Any, host: str) -> None:
    """Warn loudly when ``app`` takes requests without a key off loopback."""
    proxy = getattr(getattr(app, "state", None), "proxy", None)
    if proxy is None or proxy.api_keys or _is_loopback(host):
        return
    message = (
        f"r2vcal serve is listening on {host} without an API key: anyone who can "
        "reach this port can spend your LLM budget. Set R2VCAL_API_KEY (or "
        "create_app(api_key=...)) or bind to 127.0.0.1."
    )
    print("\n" + "!" * 78 + f"\nWARNING: {message}\n" + "!" * 78, file=sys.stderr)
    warnings.warn(message, UserWarning, stacklevel=3)


def check_upstreams(app: Any) -> str:
    """Check both upstreams once; return a one-line verdict.

    The SLM gets one tiny chat request (``max_tokens=1``, ``n=2``, log-probs):
    when it refuses or ignores ``n > 1`` the app switches to ``k`` parallel
    ``n=1`` requests. The LLM is only asked for its model list (no paid call).
    :func:`run_server` calls this before serving.

    Parameters
    ----------
    app : FastAPI
        Built by :func:`create_app`.

    Returns
    -------
    str
        E.g. ``"SLM small: OK (n > 1 in one request, log-probs); LLM large:
        reachable, model listed"``.
    """
    import aiohttp

    proxy = app.state.proxy

    async def run() -> str:
        async with aiohttp.ClientSession() as client:
            verdict, supports = await probe_slm(client, proxy.slm, proxy.top_logprobs)
            llm = await probe_models(client, proxy.llm)
        if supports is False and proxy.slm.supports_n:
            proxy.slm = dataclasses.replace(proxy.slm, supports_n=False)
        if llm["ok"]:
            listed = llm.get("model_listed")
            llm_text = (
                "reachable"
                + {
                    True: ", model listed",
                    False: ", model NOT listed",
                    None: "",
                }[listed]
            )
        else:
            llm_text = f"NOT reachable ({llm.get('error') or llm['status']})"
        return f"SLM {proxy.slm.model}: {verdict}; LLM {proxy.llm.model}: {llm_text}"

    return asyncio.run(run())


def run_server(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve an app in the foreground (what ``r2vcal serve`` does).

    Warns loudly when ``host`` is not a loopback address and the app accepts
    requests without an API key (``create_app(api_key=...)`` or
    ``$R2VCAL_API_KEY``): anyone who reaches the port spends the LLM budget.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(MISSING_EXTRA) from exc
    warn_if_open(app, host)
    if getattr(getattr(app, "state", None), "proxy", None) is not None:
        print(f"r2vcal serve: {check_upstreams(app)}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
