"""Verifier-guided DPO with a BC term and a consistency term (R2V step 4).

Usage::

    python -m pipelines.dpo --slm runs/bc --verifier runs/verifier \\
        --trajectories runs/tw_train.jsonl --output-dir runs/dpo

Loss, continuing from the BC policy (DESIGN §1):
``L = L_BC + β₁·L_DPO + β₂·L_cons``.

* ``L_DPO`` and ``L_BC`` are TRL's own: :class:`trl.DPOTrainer` with
  ``loss_type=["sigmoid", "sft"]`` and ``loss_weights=[β₁, 1]`` (``"sft"`` is
  the NLL of the chosen action).
* Preference pairs (:func:`build_preference_pairs`): at the (perturbed) teacher
  contexts of the trajectories, the BC policy samples ``k`` candidates, the
  verifier scores them; ``a⁺`` is the teacher's action (with
  ``prefer_teacher=False``: the best candidate when the verifier scores it at
  least as high), ``a⁻`` the lowest-scored candidate different from ``a⁺``.
* ``L_cons`` (:class:`ConsistencyDPOTrainer`, a small subclass overriding
  ``compute_loss``): ``JSD(π(·|x^z) ‖ π(·|x^z′))`` between the policy's
  next-token distributions along the teacher action under two perturbed views
  of the same state, averaged over the action's tokens (the token-level
  proxy of the action distribution). View ``x^z`` is the recorded prompt
  (perturbed under seed z); view ``x^z′`` re-perturbs its observations with
  the observation-level operators of :mod:`pipelines.perturb` under a second
  seed z′ (same history and actions, so the latent state is the same). At each
  training step a mini-batch of ``cons_batch_size`` pairs is drawn.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._cli import cli_options, config_parser, run_cli
from pipelines.prompting import HISTORY_CUE, PromptConfig
from pipelines.trajectories import build_examples, read_trajectories

__all__ = [
    "DPOConfigR2V",
    "build_consistency_pairs",
    "build_preference_pairs",
    "jsd_on_pairs",
    "main",
    "make_parser",
]


def _reperturb(prompt: str, seed: int, rate: float) -> str:
    """A second view of ``prompt``: observation-level perturbations under ``seed``."""
    from pipelines.perturb import Distractor, DropLines, Mask, Truncate

    ops = [Mask(rate=rate), DropLines(rate=rate), Distractor(rate=rate)]
    ops.append(Truncate(rate=rate / 2, keep=0.7))
    lines = prompt.split("\n")
    out = []
    key = zlib.crc32(prompt.encode())
    for i, line in enumerate(lines):
        if line.startswith(("> ", HISTORY_CUE)) or line == lines[-1]:
            out.append(line)  # actions and the cue are the agent's own text
            continue
        for k, op in enumerate(ops):
            rng = np.random.default_rng([key, seed, i, k])
            if rng.random() < op.rate:
                new = op.transform(line, rng, {"env": "textworld"})
                if new is not None:
                    line = new
        out.append(line)
    return "\n".join(out)


def build_consistency_pairs(
    examples: Sequence[dict[str, Any]], *, seed: int = 1, rate: float = 0.5
) -> list[dict[str, str]]:
    """Two views of the same state per example, with the teacher action.

    Parameters
    ----------
    examples : sequence of dict
        From :func:`pipelines.bc.build_examples`.
    seed : int, default=1
        Seed z′ of the second view.
    rate : float, default=0.5
        Firing rate of each observation-level operator in the second view.

    Returns
    -------
    list of dict
        ``view_a``, ``view_b``, ``completion``.
    """
    return [
        {
            "view_a": e["prompt"],
            "view_b": _reperturb(e["prompt"], seed, rate),
            "completion": e["completion"],
        }
        for e in examples
    ]


def build_preference_pairs(
    examples: Sequence[dict[str, Any]],
    agent: Any,
    *,
    prefer_teacher: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Verifier-guided preference pairs at teacher contexts.

    Parameters
    ----------
    examples : sequence of dict
        From :func:`pipelines.bc.build_examples`.
    agent : pipelines.rollout.SLMAgent
        The BC policy with its verifier.
    prefer_teacher : bool, default=True
        ``a⁺`` is always the teacher's action. When False, a candidate the
        verifier scores at least as high as the teacher's action (and that
        differs from it) becomes ``a⁺`` instead — only sensible with a strong
        verifier: with a weak one it teaches the SLM the verifier's mistakes.
    progress : bool, default=False
        Show a progress bar.

    Returns
    -------
    list of dict
        ``prompt``, ``chosen``, ``rejected`` (TRL preference format, actions
        with a leading space), ``score_chosen``, ``score_rejected``.
    """
    from tqdm.auto import tqdm

    pairs = []
    for e in tqdm(examples, desc="dpo pairs", disable=not progress):
        d = agent.decide(e["prompt"])
        texts, scores = d["texts"], np.asarray(d["scores"])
        teacher = e["action"]
        v_teacher = float(agent.verifier.score_candidates(e["prompt"], [teacher])[0])
        best = int(np.argmax(scores))
        chosen, s_chosen = teacher, v_teacher
        if (
            not prefer_teacher
            and scores[best] >= v_teacher
            and texts[best]
            and texts[best] != teacher
        ):
            chosen, s_chosen = texts[best], float(scores[best])
        order = np.argsort(scores)
        rej = [i for i in order if texts[i] != chosen and texts[i] != teacher]
        if not rej:
            continue
        j = rej[0]
        pairs.append(
            {
                "prompt": e["prompt"],
                "chosen": " " + chosen,
                "rejected": " " + (texts[j] or "look"),
                "score_chosen": s_chosen,
                "score_rejected": float(scores[j]),
            }
        )
    return pairs


