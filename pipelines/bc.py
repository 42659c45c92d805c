"""Behavioral cloning of teacher trajectories with TRL's ``SFTTrainer``.

Usage::

    python -m pipelines.bc --trajectories runs/tw_train.jsonl --output-dir runs/bc

The SLM is trained on the teacher's steps of :mod:`pipelines.collect` records
(``r2vcal.trajectory/v1``), in TRL's *prompt-completion* format: the loss is
only on the completion (the action, followed by the EOS token TRL appends).

The prompt is :mod:`pipelines.prompting`'s template (:func:`format_prompt`,
re-exported here), shared by every later step (:mod:`pipelines.verifier`,
:mod:`pipelines.rollout`, :mod:`pipelines.dpo`) so that the SLM is always
queried as it was trained; the completion is ``" <action t>"``. The goal comes
from the (possibly perturbed) first observation, so the SLM sees what the
environment showed, never the true state. No admissible-command list is shown:
the SLM has to name the action itself.

When ``model`` is ``None`` a tiny Llama is built from a config with a BPE
tokenizer trained on the prompts and actions
(:func:`pipelines.models.build_tiny_causal_lm`); otherwise ``model`` is any
Hugging Face model id or local directory (e.g. a GPU run of a real SLM).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines._cli import cli_options, config_from_args, config_parser, run_cli
from pipelines.prompting import (
    ACTION_CUE,
    HISTORY_CUE,
    PROMPT_DEFAULTS,
    PromptConfig,
    clean_text,
    format_prompt,
    prompt_kwargs_of,
)
from pipelines.trajectories import build_examples, read_trajectories

__all__ = [
    "ACTION_CUE",
    "HISTORY_CUE",
    "PROMPT_DEFAULTS",
    "BCConfig",
    "PromptConfig",
    "build_examples",
    "clean_text",
    "config_from_args",
    "format_prompt",
    "main",
    "make_parser",
    "prompt_kwargs_of",
    "read_trajectories",
]


@dataclass
class BCConfig:
    """Configuration of behavioral cloning.

    Parameters
    ----------
    trajectories : list of str
        JSONL files written by :mod:`pipelines.collect`.
    output_dir : str
        Where the model and tokenizer are saved (``save_pretrained``).
    model : str or None
        Hugging Face id / directory to fine-tune; ``None`` builds a tiny Llama.
    vocab_size, hidden_size, n_layers, n_heads, max_position_embeddings : int
        Tiny-model dimensions (used when ``model`` is None).
    only_successful : bool
        Clone only won teacher episodes.
    prompt : PromptConfig
        The prompt template (:func:`pipelines.prompting.format_prompt`); on the
        command line, one option per field (``--n-turns``, ...).
    max_steps : int
        Optimizer steps.
    batch_size : int
        Per-device train batch size.
    learning_rate : float
    warmup_ratio : float
    seed : int
    max_length : int
        Token limit of prompt + completion (TRL ``max_length``).
    logging_steps : int
    progress : bool
        Show the trainer's progress bar.
    """

    trajectories: list[str] = field(
        default_factory=list, metadata=cli_options(required=True)
    )
    output_dir: str = "runs/bc"
    model: str | None = None
    vocab_size: int = 1024
    hidden_size: int = 128
    n_layers: int = 2
    n_heads: int = 4
    max_position_embeddings: int = 1024
    only_successful: bool = field(
        default=True,
        metadata=cli_options(
            flag="--all-episodes",
            help="Clone every teacher episode, lost ones too "
            "(sets only_successful to False).",
        ),
    )
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_steps: int = 300
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    seed: int = 0
    max_length: int = 1024
    logging_steps: int = 25
    progress: bool = False


def _sft_args(cfg: BCConfig, **extra: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(0, int(cfg.warmup_ratio * cfg.max_steps)),
        seed=cfg.seed,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=cfg.logging_steps,
        max_length=cfg.max_length,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=not cfg.progress,
        **extra,
    )


def main(cfg: BCConfig) -> dict[str, Any]:
    """Train the SLM by behavioral cloning and save it to ``cfg.output_dir``.

    Parameters
    ----------
    cfg : BCConfig
        The teacher trajectories to clone, the model to build or fine-tune,
        the prompt template and the trainer's settings.

    Returns
    -------
    dict
        ``n_examples``, ``n_parameters``, ``train_loss`` (mean over training),
        ``final_loss`` (last logged), ``completion_nll`` (mean per-token NLL of
        the completions after training), ``seconds``, ``output_dir``.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    from pipelines.models import build_tiny_causal_lm

    if not cfg.trajectories:
        raise ValueError("BCConfig.trajectories must list at least one JSONL file.")
    if cfg.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {cfg.max_steps!r}.")
    start = time.perf_counter()
    records = read_trajectories(cfg.trajectories)
    examples = build_examples(
        records,
        only_successful=cfg.only_successful,
        **cfg.prompt.kwargs(),
    )
    if not examples:
        raise ValueError(
            "no training examples: every teacher episode failed; set "
            "only_successful=False or collect with fewer perturbations."
        )
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model is None:
        corpus = [e["prompt"] + e["completion"] for e in examples]
        model, tok = build_tiny_causal_lm(
            corpus,
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            seed=cfg.seed,
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    model.train()
    ds = Dataset.from_list(
        [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples]
    )
    trainer = SFTTrainer(
        model=model, args=_sft_args(cfg), train_dataset=ds, processing_class=tok
    )
    result = trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model = trainer.model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    nll = completion_nll(model, tok, examples[: min(len(examples), 64)])
    summary = {
        "n_examples": len(examples),
        "n_episodes": len(records),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "train_loss": float(result.training_loss),
        "final_loss": float(logged[-1]) if logged else float("nan"),
        "completion_nll": nll,
        "seconds": round(time.perf_counter() - start, 2),
        "output_dir": str(out_dir),
        "config": asdict(cfg),
    }
    (out_dir / "bc_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def completion_nll(model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> float:
    """Mean per-token negative log-likelihood of the completions (+ EOS).

    Parameters
    ----------
    model : transformers causal LM
    tokenizer : transformers tokenizer
    examples : list of dict
        With ``prompt`` and ``completion``.

    Returns
    -------
    float
    """
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for e in examples:
            p = tokenizer(e["prompt"], add_special_tokens=False)["input_ids"]
            c = tokenizer(e["completion"], add_special_tokens=False)["input_ids"]
            c = [*c, tokenizer.eos_token_id]
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(ids).logits.float()[0, :-1], -1)
            tgt = ids[0, 1:]
            lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[len(p) - 1 :]
            total -= float(lp.sum())
            count += len(c)
    return total / max(count, 1)


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`BCConfig`."""
    return config_parser(BCConfig, "Behavioral cloning with TRL SFTTrainer.")


if __name__ == "__main__":
    run_cli(make_parser(), BCConfig, main)
