"""Tests for pipelines.scoring (admissible-command scoring policy)."""

from __future__ import annotations

import numpy as np
import pytest

from r2vcal.features import ENTROPY_TOP_N, topn_entropy

CORPUS = [
    "Find the key.\nAction: take key",
    "go east go west open box take apple eat apple",
    "You are in a kitchen. There is a box.\nAction: open box",
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from pipelines.models import build_tiny_causal_lm

    d = tmp_path_factory.mktemp("tiny")
    model, tok = build_tiny_causal_lm(CORPUS, save_dir=d)
    return model, tok, d


def _manual(model, tok, prompt: str, command: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = [*tok(" " + command, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits.float()[0]
    logp = torch.log_softmax(logits[len(p) - 1 : -1], -1)
    lp = logp.gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1).numpy()
    ent = topn_entropy(logp.topk(ENTROPY_TOP_N, -1).values.numpy())
    return lp, ent


def test_scores_are_the_models_sequence_logprobs(tiny_lm) -> None:
    from pipelines.scoring import AdmissibleScoringPolicy

    model, tok, _ = tiny_lm
    pol = AdmissibleScoringPolicy(model, tok, batch_size=2)
    prompt = "Find the key.\nAction:"
    cmds = ["take key", "go east", "open box and then take the apple"]
    cands = pol.score(prompt, cmds)
    assert [c.text for c in cands] == cmds
    for c, cmd in zip(cands, cmds, strict=True):
        lp, ent = _manual(model, tok, prompt, cmd)
        # padded, batched scoring equals one unpadded pass per command
        np.testing.assert_allclose(c.token_logprobs, lp, atol=1e-5)
        np.testing.assert_allclose(c.token_entropies, ent, atol=1e-5)
        assert c.token_logprobs.size == len(c.tokens)


def test_propose_ranks_by_logprob_and_is_deterministic(tiny_lm) -> None:
    from pipelines.scoring import AdmissibleScoringPolicy

    model, tok, _ = tiny_lm
    pol = AdmissibleScoringPolicy(model, tok)
    cmds = ["take key", "go east", "go west", "open box", "eat apple", "go east"]
    top = pol.propose("You are in a kitchen.\nAction:", 3, commands=cmds)
    assert len(top) == 3
    sums = [c.sum_logprob for c in top]
    assert sums == sorted(sums, reverse=True)
    everything = pol.score("You are in a kitchen.\nAction:", sorted(set(cmds)))
    assert sums[0] == pytest.approx(max(c.sum_logprob for c in everything))
    again = pol.propose("You are in a kitchen.\nAction:", 3, commands=cmds[::-1])
    assert [c.text for c in again] == [c.text for c in top]
    assert len(pol.propose("x", 10, commands=cmds)) == 5  # duplicates dropped


def test_argument_checks(tiny_lm) -> None:
    from pipelines.scoring import AdmissibleScoringPolicy

    model, tok, _ = tiny_lm
    with pytest.raises(ValueError, match="tokenizer is required"):
        AdmissibleScoringPolicy(model)
    pol = AdmissibleScoringPolicy(model, tok)
    with pytest.raises(ValueError, match="at least one command"):
        pol.score("x", [])
    with pytest.raises(ValueError, match="'k' parameter"):
        pol.propose("x", 0, commands=["go east"])


@pytest.mark.slow
def test_rollout_with_the_scoring_agent(tmp_path_factory) -> None:
    """Candidates are admissible commands; the table validates; replays agree."""
    import pandas as pd
    from _tw_chain import ENV_KWARGS, FAMILIES, RATE, bc_model, verifier

    from pipelines.rollout import RolloutConfig, cached_env, main, play_episode
    from pipelines.scoring import ScoringAgent
    from r2vcal.schema import validate_table

    out = tmp_path_factory.mktemp("scored") / "t.parquet"
    slm, ver = str(bc_model(tmp_path_factory)), str(verifier(tmp_path_factory))
    cfg = RolloutConfig(
        slm=slm,
        verifier=ver,
        out=str(out),
        env_kwargs=ENV_KWARGS,
        split="test",
        seeds=[1000],
        families=FAMILIES,
        rate=RATE,
        max_steps=8,
        k=3,
        policy="score",
        backend=None,
    )
    main(cfg)
    table = validate_table(pd.read_parquet(out))
    assert len(table) >= 1
    agent = ScoringAgent(slm, ver, k=3)
    env = cached_env(
        {"env": "textworld", "env_kwargs": ENV_KWARGS, "families": FAMILIES}
        | {"rate": RATE, "max_steps": 8}
    )
    ok, steps = play_episode(env, agent, env.tasks("test")[0], 1000, record=True)
    assert [s["action"] for s in steps] == table["action"].tolist()
    assert bool(table["slm_success"].iloc[0]) == ok
    # every candidate is an admissible command of its state, best log-prob first
    env.reset(env.tasks("test")[0], 1000)
    for s in steps:
        d = s["decision"]
        assert set(d["texts"]) <= {c.strip() for c in env.admissible_commands()}
        sums = [sum(lp) for lp in d["token_logprobs"]]
        assert sums == sorted(sums, reverse=True)
        assert d["action"] == d["texts"][0]
        env.step(s["action"])
    with pytest.raises(ValueError, match="'select' parameter"):
        ScoringAgent(slm, ver, select="best")
