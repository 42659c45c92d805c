"""A small OpenAI-compatible server over a transformers causal LM.

For tests, demos and benchmarks of ``r2vcal serve`` without a GPU or vLLM:
``POST /v1/chat/completions`` with ``n``, ``logprobs``, ``top_logprobs``,
``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p``,
``seed``, ``stop`` and ``stream``; ``GET /v1/models`` and ``GET /health``.
Log-probabilities are the model's own (log-softmax of the raw logits, before
temperature). Generation runs one request at a time.

The prompt is the tokenizer's chat template when it has one, else one
``role: content`` line per message followed by ``assistant:``. Tool definitions
and tool messages are accepted (tool messages are rendered like others); the
server never emits tool calls.

Usage::

    python -m pipelines.openai_server --model DIR --port 8001 [--served-model-name NAME]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines._cli import config_parser, run_cli

__all__ = [
    "OpenAIServerConfig",
    "create_app",
    "main",
    "make_parser",
    "render_prompt",
]


@dataclass
class OpenAIServerConfig:
    """Options of ``python -m pipelines.openai_server``.

    Parameters
    ----------
    model : str
        A model directory (``save_pretrained``) or id.
    host : str, default="127.0.0.1"
    port : int, default=8000
    served_model_name : str, default=None
        The model id in answers and ``/v1/models``; None uses ``model``.
    max_tokens : int, default=16
        Tokens generated when a request does not say.
    seed : int, default=0
        Sampling seed when a request does not give one.
    max_n : int, default=64
        Largest ``n`` accepted; 1 behaves like llama.cpp's server (``n > 1`` is
        a 400), to try ``r2vcal serve`` against such servers.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_tokens: int = 16
    seed: int = 0
    max_n: int = 64


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> str:
    """The prompt the server generates from.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Its chat template is used when it has one.
    messages : sequence of dict
        OpenAI chat messages (``role``, ``content`` as text or parts).

    Returns
    -------
    str
        The chat template's text, else one ``role: content`` line per message
        followed by ``assistant:``.
    """

    def text(content: Any) -> str:
        if isinstance(content, list):
            return " ".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict)
            )
        return "" if content is None else str(content)

    if getattr(tokenizer, "chat_template", None):
        msgs = [
            {"role": m["role"], "content": text(m.get("content"))} for m in messages
        ]
        return str(
            tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True
            )
        )
    lines = [f"{m.get('role')}: {text(m.get('content'))}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


class _Generator:
    def __init__(self, model: Any, tokenizer: Any, max_tokens: int, seed: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.seed = seed
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """Choices (text, finish reason, token records) and the prompt length."""
        import torch

        from pipelines.policies import generate_kwargs

        tok = self.tokenizer
        n = int(body.get("n") or 1)
        max_new = int(
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or self.max_tokens
        )
        temperature = float(
            1.0 if body.get("temperature") is None else body["temperature"]
        )
        top_p = float(body.get("top_p") or 1.0)
        n_top = int(body.get("top_logprobs") or 0)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        seed = int(body["seed"]) if body.get("seed") is not None else self.seed
        ids = tok(render_prompt(tok, body["messages"]), return_tensors="pt")[
            "input_ids"
        ]
        ids = ids[:, -(self.model.config.max_position_embeddings - max_new) :]
        kw = generate_kwargs(tok, max_new, n, temperature=temperature, top_p=top_p)
        with self.lock, torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **kw
            )
        seqs = out.sequences[:, ids.shape[1] :]
        logp = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        top_v, top_i = logp.topk(max(n_top, 1), dim=-1)
        eos = tok.eos_token_id
        choices = []
        for c in range(n):
            row = seqs[c].tolist()
            finish = "length"
            tokens: list[dict[str, Any]] = []
            text = ""
            for j, tid in enumerate(row[: logp.shape[1]]):
                if tid == eos:
                    finish = "stop"
                    break
                piece = tok.decode([tid])
                record: dict[str, Any] = {
                    "token": piece,
                    "logprob": float(logp[c, j, tid]),
                    "bytes": list(piece.encode()),
                    "top_logprobs": [],
                }
                if n_top:
                    for v, i in zip(top_v[c, j].tolist(), top_i[c, j].tolist()):
                        alt = tok.decode([i])
                        record["top_logprobs"].append(
                            {"token": alt, "logprob": v, "bytes": list(alt.encode())}
                        )
                tokens.append(record)
                text += piece
                hit = next((s for s in stop if s and s in text), None)
                if hit is not None:
                    text = text[: text.index(hit)]
                    finish = "stop"
                    break
            choices.append({"text": text, "finish_reason": finish, "tokens": tokens})
        return choices, int(ids.shape[1])


def _error(message: str, param: str | None = None) -> Any:
    """An OpenAI-style 400 answer naming the faulty request field."""
    from fastapi.responses import JSONResponse

    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=400)


