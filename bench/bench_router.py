"""Router speed against scikit-learn's LogisticRegression, in one run.

Prints, on ``--n-rows`` x 15 synthetic rows with 10 groups:

* one linear solve (``alpha=1e-4, calibration=None``) / LogisticRegression(lbfgs)
  fit time (goal <= 2.0);
* the default fit (``alpha="auto"``: 4 penalties x 5 cross-fitting folds, then
  the calibrator check and the final solve, 21 solves) / the like-for-like
  sklearn peer ``LogisticRegressionCV(Cs=4, cv=5)`` (goal <= 2.0);
* predict_proba throughput of the router / sklearn's (goal >= 1.0);
* the MLP backend's 20-epoch fit time, one training (goal <= 60 s on a 2-core
  box); the default MLP fit adds 5 cross-fitting trainings for the calibrator.

Usage: ``python bench/bench_router.py [--n-rows 1000000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

from r2vcal import PAPER_HIDDEN_LAYER_SIZES, CVaRBrierRouter


def make_data(n: int, d: int = 15, n_groups: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    g = rng.integers(0, n_groups, size=n)
    w = rng.normal(size=d) / np.sqrt(d)
    z = X @ w * 2.0 - 0.5 + np.where(g < 2, X[:, 1], 0.0)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return X, y, g


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-mlp", action="store_true")
    args = parser.parse_args()

    X, y, g = make_data(args.n_rows)
    print(f"data: {X.shape[0]:,} x {X.shape[1]} rows, 10 groups")

    router = CVaRBrierRouter(
        cvar_weight=1.0, cvar_tail=0.2, alpha=1e-4, calibration=None, random_state=0
    )
    sk = LogisticRegression(solver="lbfgs")
    t_router = best_time(lambda: router.fit(X, y, groups=g), args.repeats)
    t_sk = best_time(lambda: sk.fit(X, y), args.repeats)
    print(
        f"fit      CVaRBrierRouter(linear, one solve) {t_router:7.3f} s  "
        f"({router.n_iter_} L-BFGS iters)  LogisticRegression(lbfgs) {t_sk:7.3f} s  "
        f"({int(sk.n_iter_[0])} iters)"
    )
    print(f"         ratio router/sklearn = {t_router / t_sk:.2f}   (goal <= 2.0)")

    default = CVaRBrierRouter(random_state=0)
    sk_cv = LogisticRegressionCV(Cs=4, cv=5)
    t_def = best_time(lambda: default.fit(X, y, groups=g), 1)
    t_skcv = best_time(lambda: sk_cv.fit(X, y), 1)
    print(
        f"fit      CVaRBrierRouter() default {t_def:7.3f} s  (alpha_={default.alpha_:g}, "
        f"calibration_={default.calibration_})  LogisticRegressionCV(Cs=4, cv=5) "
        f"{t_skcv:7.3f} s"
    )
    print(f"         ratio router/sklearn = {t_def / t_skcv:.2f}   (goal <= 2.0)")

    tp_router = best_time(lambda: router.predict_proba(X), args.repeats)
    tp_sk = best_time(lambda: sk.predict_proba(X), args.repeats)
    thr_router = X.shape[0] / tp_router
    thr_sk = X.shape[0] / tp_sk
    print(
        f"predict  CVaRBrierRouter {thr_router / 1e6:7.1f} M rows/s   "
        f"LogisticRegression {thr_sk / 1e6:7.1f} M rows/s"
    )
    print(
        f"         throughput ratio router/sklearn = {thr_router / thr_sk:.2f}"
        "   (goal >= 1.0)"
    )

    if not args.skip_mlp:
        mlp = CVaRBrierRouter(
            hidden_layer_sizes=PAPER_HIDDEN_LAYER_SIZES,
            n_epochs=20,
            calibration=None,
            random_state=0,
        )
        t0 = time.perf_counter()
        mlp.fit(X, y, groups=g)
        t_mlp = time.perf_counter() - t0
        n_params = sum(c.size for c in mlp.coefs_) + sum(
            b.size for b in mlp.intercepts_
        )
        print(
            f"mlp      {PAPER_HIDDEN_LAYER_SIZES} ({n_params:,} params), 20 epochs, "
            f"batch 4096: {t_mlp:.1f} s   (goal <= 60 s)"
        )


if __name__ == "__main__":
    main()
