"""Rollout: K candidates, verifier choice, counterfactual and verifier labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _tw_chain import bc_model, rollout_config, verifier

from pipelines.bc import prompt_kwargs_of
from pipelines.rollout import RolloutConfig, main, make_parser
from r2vcal.features import FEATURE_NAMES
from r2vcal.schema import validate_table


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    out = tmp_path_factory.mktemp("rollout") / "test.parquet"
    cfg = rollout_config(
        bc_model(tmp_path_factory),
        verifier(tmp_path_factory),
        out,
        max_steps=10,
        max_new_tokens=8,
    )
    return cfg, main(cfg)


def test_table_contract_and_labels(rolled, record_property) -> None:
    cfg, summary = rolled
    df = pd.read_parquet(cfg.out)
    table = validate_table(df)  # the written table honours r2vcal.schema
    assert set(FEATURE_NAMES) <= set(table.columns)
    assert table["episode_id"].nunique() == 2 and set(table["seed"]) == {1000, 1001}
    assert (table["split"] == "test").all()
    assert all(len(c) == 3 for c in table["candidate_texts"])
    assert all(len(v) == 3 for v in table["verifier_scores"])
    # The executed action is the verifier's best candidate.
    for _, r in table.iterrows():
        assert r["action"] == r["candidate_texts"][int(np.argmax(r["verifier_scores"]))]
        assert (
            r["y_verifier"]
            == int(r["verifier_teacher"] > max(r["verifier_scores"]) + cfg.label_margin)
            or not r["teacher_action"]
        )
    # Counterfactual label definition and episode outcomes.
    cf = table["llm_step_success"] & ~table["slm_step_success"]
    assert (table["y_counterfactual"].astype(bool) == cf).all()
    assert (table.groupby("episode_id")["slm_success"].nunique() == 1).all()
    assert summary["teacher_success"]["rate"] == 1.0
    conf = summary["confusion_cf_vs_verifier"]
    assert sum(conf.values()) == len(table)
    record_property("seconds_per_step", summary["seconds_per_step"])


def test_counterfactual_branch_replays(rolled) -> None:
    """Re-running a branch gives the same outcome (deterministic replay)."""
    from pipelines.rollout import cached_agent, cached_env, play_episode

    cfg, _ = rolled
    from dataclasses import asdict

    d = asdict(cfg)
    df = pd.read_parquet(cfg.out)
    ep = df[df["seed"] == 1000].sort_values("step")
    agent, env = cached_agent(d), cached_env(d)
    pk = prompt_kwargs_of(d)
    ok, steps = play_episode(
        env, agent, ep["task_id"].iloc[0], 1000, record=True, prompt_kwargs=pk
    )
    assert [s["action"] for s in steps] == ep["action"].tolist()
    assert ok == bool(ep["slm_success"].iloc[0])
    t = 0
    ok_b, _ = play_episode(
        env,
        agent,
        ep["task_id"].iloc[0],
        1000,
        script=[ep["teacher_action"].iloc[t]],
        prompt_kwargs=pk,
    )
    assert ok_b == bool(ep["llm_step_success"].iloc[t])


def test_config_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="slm"):
        main(RolloutConfig(slm=str(tmp_path / "none"), verifier=str(tmp_path)))
    with pytest.raises(ValueError, match="seeds"):
        main(RolloutConfig(seeds=[]))
    args = make_parser().parse_args(["--seeds", "5", "6", "--k", "2"])
    assert args.seeds == [5, 6] and args.k == 2