def _checked_request(raw: bytes, max_n: int) -> tuple[dict[str, Any] | None, Any]:
    """The request's JSON body, or ``(None, error answer)`` when it is invalid."""
    import json

    try:
        body = json.loads(raw)
    except ValueError:
        return None, _error("The request body is not valid JSON.")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None, _error("'messages' must be a list.", "messages")
    n = 1 if body.get("n") is None else body["n"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
        return None, _error(f"'n' must be an int in [1, {max_n}]; got {n!r}.", "n")
    return body, None


@dataclass(frozen=True)
class _Completion:
    """One generated answer: its choices and the fields shared by its chunks."""

    choices: list[dict[str, Any]]
    n_prompt: int
    model: str
    want_logprobs: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict[str, int]:
        """Token counts of the prompt and of all choices."""
        usage = {
            "prompt_tokens": self.n_prompt,
            "completion_tokens": sum(len(c["tokens"]) for c in self.choices),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return usage

    def document(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion`` object."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c["text"]},
                    "logprobs": {"content": c["tokens"]}
                    if self.want_logprobs
                    else None,
                    "finish_reason": c["finish_reason"],
                }
                for i, c in enumerate(self.choices)
            ],
            "usage": self.usage(),
        }

    def chunks(self, include_usage: bool) -> Any:
        """The streamed ``chat.completion.chunk`` objects, one token each."""
        base = {"id": self.id, "object": "chat.completion.chunk"}
        base |= {"created": self.created, "model": self.model}
        for i, c in enumerate(self.choices):
            first = {"index": i, "delta": {"role": "assistant", "content": ""}}
            yield {**base, "choices": [first]}
            for t in c["tokens"]:
                d: dict[str, Any] = {"index": i, "delta": {"content": t["token"]}}
                if self.want_logprobs:
                    d["logprobs"] = {"content": [t]}
                yield {**base, "choices": [d]}
            last = {"index": i, "delta": {}, "finish_reason": c["finish_reason"]}
            yield {**base, "choices": [last]}
        if include_usage:
            yield {**base, "choices": [], "usage": self.usage()}

    def sse(self, include_usage: bool) -> Any:
        """The chunks as server-sent events, ending with ``[DONE]``."""
        import json

        for e in self.chunks(include_usage):
            yield f"data: {json.dumps(e)}\n\n"
        yield "data: [DONE]\n\n"


def create_app(
    model: Any,
    tokenizer: Any = None,
    *,
    served_model_name: str = "tiny",
    max_tokens: int = 16,
    seed: int = 0,
    max_n: int = 64,
) -> Any:
    """The server as a FastAPI app.

    Parameters
    ----------
    model : str or transformers.PreTrainedModel
        A directory / id, or a loaded causal LM.
    tokenizer : transformers tokenizer, default=None
        Required with a model object; loaded from ``model`` otherwise.
    served_model_name : str, default="tiny"
    max_tokens : int, default=16
    seed : int, default=0
    max_n : int, default=64
        Largest ``n`` accepted (1: like llama.cpp's server).

    Returns
    -------
    fastapi.FastAPI
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from pipelines.models import load_causal_lm

    model, tokenizer = load_causal_lm(model, tokenizer)
    gen = _Generator(model, tokenizer, max_tokens, seed)
    app = FastAPI(title="tiny OpenAI-compatible server")

    async def chat(request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        body, failure = _checked_request(await request.body(), max_n)
        if body is None:
            return failure
        choices, n_prompt = await run_in_threadpool(gen, body)
        done = _Completion(
            choices, n_prompt, served_model_name, bool(body.get("logprobs"))
        )
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(done.sse(usage), media_type="text/event-stream")
        return JSONResponse(done.document())

    app.router.add_route("/v1/chat/completions", chat, methods=["POST"])

    @app.get("/v1/models")
    async def models() -> Any:
        card = {
            "id": served_model_name,
            "object": "model",
            "created": 0,
            "owned_by": "r2vcal",
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    return app


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`OpenAIServerConfig`."""
    return config_parser(OpenAIServerConfig, __doc__.splitlines()[0])


def main(cfg: OpenAIServerConfig) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    app = create_app(
        cfg.model,
        served_model_name=cfg.served_model_name or cfg.model,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
        max_n=cfg.max_n,
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    run_cli(make_parser(), OpenAIServerConfig, main, show=None)
