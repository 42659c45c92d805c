"""Rank-matched thresholds and the headline ratios of pipelines.evaluate (fast)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import RankedRouter, headline_ratios
from r2vcal import EntropyRouter
from r2vcal.features import FEATURE_NAMES


def _table(seed: int = 0, n: int = 400) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    y = (X["entropy_mean"] + rng.normal(scale=0.5, size=n) > 1.0).astype(int)
    return X, y.to_numpy()


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.35, 0.5, 0.9])
def test_ranked_entropy_router_reaches_every_rate(rate) -> None:
    X, y = _table()
    ent = EntropyRouter().fit(X, y)
    ranked = RankedRouter(ent, X)
    tau, achieved = ranked.threshold_for(rate)
    share = float((ranked.predict_proba(X)[:, 1] >= tau).mean())
    assert share == pytest.approx(achieved)
    assert abs(achieved - rate) <= 1.0 / len(X)  # distinct raw values: exact
    # the rank is monotone in the raw feature
    order = np.argsort(X["entropy_mean"].to_numpy())
    assert np.all(np.diff(ranked.rank(X)[order]) >= 0)


def _episodes(shares: dict[str, list[tuple[float, float, float]]]) -> pd.DataFrame:
    """Episodes per (router, rate): (rate, success prob, calls per step)."""
    rng = np.random.default_rng(1)
    rows = []
    for router, arms in shares.items():
        for rate, p, c in arms:
            for g in range(10):
                for seed in range(3):
                    rows.append(
                        {
                            "router": router,
                            "threshold_rate": rate,
                            "task_id": f"g{g}",
                            "seed": seed,
                            "success": bool((g + seed) % 10 < 10 * p),
                            "steps": 10,
                            "llm_calls": round(10 * c),
                        }
                    )
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def test_headline_ratios_point_and_ci() -> None:
    ep = _episodes(
        {
            "slm_only": [(np.nan, 0.5, 0.0)],
            "teacher_only": [(np.nan, 1.0, 1.0)],
            "cvar_brier": [(0.2, 0.7, 0.2), (0.4, 1.0, 0.4)],
            "brier_only": [(0.2, 0.7, 0.2), (0.4, 1.0, 0.4)],
            "entropy": [(0.2, 0.6, 0.2), (0.8, 1.0, 0.8)],
            "verifier": [(0.2, 0.6, 0.2), (0.6, 1.0, 0.6)],
            "random": [(0.5, 0.7, 0.5)],
        }
    )
    h = headline_ratios(ep, n_resamples=200)
    assert h["cvar_brier"]["estimate"] == pytest.approx(0.4)
    assert h["entropy"]["estimate"] == pytest.approx(0.8)
    assert h["best_single_feature"]["estimate"] == pytest.approx(0.6)
    assert h["cvar_over_entropy"]["estimate"] == pytest.approx(0.5)
    assert h["cvar_over_best"]["estimate"] == pytest.approx(0.4 / 0.6)
    assert np.isnan(h["random"]["estimate"])  # never reaches the target
    lo, hi = h["cvar_over_entropy"]["low"], h["cvar_over_entropy"]["high"]
    assert lo <= 0.5 <= hi
    assert h["n_games"] == 10


def test_low_budget_comparison_pairs_games_and_sees_a_real_gap() -> None:
    from pipelines.evaluate import low_budget_comparison, low_budget_lines

    rng = np.random.default_rng(0)
    rows = []
    # 20 games x 3 seeds at three rates; CVaR-Brier wins 0.3 more games at the
    # smallest rate, ties entropy at the others.
    for rate in (0.1, 0.2, 0.5):
        for g in range(20):
            base = rng.uniform(0.2, 0.6)
            for seed in range(3):
                u = rng.uniform()
                for router, p in (
                    ("cvar_brier", base + (0.3 if rate == 0.1 else 0.0)),
                    ("entropy", base),
                ):
                    rows.append(
                        dict(
                            router=router,
                            threshold_rate=rate,
                            task_id=f"g{g}",
                            seed=seed,
                            success=bool(u < p),
                            llm_calls=1,
                            steps=10,
                        )
                    )
    rows.append(
        dict(
            router="slm_only",
            threshold_rate=np.nan,
            task_id="g0",
            seed=0,
            success=False,
            llm_calls=0,
            steps=10,
        )
    )
    out = low_budget_comparison(pd.DataFrame(rows), n_resamples=500)
    assert list(out) == ["0.1", "0.2"]  # the two smallest rates, no NaN arm
    gap = out["0.1"]["minus"]["entropy"]
    assert gap["low"] > 0.1 and gap["estimate"] == pytest.approx(
        out["0.1"]["success"]["cvar_brier"] - out["0.1"]["success"]["entropy"]
    )
    tie = out["0.2"]["minus"]["entropy"]
    assert tie["estimate"] == 0.0 and tie["low"] == tie["high"] == 0.0
    assert out["0.1"]["share"] == {"cvar_brier": 0.1, "entropy": 0.1}
    lines = low_budget_lines({"low_budget": out})
    assert len(lines) == 2 and "entropy +0." in lines[0]
