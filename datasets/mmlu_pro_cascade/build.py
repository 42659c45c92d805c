"""Build ``mmlu_pro_cascade.parquet`` from the MMLU-Pro evaluation results.

Inputs (``--source``, default ``../shared/data/mmlu_pro`` next to the repository):
``correctness_matrix.csv.gz`` (one row per question, per-model prediction and
correctness) and ``outputs_Meta-Llama-3_1-8B-Instruct.jsonl.gz`` (the small
model's generated chain-of-thought), both from TIGER-AI-Lab/MMLU-Pro
``eval_results`` at commit f418b116 (Apache-2.0).

Small model (SLM): Meta-Llama-3.1-8B-Instruct. Big model (LLM):
Meta-Llama-3.1-70B-Instruct. One row per question (12,032). Features use only
what is known once the small model has answered: its generated text and the
question's subject/source, never the gold answer or the big model's output.

Run: ``python datasets/mmlu_pro_cascade/build.py [--source DIR] [--out FILE]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SLM = "Meta-Llama-3_1-8B-Instruct"
LLM = "Meta-Llama-3_1-70B-Instruct"
HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "mmlu_pro"
DEFAULT_OUT = HERE / "mmlu_pro_cascade.parquet"

SOURCES = ("ori_mmlu", "stemez", "theoremQA", "scibench")
HEDGES = (
    r"\b(?:however|but|maybe|perhaps|might|may|possibly|probably|likely|unlikely|"
    r"assume|assuming|approximately|roughly|unclear|not sure|uncertain|"
    r"seems?|appears?|could|wait|alternatively|recheck|re-evaluate|mistake)\b"
)
ANSWER = r"answer is \(?[A-J]\)?"

TEXT_FEATURES = (
    "answer_extracted",
    "answer_position",
    "log_n_chars",
    "log_n_words",
    "log_n_sentences",
    "repetition",
    "hedge_rate",
    "n_letters_mentioned",
    "log_n_numbers",
    "digit_share",
    "log_n_equals",
    "pred_letter_index",
)


def text_features(text: pd.Series, pred: pd.Series) -> pd.DataFrame:
    """Features of the small model's generated text (vectorised pandas str ops)."""
    t = text.fillna("")
    n_chars = t.str.len().astype(np.float64)
    n_words = t.str.count(r"\S+").astype(np.float64)
    sentences = t.str.split(r"(?<=[.!?])\s+")
    n_sent = sentences.str.len().astype(np.float64)
    n_unique = sentences.map(lambda s: len(set(s))).astype(np.float64)
    pos = t.str.rfind("answer is").astype(np.float64)
    extracted = t.str.contains(ANSWER, regex=True)
    letters = t.str.findall(r"\(([A-J])\)").map(lambda xs: len(set(xs)))
    return pd.DataFrame(
        {
            "answer_extracted": extracted.astype(np.float64),
            # where the final answer statement starts (1 when there is none)
            "answer_position": np.where(pos >= 0, pos / np.maximum(n_chars, 1), 1.0),
            "log_n_chars": np.log1p(n_chars),
            "log_n_words": np.log1p(n_words),
            "log_n_sentences": np.log1p(n_sent),
            # share of repeated sentences: degenerate loops score high
            "repetition": 1.0 - n_unique / np.maximum(n_sent, 1),
            "hedge_rate": 100.0
            * t.str.lower().str.count(HEDGES).astype(np.float64)
            / np.maximum(n_words, 1),
            "n_letters_mentioned": letters.astype(np.float64),
            "log_n_numbers": np.log1p(t.str.count(r"\d+(?:\.\d+)?").astype(float)),
            "digit_share": t.str.count(r"\d").astype(np.float64)
            / np.maximum(n_chars, 1),
            "log_n_equals": np.log1p(t.str.count("=").astype(np.float64)),
            "pred_letter_index": pred.map(lambda c: "ABCDEFGHIJ".find(str(c)))
            .astype(np.float64)
            .to_numpy(),
        },
        index=text.index,
    )


def build(source: Path) -> pd.DataFrame:
    matrix = pd.read_csv(
        source / "correctness_matrix.csv.gz",
        usecols=[
            "question_id",
            "category",
            "src",
            f"{SLM}__pred",
            f"{SLM}__correct",
            f"{LLM}__correct",
        ],
    )
    outputs = pd.read_json(
        source / f"outputs_{SLM}.jsonl.gz",
        lines=True,
        dtype={"question_id": "int64"},
    )[["question_id", "generated_text"]]
    df = matrix.merge(outputs, on="question_id", how="inner", validate="one_to_one")
    if len(df) != len(matrix):
        raise RuntimeError(f"{len(matrix) - len(df)} questions lack an SLM output")
    df = df.sort_values("question_id", kind="stable").reset_index(drop=True)

    feats = text_features(df["generated_text"], df[f"{SLM}__pred"])
    origin = df["src"].str.extract(r"^(" + "|".join(SOURCES) + ")")[0]
    for s in SOURCES:
        feats[f"src_{s.lower()}"] = (origin == s).astype(np.float64)
    categories = sorted(df["category"].unique())
    for c in categories:
        feats["cat_" + c.replace(" ", "_")] = (df["category"] == c).astype(np.float64)

    slm = df[f"{SLM}__correct"].astype(bool)
    llm = df[f"{LLM}__correct"].astype(bool)
    out = pd.concat(
        [
            df[["question_id", "category", "src"]].astype(
                {"question_id": "int64", "category": str, "src": str}
            ),
            feats.astype(np.float32),
            pd.DataFrame(
                {
                    "slm_correct": slm,
                    "llm_correct": llm,
                    "y": (~slm & llm).astype(np.int8),
                }
            ),
        ],
        axis=1,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    table = build(args.source)
    table.to_parquet(args.out, index=False, compression="zstd", compression_level=19)
    size = args.out.stat().st_size / 1e6
    print(
        f"wrote {args.out} ({len(table):,} rows, {table.shape[1]} columns, {size:.2f} MB)"
    )
    print(f"y = 1 (escalation helps): {table['y'].mean():.4f}")


if __name__ == "__main__":
    main()
