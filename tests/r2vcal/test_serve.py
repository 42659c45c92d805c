"""r2vcal serve: routing, headers, faults and bad input against hand-written upstreams."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")
httpx = pytest.importorskip("httpx")

from r2vcal.features import FEATURE_NAMES  # noqa: E402
from r2vcal.serve import (  # noqa: E402
    CONVERSATION_HEADER,
    Upstream,
    create_app,
    run_in_thread,
)
from tests.r2vcal import _serve_helpers as helpers  # noqa: E402
from tests.r2vcal._serve_helpers import K  # noqa: E402
from tests.r2vcal._serve_helpers import token as _token  # noqa: E402

router = helpers.router

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'},
}


class FakeUpstream:
    """An OpenAI-compatible app whose behaviour a test sets: ok/sleep/500/drop."""

    def __init__(self, name: str, *, tool_calls: bool = False) -> None:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, StreamingResponse

        self.name, self.mode, self.calls, self.bodies = name, "ok", 0, []
        self.fail_first = 0
        self.delay = 0.0
        self.lock = threading.Lock()
        app = FastAPI()

        async def chat(request):
            body = json.loads(await request.body())
            with self.lock:
                self.calls += 1
                self.bodies.append(body)
                failing = self.fail_first > 0
                self.fail_first -= int(failing)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "sleep":
                await asyncio.sleep(3)
            if self.mode == "500" or failing:
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if self.mode == "400":
                return JSONResponse({"error": {"message": "too long"}}, status_code=400)
            doc = self.answer(body, tool_calls)
            if self.mode == "drop":
                raw = json.dumps(doc).encode()

                async def half():
                    yield raw[: len(raw) // 2]
                    await asyncio.sleep(0.01)
                    raise RuntimeError("connection dropped mid-stream")

                return StreamingResponse(half(), media_type="application/json")
            return JSONResponse(doc)

        app.router.add_route("/v1/chat/completions", chat, methods=["POST"])

        async def verify(request):
            body = json.loads(await request.body())
            self.bodies.append(body)
            scores = _north_verifier(body["context"], body["candidates"])
            return JSONResponse({"scores": scores})

        app.router.add_route("/verify", verify, methods=["POST"])
        self.app = app

    def answer(self, body: dict, tool_calls: bool) -> dict:
        n = body.get("n") or 1
        texts = ["look", "go north", "look"]
        choices = []
        for i in range(n):
            text = f"{self.name}: {texts[i % 3]}"
            msg: dict = {"role": "assistant", "content": text}
            if tool_calls and i == 0:
                msg = {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
            lp = -0.1 - 0.5 * i
            choices.append(
                {
                    "index": i,
                    "message": msg,
                    "logprobs": {"content": [_token("a", lp), _token("b", lp)]}
                    if body.get("logprobs")
                    else None,
                    "finish_reason": "tool_calls" if "tool_calls" in msg else "stop",
                }
            )
        return {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion",
            "created": 1,
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 2 * n,
                "total_tokens": 0,
            },
        }


@pytest.fixture(scope="module")
def upstreams():
    slm, llm = FakeUpstream("slm"), FakeUpstream("llm")
    with run_in_thread(slm.app) as s1, run_in_thread(llm.app) as s2:
        slm.url, llm.url = s1.url, s2.url
        yield slm, llm


@pytest.fixture
def fakes(upstreams):
    for up in upstreams:
        up.mode, up.calls, up.bodies, up.fail_first, up.delay = "ok", 0, [], 0, 0.0
    return upstreams


def _proxy(router, fakes, *, timeout=5.0, retries=1, **kw):
    slm, llm = fakes
    kw.setdefault("k", K)
    kw.setdefault("threshold", 0.5)
    app = create_app(
        router,
        slm=Upstream(
            slm.url + "/v1", "small", timeout=timeout, max_retries=retries, backoff=0.01
        ),
        llm=Upstream(
            llm.url + "/v1", "large", timeout=timeout, max_retries=retries, backoff=0.01
        ),
        **kw,
    )
    return app, run_in_thread(app)


def _messages(tool_output: str | None = None) -> list[dict]:
    msgs = [
        {"role": "system", "content": "you are an agent"},
        {"role": "user", "content": "find the key"},
    ]
    if tool_output is not None:
        msgs += [
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": tool_output},
        ]
    return msgs


def _post(url, messages, **body):
    headers = body.pop("headers", {})
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": "r2vcal", "messages": messages, **body},
        headers=headers,
        timeout=30,
    )


def test_routes_on_the_conversation_and_sets_headers(router, fakes, tmp_path):
    slm, llm = fakes
    log = tmp_path / "decisions.jsonl"
    app, server = _proxy(router, fakes, log_path=log, budget=1)
    with server:
        r0 = _post(
            server.url, _messages(), headers={CONVERSATION_HEADER: "ep"}, user="alice"
        )
        r1 = _post(
            server.url,
            _messages("Traceback: FileNotFoundError"),
            headers={CONVERSATION_HEADER: "ep"},
            user="alice",
        )
        r2 = _post(
            server.url,
            [
                *_messages("Error again"),
                {"role": "assistant", "content": "x"},
                {"role": "tool", "content": "error"},
            ],
            headers={CONVERSATION_HEADER: "ep"},
            user="alice",
        )
    assert [r.status_code for r in (r0, r1, r2)] == [200, 200, 200]
    assert r0.headers["x-r2vcal-escalated"] == "false"
    assert r0.headers["x-r2vcal-model"] == "slm"
    assert float(r0.headers["x-r2vcal-risk"]) < 0.5
    assert r0.json()["choices"][0]["message"]["content"] == "slm: look"
    assert r0.json()["choices"][0]["logprobs"] is None  # the client did not ask
    assert r1.headers["x-r2vcal-escalated"] == "true"
    assert r1.headers["x-r2vcal-model"] == "llm"
    assert float(r1.headers["x-r2vcal-risk"]) >= 0.5
    assert r1.json()["choices"][0]["message"]["content"] == "llm: look"
    # budget of one LLM call per conversation: spent
    assert r2.headers["x-r2vcal-escalated"] == "false"
    assert r2.headers["x-r2vcal-threshold"] == "inf"
    assert [r.headers["x-r2vcal-step"] for r in (r0, r1, r2)] == ["0", "1", "2"]
    # what the SLM upstream was asked
    sent = slm.bodies[0]
    assert sent["n"] == K and sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert sent["model"] == "small" and llm.bodies[0]["model"] == "large"
    assert "n" not in llm.bodies[0] and llm.bodies[0]["stream"] is False
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["escalated"] for r in rows] == [False, True, False]
    assert [r["actor"] for r in rows] == ["slm", "llm", "slm"]
    assert [r["tool_error"] for r in rows] == [0.0, 1.0, 1.0]
    assert rows[1]["action"] == "llm: look" and rows[0]["episode_id"] == "ep"
    assert {r["group"] for r in rows} == {"alice"}  # `user` is a label, not an id
    assert set(FEATURE_NAMES) <= set(rows[0])
    assert rows[0]["entropy_mean"] > 0  # from top_logprobs
    assert len(app.state.cascade.decisions_) == 3


def test_conversation_ids(router, fakes):
    _, server = _proxy(router, fakes, budget=1)
    with server:
        # the header wins over `user`; separate conversations have their own budget
        for cid in ("a", "b"):
            r = _post(
                server.url,
                _messages("error"),
                user="u",
                headers={CONVERSATION_HEADER: cid},
            )
            assert r.headers["x-r2vcal-conversation"] == cid
            assert r.headers["x-r2vcal-escalated"] == "true"
        # a shorter history under the same id starts a new episode (fresh budget)
        hdr = {CONVERSATION_HEADER: "a"}
        r = _post(server.url, _messages(), headers=hdr)
        assert (r.headers["x-r2vcal-step"], r.headers["x-r2vcal-escalated"]) == (
            "0",
            "false",
        )
        r = _post(server.url, _messages("error"), headers=hdr)
        assert r.headers["x-r2vcal-escalated"] == "true"
        # metadata and prompt_cache_key name conversations too
        for extra in (
            {"metadata": {"conversation_id": "m1"}},
            {"prompt_cache_key": "p1"},
        ):
            r = _post(server.url, _messages("error"), **extra)
            assert r.headers["x-r2vcal-conversation"] in ("m1", "p1")


def test_tool_calls_pass_through_both_ways(router, tmp_path):
    slm, llm = (
        FakeUpstream("slm", tool_calls=True),
        FakeUpstream("llm", tool_calls=True),
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                },
            },
        }
    ]
    with run_in_thread(slm.app) as s1, run_in_thread(llm.app) as s2:
        slm.url, llm.url = s1.url, s2.url
        _, server = _proxy(router, (slm, llm), threshold=1.0)
        with server:
            r = _post(
                server.url,
                _messages("ok"),
                tools=tools,
                tool_choice="auto",
                parallel_tool_calls=False,
            )
            s = _post(server.url, _messages("ok"), tools=tools, stream=True, user="s")
    assert slm.bodies[0]["tools"] == tools and slm.bodies[0]["tool_choice"] == "auto"
    assert slm.bodies[0]["parallel_tool_calls"] is False
    assert slm.bodies[0]["messages"][2]["tool_calls"] == [TOOL_CALL]
    assert slm.bodies[0]["messages"][3]["tool_call_id"] == "call_1"
    choice = r.json()["choices"][0]
    # candidates 0 and 2 differ; the tool call (mean log-prob highest) is chosen
    assert choice["message"]["tool_calls"] == [TOOL_CALL]
    assert choice["finish_reason"] == "tool_calls"
    events = [
        json.loads(line[6:])
        for line in s.text.splitlines()
        if line.startswith("data: {")
    ]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert any(d.get("tool_calls") == [{"index": 0, **TOOL_CALL}] for d in deltas)
    assert s.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("mode", ["sleep", "500", "drop"])
def test_slm_failure_falls_back_to_the_llm(router, fakes, mode):
    slm, _llm = fakes
    slm.mode = mode
    _, server = _proxy(router, fakes, timeout=0.5, retries=1)
    with server:
        t0 = time.perf_counter()
        r = _post(server.url, _messages())
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    assert r.headers["x-r2vcal-escalated"] == "true"
    assert r.headers["x-r2vcal-model"] == "llm"
    assert r.headers["x-r2vcal-fallback"].startswith("slm: ")
    assert r.json()["choices"][0]["message"]["content"] == "llm: look"
    assert slm.calls == 2  # one retry
    assert elapsed < 3.0  # two attempts of at most 0.5 s, never hung


@pytest.mark.parametrize("mode", ["sleep", "500", "drop"])
def test_llm_failure_falls_back_to_the_best_slm_candidate(
    router, fakes, mode, tmp_path
):
    _slm, llm = fakes
    llm.mode = mode
    log = tmp_path / "d.jsonl"
    _, server = _proxy(router, fakes, timeout=0.5, retries=1, log_path=log)
    with server:
        t0 = time.perf_counter()
        r = _post(server.url, _messages("error"), stream=True)
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200
    assert r.headers["x-r2vcal-escalated"] == "true"  # the router asked for the LLM
    assert r.headers["x-r2vcal-model"] == "slm"  # ... but the SLM answered
    assert r.headers["x-r2vcal-fallback"].startswith("llm: ")
    text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in (
            json.loads(line[6:])
            for line in r.text.splitlines()
            if line.startswith("data: {")
        )
        if e["choices"]
    )
    assert text == "slm: look"
    assert llm.calls == 2 and elapsed < 3.0
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (
        row["escalated"]
        and row["actor"] == "slm"
        and row["fallback"].startswith("llm: ")
    )


def test_transient_errors_are_retried(router, fakes):
    slm, llm = fakes
    slm.fail_first = 1
    _, server = _proxy(router, fakes, retries=2)
    with server:
        r = _post(server.url, _messages())
    assert r.headers["x-r2vcal-model"] == "slm" and "x-r2vcal-fallback" not in r.headers
    assert slm.calls == 2 and llm.calls == 0


def test_both_failing_is_an_openai_error(router, fakes):
    slm, llm = fakes
    slm.mode, llm.mode = "500", "400"
    _, server = _proxy(router, fakes, retries=0)
    with server:
        r = _post(server.url, _messages())
        metrics = httpx.get(server.url + "/metrics").text
    assert r.status_code == 400  # the LLM's own 4xx is passed on
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "too long" in err["message"]
    assert 'r2vcal_requests_total{status="400"} 1' in metrics
    llm.mode = "500"
    _, server = _proxy(router, fakes, retries=0)
    with server:
        assert _post(server.url, _messages()).status_code == 502


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (json.dumps({"messages": []}).encode(), "messages"),
        (
            json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
            "messages[0].role",
        ),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": "x"}], "n": 3}
            ).encode(),
            "n",
        ),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}
            ).encode(),
            "stream",
        ),
    ],
)
def test_malformed_requests_get_400(router, fakes, body, param):
    slm, _ = fakes
    _, server = _proxy(router, fakes)
    with server:
        r = httpx.post(server.url + "/v1/chat/completions", content=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert err["message"]
    assert slm.calls == 0


def test_concurrent_requests_are_served_concurrently(router, fakes):
    slm, llm = fakes
    slm.delay = llm.delay = 0.3
    _, server = _proxy(router, fakes)
    with server:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            codes = list(
                pool.map(
                    lambda i: _post(server.url, _messages(), user=str(i)).status_code,
                    range(16),
                )
            )
        elapsed = time.perf_counter() - t0
    assert codes == [200] * 16
    assert elapsed < 2.0  # 16 x 0.3 s serially would be 4.8 s


def test_models_health_metrics(router, fakes):
    _, server = _proxy(router, fakes, served_model_name="agent-model")
    with server:
        _post(server.url, _messages("error"))
        models = httpx.get(server.url + "/v1/models").json()
        health = httpx.get(server.url + "/health").json()
        metrics = httpx.get(server.url + "/metrics")
    assert models["data"][0]["id"] == "agent-model"
    assert health["status"] == "ok" and health["k"] == K
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'r2vcal_requests_total{status="200"} 1' in text
    assert "r2vcal_escalations_total 1" in text
    assert 'r2vcal_tokens_total{kind="completion",side="slm"} 6' in text
    assert 'r2vcal_tokens_total{kind="prompt",side="llm"} 10' in text
    assert "r2vcal_proxy_overhead_seconds_count 1" in text
    assert 'r2vcal_request_duration_seconds_bucket{le="+Inf"} 1' in text


def _north_verifier(messages, texts):
    return [0.95 if "north" in t else 0.1 for t in texts]


@pytest.mark.parametrize("kind", ["url", "callable", "import", "async", "broken"])
def test_verifier(router, fakes, kind):
    slm, _ = fakes

    async def averify(messages, texts):
        return _north_verifier(messages, texts)

    verifier = {
        "url": slm.url + "/verify",
        "callable": _north_verifier,
        "import": "tests.r2vcal.test_serve:_north_verifier",
        "async": averify,
        "broken": lambda m, t: [2.0] * len(t),  # out of [0, 1]: ignored
    }[kind]
    app, server = _proxy(router, fakes, verifier=verifier)
    with server:
        r = _post(server.url, _messages())
    d = app.state.cascade.decisions_[-1]
    if kind == "broken":
        assert d.verifier_scores == [] and d.features["verifier_max"] == 0.5
        assert r.json()["choices"][0]["message"]["content"] == "slm: look"
        return
    assert d.verifier_scores == [0.1, 0.95, 0.1]
    assert r.json()["choices"][0]["message"]["content"] == "slm: go north"
    if kind == "url":
        assert slm.bodies[-1]["candidates"] == [
            "slm: look",
            "slm: go north",
            "slm: look",
        ]


def test_parquet_log_and_refit(router, fakes, tmp_path):
    from r2vcal import CVaRBrierRouter

    log = tmp_path / "d.parquet"
    _app, server = _proxy(router, fakes, log_path=log, log_flush_every=2)
    with server:
        for i in range(5):
            msgs = _messages("error" if i % 2 else "ok")
            msgs[1]["content"] += f" #{i}"  # five different tasks (no retries)
            _post(server.url, msgs, user=f"u{i}")
    frame = pd.read_parquet(log)
    assert len(frame) == 5 and frame["escalated"].tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert frame["group"].tolist() == [f"u{i}" for i in range(5)]
    assert frame["episode_id"].nunique() == 5
    refit = CVaRBrierRouter(calibration=None, random_state=0).fit(
        frame[list(FEATURE_NAMES)], frame["escalated"], groups=frame["group"]
    )
    assert refit.predict_proba(frame[list(FEATURE_NAMES)]).shape == (5, 2)


def test_create_app_validates(router, fakes):
    slm, _llm = fakes
    up = Upstream(slm.url + "/v1", "m")
    with pytest.raises(ValueError, match="base_url"):
        Upstream("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_retries"):
        Upstream("http://x/v1", "m", max_retries=-1)
    with pytest.raises(TypeError, match="'slm' parameter"):
        create_app(router, slm="http://x", llm=up)
    with pytest.raises(ValueError, match=r"\.jsonl or"):
        create_app(router, slm=up, llm=up, log_path="x.csv")
    with pytest.raises(ValueError, match="module:callable"):
        create_app(router, slm=up, llm=up, verifier="nocolon")
    with pytest.raises(ValueError, match="Could not import"):
        create_app(router, slm=up, llm=up, verifier="no_such_mod:f")


def test_resolve_logs_decisions_that_were_not_escalated(router, tmp_path):
    from r2vcal.cascade import StepCascade

    log = tmp_path / "d.jsonl"
    cascade = StepCascade(
        lambda c, k: [], lambda c: "", router, k=2, threshold=0.5, log_path=log
    )
    d = cascade.decide("ctx", ["a", "b"], [[-0.1], [-0.2]])
    assert not d.escalated
    assert cascade.resolve(d, "ignored") is d
    assert (d.action, d.actor, d.fallback) == ("a", "slm", None)
    assert json.loads(log.read_text())["action"] == "a"


def test_module_imports_light_and_exports():
    import subprocess
    import sys

    import r2vcal.serve

    assert all(hasattr(r2vcal.serve, n) for n in r2vcal.serve.__all__)
    code = (
        "import sys, r2vcal, r2vcal.serve, r2vcal.cli; "
        "print(sorted({'fastapi', 'uvicorn', 'aiohttp', 'httpx', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
