"""r2vcal serve under hostile input, broken upstreams and crashes (issue 15).

Each test reproduces one finding of the issue: it failed on the proxy before the
fix and passes after.
"""

from __future__ import annotations

import json
import math
import socket
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")
httpx = pytest.importorskip("httpx")

from r2vcal.serve import (  # noqa: E402
    CONVERSATION_HEADER,
    Upstream,
    create_app,
    run_in_thread,
)
from tests.r2vcal import _serve_helpers as helpers  # noqa: E402
from tests.r2vcal._serve_helpers import K, ok_answer, start_proxy  # noqa: E402

router = helpers.router
servers = helpers.servers
ups = helpers.ups

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "sh", "arguments": "{}"},
}


def _proxy(router, ups, *, slm_kw=None, **kw):
    retry = {"timeout": 5.0, "backoff": 0.01}
    slm_kw = {**retry, **(slm_kw or {})}
    return start_proxy(router, ups, slm_kw=slm_kw, llm_kw=retry, **kw)


def _messages(tool_output=None, task="find the key"):
    msgs = [
        {"role": "system", "content": "you are an agent"},
        {"role": "user", "content": task},
    ]
    if tool_output is not None:
        msgs += [
            {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": tool_output},
        ]
    return msgs


def _post(url, messages, headers=None, timeout=30, **body):
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": "r2vcal", "messages": messages, **body},
        headers=headers or {},
        timeout=timeout,
    )


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- #
# Crashes
# --------------------------------------------------------------------------- #
def test_control_characters_never_reach_a_header(router, ups):
    slm, llm = ups
    slm.handler = lambda body: (200, {**ok_answer("slm", body), "model": "s\r\nx: 1"})
    _, server = _proxy(router, ups)
    with server:
        r = _post(server.url, _messages(), user="a\nb\x00c")
        assert r.status_code == 200
        assert r.headers["x-r2vcal-model"] == "s x: 1" and "x" not in r.headers
        # an upstream error message with control characters, after the SLM failed
        slm.handler = lambda body: (500, {"error": {"message": "bad\r\nx-evil: 1"}})
        r = _post(server.url, _messages(task="t2"))
    assert r.status_code == 200 and "x-evil" not in r.headers
    assert r.headers["x-r2vcal-fallback"] == "slm: HTTP 500: bad x-evil: 1 (1 attempts)"
    assert llm.calls == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"choices": ["x"]},
        {"usage": "str"},
        {"usage": {"prompt_tokens": math.nan}},
        {"choices": [{"index": 0, "message": "hi"}]},
        {"choices": [{"index": 0, "message": {"content": 3}}]},
    ],
)
def test_a_malformed_slm_answer_falls_back_to_the_llm(router, ups, bad, tmp_path):
    slm, _llm = ups
    slm.handler = lambda body: (200, {**ok_answer("slm", body), **bad})
    log = tmp_path / "d.jsonl"
    _, server = _proxy(router, ups, log_path=log, budget=5)
    with server:
        r = _post(server.url, _messages())
    assert r.status_code == 200, r.text
    assert r.headers["x-r2vcal-model"] == "llm"
    assert r.headers["x-r2vcal-fallback"].startswith("slm: malformed answer")
    # charged and logged like any LLM call
    (row,) = _log(log)
    assert row["actor"] == "llm" and row["escalated"] and row["budget_left"] == 4
    assert row["fallback"].startswith("slm: malformed answer")


def test_a_malformed_llm_answer_is_charged_logged_and_falls_back(router, ups, tmp_path):
    _, llm = ups
    llm.handler = lambda body: (200, {**ok_answer("llm", body), "choices": ["x"]})
    log = tmp_path / "d.jsonl"
    _, server = _proxy(router, ups, log_path=log, budget=1)
    with server:
        r = _post(server.url, _messages("error"))
        r2 = _post(server.url, _messages("error", task="other task"))
    assert r.status_code == 200
    assert r.headers["x-r2vcal-model"] == "slm"
    assert r.headers["x-r2vcal-fallback"].startswith("llm: malformed answer")
    rows = _log(log)
    assert len(rows) == 2 and rows[0]["escalated"] and rows[0]["budget_left"] == 0
    assert rows[0]["fallback"].startswith("llm: malformed answer")
    assert r2.status_code == 200  # another conversation, its own budget
    assert llm.calls == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_logprobs": "abc"}, "top_logprobs"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"stream_options": "yes"}, "stream_options"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"stop": [1]}, "stop"),
        ({"user": 5}, "user"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"seed": 1.5}, "seed"),
        ({"tool_choice": []}, "tool_choice"),
    ],
)
def test_every_field_is_validated_before_any_upstream_call(router, ups, body, param):
    slm, llm = ups
    _, server = _proxy(router, ups)
    with server:
        r = _post(server.url, _messages(), **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param.split(".")[0].split("[")[0] in err["message"]
    assert "got" in err["message"]  # what came
    assert slm.calls == llm.calls == 0


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "text", "text": 3}]}],
        [{"role": "assistant", "tool_calls": [{"function": "x"}]}],
        [{"role": "tool", "content": "x", "tool_call_id": 3}],
        [{"role": ["user"], "content": "x"}],
    ],
)
def test_malformed_messages_get_400(router, ups, messages):
    slm, _ = ups
    _, server = _proxy(router, ups)
    with server:
        r = _post(server.url, messages)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages[0]")
    assert slm.calls == 0