def _view_logprobs(model: Any, tok: Any, prompt: str, completion: str) -> Any:
    import torch

    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + c], device=model.device)
    logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) - 1 + len(c)]
    return torch.log_softmax(logits.float(), -1)


def _jsd(lp_a: Any, lp_b: Any) -> Any:
    import math

    import torch

    m = torch.logsumexp(torch.stack([lp_a, lp_b]), 0) - math.log(2.0)
    kl_a = (lp_a.exp() * (lp_a - m)).sum(-1)
    kl_b = (lp_b.exp() * (lp_b - m)).sum(-1)
    return (0.5 * (kl_a + kl_b)).mean()


def jsd_on_pairs(model: Any, tokenizer: Any, pairs: Sequence[dict[str, str]]) -> float:
    """Mean JSD between the two views' action distributions (no gradient).

    Parameters
    ----------
    model, tokenizer
    pairs : sequence of dict
        From :func:`build_consistency_pairs`.

    Returns
    -------
    float
    """
    import torch

    model.eval()
    vals = []
    with torch.no_grad():
        for pr in pairs:
            a = _view_logprobs(model, tokenizer, pr["view_a"], pr["completion"])
            b = _view_logprobs(model, tokenizer, pr["view_b"], pr["completion"])
            vals.append(float(_jsd(a, b)))
    return float(np.mean(vals)) if vals else float("nan")


