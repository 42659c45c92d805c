"""r2vcal serve: the Responses API through the official openai client (issue 15).

``/v1/responses`` was 404, so the OpenAI Agents SDK's default setup failed.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from r2vcal.serve import run_in_thread  # noqa: E402
from tests.r2vcal import _serve_helpers as helpers  # noqa: E402
from tests.r2vcal._serve_helpers import K, make_app, ok_answer  # noqa: E402

router = helpers.router
servers = helpers.servers
ups = helpers.ups

TOOLS = [
    {
        "type": "function",
        "name": "sh",
        "description": "run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string"}},
            "required": ["cmd"],
        },
    }
]


def _tool_answer(name, body):
    doc = ok_answer(name, body)
    for i, c in enumerate(doc["choices"]):
        c["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{name}_{len(body['messages'])}_{i % 2}",
                    "type": "function",
                    "function": {"name": "sh", "arguments": json.dumps({"cmd": "ls"})},
                }
            ],
        }
        c["finish_reason"] = "tool_calls"
    return 200, doc


@pytest.fixture
def proxy(router, ups):
    slm, llm = ups
    app = make_app(router, ups, budget=1)
    with run_in_thread(app) as server:
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0
        )
        yield client, slm, llm, server.url


def test_text_answer(proxy):
    client, slm, _, _ = proxy
    raw = client.responses.with_raw_response.create(
        model="r2vcal", input="hello", instructions="be brief", max_output_tokens=20
    )
    resp = raw.parse()
    assert resp.output_text == "slm: look" and resp.status == "completed"
    assert resp.usage.output_tokens == 2 * K
    assert raw.headers["x-r2vcal-escalated"] == "false"
    sent = slm.bodies[0]
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert sent["max_tokens"] == 20 and sent["n"] == K


def test_function_tools_and_previous_response_id(proxy):
    client, slm, llm, _ = proxy
    slm.handler = lambda body: _tool_answer("slm", body)
    first = client.responses.with_raw_response.create(
        model="r2vcal", input="list files", tools=TOOLS
    )
    resp = first.parse()
    (call,) = resp.output
    assert call.type == "function_call" and call.name == "sh"
    assert json.loads(call.arguments) == {"cmd": "ls"}
    assert slm.bodies[0]["tools"][0]["function"]["name"] == "sh"
    slm.handler = lambda body: (200, ok_answer("slm", body))
    second = client.responses.with_raw_response.create(
        model="r2vcal",
        previous_response_id=resp.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": "error: permission denied",
            }
        ],
        tools=TOOLS,
    )
    # the same conversation, one step on; the tool error escalates
    assert (
        second.headers["x-r2vcal-conversation"]
        == first.headers["x-r2vcal-conversation"]
    )
    assert second.headers["x-r2vcal-step"] == "1"
    assert second.headers["x-r2vcal-escalated"] == "true"
    assert second.parse().output_text == "llm: look"
    sent = llm.bodies[0]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "error: permission denied",
    }


def test_whole_input_resent_without_ids_is_one_conversation(proxy):
    """What the Agents SDK does by default: the whole input list every turn."""
    client, slm, _, _ = proxy
    slm.handler = lambda body: _tool_answer("slm", body)
    items = [{"role": "user", "content": "list files"}]
    first = client.responses.with_raw_response.create(
        model="r2vcal", input=items, tools=TOOLS
    )
    resp = first.parse()
    items += [o.model_dump(exclude_none=True) for o in resp.output]
    items.append(
        {
            "type": "function_call_output",
            "call_id": resp.output[0].call_id,
            "output": "ok",
        }
    )
    second = client.responses.with_raw_response.create(
        model="r2vcal", input=items, tools=TOOLS
    )
    assert (
        second.headers["x-r2vcal-conversation"]
        == first.headers["x-r2vcal-conversation"]
    )
    assert second.headers["x-r2vcal-step"] == "1"


def test_streaming(proxy):
    client, _, _, _ = proxy
    events = list(client.responses.create(model="r2vcal", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "slm: look"
    assert events[-1].response.output_text == "slm: look"


def test_refusals_are_openai_errors(proxy):
    client, slm, _, url = proxy
    with pytest.raises(openai.BadRequestError, match="function tools only"):
        client.responses.create(
            model="r2vcal", input="x", tools=[{"type": "web_search_preview"}]
        )
    with pytest.raises(openai.NotFoundError, match="previous_response_id"):
        client.responses.create(model="r2vcal", input="x", previous_response_id="r")
    r = httpx.post(url + "/v1/responses", json={"input": [{"type": "image"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].type"
    assert slm.calls == 0


def test_a_truncated_answer_is_incomplete(proxy):
    client, slm, _, _ = proxy

    def truncated(body):
        status, doc = 200, ok_answer("slm", body)
        for c in doc["choices"]:
            c["finish_reason"] = "length"
        return status, doc

    slm.handler = truncated
    resp = client.responses.create(model="r2vcal", input="hi", max_output_tokens=2)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    events = list(
        client.responses.create(
            model="r2vcal", input="hello", max_output_tokens=2, stream=True
        )
    )
    assert events[-1].type == "response.incomplete"


def test_no_responses_body_makes_a_500(proxy):
    """Random values in every Responses field: 200 or an OpenAI 4xx, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, _, _, url = proxy
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(["user", "assistant", "function_call", "message", "x"]),
    )
    keys = st.sampled_from(
        ["role", "content", "type", "text", "refusal", "name", "arguments",
         "call_id", "output", "format", "id", "schema"]
    )  # fmt: skip
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)
        ),
        max_leaves=8,
    )
    fields = st.sampled_from(
        ["input", "instructions", "tools", "tool_choice", "text", "conversation",
         "previous_response_id", "max_output_tokens", "temperature", "metadata",
         "stream", "parallel_tool_calls", "user"]
    )  # fmt: skip
    with httpx.Client(timeout=30) as client:

        @settings(
            max_examples=80, deadline=None, suppress_health_check=list(HealthCheck)
        )
        @given(st.dictionaries(fields, values, max_size=4))
        def one(extra):
            body = {"model": "r2vcal", "input": "hi", **extra}
            r = client.post(
                url + "/v1/responses",
                content=json.dumps(body),
                headers={"x-stainless-retry-count": "0"},
            )
            assert r.status_code in (200, 400, 404), (r.status_code, r.text, body)
            if r.status_code != 200:
                assert r.json()["error"]["type"] == "invalid_request_error"

        one()


def test_odd_content_parts_are_400_or_read(proxy):
    _, _, _, url = proxy
    part = {"type": "refusal", "text": "", "refusal": 5}
    r = httpx.post(
        url + "/v1/responses",
        json={"input": [{"role": "assistant", "content": [part]}]},
    )
    assert r.status_code in (200, 400), r.text
    r = httpx.post(
        url + "/v1/responses", json={"input": [{"role": ["user"], "content": "x"}]}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].role"
