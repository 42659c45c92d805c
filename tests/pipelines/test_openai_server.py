"""The tiny OpenAI-compatible server: n, logprobs, top_logprobs, streaming, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("transformers")
from starlette.testclient import TestClient

from pipelines.openai_server import (
    OpenAIServerConfig,
    create_app,
    make_parser,
    render_prompt,
)

CORPUS = ["go north", "take the key from the box", "open the door"]
MESSAGES = [{"role": "system", "content": "agent"}, {"role": "user", "content": "go"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pipelines.models import build_tiny_causal_lm

    return build_tiny_causal_lm(CORPUS, save_dir=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(*tiny, served_model_name="tiny", max_tokens=5)) as c:
        yield c


def test_n_candidates_with_true_logprobs(client, tiny):
    import torch

    model, tok = tiny
    r = client.post(
        "/v1/chat/completions",
        json={"messages": MESSAGES, "n": 3, "logprobs": True, "top_logprobs": 4},
    )
    doc = r.json()
    assert r.status_code == 200 and doc["model"] == "tiny"
    assert [c["index"] for c in doc["choices"]] == [0, 1, 2]
    prompt = tok(render_prompt(tok, MESSAGES), return_tensors="pt")["input_ids"]
    assert doc["usage"]["prompt_tokens"] == prompt.shape[1]
    for c in doc["choices"]:
        toks = c["logprobs"]["content"]
        assert 1 <= len(toks) <= 5
        assert "".join(t["token"] for t in toks) == c["message"]["content"]
        for t in toks:
            assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 4
            tops = [a["logprob"] for a in t["top_logprobs"]]
            assert tops == sorted(tops, reverse=True) and t["logprob"] <= tops[0]
        # the first token's alternatives are the model's own next-token log-probs
        with torch.no_grad():
            logp = torch.log_softmax(model(prompt).logits[0, -1].float(), -1)
        best = [a["logprob"] for a in toks[0]["top_logprobs"]]
        np.testing.assert_allclose(best, logp.topk(4).values.numpy(), atol=1e-4)


def test_seeded_and_without_logprobs(client):
    body = {"messages": MESSAGES, "n": 2, "seed": 7, "max_tokens": 3}
    a = client.post("/v1/chat/completions", json=body).json()
    b = client.post("/v1/chat/completions", json=body).json()
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]
    assert all(c["logprobs"] is None for c in a["choices"])
    assert a["usage"]["completion_tokens"] <= 6


def test_streaming(client):
    body = {
        "messages": MESSAGES,
        "stream": True,
        "logprobs": True,
        "stream_options": {"include_usage": True},
        "seed": 1,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [x for x in r.text.splitlines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["usage"]["completion_tokens"] >= 1
    text = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]
    )
    full = client.post(
        "/v1/chat/completions", json={"messages": MESSAGES, "seed": 1}
    ).json()
    assert text == full["choices"][0]["message"]["content"]


def test_errors_models_health(client):
    assert client.post("/v1/chat/completions", content=b"{").status_code == 400
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "n": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json() == {"status": "ok"}


def test_parser_and_config():
    args = make_parser().parse_args(["--model", "dir", "--port", "0"])
    cfg = OpenAIServerConfig(**vars(args))
    assert (cfg.model, cfg.port, cfg.host, cfg.max_tokens) == (
        "dir",
        0,
        "127.0.0.1",
        16,
    )