@functools.cache
def _make_trainer_class() -> type:
    from trl import DPOTrainer

    class ConsistencyDPOTrainer(DPOTrainer):
        """TRL ``DPOTrainer`` plus ``β₂·JSD(π(·|x^z) ‖ π(·|x^z′))``.

        Parameters
        ----------
        consistency_pairs : list of dict
            From :func:`build_consistency_pairs`.
        consistency_weight : float
            β₂ (0 disables the term).
        cons_batch_size : int
            Pairs drawn per training step.
        cons_seed : int
            Seed of the draws.
        *args, **kwargs
            Passed to :class:`trl.DPOTrainer`.
        """

        def __init__(
            self,
            *args: Any,
            consistency_pairs: Sequence[dict[str, str]] = (),
            consistency_weight: float = 0.0,
            cons_batch_size: int = 4,
            cons_seed: int = 0,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            if consistency_weight < 0:
                raise ValueError(
                    f"consistency_weight must be >= 0; got {consistency_weight!r}."
                )
            self.consistency_pairs = list(consistency_pairs)
            self.consistency_weight = float(consistency_weight)
            self.cons_batch_size = int(cons_batch_size)
            self._cons_rng = np.random.default_rng(cons_seed)

        def consistency_loss(self, model: Any) -> Any:
            """Mean JSD over a random mini-batch of consistency pairs."""
            idx = self._cons_rng.choice(
                len(self.consistency_pairs),
                min(self.cons_batch_size, len(self.consistency_pairs)),
                replace=False,
            )
            tok = self.processing_class
            terms = []
            for i in idx:
                pr = self.consistency_pairs[int(i)]
                a = _view_logprobs(model, tok, pr["view_a"], pr["completion"])
                b = _view_logprobs(model, tok, pr["view_b"], pr["completion"])
                terms.append(_jsd(a, b))
            return sum(terms) / len(terms)

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            out = super().compute_loss(
                model, inputs, return_outputs, num_items_in_batch
            )
            if (
                not model.training
                or self.consistency_weight == 0
                or not self.consistency_pairs
            ):
                return out
            cons = self.consistency_loss(model)
            self._metrics["train"]["consistency_jsd"].append(float(cons.detach()))
            if return_outputs:
                loss, extra = out
                return loss + self.consistency_weight * cons, extra
            return out + self.consistency_weight * cons

    return ConsistencyDPOTrainer


def __getattr__(name: str) -> Any:
    # ConsistencyDPOTrainer subclasses a TRL class: build it on first access so
    # that importing this module does not import TRL. It stays out of __all__
    # (static API docs cannot see a class built at run time); it is documented
    # in the module docstring and reached as ``pipelines.dpo.ConsistencyDPOTrainer``.
    if name == "ConsistencyDPOTrainer":
        return _make_trainer_class()
    raise AttributeError(name)


@dataclass
class DPOConfigR2V:
    """Configuration of verifier-guided DPO with consistency.

    Parameters
    ----------
    slm : str
        The BC model directory (start point and reference policy).
    verifier : str
        Verifier directory.
    trajectories : list of str
        Teacher trajectories (contexts for the pairs).
    output_dir : str
    beta : float
        DPO temperature.
    dpo_weight : float
        β₁ (the BC term has weight 1).
    consistency_weight : float
        β₂.
    cons_batch_size : int
    view_seed : int
        Seed z′ of the second views.
    view_rate : float
        Operator rate of the second views.
    max_pairs : int or None
        Cap on the contexts used for preference pairs.
    prefer_teacher : bool
        ``a⁺`` is always the teacher's action (see :func:`build_preference_pairs`).
    k, temperature, max_new_tokens : SLM sampling.
    max_steps, batch_size, learning_rate, seed, max_length : training.
    prompt : PromptConfig
        The prompt template (:func:`pipelines.prompting.format_prompt`); on the
        command line, one option per field (``--n-turns``, ...).
    progress : bool
        Show progress bars (pair building, training).
    """

    slm: str = "runs/bc"
    verifier: str = "runs/verifier"
    trajectories: list[str] = field(
        default_factory=list, metadata=cli_options(required=True)
    )
    output_dir: str = "runs/dpo"
    beta: float = 0.1
    dpo_weight: float = 1.0
    consistency_weight: float = 1.0
    cons_batch_size: int = 4
    view_seed: int = 1
    view_rate: float = 0.5
    max_pairs: int | None = 256
    prefer_teacher: bool = True
    k: int = 5
    temperature: float = 0.5
    max_new_tokens: int = 12
    max_steps: int = 50
    batch_size: int = 4
    learning_rate: float = 5e-4
    seed: int = 0
    max_length: int = 1024
    prompt: PromptConfig = field(default_factory=PromptConfig)
    progress: bool = False


def main(cfg: DPOConfigR2V) -> dict[str, Any]:
    """Build pairs, train BC + DPO + consistency, save the policy.

    Parameters
    ----------
    cfg : DPOConfigR2V
        The BC model to start from, the verifier that ranks its candidates,
        the losses' weights and the trainer's settings.

    Returns
    -------
    dict
        ``n_pairs``, ``n_consistency_pairs``, ``train_loss``, ``jsd_before``,
        ``jsd_after`` (on the consistency pairs), ``seconds``, ``output_dir``.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check(cfg)
    start = time.perf_counter()
    pairs, cons = _training_pairs(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.slm)
    tok = AutoTokenizer.from_pretrained(cfg.slm)
    jsd_before = jsd_on_pairs(model, tok, cons)
    model.train()
    args = _trainer_args(cfg)
    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(
            [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
        ),
        processing_class=tok,
        consistency_pairs=cons,
        consistency_weight=cfg.consistency_weight,
        cons_batch_size=cfg.cons_batch_size,
        cons_seed=cfg.seed,
    )
    result = trainer.train()
    model = trainer.model.eval()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    summary = {
        "n_pairs": len(pairs),
        "n_consistency_pairs": len(cons),
        "train_loss": float(result.training_loss),
        "jsd_before": jsd_before,
        "jsd_after": jsd_on_pairs(model, tok, cons),
        "seconds": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
        "config": asdict(cfg),
    }
    (out / "dpo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check(cfg: DPOConfigR2V) -> None:
    """Refuse a config without trajectories or with a negative loss weight."""
    if not cfg.trajectories:
        raise ValueError("DPOConfigR2V.trajectories must list at least one file.")
    if cfg.dpo_weight < 0 or cfg.consistency_weight < 0:
        raise ValueError(
            "dpo_weight and consistency_weight must be >= 0; got "
            f"{cfg.dpo_weight!r} and {cfg.consistency_weight!r}."
        )


def _training_pairs(cfg: DPOConfigR2V) -> tuple[list[dict[str, Any]], list[Any]]:
    """The DPO preference pairs and the consistency pairs.

    Preference pairs set the SLM's candidates against the teacher's action,
    judged by the verifier (on at most ``max_pairs`` seeded-random states).
    """
    from pipelines.agent import SLMAgent

    examples = build_examples(
        read_trajectories(cfg.trajectories), **cfg.prompt.kwargs()
    )
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_pairs is not None and len(examples) > cfg.max_pairs:
        keep = rng.choice(len(examples), cfg.max_pairs, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    agent = SLMAgent(
        cfg.slm,
        cfg.verifier,
        k=cfg.k,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )
    pairs = build_preference_pairs(
        examples, agent, prefer_teacher=cfg.prefer_teacher, progress=cfg.progress
    )
    if not pairs:
        raise ValueError("no preference pairs: every candidate equals the teacher.")
    cons = build_consistency_pairs(examples, seed=cfg.view_seed, rate=cfg.view_rate)
    return pairs, cons


def _trainer_args(cfg: DPOConfigR2V) -> Any:
    """TRL's ``DPOConfig``: sigmoid DPO loss plus SFT on the chosen actions."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=cfg.output_dir,
        beta=cfg.beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[cfg.dpo_weight, 1.0],
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        max_length=cfg.max_length,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, cfg.max_steps // 5),
        disable_tqdm=not cfg.progress,
    )


def make_parser() -> argparse.ArgumentParser:
    """Command-line parser derived from :class:`DPOConfigR2V`."""
    return config_parser(DPOConfigR2V, "Verifier-guided DPO + BC + consistency.")


if __name__ == "__main__":
    run_cli(make_parser(), DPOConfigR2V, main)
