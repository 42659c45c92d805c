"""Benchmark: expected_calibration_error on 10M rows, against torchmetrics.

Prints, in one run, r2vcal's time (goal <= 1 s), torchmetrics'
``binary_calibration_error`` time at the same bins and norm, and their ratio
(r2vcal / torchmetrics; below 1 means r2vcal is faster). Both start from the
same float64 numpy arrays; torchmetrics' time includes the (zero-copy)
``torch.from_numpy`` conversion and its argument validation, as a user would
call it. Each figure is the median of ``--repeats`` runs after one warm-up.

    python bench/bench_metrics.py [--n 10000000] [--n-bins 15] [--norm l1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from r2vcal.metrics import expected_calibration_error


def _time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    value = fn()  # warm-up (page faults, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--n-bins", type=int, default=15)
    parser.add_argument("--norm", default="l1", choices=["l1", "l2", "max"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    # strictly below 1: torchmetrics puts p == 1.0 into an extra bin of its own
    y_prob = np.minimum(rng.uniform(size=args.n), np.nextafter(1.0, 0.0))
    y_true = (rng.uniform(size=args.n) < y_prob**1.5).astype(np.int64)

    ours_t, ours_v = _time(
        lambda: expected_calibration_error(
            y_true, y_prob, n_bins=args.n_bins, norm=args.norm
        ),
        args.repeats,
    )
    print(
        f"r2vcal.expected_calibration_error  n={args.n:,} n_bins={args.n_bins} "
        f"norm={args.norm}: {ours_t:.3f} s (goal <= 1 s)  value={ours_v:.6f}"
    )
    try:
        import torch
        from torchmetrics.functional.classification import binary_calibration_error
    except ImportError:
        print("torchmetrics not installed: no comparison (pip install '.[dev]').")
        return

    def theirs() -> float:
        return float(
            binary_calibration_error(
                torch.from_numpy(y_prob),
                torch.from_numpy(y_true),
                n_bins=args.n_bins,
                norm=args.norm,
            )
        )

    tm_t, tm_v = _time(theirs, args.repeats)
    print(
        f"torchmetrics.binary_calibration_error (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads): {tm_t:.3f} s  value={tm_v:.6f}"
    )
    print(f"|difference| = {abs(ours_v - tm_v):.2e}")
    print(f"time ratio r2vcal / torchmetrics = {ours_t / tm_t:.2f}")


if __name__ == "__main__":
    main()
