"""The chain runner on a tiny config: every step runs, summary keys, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.run import RunConfig, main, make_parser, success_summary

pytest.importorskip("textworld")
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig(
        out=str(tmp_path_factory.mktemp("run")),
        kind="custom",  # two-step quests: short episodes
        settings={"world_size": 2, "nb_objects": 4, "quest_length": 2},
        n_train=2,
        n_router=1,
        n_test=1,
        n_train_seeds=2,
        n_router_seeds=1,
        n_test_seeds=2,
        max_steps=6,
        bc_steps=6,
        bc_batch_size=4,
        hidden_size=32,
        vocab_size=400,
        verifier_contexts=16,
        dpo_steps=2,
        dpo_max_pairs=8,
        dpo_learning_rate=5e-3,
        k=3,
        max_new_tokens=6,
        n_jobs=1,
        n_resamples=50,
        verbose=False,
    )
    return cfg, main(cfg)


def test_summary_contract(run) -> None:
    cfg, s = run
    # The keys pipelines.evaluate / pipelines.demo read.
    for key in ("slm", "verifier", "router_table", "test_table"):
        assert Path(s["artifacts"][key]).exists(), key
    sel = s["selection"]  # BC+DPO is frozen unless BC wins more validation episodes
    assert sel["frozen_slm"] == (
        "dpo"
        if sel["validation_success"]["dpo"] >= sel["validation_success"]["bc"]
        else "bc"
    )
    assert s["artifacts"]["slm"] == str(Path(cfg.out) / sel["frozen_slm"])
    assert s["env_kwargs"]["n_games"] == {"train": 2, "validation": 1, "test": 1}
    assert s["rate"] == cfg.rate and s["families"] == ["all"]
    assert s["test_seeds"] == [1000, 1001] and s["router_seeds"] == [500]
    assert s["k"] == 3 and s["max_steps"] == 6
    assert s["prompt_kwargs"]["n_turns"] == cfg.prompt.n_turns
    on_disk = json.loads((Path(cfg.out) / "run_summary.json").read_text())
    assert on_disk["artifacts"] == s["artifacts"]
    steps = ("games", "collect", "bc", "verifier", "dpo", "rollout_router")
    assert set(steps) <= set(s["seconds"]) and "rollout_test_other" in s["seconds"]
    for who in ("bc", "bc_dpo", "slm", "teacher"):
        r = s["success"][who]
        assert 0 <= r["rate"] <= 1 and r["n_episodes"] == 2, who
        assert r["ci_episodes"][0] <= r["rate"] <= r["ci_episodes"][1]
    assert s["success"]["teacher"]["rate"] == 1.0


def test_tables_and_labels(run) -> None:
    _, s = run
    router = pd.read_parquet(s["artifacts"]["router_table"])
    test = pd.read_parquet(s["artifacts"]["test_table"])
    bc_test = pd.read_parquet(s["artifacts"]["bc_test_table"])
    assert set(router["seed"]) == {500} and (router["split"] == "val").all()
    assert set(test["seed"]) == {1000, 1001} and (test["split"] == "test").all()
    assert set(router["task_id"]).isdisjoint(test["task_id"])
    assert "y_counterfactual" in test and "y_counterfactual" not in bc_test
    for name, table in (("router", router), ("test", test)):
        lab = s["labels"][name]
        assert sum(lab["confusion_cf_vs_verifier"].values()) == len(table)
        assert lab["y_counterfactual"]["n_positive"] == int(
            table["y_counterfactual"].sum()
        )


def test_verifier_has_slm_negatives_and_dpo_moved(run) -> None:
    from transformers import AutoModelForCausalLM

    _, s = run
    v = s["verifier"]
    assert v["n_slm_pairs"] > 0 and v["n_pairs"] == v["n_plan_pairs"] + v["n_slm_pairs"]
    assert 0 <= v["auroc"] <= 1
    assert s["dpo"]["n_pairs"] > 0 and s["dpo"]["n_consistency_pairs"] > 0
    bc = AutoModelForCausalLM.from_pretrained(s["artifacts"]["bc"])
    slm = AutoModelForCausalLM.from_pretrained(s["artifacts"]["slm"])
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(bc.parameters(), slm.parameters(), strict=True)
    )
    assert diff > 0  # DPO changed the policy it started from


def test_success_summary_clusters_by_game() -> None:
    ep = pd.DataFrame(
        {
            "episode_id": [f"g{g}|{s}" for g in range(4) for s in range(5)],
            "task_id": [f"g{g}" for g in range(4) for s in range(5)],
            "slm_success": [g % 2 == 0 for g in range(4) for s in range(5)],
        }
    )
    out = success_summary(ep, n_resamples=200)
    assert out["rate"] == 0.5 and out["n_games"] == 4 and out["n_episodes"] == 20
    # Outcomes are constant within games: resampling games is wider.
    width = np.diff(out["ci"])[0]
    assert width > np.diff(out["ci_episodes"])[0]


def test_parser_and_errors(tmp_path) -> None:
    args = make_parser().parse_args(["--n-train", "3", "--no-dpo", "--rate", "0.1"])
    assert args.n_train == 3 and args.dpo is False and args.rate == 0.1
    with pytest.raises(ValueError, match="n_train"):
        main(RunConfig(out=str(tmp_path), n_train=1))