def test_deep_json_and_large_bodies(router, ups):
    slm, _ = ups
    _, server = _proxy(router, ups, max_body_bytes=200_000)
    with server:
        deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = httpx.post(server.url + "/v1/chat/completions", content=deep)
        assert r.status_code == 413 and r.json()["error"]["message"]
        r = httpx.post(
            server.url + "/v1/chat/completions", content=b"[" * 50_000 + b"]" * 50_000
        )
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "Traceback" not in r.text
    assert slm.calls == 0


def test_openai_error_bodies_for_unknown_paths_and_methods(router, ups):
    _, server = _proxy(router, ups)
    with server:
        r404 = httpx.post(server.url + "/v1/embeddings", json={})
        r405 = httpx.get(server.url + "/v1/chat/completions")
        docs = [
            httpx.get(server.url + p).status_code for p in ("/docs", "/openapi.json")
        ]
    assert r404.status_code == 404 and r404.json()["error"]["code"] == "not_found"
    assert "/v1/embeddings" in r404.json()["error"]["message"]
    assert r405.status_code == 405
    assert r405.json()["error"]["type"] == "invalid_request_error"
    assert docs == [404, 404]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_errors_do_not_leak_upstream_urls(router, ups):
    _, llm = ups
    llm.handler = lambda body: (
        500,
        {"error": {"message": "upstream http://10.1.2.3:9000/v1 is down"}},
    )
    port = _closed_port()
    app = create_app(
        router,
        slm=Upstream(f"http://127.0.0.1:{port}/v1", "small", max_retries=0),
        llm=Upstream(llm.url + "/v1", "large", max_retries=0),
        k=K,
        threshold=0.5,
    )
    with run_in_thread(app) as server:
        r = _post(server.url, _messages())
    assert r.status_code == 502
    text = r.text + json.dumps(dict(r.headers))
    assert "127.0.0.1" not in text and "http://" not in text and "10.1.2.3" not in text
    assert "connection failed" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- #
# Budget and log leaks
# --------------------------------------------------------------------------- #
def test_client_caused_slm_4xx_goes_back_to_the_client(router, ups, tmp_path):
    slm, llm = ups
    slm.handler = lambda body: (
        400,
        {"error": {"message": "This model's maximum context length is 4096 tokens"}},
    )
    log = tmp_path / "d.jsonl"
    _, server = _proxy(router, ups, budget=1, log_path=log)
    with server:
        codes = [
            _post(server.url, _messages(task=f"t{i}")).status_code for i in range(4)
        ]
        r = _post(server.url, _messages(task="t9"))
    assert codes == [400] * 4
    assert "maximum context length" in r.json()["error"]["message"]
    assert llm.calls == 0 and not log.exists()


def test_slm_failure_fallbacks_are_charged(router, ups, tmp_path):
    slm, llm = ups
    slm.handler = lambda body: (500, {"error": {"message": "boom"}})
    log = tmp_path / "d.jsonl"
    hdr = {CONVERSATION_HEADER: "ep"}
    _, server = _proxy(router, ups, budget=2, log_path=log)
    with server:
        rs = []
        msgs = _messages()
        for _ in range(3):
            rs.append(_post(server.url, msgs, headers=hdr))
            msgs = [*msgs, {"role": "assistant", "content": "x"}]
            msgs += [{"role": "user", "content": "go on"}]
    assert [r.status_code for r in rs] == [200, 200, 502]
    assert llm.calls == 2  # the budget holds
    assert "budget is spent" in rs[2].json()["error"]["message"]
    rows = _log(log)
    assert [r["budget_left"] for r in rows] == [1, 0]
    assert [r["step"] for r in rows] == [0, 1]
    assert all(
        r["actor"] == "llm" and r["fallback"] == "slm: HTTP 500: boom (1 attempts)"
        for r in rows
    )
    assert [r.headers["x-r2vcal-step"] for r in rs[:2]] == ["0", "1"]


