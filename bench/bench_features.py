"""Throughput of :class:`r2vcal.features.CandidateFeaturizer` (K=5, T=32).

Goal: >= 1,000,000 steps/s on the padded-array path (``StepBatch``) with ragged
lengths, per-token entropies, verifier scores, integer action ids for agreement and
full step context. Also prints the figure with string candidate texts and for the
DataFrame-of-lists path (which includes the pyarrow conversion).

Run: ``python bench/bench_features.py [--steps N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from r2vcal.features import CandidateFeaturizer, StepBatch


def make_batch(n: int, k: int, t: int, *, dtype: type, texts: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    horizon = 20
    if texts == "ids":
        cand = rng.integers(0, 3, (n, k))
    else:
        cand = np.array(["ls", "cat a.txt", "pwd"], dtype=object)[
            rng.integers(0, 3, (n, k))
        ]
    return StepBatch(
        token_logprobs=-rng.exponential(0.5, (n, k, t)).astype(dtype),
        lengths=rng.integers(1, t + 1, (n, k)),
        token_entropies=rng.exponential(1.0, (n, k, t)).astype(dtype),
        verifier_scores=rng.random((n, k)),
        candidate_texts=cand,
        episode_id=np.arange(n) // horizon,
        step=np.arange(n) % horizon,
        horizon=np.full(n, horizon),
        context_length=rng.integers(0, 8000, n),
        tool_error=rng.random(n) < 0.1,
        truncated=rng.random(n) < 0.05,
    )


def best_rate(fz: CandidateFeaturizer, X, n: int, repeat: int) -> float:
    fz.transform(X)  # warm-up
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fz.transform(X)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, k, t = args.steps, 5, 32
    fz = CandidateFeaturizer()
    print(f"CandidateFeaturizer, K={k}, T={t} (ragged lengths), {n:,} steps")
    for dtype in (np.float32, np.float64):
        batch = make_batch(n, k, t, dtype=dtype, texts="ids")
        rate = best_rate(fz, batch, n, args.repeat)
        print(f"  StepBatch {dtype.__name__}, action ids : {rate:12,.0f} steps/s")
    batch = make_batch(n, k, t, dtype=np.float32, texts="str")
    rate = best_rate(fz, batch, n, args.repeat)
    print(f"  StepBatch float32, str texts  : {rate:12,.0f} steps/s")
    m = min(n, 50_000)
    small = make_batch(m, k, t, dtype=np.float64, texts="str")
    lens = small.lengths
    frame = pd.DataFrame(
        {
            "token_logprobs": [
                [row[j, : lens[i, j]] for j in range(k)]
                for i, row in enumerate(small.token_logprobs)
            ],
            "verifier_scores": list(small.verifier_scores),
            "candidate_texts": list(small.candidate_texts),
            "episode_id": small.episode_id,
            "step": small.step,
            "horizon": small.horizon,
            "context_length": small.context_length,
            "tool_error": small.tool_error,
            "truncated": small.truncated,
        }
    )
    rate = best_rate(fz, frame, m, max(1, args.repeat // 2))
    print(f"  DataFrame of lists (surprisal): {rate:12,.0f} steps/s  ({m:,} steps)")


if __name__ == "__main__":
    main()
