"""Proxy overhead of ``r2vcal serve`` against calling the SLM upstream directly, in one run.

Starts, each in its own process on 127.0.0.1:

* an upstream: an OpenAI-compatible app that answers at once with a canned
  completion of ``--k`` candidates x ``--tokens`` tokens with log-probs and 5
  top log-probs each (so upstream time is near zero and the proxy's own cost
  shows);
* the proxy: the ``r2vcal serve`` command with a fitted ``CVaRBrierRouter``
  (threshold 1: every step is featurized and routed, none escalated, so both
  paths make exactly one upstream call).

Prints:

* median latency of one request, direct (the same ``n=k, logprobs`` request the
  proxy makes) and through the proxy; their difference is the overhead added
  per request (goal: median <= 5 ms); plus the proxy's own mean overhead from
  its ``/metrics`` (latency minus time waiting for the upstream);
* sustained requests/s with ``--clients`` concurrent clients (default 32,
  aiohttp; 20-step conversations each), direct vs proxied.

Clients behave like agents: each conversation re-sends its growing history (the
previous answer and a tool observation appended each step) with no conversation
id, so the proxy's history fingerprint is on the measured path, and they send
``x-stainless-retry-count: 0`` as the OpenAI SDKs do (no request is a retry).

Usage: ``python bench/bench_serve.py [--requests 300] [--clients 32] [--seconds 5]``;
``--memory 100000 [--max-conversations 10000] [--steps 2]`` measures the proxy's
memory per conversation instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def canned_answer(k: int, tokens: int) -> bytes:
    rng = np.random.default_rng(0)
    choices = []
    for i in range(k):
        toks = []
        for _ in range(tokens):
            top = np.sort(np.log(rng.dirichlet(np.ones(8))[:5]))[::-1]
            alts = [{"token": f"t{j}", "logprob": float(v)} for j, v in enumerate(top)]
            toks.append({"token": "t0", "logprob": float(top[0]), "top_logprobs": alts})
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": f"action {i % 2}"},
                "logprobs": {"content": toks},
                "finish_reason": "stop",
            }
        )
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-slm",
        "choices": choices,
        "usage": {"prompt_tokens": 50, "completion_tokens": k * tokens},
    }
    return json.dumps(doc).encode()


def run_upstream(port: int, k: int, tokens: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = canned_answer(k, tokens)

    async def chat(request):  # type: ignore[no-untyped-def]
        await request.body()
        return Response(body, media_type="application/json")

    async def health(request):  # type: ignore[no-untyped-def]
        return Response(b"{}", media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def save_bench_router(folder: Path) -> Path:
    from r2vcal import CVaRBrierRouter, save_router
    from r2vcal.features import FEATURE_NAMES

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(2000, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    y = rng.random(len(X)) < 1 / (1 + np.exp(-X["entropy_mean"]))
    router = CVaRBrierRouter(random_state=0).fit(
        X, y, groups=rng.integers(0, 4, len(X))
    )
    return save_router(router, folder / "router")


#: What the OpenAI SDKs send on a first attempt (the proxy replays retries).
FIRST_ATTEMPT = {"x-stainless-retry-count": "0"}


def _next_history(history: list[dict], answer: dict, step: int) -> list[dict]:
    """An agent's next request: its history, the answer, a tool observation."""
    message = answer["choices"][0]["message"]
    return [*history, message, {"role": "tool", "content": f"You see box {step}."}]


def latencies(url: str, body: dict, n: int) -> list[float]:
    """Sequential requests of 20-step conversations that re-send their history."""
    import httpx

    out = []
    history = body["messages"]
    with httpx.Client(timeout=30, headers=FIRST_ATTEMPT) as client:
        for i in range(n + 20):
            if i % 20 == 0:  # a new conversation (no id: the proxy's fingerprint)
                history = [*body["messages"][:1], {"role": "user", "content": f"{i}"}]
            b = {**body, "messages": history}
            t0 = time.perf_counter()
            r = client.post(url + "/v1/chat/completions", json=b)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            history = _next_history(history, r.json(), i)
            if i >= 20:  # warm-up
                out.append(dt)
    return out


