"""Compatibility matrix: agent frameworks pointed at r2vcal serve by base_url only.

Each framework runs two multi-turn, tool-using conversations of the same task
through the proxy, against a canned tool-calling upstream, with no conversation
id sent; the decision log must show two conversations of three steps each and
the budget of one LLM call per conversation held. Tracing is off and
everything stays on 127.0.0.1. The frameworks are the ``compat`` extra; tests
of a framework that is not installed are skipped.
"""

from __future__ import annotations

import json
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("aiohttp")

from r2vcal.serve import Upstream, create_app, run_in_thread
from tests.r2vcal import _serve_helpers as helpers
from tests.r2vcal._serve_helpers import K, make_app, ok_answer

router = helpers.router
servers = helpers.servers

TASK = "What is the weather in Paris?"


def _text(m):
    c = m.get("content")
    if isinstance(c, list):
        return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return str(c or "")


def agent_turn(name):
    """A tool-calling model: weather tool until it answers 'sunny', then done."""

    def handler(body):
        seen = " ".join(_text(m) for m in body["messages"])
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        doc = ok_answer(name, body)
        for c in doc["choices"]:
            if "sunny" in seen:
                if "final_answer" in tools:  # smolagents ends with a tool call
                    call = ("final_answer", {"answer": "It is sunny in Paris."})
                else:
                    c["message"] = {
                        "role": "assistant",
                        "content": "It is sunny in Paris.",
                    }
                    continue
            else:
                call = ("get_weather", {"city": "Paris"})
            c["message"] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_" + uuid.uuid4().hex[:24],
                        "type": "function",
                        "function": {"name": call[0], "arguments": json.dumps(call[1])},
                    }
                ],
            }
            c["finish_reason"] = "tool_calls"
        return 200, doc

    return handler


class Weather:
    """The tool: fails on its first call of a run, then answers."""

    def __init__(self):
        self.calls = 0

    def __call__(self, city: str) -> str:
        self.calls += 1
        if self.calls % 2 == 1:
            return "error: weather service unavailable, try again"
        return f"sunny in {city}"


@pytest.fixture
def proxy(router, servers, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    slm, llm = servers
    for s in servers:
        s.reset()
        s.handler = agent_turn(s.name)
    log = tmp_path / "d.jsonl"
    app = make_app(router, servers, budget=1, log_path=log)
    with run_in_thread(app) as server:
        yield server.url + "/v1", log, slm, llm


def _check(log, *, escalations=True):
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    convs = {}
    for r in rows:
        convs.setdefault(r["episode_id"], []).append(r)
    assert len(convs) == 2, [(r["episode_id"], r["step"]) for r in rows]
    for steps in convs.values():
        assert [r["step"] for r in steps] == [0, 1, 2]
        assert sum(r["escalated"] for r in steps) == (1 if escalations else 0)
        assert [r["budget_left"] for r in steps][-1] == (0 if escalations else 1)
    return rows


def _weather_agent(agents, url, api):
    """An OpenAI Agents SDK agent with the weather tool, on the proxy at ``url``."""
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    model_cls = (
        agents.OpenAIChatCompletionsModel
        if api == "chat"
        else agents.OpenAIResponsesModel
    )
    weather = Weather()

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return weather(city)

    return agents.Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=model_cls(model="r2vcal", openai_client=client),
    )


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_agents_sdk(proxy, api):
    agents = pytest.importorskip("agents")

    url, log, _, llm = proxy
    agent = _weather_agent(agents, url, api)
    for _ in range(2):
        result = agents.Runner.run_sync(agent, TASK)
        assert "sunny" in result.final_output
    _check(log)
    assert llm.calls == 2


def test_langgraph_react_agent(proxy):
    pytest.importorskip("langgraph")
    lc_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    url, log, _, llm = proxy
    weather = Weather()

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return weather(city)

    model = lc_openai.ChatOpenAI(
        model="r2vcal", base_url=url, api_key="unused", max_retries=0
    )
    agent = create_react_agent(model, [get_weather])  # no system prompt
    for _ in range(2):
        out = agent.invoke({"messages": [("user", TASK)]})
        assert "sunny" in out["messages"][-1].content
    _check(log)
    assert llm.calls == 2