def test_a_client_that_leaves_cancels_the_upstream_calls(router, ups):
    slm, llm = ups
    slm.delay = 0.6
    app, server = _proxy(router, ups)
    with server:
        with pytest.raises(httpx.TimeoutException):
            _post(server.url, _messages("error"), timeout=0.2)
        time.sleep(1.0)
        metrics = httpx.get(server.url + "/metrics").text
    assert slm.calls == 1 and llm.calls == 0  # the step was never routed
    assert "r2vcal_client_disconnects_total 1" in metrics
    assert app.state.cascade.decisions_ == []


def test_usage_counts_all_k_candidates_and_the_llm(router, ups):
    _, server = _proxy(router, ups)
    with server:
        kept = _post(server.url, _messages())
        escalated = _post(server.url, _messages("error", task="t2"))
        metrics = httpx.get(server.url + "/metrics").text
    assert kept.json()["usage"]["completion_tokens"] == 2 * K
    usage = escalated.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (20, 2 * K + 2)
    assert usage["total_tokens"] == 20 + 2 * K + 2
    assert (
        kept.headers["x-r2vcal-cost"] == "1"
        and escalated.headers["x-r2vcal-cost"] == "11"
    )
    assert 'r2vcal_cost_total{actor="llm",model="large"} 10' in metrics
    assert 'r2vcal_cost_total{actor="slm",model="small"} 2' in metrics


def test_answers_without_logprobs_are_counted(router, ups):
    slm, _ = ups
    slm.handler = lambda body: (200, ok_answer("slm", {**body, "logprobs": False}))
    _, server = _proxy(router, ups)
    with server:
        r = _post(server.url, _messages())
        metrics = httpx.get(server.url + "/metrics").text
    assert r.headers["x-r2vcal-logprobs"] == "missing"
    assert "r2vcal_missing_logprobs_total 1" in metrics


def test_n1_upstreams_get_k_parallel_requests(router, ups):
    slm, _ = ups

    def one(body):
        if (body.get("n") or 1) > 1:
            return 400, {"error": {"message": "n > 1 is not supported"}}
        return 200, ok_answer("slm", body, text=f"try {len(slm.bodies)}")

    slm.handler = one
    app, server = _proxy(router, ups, slm_kw={"supports_n": False})
    with server:
        r = _post(server.url, _messages(), seed=7)
    assert r.status_code == 200 and r.headers["x-r2vcal-model"] == "slm"
    assert slm.calls == K and all("n" not in b for b in slm.bodies)
    assert sorted(b["seed"] for b in slm.bodies) == [7, 8, 9]
    d = app.state.cascade.decisions_[-1]
    assert len(set(d.candidates)) == K
    assert r.json()["usage"]["completion_tokens"] == 2 * K


# --------------------------------------------------------------------------- #
# The Parquet log survives kill -9 and restarts
# --------------------------------------------------------------------------- #
def test_parquet_log_is_readable_while_running_and_appends_on_restart(
    router, ups, tmp_path
):
    log = tmp_path / "d.parquet"
    parts = tmp_path / "d.parquet.parts"
    _, server = _proxy(router, ups, log_path=log, log_flush_every=2)
    with server:
        for i in range(5):
            _post(server.url, _messages(task=f"t{i}"))
        # as after kill -9: the flushed rows are on disk, readable
        assert len(pd.read_parquet(parts)) == 4
    assert len(pd.read_parquet(log)) == 5 and not parts.exists()
    _, server = _proxy(router, ups, log_path=log, log_flush_every=2)
    with server:
        for i in range(3):
            _post(server.url, _messages(task=f"u{i}"))
    frame = pd.read_parquet(log)
    assert len(frame) == 8  # the restart appended
    assert frame["episode_id"].nunique() == 8