async def throughput(url: str, body: dict, clients: int, seconds: float) -> float:
    import aiohttp

    done = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, headers=FIRST_ATTEMPT
    ) as session:

        async def worker(w: int, stop: float) -> None:
            nonlocal done
            i = 0
            history = body["messages"]
            while time.perf_counter() < stop:
                if i % 20 == 0:  # 20-step conversations
                    history = [
                        *body["messages"][:1],
                        {"role": "user", "content": f"c{w}-{i} {time.time()}"},
                    ]
                b = {**body, "messages": history}
                async with session.post(url + "/v1/chat/completions", json=b) as r:
                    r.raise_for_status()
                    doc = json.loads(await r.read())
                history = _next_history(history, doc, i)
                done += 1
                i += 1

        warm = time.perf_counter() + 0.5
        await asyncio.gather(*(worker(w, warm) for w in range(clients)))
        done = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, t0 + seconds) for w in range(clients)))
        return done / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_overhead(url: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics").text
    vals = dict(
        line.split(" ", 1)
        for line in text.splitlines()
        if line.startswith("r2vcal_proxy_overhead_seconds_")
        and not line.startswith("r2vcal_proxy_overhead_seconds_bucket")
    )
    return float(vals["r2vcal_proxy_overhead_seconds_sum"]) / float(
        vals["r2vcal_proxy_overhead_seconds_count"]
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(n: int, cap: int, steps: int, k: int, tokens: int) -> None:
    """Memory per conversation: the proxy's own state for ``n`` conversations.

    Drives the proxy's state exactly as a request does (conversation match,
    ``StepRouter.decide``, the log record, the remembered answer), without
    HTTP, so 100,000 conversations take minutes rather than an hour.
    """
    import gc

    from r2vcal import serve
    from r2vcal.serve.openai import choice_logprobs, choice_text
    from r2vcal.serve.proxy import Result

    with tempfile.TemporaryDirectory() as tmp:
        router = __import__("r2vcal").load_router(save_bench_router(Path(tmp)))
    dead = serve.Upstream("http://127.0.0.1:9/v1", "none")
    app = serve.create_app(
        router, slm=dead, llm=dead, k=k, threshold=1.0, max_conversations=cap
    )
    proxy = app.state.proxy
    doc = json.loads(canned_answer(k, tokens))
    texts = [choice_text(c) for c in doc["choices"]]
    parts = [choice_logprobs(c) for c in doc["choices"]]
    system = {"role": "system", "content": "You are an agent. " * 20}
    gc.collect()
    base, at_cap = _rss_mb(), 0.0
    t0 = time.perf_counter()
    for c in range(n):
        msgs = [system, {"role": "user", "content": f"task {c}"}]
        for t in range(steps):
            m = proxy.convs.match(None, msgs, retry_count=0)
            d = proxy.cascade.decide(
                msgs,
                texts,
                [p[0] for p in parts],
                token_entropies=[p[1] for p in parts],
                episode_id=m.conv.id,
                context_length=50.0,
            )
            proxy.cascade.resolve(d, None)
            proxy.cascade.release_decisions(m.conv.id, keep=proxy.keep_decisions)
            msg = {"role": "assistant", "content": f"action {c}-{t}"}
            chosen = {**doc["choices"][0], "message": msg, "logprobs": None}
            answer = {**doc, "choices": [chosen]}
            res = Result(200, answer, {"x-r2vcal-step": str(t)})
            res.extra["message"] = msg
            proxy.convs.answered(m.conv, msg, res)
            msgs = [*msgs, msg, {"role": "tool", "content": f"You see box {t}."}]
        if c + 1 == cap:
            gc.collect()
            at_cap = _rss_mb()
    gc.collect()
    end = _rss_mb()
    print(
        f"memory: {n} conversations x {steps} steps (k={k}, {tokens} tokens) under "
        f"max_conversations={cap}: {len(proxy.convs)} kept, "
        f"{len(proxy.cascade.open_episodes())} cascade episodes; RSS +{at_cap - base:.1f} "
        f"MiB at the cap ({(at_cap - base) * 2**20 / cap / 1024:.1f} KiB per "
        f"conversation), +{end - at_cap:.1f} MiB over the next {n - cap} "
        f"conversations ({time.perf_counter() - t0:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory",
        type=int,
        metavar="N",
        help="measure memory per conversation for N conversations instead",
    )
    parser.add_argument("--max-conversations", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=2, help="steps per conversation")
    args = parser.parse_args()
    if args.memory:
        memory(args.memory, args.max_conversations, args.steps, args.k, args.tokens)
        return
    if args.upstream:
        run_upstream(args.upstream, args.k, args.tokens)
        return

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, px_port = free_port(), free_port()
            up_url, px_url = (
                f"http://127.0.0.1:{up_port}",
                f"http://127.0.0.1:{px_port}",
            )
            up_cmd = [sys.executable, __file__, "--upstream", str(up_port)]
            up_cmd += ["--k", str(args.k), "--tokens", str(args.tokens)]
            procs.append(subprocess.Popen(up_cmd))
            router = save_bench_router(Path(tmp))
            px_cmd = [sys.executable, "-m", "r2vcal.cli", "serve"]
            px_cmd += ["--router", str(router), "--port", str(px_port)]
            px_cmd += ["--slm-base-url", up_url + "/v1", "--slm-model", "bench-slm"]
            px_cmd += ["--llm-base-url", up_url + "/v1", "--llm-model", "bench-llm"]
            px_cmd += [
                "--k",
                str(args.k),
                "--threshold",
                "1.0",
                "--log-level",
                "warning",
            ]
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            procs.append(subprocess.Popen(px_cmd, env=env))
            wait_up(up_url, procs[0])
            wait_up(px_url, procs[1])
            messages = [
                {"role": "system", "content": "You are an agent. " * 20},
                {"role": "user", "content": "find the key"},
                {"role": "assistant", "content": "look"},
                {"role": "tool", "content": "You see a box."},
            ]
            proxied = {"model": "r2vcal", "messages": messages, "max_tokens": 16}
            direct = {
                **proxied,
                "model": "bench-slm",
                "n": args.k,
                "logprobs": True,
                "top_logprobs": 5,
            }
            print(
                f"upstream: canned answer, k={args.k} candidates x {args.tokens} "
                f"tokens with 5 top log-probs; proxy: r2vcal serve, CVaRBrierRouter, "
                f"{len(os.sched_getaffinity(0))} CPU cores shared by everything"
            )
            lat_d = latencies(up_url, direct, args.requests)
            cpu0 = cpu_seconds(procs[1].pid)
            lat_p = latencies(px_url, proxied, args.requests)
            cpu_p = (cpu_seconds(procs[1].pid) - cpu0) / (args.requests + 20)
            med_d, med_p = statistics.median(lat_d), statistics.median(lat_p)
            p90 = float(np.percentile(lat_p, 90) - np.percentile(lat_d, 90))
            print(
                f"latency  direct median {med_d * 1e3:6.2f} ms   proxied median "
                f"{med_p * 1e3:6.2f} ms   ({args.requests} sequential requests)"
            )
            print(
                f"         added by the proxy: median {(med_p - med_d) * 1e3:.2f} ms "
                f"(p90 {p90 * 1e3:.2f} ms)   (goal: median <= 5 ms)"
            )
            print(
                "         proxy's own overhead from /metrics (latency minus upstream "
                f"wait): mean {server_overhead(px_url) * 1e3:.2f} ms; proxy CPU time "
                f"per request {cpu_p * 1e3:.2f} ms (insensitive to other load)"
            )
            rps_d = asyncio.run(throughput(up_url, direct, args.clients, args.seconds))
            rps_p = asyncio.run(throughput(px_url, proxied, args.clients, args.seconds))
            print(
                f"throughput with {args.clients} concurrent clients: direct "
                f"{rps_d:7.1f} req/s   proxied {rps_p:7.1f} req/s   "
                f"ratio proxied/direct = {rps_p / rps_d:.2f}"
            )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)


if __name__ == "__main__":
    main()
