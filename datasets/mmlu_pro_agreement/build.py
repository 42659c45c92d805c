"""Build ``mmlu_pro_agreement.parquet``: a tie-heavy agreement table from MMLU-Pro.

Eight small open models (7-9B) answered every MMLU-Pro question; treat their
eight answers as the K = 8 candidates of one "step" and route on how much they
agree, the way a self-consistency cascade does. The answer kept on the small
side is the plurality vote (ties broken by the order of ``SMALL``); the teacher
is Llama-3.1-70B-Instruct. Features are agreement statistics only, so most rows
sit on a few mass points ("all eight agree"): the shape of real cascade tables
that broke a content-hashed calibration split (issue 12).

Input (``--source``, default ``../shared/data/mmlu_pro``): ``correctness_matrix
.csv.gz`` from TIGER-AI-Lab/MMLU-Pro ``eval_results`` at commit f418b116
(Apache-2.0). Deterministic. Run:
``python datasets/mmlu_pro_agreement/build.py [--source DIR] [--out FILE]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SMALL = (
    "Meta-Llama-3_1-8B-Instruct",
    "Meta-Llama-3_1-8B",
    "Meta-Llama-3-8B",
    "Mistral-7B-Instruct-v0.2",
    "Qwen1.5-7B-Chat",
    "Yi-6b-Chat",
    "gemma-7b",
    "mathstral-7B",
)
LLM = "Meta-Llama-3_1-70B-Instruct"
HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "mmlu_pro"
DEFAULT_OUT = HERE / "mmlu_pro_agreement.parquet"
LETTERS = "ABCDEFGHIJ"

FEATURES = (
    "top_share",
    "margin",
    "answer_entropy",
    "n_distinct",
    "none_share",
    "lead_agrees",
    "all_agree",
)


def build(source: Path) -> pd.DataFrame:
    """The agreement table, one row per question."""
    m = pd.read_csv(source / "correctness_matrix.csv.gz")
    k = len(SMALL)
    preds = np.stack(
        [m[f"{name}__pred"].fillna("").astype(str).to_numpy() for name in SMALL], 1
    )
    # votes[i, a] = number of small models answering letter a on question i
    votes = np.stack([(preds == a).sum(1) for a in LETTERS], 1).astype(np.float64)
    none = (~np.isin(preds, list(LETTERS))).sum(1).astype(np.float64)
    # plurality vote; ties go to the letter first answered in the order of SMALL
    first = np.stack([np.where(preds == a, np.arange(k), k).min(1) for a in LETTERS], 1)
    score = np.where(votes > 0, votes * (k + 1) + (k - first), -1.0)
    top = votes.max(1)
    chosen_idx = np.where(top > 0, score.argmax(1), -1)
    chosen = np.array([LETTERS[i] if i >= 0 else "" for i in chosen_idx])
    second = np.sort(votes, 1)[:, -2]
    share = np.concatenate([votes, none[:, None]], 1) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(share > 0, share * np.log(share), 0.0), 1)
    slm_correct = chosen == m["answer"].astype(str).to_numpy()
    llm_correct = m[f"{LLM}__correct"].astype(bool).to_numpy()
    out = pd.DataFrame(
        {
            "question_id": m["question_id"].astype(np.int64),
            "category": m["category"].astype(str),
            "top_share": (top / k).astype(np.float32),
            "margin": ((top - second) / k).astype(np.float32),
            "answer_entropy": ent.astype(np.float32),
            "n_distinct": ((votes > 0).sum(1) / k).astype(np.float32),
            "none_share": (none / k).astype(np.float32),
            "lead_agrees": (preds[:, 0] == chosen).astype(np.float32),
            "all_agree": (top == k).astype(np.float32),
            "slm_correct": slm_correct,
            "llm_correct": llm_correct,
            "y": (~slm_correct & llm_correct).astype(np.int8),
        }
    )
    return out.sort_values("question_id", kind="stable").reset_index(drop=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = parser.parse_args(argv)
    table = build(a.source)
    table.to_parquet(a.out, index=False, compression="zstd")
    feats = table[list(FEATURES)]
    print(
        f"{a.out}: {len(table):,} rows; y = 1 for {int(table.y.sum()):,} "
        f"({table.y.mean():.1%}); plurality vote correct {table.slm_correct.mean():.1%}, "
        f"teacher {table.llm_correct.mean():.1%}; distinct feature vectors "
        f"{len(feats.drop_duplicates()):,}; largest mass point "
        f"{feats.value_counts().iloc[0] / len(table):.1%} of rows"
    )


if __name__ == "__main__":
    main()