# --------------------------------------------------------------------------- #
# Deployment: auth, health
# --------------------------------------------------------------------------- #
def test_inbound_api_key(router, ups):
    slm, _ = ups
    _, server = _proxy(router, ups, api_key=["k1", "k2"])
    with server:
        none = _post(server.url, _messages())
        wrong = _post(server.url, _messages(), headers={"Authorization": "Bearer x"})
        models = httpx.get(server.url + "/v1/models")
        good = _post(server.url, _messages(), headers={"Authorization": "Bearer k2"})
    assert none.status_code == wrong.status_code == models.status_code == 401
    assert none.json()["error"]["code"] == "invalid_api_key"
    assert good.status_code == 200 and slm.calls == 1


def test_open_server_off_loopback_warns(router, ups, capsys):
    from r2vcal.serve.server import warn_if_open

    app, _ = _proxy(router, ups)
    with pytest.warns(UserWarning, match="without an API key"):
        warn_if_open(app, "0.0.0.0")
    assert "WARNING" in capsys.readouterr().err
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_open(app, "127.0.0.1")
        keyed, _ = _proxy(router, ups, api_key="k")
        warn_if_open(keyed, "0.0.0.0")


def test_health_reports_the_upstreams(router, ups):
    slm, _ = ups
    port = _closed_port()
    app = create_app(
        router,
        slm=Upstream(slm.url + "/v1", "slm", max_retries=0),
        llm=Upstream(f"http://127.0.0.1:{port}/v1", "large", max_retries=0),
        k=K,
        threshold=0.5,
    )
    with run_in_thread(app) as server:
        r = httpx.get(server.url + "/health")
    doc = r.json()
    assert r.status_code == 200 and doc["status"] == "degraded"
    assert doc["slm"]["ok"] is True and doc["slm"]["model_listed"] is True
    assert doc["llm"]["ok"] is False and "connection failed" in doc["llm"]["error"]
    assert "127.0.0.1" not in r.text


def test_startup_check_detects_n1_servers_and_missing_logprobs(router, ups):
    from r2vcal.serve import check_upstreams

    slm, llm = ups

    def n1_without_logprobs(body):
        if (body.get("n") or 1) > 1:
            return 400, {"error": {"message": "only one completion choice allowed"}}
        return 200, ok_answer("slm", {**body, "logprobs": False})

    slm.handler = n1_without_logprobs
    app, server = _proxy(router, ups)
    verdict = check_upstreams(app)
    assert verdict == (
        "SLM small: OK (n = 1 only: k parallel requests, NO log-probs (every step "
        "looks certain)); LLM large: reachable, model NOT listed"
    )
    assert app.state.proxy.slm.supports_n is False and llm.calls == 0
    slm.reset()
    with server:
        r = _post(server.url, _messages())
    assert r.status_code == 200 and slm.calls == K
    slm.handler = lambda body: (200, ok_answer("slm", body))
    app, _ = _proxy(router, ups)
    assert check_upstreams(app).startswith(
        "SLM small: OK (n > 1 in one request, log-probs)"
    )
    assert app.state.proxy.slm.supports_n is True


def test_batched_logprobs_match_the_per_choice_ones():
    from r2vcal.serve.openai import choice_logprobs, choices_logprobs

    body = {"n": 4, "logprobs": True}
    choices = ok_answer("slm", body)["choices"]
    choices[1] = {**choices[1], "logprobs": None}  # no log-probs
    short = json.loads(json.dumps(choices[2]))  # ragged top_logprobs
    short["logprobs"]["content"][0]["top_logprobs"] = short["logprobs"]["content"][0][
        "top_logprobs"
    ][:1]
    choices[2] = short
    for bad in (False, True):
        if bad:  # a non-numeric log-prob: that choice has no entropies
            choices[3] = json.loads(json.dumps(choices[3]))
            choices[3]["logprobs"]["content"][1]["top_logprobs"][0]["logprob"] = "x"
        want = [choice_logprobs(c) for c in choices]
        got = choices_logprobs(choices)
        for (lp_w, ent_w), (lp_g, ent_g) in zip(want, got, strict=True):
            np.testing.assert_array_equal(lp_g, lp_w)
            assert (ent_w is None) == (ent_g is None)
            if ent_w is not None:
                np.testing.assert_allclose(ent_g, ent_w)
        assert (got[3][1] is None) is bad and got[1][1] is None


