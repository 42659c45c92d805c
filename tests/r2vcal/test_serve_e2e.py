"""End to end: `r2vcal serve` between the official openai client and two real upstreams.

The upstreams are ``pipelines.openai_server`` apps over tiny config-built
transformers models, served on 127.0.0.1 from threads of this process; the proxy
is the ``r2vcal serve`` command in a subprocess on a free port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from r2vcal import save_router  # noqa: E402
from r2vcal.serve import run_in_thread  # noqa: E402
from tests.r2vcal._serve_helpers import tiny_upstreams, tool_error_router  # noqa: E402

CORPUS = [
    "go north",
    "take the key from the box",
    "open the door",
    "ls -la",
    "cat a.txt",
]
K = 4


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory):
    with tiny_upstreams(CORPUS) as urls:
        yield urls


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    """A saved router that escalates the steps after a failed tool call."""
    router = tool_error_router()
    return save_router(router, tmp_path_factory.mktemp("router") / "router")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(upstreams, router_dir, tmp_path_factory):
    slm_url, llm_url = upstreams
    log = tmp_path_factory.mktemp("log") / "decisions.jsonl"
    port = _free_port()
    cmd = [
        sys.executable, "-m", "r2vcal.cli", "serve",
        "--router", str(router_dir),
        "--slm-base-url", slm_url, "--slm-model", "tiny-slm",
        "--llm-base-url", llm_url, "--llm-model", "tiny-llm",
        "--k", str(K), "--threshold", "0.5", "--budget", "2",
        "--log", str(log), "--port", str(port), "--log-level", "warning",
        "--timeout", "20",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"r2vcal serve did not start: {proc.stderr.read()}")
        time.sleep(0.1)
    yield url, log
    proc.terminate()
    proc.wait(15)


def test_multi_step_conversation_through_the_openai_client(proxy, upstreams):
    url, log = proxy
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    slm_direct = openai.OpenAI(base_url=upstreams[0], api_key="unused")
    llm_direct = openai.OpenAI(base_url=upstreams[1], api_key="unused")
    messages = [
        {"role": "system", "content": "You are a shell agent."},
        {"role": "user", "content": "show me a.txt"},
    ]
    observations = [
        "Traceback (most recent call last): FileNotFoundError",
        "a.txt b.txt",
        "cat: a.txt: Permission denied",
        "bash: error: no such file",
        "hello world",
    ]
    headers, contents = [], []
    for step in range(6):
        kw = {"model": "r2vcal", "messages": messages, "max_tokens": 6, "seed": 0}
        raw = client.chat.completions.with_raw_response.create(
            **kw, extra_headers={"x-r2vcal-conversation": "episode-1"}
        )
        content = raw.parse().choices[0].message.content
        h = {k: v for k, v in raw.headers.items() if k.startswith("x-r2vcal")}
        headers.append(h)
        contents.append(content)
        if h["x-r2vcal-escalated"] == "true":
            # the LLM's own answer to the same request
            direct = llm_direct.chat.completions.create(**{**kw, "model": "tiny-llm"})
            assert content == direct.choices[0].message.content
        else:
            direct = slm_direct.chat.completions.create(
                **{**kw, "model": "tiny-slm"}, n=K, logprobs=True, top_logprobs=5
            )
            assert content in [c.message.content for c in direct.choices]
        if step < len(observations):
            messages = [
                *messages,
                {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [
                        {
                            "id": f"call_{step}",
                            "type": "function",
                            "function": {"name": "sh", "arguments": "{}"},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": f"call_{step}",
                    "content": observations[step],
                },
            ]
    escalated = [h["x-r2vcal-escalated"] for h in headers]
    # tool errors before steps 1, 3, 4; the budget of 2 LLM calls is spent at step 4
    assert escalated == ["false", "true", "false", "true", "false", "false"]
    assert [h["x-r2vcal-model"] for h in headers] == [
        "tiny-slm", "tiny-llm", "tiny-slm", "tiny-llm", "tiny-slm", "tiny-slm"
    ]  # fmt: skip
    assert [h["x-r2vcal-step"] for h in headers] == [str(i) for i in range(6)]
    assert headers[4]["x-r2vcal-threshold"] == "inf"
    risks = [float(h["x-r2vcal-risk"]) for h in headers]
    assert risks[1] >= 0.5 > risks[0] and risks[4] >= 0.5

    # streaming, new episode (same conversation id, history restarts)
    raw = client.chat.completions.with_raw_response.create(
        model="r2vcal",
        messages=messages[:2],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-r2vcal-conversation": "episode-1"},
    )
    assert raw.headers["x-r2vcal-step"] == "0"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # same request as step 0 (seeded sampling): the same SLM answer, streamed
    assert raw.headers["x-r2vcal-escalated"] == "false" and text == contents[0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    # the decision log: one row per routed step, features and outcome of routing
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["escalated"] for r in rows] == [
        False,
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert [r["actor"] for r in rows[:6]] == [
        "slm", "llm", "slm", "llm", "slm", "slm"
    ]  # fmt: skip
    assert {r["episode_id"] for r in rows} == {"episode-1"}
    assert [r["tool_error"] for r in rows[:6]] == [0, 1, 0, 1, 1, 0]
    assert all(len(r["candidates"]) == K for r in rows)
    assert all(r["entropy_mean"] > 0 and r["logprob_mean"] < 0 for r in rows)
    assert rows[5]["log_context_length"] > rows[0]["log_context_length"]
    assert rows[1]["budget_left"] == 1 and rows[3]["budget_left"] == 0

    metrics = httpx.get(url + "/metrics").text
    assert 'r2vcal_requests_total{status="200"} 7' in metrics
    assert "r2vcal_escalations_total 2" in metrics


def test_openai_client_sees_openai_errors(proxy):
    url, _ = proxy
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(
            model="r2vcal", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert [m.id for m in client.models.list()] == ["r2vcal"]


def test_an_n1_upstream_is_detected_and_served(router_dir):
    """llama.cpp-like: n > 1 refused; the proxy asks k times with n=1."""
    from pipelines.models import build_tiny_causal_lm
    from pipelines.openai_server import create_app as upstream_app
    from r2vcal import load_router
    from r2vcal.serve import Upstream, check_upstreams, create_app

    small = build_tiny_causal_lm(CORPUS, seed=0)
    with run_in_thread(upstream_app(*small, served_model_name="n1", max_n=1)) as up:
        base = up.url + "/v1"
        app = create_app(
            load_router(router_dir),
            slm=Upstream(base, "n1", timeout=20),
            llm=Upstream(base, "n1", timeout=20),
            k=K,
            threshold=0.5,
        )
        verdict = check_upstreams(app)
        assert verdict.startswith("SLM n1: OK (n = 1 only: k parallel requests, log")
        with run_in_thread(app) as proxy:
            r = httpx.post(
                proxy.url + "/v1/chat/completions",
                json={
                    "model": "r2vcal",
                    "messages": [{"role": "user", "content": "go"}],
                    "max_tokens": 4,
                    "seed": 3,
                },
                timeout=60,
            )
    assert r.status_code == 200, r.text
    assert r.headers["x-r2vcal-model"] == "n1" and "x-r2vcal-fallback" not in r.headers
    d = app.state.cascade.decisions_[-1]
    assert len(d.candidates) == K and d.features["entropy_mean"] > 0
    assert r.json()["usage"]["completion_tokens"] == sum(
        len(lp) for lp in d.token_logprobs
    )
