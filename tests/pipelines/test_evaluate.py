"""Closed-loop evaluation on the tiny TextWorld chain (pipelines/evaluate.py)."""

from __future__ import annotations

import json

import _tw_chain as chain
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder: the tiny chain's SLM and verifier, and a router table.

    The router table is synthetic (features and labels drawn at random, tasks
    and seeds of the train split): the routers are tested elsewhere; here they
    only have to be fitted so that the closed loop can run them.
    """
    import numpy as np

    from r2vcal.features import FEATURE_NAMES

    slm = chain.bc_model(tmp_path_factory)
    ver = chain.verifier(tmp_path_factory)
    d = tmp_path_factory.mktemp("eval_run")
    rng = np.random.default_rng(0)
    n = 300
    table = pd.DataFrame(
        rng.uniform(size=(n, len(FEATURE_NAMES))), columns=FEATURE_NAMES
    )
    table["y_counterfactual"] = (
        table["entropy_mean"] + rng.normal(0, 0.2, n) > 0.6
    ).astype(int)
    table["y_verifier"] = (table["verifier_max"] < 0.4).astype(int)
    table["task_id"] = rng.choice(["simple-0", "simple-1"], n)
    table["seed"] = rng.integers(500, 503, n)
    table.to_parquet(d / "router_table.parquet")
    summary = {
        "artifacts": {
            "slm": str(slm),
            "verifier": str(ver),
            "router_table": str(d / "router_table.parquet"),
        },
        "env_kwargs": chain.ENV_KWARGS,
        "families": chain.FAMILIES,
        "rate": chain.RATE,
        "test_seeds": [1000],
        "k": 3,
        "max_steps": chain.ENV_KWARGS["max_steps"],
        "prompt_kwargs": {},
    }
    (d / "run_summary.json").write_text(json.dumps(summary))
    return d


def _loop(run_dir):
    from pipelines.envs import make_env
    from pipelines.evaluate import ClosedLoop
    from pipelines.perturb import PerturbedEnv, make_family
    from pipelines.rollout import SLMAgent

    run = json.loads((run_dir / "run_summary.json").read_text())
    ops = make_family("all", run["rate"])
    agent = SLMAgent(run["artifacts"]["slm"], run["artifacts"]["verifier"], k=3)
    return ClosedLoop(
        agent,
        lambda: PerturbedEnv(make_env("textworld", **run["env_kwargs"]), ops),
    )


def test_oracle_and_replay_agree_with_closed_loop_episodes(run_dir):
    loop = _loop(run_dir)
    task = loop.env.tasks("test")[0]
    # SLM alone, played in the loop (never escalates) ...
    ep_slm, rows = loop.run_episode(task, 1000, cascade=_never(loop))
    # ... and replayed for hindsight from the empty prefix agree.
    assert loop.slm_alone(task, 1000, ()) == ep_slm["success"]
    assert ep_slm["llm_calls"] == 0 and len(rows) == ep_slm["steps"]
    ep_or, rows_or = loop.run_episode(task, 1000, cascade=None)
    # The hindsight oracle escalates only where the SLM would fail from there on,
    # and the teacher then acts: it never does worse than the SLM alone.
    assert ep_or["success"] >= ep_slm["success"]
    if ep_slm["success"]:
        assert ep_or["llm_calls"] == 0
    assert all(r["action"] == r["teacher_action"] for r in rows_or if r["escalated"])
    assert all(
        r["slm_action"] != r["teacher_action"] for r in rows_or if r["escalated"]
    )


def _never(loop):
    import numpy as np

    from r2vcal.baselines import VerifierRouter
    from r2vcal.cascade import StepCascade
    from r2vcal.features import FEATURE_NAMES

    X = pd.DataFrame(np.eye(2, len(FEATURE_NAMES)), columns=FEATURE_NAMES)
    router = VerifierRouter().fit(X, [0, 1])
    return StepCascade(
        loop.slm,
        loop.teacher,
        router,
        verifier=loop.verifier,
        k=3,
        budget=0,
        horizon=loop.horizon,
    )


def test_evaluate_main_writes_the_closed_loop_report(run_dir, tmp_path):
    from pipelines.evaluate import EvaluateConfig, main

    out = tmp_path / "eval"
    summary = main(
        EvaluateConfig(
            run=str(run_dir),
            out=str(out),
            rates=[0.3, 0.7],
            n_resamples=50,
            dagger_rounds=1,
            dagger_seeds=[7],
            progress=False,
        )
    )
    res = pd.read_csv(out / "closed_loop.csv")
    assert {
        "slm_only",
        "teacher_only",
        "oracle",
        "cvar_brier",
        "brier_only",
        "entropy",
        "verifier",
        "random",
    } <= set(res["router"])
    by = res.set_index("router")
    # The environment decides success: the expert solves the game under this seed.
    assert by.loc["teacher_only", "success"] == 1.0
    assert by.loc["teacher_only", "llm_share"] == 1.0
    assert by.loc["slm_only", "llm_share"] == 0.0
    assert by.loc["oracle", "success"] >= by.loc["slm_only", "success"]
    assert not by.loc["oracle", "deployable"]
    assert (res["success_low"] <= res["success"] + 1e-12).all()
    cvar = res[res["router"] == "cvar_brier"].sort_values("threshold_rate")
    assert cvar["llm_share"].is_monotonic_increasing
    for name in (
        "frontier.png",
        "mixed_reliability.png",
        "report.md",
        "report.html",
        "episodes.csv",
        "per_seed.csv",
        "mixed_test.parquet",
    ):
        assert (out / name).is_file(), name
    mixed = summary["mixed"]
    assert mixed["before"]["rows"] == mixed["after"]["rows"] > 0
    assert 0.0 <= mixed["after"]["ece"] <= 1.0
    assert "teacher_only_success" in summary["headline"]
    assert "Closed-loop evaluation" in (out / "report.md").read_text()