@pytest.mark.parametrize("server", ["refuses", "ignores"])
def test_an_slm_without_n_is_detected_at_runtime(router, ups, server):
    """Without the startup check: llama.cpp's 400, or one choice for n=k."""
    slm, llm = ups

    def n1(body):
        n = body.get("n") or 1
        if n > 1 and server == "refuses":
            return 400, {"error": {"message": "only one completion choice allowed"}}
        return 200, ok_answer("slm", {**body, "n": 1}, text=f"try {len(slm.bodies)}")

    slm.handler = n1
    app, server_ = _proxy(router, ups)
    with server_:
        r1 = _post(server_.url, _messages())
        r2 = _post(server_.url, _messages(task="t2"))
    assert r1.status_code == r2.status_code == 200 and llm.calls == 0
    assert app.state.proxy.slm.supports_n is False
    n_first = [b.get("n") for b in slm.bodies]
    # first step: the n=K request, then n=1 requests up to K candidates;
    # second step: K n=1 requests only
    extra = K if server == "refuses" else K - 1
    assert n_first[0] == K and len(n_first) == 1 + extra + K
    assert all(n is None for n in n_first[1:])
    for d in app.state.cascade.decisions_:
        assert len(set(d.candidates)) == K


def test_a_client_fault_is_not_mistaken_for_missing_n(router, ups):
    slm, llm = ups
    slm.handler = lambda body: (400, {"error": {"message": "context too long"}})
    app, server = _proxy(router, ups)
    with server:
        r = _post(server.url, _messages())
    assert r.status_code == 400 and "context too long" in r.json()["error"]["message"]
    assert app.state.proxy.slm.supports_n is True and slm.calls == 2 and llm.calls == 0


def test_no_request_body_makes_a_500(router, servers):
    """Random values in every known field: 200 or an OpenAI 4xx, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from r2vcal.serve.openai import (
        BOOL_FIELDS,
        INT_FIELDS,
        NUMBER_FIELDS,
        OBJECT_FIELDS,
        STR_FIELDS,
    )

    for s in servers:
        s.reset()
    fields = sorted(
        {*NUMBER_FIELDS, *INT_FIELDS, *BOOL_FIELDS, *STR_FIELDS, *OBJECT_FIELDS}
        | {"tools", "tool_choice", "stop", "messages"}
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "role",
                        "content",
                        "type",
                        "function",
                        "name",
                        "arguments",
                        "include_usage",
                        "a",
                    ]
                ),
                inner,
                max_size=3,
            )
        ),
        max_leaves=8,
    )
    _, server = _proxy(router, servers)
    with server, httpx.Client(timeout=30) as client:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.dictionaries(st.sampled_from(fields), values, max_size=4))
        def one(extra):
            body = {"model": "r2vcal", "messages": _messages(), **extra}
            r = client.post(
                server.url + "/v1/chat/completions",
                content=json.dumps(body),
                headers={"x-stainless-retry-count": "0"},
            )
            assert r.status_code in (200, 400), (r.status_code, r.text, body)
            if r.status_code == 400:
                assert r.json()["error"]["type"] == "invalid_request_error"

        one()


def test_no_upstream_answer_makes_a_500(router, servers):
    """Random values anywhere in the SLM's answer: an answer or a fallback."""
    import copy

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    slm, llm = servers
    for s in servers:
        s.reset()
    template = ok_answer("slm", {"n": K, "logprobs": True})
    template["choices"][0]["message"]["tool_calls"] = [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]

    def paths(node, prefix=()):
        yield prefix
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for k, v in items:
            yield from paths(v, (*prefix, k))

    all_paths = [p for p in paths(template) if p]
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(),
        st.text(max_size=5),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    _, server = _proxy(router, servers)
    with server, httpx.Client(timeout=30) as client:

        @settings(
            max_examples=60, deadline=None, suppress_health_check=list(HealthCheck)
        )
        @given(
            st.lists(
                st.tuples(st.sampled_from(all_paths), junk), min_size=1, max_size=3
            )
        )
        def one(edits):
            doc = copy.deepcopy(template)
            for path, value in edits:
                node = doc
                try:
                    for k in path[:-1]:
                        node = node[k]
                    node[path[-1]] = value
                except (KeyError, IndexError, TypeError):
                    pass
            slm.handler = lambda body: (200, doc)
            llm.handler = lambda body: (200, doc)  # the step escalates: both read
            r = client.post(
                server.url + "/v1/chat/completions",
                json={
                    "model": "r2vcal",
                    "messages": _messages("error"),
                    "stream": True,
                },
                headers={"x-stainless-retry-count": "0"},
            )
            assert r.status_code in (200, 502), (r.status_code, r.text, edits)
            if r.status_code == 502:  # both answers unusable: an OpenAI error
                assert r.json()["error"]["type"] == "upstream_error"
            else:
                assert r.text.rstrip().endswith("data: [DONE]")

        one()