def test_smolagents_tool_calling_agent(proxy):
    smolagents = pytest.importorskip("smolagents")

    url, log, _, llm = proxy
    weather = Weather()

    @smolagents.tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: the city.
        """
        return weather(city)

    model = smolagents.OpenAIServerModel(
        model_id="r2vcal",
        api_base=url,
        api_key="unused",
        client_kwargs={"max_retries": 0},
    )
    for _ in range(2):
        agent = smolagents.ToolCallingAgent(
            tools=[get_weather], model=model, max_steps=6, verbosity_level=0
        )
        assert "sunny" in str(agent.run(TASK))
    # smolagents re-renders tool calls as text and sends tool results as user
    # messages ("Observation: ..."); the ids in the text tie the steps together
    _check(log)
    assert llm.calls == 2


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_agents_sdk_streamed(proxy, api):
    agents = pytest.importorskip("agents")
    import asyncio

    url, log, _, llm = proxy
    agent = _weather_agent(agents, url, api)

    async def run() -> list[str]:
        out = []
        for _ in range(2):  # one event loop: the client's connections live in it
            result = agents.Runner.run_streamed(agent, TASK)
            async for _event in result.stream_events():
                pass
            out.append(str(result.final_output))
        return out

    assert all("sunny" in text for text in asyncio.run(run()))
    _check(log)
    assert llm.calls == 2


# --------------------------------------------------------------------------- #
# The same clients against a tiny real upstream (transformers, 127.0.0.1)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def real(router):
    pytest.importorskip("transformers")
    with helpers.tiny_upstreams(["go north", "open the door", "it is sunny"]) as urls:
        yield urls


@pytest.fixture
def real_proxy(router, real, tmp_path):
    log = tmp_path / "d.jsonl"
    app = create_app(
        router,
        slm=Upstream(real[0], "tiny-slm", timeout=30),
        llm=Upstream(real[1], "tiny-llm", timeout=30),
        k=K,
        threshold=0.5,
        budget=1,
        log_path=log,
    )
    with run_in_thread(app) as server:
        yield server.url + "/v1", log


def _rows(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_tiny_real_upstream_openai_agents(real_proxy):
    agents = pytest.importorskip("agents")
    import asyncio

    from openai import AsyncOpenAI

    url, log = real_proxy
    agents.set_tracing_disabled(True)

    async def run() -> list[str]:
        client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
        # chat completions only: the tiny model always stops at max_tokens, which
        # the Responses API reports as status "incomplete" (an error to the SDK)
        agent = agents.Agent(
            name="a",
            instructions="Be brief.",
            model=agents.OpenAIChatCompletionsModel(
                model="r2vcal", openai_client=client
            ),
            model_settings=agents.ModelSettings(max_tokens=6),
        )
        return [(await agents.Runner.run(agent, "go")).final_output]

    assert all(isinstance(text, str) for text in asyncio.run(run()))
    rows = _rows(log)
    assert len(rows) == 1 and all(len(r["candidates"]) == K for r in rows)
    assert all(r["entropy_mean"] > 0 for r in rows)


def test_tiny_real_upstream_langchain_and_smolagents(real_proxy):
    url, log = real_proxy
    n = 0
    lc_openai = pytest.importorskip("langchain_openai")
    reply = lc_openai.ChatOpenAI(
        model="r2vcal", base_url=url, api_key="unused", max_retries=0, max_tokens=6
    ).invoke("go")
    assert isinstance(reply.content, str)
    n += 1
    smolagents = pytest.importorskip("smolagents")
    model = smolagents.OpenAIServerModel(
        model_id="r2vcal",
        api_base=url,
        api_key="unused",
        client_kwargs={"max_retries": 0},
        max_tokens=6,
    )
    msg = model.generate([smolagents.ChatMessage(role="user", content="go")])
    assert isinstance(msg.content, str)
    n += 1
    rows = _rows(log)
    assert len(rows) == n and all(len(r["candidates"]) == K for r in rows)
