"""Tiny config-built language models for offline tests and smoke runs.

No hub access is needed: a byte-level BPE tokenizer is trained on a few
strings with ``tokenizers`` and a small Llama is built from a config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_tiny_causal_lm", "fingerprints", "load_causal_lm"]


def build_tiny_causal_lm(
    corpus: Sequence[str],
    *,
    vocab_size: int = 300,
    hidden_size: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
    save_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Build a tiny random-weight causal LM and its tokenizer.

    Parameters
    ----------
    corpus : sequence of str
        Texts the BPE tokenizer is trained on (a handful is enough).
    vocab_size : int, default=300
        Target vocabulary size (byte-level BPE; at least 256 + specials).
    hidden_size, n_layers, n_heads : int
        Llama dimensions (defaults give ~0.1 M parameters plus embeddings).
    max_position_embeddings : int, default=512
        Longest context.
    seed : int, default=0
        Seed of the weight initialisation.
    save_dir : str or Path, optional
        When given, save model and tokenizer there with ``save_pretrained`` and
        return the copies reloaded with ``from_pretrained``.

    Returns
    -------
    model : transformers.LlamaForCausalLM
    tokenizer : transformers.PreTrainedTokenizerFast

    Examples
    --------
    >>> model, tok = build_tiny_causal_lm(["go north", "take key"])  # doctest: +SKIP
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    if not corpus:
        raise ValueError("corpus must contain at least one string; got none.")
    if hidden_size % n_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads})."
        )
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + len(specials)),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    if save_dir is not None:
        save_dir = Path(save_dir)
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
        model = AutoModelForCausalLM.from_pretrained(save_dir).eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(save_dir)
    return model, tokenizer


def fingerprints(slm: str | Path, verifier: str | Path) -> dict[str, str]:
    """SHA-256 of the SLM's weights and of the verifier's head.

    The shipped tables describe one SLM and one verifier; a chain that trains
    byte-identical ones (same preset, deterministic training) can run them in
    closed loop against routers fitted on the shipped tables
    (:mod:`pipelines.demo`).
    """
    return {
        "slm_sha256": hashlib.sha256(
            (Path(slm) / "model.safetensors").read_bytes()
        ).hexdigest(),
        "verifier_sha256": hashlib.sha256(
            (Path(verifier) / "verifier.json").read_bytes()
        ).hexdigest(),
    }


def load_causal_lm(model: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer, loaded when ``model`` is a directory or id.

    Parameters
    ----------
    model : str or transformers.PreTrainedModel
        A directory / id (loaded with ``from_pretrained``), or a loaded model.
    tokenizer : transformers tokenizer, default=None
        Required with a model object; loaded from ``model`` otherwise.

    Returns
    -------
    (model, tokenizer)
    """
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model)
    if tokenizer is None:
        raise ValueError("tokenizer is required when 'model' is a model object.")
    return model, tokenizer
