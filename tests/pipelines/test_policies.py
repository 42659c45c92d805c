"""Policies: true log-probs, K candidates, robust HTTP client, expert with noise."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipelines.policies import (
    Candidate,
    ExpertPolicy,
    OpenAIPolicy,
    PolicyError,
    TransformersPolicy,
)
from r2vcal.features import ENTROPY_TOP_N, topn_entropy

CORPUS = ["go north", "take the key from the box", "open the door", "look\ngo south"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from pipelines.models import build_tiny_causal_lm

    return build_tiny_causal_lm(CORPUS, save_dir=tmp_path_factory.mktemp("tiny"))


def test_candidate_validation() -> None:
    c = Candidate("a", [-0.1, -0.2], [1.0, 2.0])
    assert c.sum_logprob == pytest.approx(-0.3) and c.mean_entropy == 1.5
    assert json.loads(json.dumps(c.to_dict()))["text"] == "a"
    with pytest.raises(ValueError, match="same shape"):
        Candidate("a", [-0.1], [1.0, 2.0])


def test_tiny_model_round_trip(tiny_lm) -> None:
    model, tok = tiny_lm
    assert 1e4 < sum(p.numel() for p in model.parameters()) < 3e6
    assert tok.decode(tok("go north")["input_ids"]) == "go north"


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_transformers_true_logprobs(tiny_lm, temperature) -> None:
    import torch

    model, tok = tiny_lm
    pol = TransformersPolicy(
        model, tok, max_new_tokens=6, temperature=temperature, stop=None
    )
    cands = pol.propose("go", k=4)
    assert len(cands) == 4
    prompt = tok("go", return_tensors="pt")["input_ids"]
    for c in cands:
        assert c.token_logprobs.shape == c.token_entropies.shape
        assert np.all(c.token_logprobs <= 0) and np.all(c.token_entropies >= 0)
        ids = tok.convert_tokens_to_ids(c.tokens)
        seq = torch.cat([prompt, torch.tensor([ids])], dim=1)
        with torch.no_grad():
            logp = torch.log_softmax(model(seq).logits.float(), -1)[0]
        n0 = prompt.shape[1]
        ref = [logp[n0 - 1 + j, t].item() for j, t in enumerate(ids)]
        np.testing.assert_allclose(c.token_logprobs, ref, atol=1e-4)
        rows = logp[n0 - 1 : n0 - 1 + len(ids)]
        top = rows.topk(ENTROPY_TOP_N, dim=-1).values.numpy()
        np.testing.assert_allclose(c.token_entropies, topn_entropy(top), atol=1e-4)
    # Reproducible under the seed.
    assert [c.text for c in pol.propose("go", k=4)] == [c.text for c in cands]


def test_transformers_argument_checks(tiny_lm) -> None:
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="k"):
        TransformersPolicy(model, tok).propose("go", k=0)
    with pytest.raises(ValueError, match="greedy"):
        TransformersPolicy(model, tok, temperature=0).propose("go", k=2)
    assert len(TransformersPolicy(model, tok, temperature=0).propose("go", k=1)) == 1


# ------------------------------------------------------------ OpenAI client
class _Handler(BaseHTTPRequestHandler):
    script: list[str] = []  # what to do on each request: "ok", "500", "429", "sleep"
    seen: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        action = type(self).script.pop(0) if type(self).script else "ok"
        if action == "sleep":
            time.sleep(1.0)
            action = "ok"
        if action != "ok":
            self.send_response(int(action))
            self.end_headers()
            self.wfile.write(b'{"error": "injected"}')
            return
        if self.path.endswith("/chat/completions"):
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": f"go north {i}"},
                    "finish_reason": "stop",
                    "logprobs": {
                        "content": [
                            {
                                "token": "go",
                                "logprob": -0.1,
                                "top_logprobs": [
                                    {"token": "go", "logprob": -0.1},
                                    {"token": "take", "logprob": -2.4},
                                ],
                            },
                            {"token": " north", "logprob": -0.5, "top_logprobs": []},
                        ]
                    },
                }
                for i in range(body["n"])
            ]
        else:
            choices = [
                {
                    "index": i,
                    "text": "look",
                    "finish_reason": "length",
                    "logprobs": {
                        "tokens": ["lo", "ok"],
                        "token_logprobs": [-0.2, -0.3],
                        "top_logprobs": [{"lo": -0.2, "x": -1.8}, {"ok": -0.3}],
                    },
                }
                for i in range(body["n"])
            ]
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up: that is the point


@pytest.fixture
def server():
    _Handler.script = []
    _Handler.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_openai_chat_candidates(server) -> None:
    pol = OpenAIPolicy("tiny", base_url=server, backoff=0.01)
    cands = pol.propose("where to?", k=3)
    assert [c.text for c in cands] == ["go north 0", "go north 1", "go north 2"]
    np.testing.assert_allclose(cands[0].token_logprobs, [-0.1, -0.5])
    assert cands[0].token_entropies[0] > 0
    # no top_logprobs for a token: the entropy of its own log-prob plus residual
    assert cands[0].token_entropies[1] == pytest.approx(topn_entropy([[-0.5]])[0])
    assert _Handler.seen[0]["n"] == 3 and _Handler.seen[0]["logprobs"] is True


def test_openai_completions_mode(server) -> None:
    pol = OpenAIPolicy("tiny", base_url=server, mode="completions")
    (c,) = pol.propose("x", k=1)
    assert c.text == "look" and c.tokens == ["lo", "ok"]


def test_openai_retries_500_429_and_timeouts(server) -> None:
    _Handler.script = ["500", "429", "sleep", "503"]
    pol = OpenAIPolicy(
        "tiny", base_url=server, timeout=0.3, max_retries=4, backoff=0.01
    )
    t0 = time.perf_counter()
    assert len(pol.propose("x", k=2)) == 2
    assert len(_Handler.seen) == 5
    assert time.perf_counter() - t0 < 5


def test_openai_clean_error_after_last_try(server) -> None:
    _Handler.script = ["500"] * 10
    pol = OpenAIPolicy("tiny", base_url=server, max_retries=2, backoff=0.01)
    with pytest.raises(PolicyError, match=r"after 3 attempts.*HTTP 500") as err:
        pol.propose("x", k=1)
    assert pol.url in str(err.value)
    assert len(_Handler.seen) == 3


def test_openai_no_retry_on_400_and_unreachable(server) -> None:
    _Handler.script = ["400"]
    with pytest.raises(PolicyError, match="HTTP 400"):
        OpenAIPolicy("tiny", base_url=server, backoff=0.01).propose("x", k=1)
    assert len(_Handler.seen) == 1
    dead = OpenAIPolicy(
        "tiny", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff=0.01
    )
    with pytest.raises(PolicyError, match=r"127\.0\.0\.1:9"):
        dead.propose("x", k=1)
    with pytest.raises(ValueError, match="mode"):
        OpenAIPolicy("tiny", mode="embeddings")


# -------------------------------------------------------------------- expert
def test_expert_policy_and_noise(he_cache) -> None:
    from pipelines.envs.humaneval import HumanEvalEnv

    env = HumanEvalEnv(cache_dir=he_cache)
    env.reset("HumanEval/2")
    (c,) = ExpertPolicy(env).propose(None, k=1)
    assert c.text.startswith("WRITE") and c.metadata["noisy"] is False
    noisy = ExpertPolicy(env, noise_rate=1.0, seed=0).propose(None, k=5)
    assert all(
        c.metadata["noisy"] and not c.text.startswith("WRITE\n\n") for c in noisy
    )
    half = ExpertPolicy(env, noise_rate=0.5, seed=1).propose(None, k=50)
    assert 10 < sum(c.metadata["noisy"] for c in half) < 40
    with pytest.raises(ValueError, match="noise_rate"):
        ExpertPolicy(env, noise_rate=2.0)


def test_vllm_policy_needs_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        from pipelines.policies import VLLMPolicy

        with pytest.raises(ImportError, match="vllm"):
            VLLMPolicy("any")
    else:
        pytest.skip("vllm installed: covered by tests/pipelines/test_vllm_smoke.py")


def test_entropy_is_the_same_locally_and_behind_a_server(tiny_lm) -> None:
    """Issue 12: one model gave entropy_mean 5.69 locally and 1.57 served."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from pipelines.openai_server import create_app, render_prompt
    from r2vcal.serve.openai import choice_logprobs

    model, tok = tiny_lm
    prompt = render_prompt(tok, [{"role": "user", "content": "go"}])
    local = TransformersPolicy(
        model, tok, max_new_tokens=5, temperature=0, stop=None
    ).propose(prompt, k=1)[0]
    full = TransformersPolicy(
        model, tok, max_new_tokens=5, temperature=0, stop=None, entropy_top_n=None
    ).propose(prompt, k=1)[0]
    app = create_app(model, tok, served_model_name="tiny", max_tokens=5)
    with TestClient(app) as client:
        policy = OpenAIPolicy("tiny", max_new_tokens=5, temperature=0)

        def post(payload):
            return client.post("/v1/chat/completions", json=payload).json()

        policy._post = post  # the real tiny server, in process
        served = policy.propose("go", k=1)[0]
        choice = post(
            {
                "messages": [{"role": "user", "content": "go"}],
                "max_tokens": 5,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": ENTROPY_TOP_N,
            }
        )["choices"][0]
    n = min(local.token_entropies.size, served.token_entropies.size)
    assert n >= 1
    np.testing.assert_allclose(
        served.token_logprobs[:n], local.token_logprobs[:n], atol=1e-4
    )
    np.testing.assert_allclose(
        served.token_entropies[:n], local.token_entropies[:n], atol=1e-4
    )
    _, proxy_entropies = choice_logprobs(choice)  # what `r2vcal serve` computes
    np.testing.assert_allclose(
        proxy_entropies[:n], local.token_entropies[:n], atol=1e-4
    )
    # the skew this prevents: a full-vocabulary entropy is far from the served one
    assert np.abs(full.token_entropies[:n] - served.token_entropies[:n]).max() > 0.05


def test_admissible_scoring_checks_k_like_every_policy(tiny_lm) -> None:
    from pipelines.policies import AdmissibleScoringPolicy

    model, tok = tiny_lm
    pol = AdmissibleScoringPolicy(model, tok)
    cmds = ["go north", "open the door", "look"]
    assert len(pol.propose("go", np.int64(2), commands=cmds)) == 2
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="The 'k' parameter must be an int >= 1"):
            pol.propose("go", bad, commands=cmds)
