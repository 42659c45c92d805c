"""StepCascade: routing, budgets, teacher calls, decision logs."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from r2vcal import CVaRBrierRouter
from r2vcal.baselines import EntropyRouter
from r2vcal.cascade import FixedBudget, PacedBudget, StepCascade
from r2vcal.features import FEATURE_NAMES, CandidateFeaturizer

K = 4


@dataclass
class Cand:
    text: str
    token_logprobs: np.ndarray
    token_entropies: np.ndarray


def _slm(context, k):
    """Confident ("look") on contexts with 'easy', unsure elsewhere."""
    rng = np.random.default_rng(len(context))
    easy = "easy" in context
    out = []
    for i in range(k):
        n = 3 + i
        lp = -rng.uniform(0.0, 0.1 if easy else 3.0, n)
        ent = rng.uniform(0.0, 0.2 if easy else 3.0, n)
        out.append(Cand("look" if easy else f"act{i}", lp, ent))
    return out


def _verifier(context, texts):
    return [0.9 if t == "look" else 0.2 + 0.1 * i for i, t in enumerate(texts)]


class Teacher:
    def __init__(self, fail=False):
        self.calls, self.fail = 0, fail

    def __call__(self, context):
        self.calls += 1
        if self.fail:
            raise TimeoutError("teacher timed out")
        return "teacher-action"


@pytest.fixture(scope="module")
def router():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(3000, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    X["entropy_mean"] = rng.uniform(0, 2, 3000)
    y = (X["entropy_mean"] + rng.normal(0, 0.2, 3000) > 0.8).astype(int)
    return CVaRBrierRouter(random_state=0).fit(X, y, groups=rng.integers(0, 5, 3000))


def _cascade(router, teacher=None, **kw):
    kw.setdefault("threshold", 0.5)
    return StepCascade(
        _slm, teacher or Teacher(), router, verifier=_verifier, k=K, horizon=10, **kw
    )


def test_escalates_uncertain_steps_only(router):
    teacher = Teacher()
    cascade = _cascade(router, teacher)
    decisions = [
        cascade.act(c, episode_id="e") for c in ["easy 1", "hard 2", "easy 3", "hard"]
    ]
    assert [d.actor for d in decisions] == ["slm", "llm", "slm", "llm"]
    assert teacher.calls == 2
    assert decisions[1].action == "teacher-action"
    assert decisions[0].action == "look"
    assert decisions[0].risk < 0.5 <= decisions[1].risk
    assert [d.step for d in decisions] == [0, 1, 2, 3]
    assert decisions[1].cost == pytest.approx(router.cost_slm + router.cost_llm)
    assert decisions[0].cost == pytest.approx(router.cost_slm)


def test_features_match_the_batch_featurizer(router):
    cascade = _cascade(router)
    contexts = ["easy a", "hard bb", "hard ccc", "easy dddd", "hard e"]
    for c in contexts:
        cascade.act(c, episode_id="ep", context_length=len(c))
    rows = []
    for t, c in enumerate(contexts):
        cands = _slm(c, K)
        rows.append(
            {
                "token_logprobs": [x.token_logprobs for x in cands],
                "token_entropies": [x.token_entropies for x in cands],
                "verifier_scores": _verifier(c, [x.text for x in cands]),
                "candidate_texts": [x.text for x in cands],
                "episode_id": "ep",
                "step": t,
                "horizon": 10,
                "context_length": len(c),
                "tool_error": False,
                "truncated": False,
            }
        )
    expected = CandidateFeaturizer().fit_transform(pd.DataFrame(rows))
    got = cascade.to_frame()[list(FEATURE_NAMES)].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fixed_budget_caps_llm_calls_per_episode(router):
    teacher = Teacher()
    cascade = _cascade(router, teacher, budget=2)
    for ep in ("a", "b"):
        acts = [cascade.act("hard", episode_id=ep) for _ in range(5)]
        assert [d.escalated for d in acts] == [True, True, False, False, False]
        assert [d.budget_left for d in acts] == [1, 0, 0, 0, 0]
        assert math.isinf(acts[-1].threshold)
        assert cascade.llm_calls(ep) == 2
    assert teacher.calls == 4


def test_paced_budget_moves_the_threshold():
    rule = PacedBudget(3, strength=1.0)
    on_pace = rule.threshold(0.4, used=0, step=0, horizon=30)
    assert on_pace == pytest.approx(0.4)
    spent_early = rule.threshold(0.4, used=2, step=2, horizon=30)
    unspent_late = rule.threshold(0.4, used=0, step=25, horizon=30)
    assert unspent_late < on_pace < spent_early
    assert math.isinf(rule.threshold(0.4, used=3, step=4, horizon=30))
    assert PacedBudget(3, strength=0.0).threshold(
        0.4, used=2, step=2, horizon=30
    ) == pytest.approx(0.4)
    assert FixedBudget(1).threshold(0.4, used=0, step=9, horizon=10) == 0.4


def test_paced_budget_in_the_cascade_spends_less_early(router):
    # Mildly risky steps: fixed budget spends at once, paced keeps some for later.
    def mid_slm(context, k):
        return [(f"a{i}", [-0.5, -0.5], [0.85, 0.85]) for i in range(k)]

    def run(budget):
        c = StepCascade(
            mid_slm, Teacher(), router, k=K, threshold=0.5, budget=budget, horizon=20
        )
        return [c.act("x", episode_id="e").escalated for _ in range(4)]

    risk = StepCascade(mid_slm, Teacher(), router, k=K, horizon=20).act("x").risk
    assert 0.5 < risk < 0.75
    assert run(FixedBudget(4)) == [True] * 4
    paced = run(PacedBudget(4, strength=2.0))
    assert paced[0] and sum(paced) < 4


@pytest.mark.parametrize(
    "make",
    [
        lambda t, lp: (t, lp),
        lambda t, lp: {"text": t, "token_logprobs": lp},
        lambda t, lp: Cand(t, np.asarray(lp), np.abs(np.asarray(lp))),
    ],
    ids=["pair", "dict", "object"],
)
def test_candidate_shapes(router, make):
    def slm(context, k):
        return [make(f"a{i}", [-0.1 * (i + 1), -0.2]) for i in range(k)]

    d = StepCascade(slm, Teacher(), router, k=K, threshold=0.99).act("ctx")
    assert d.candidates == [f"a{i}" for i in range(K)]
    # No verifier: the best mean log-prob wins, verifier features neutral.
    assert d.chosen == 0 and d.action == "a0"
    assert d.features["verifier_max"] == pytest.approx(0.5)
    assert d.verifier_scores == []


def test_policy_objects_with_propose_and_score_candidates(router):
    class Policy:
        def propose(self, context, k):
            return _slm(context, k)

    class Verifier:
        def score_candidates(self, context, texts):
            return np.asarray(_verifier(context, texts))

    d = StepCascade(Policy(), Teacher(), router, verifier=Verifier(), k=K).act("easy")
    assert d.verifier_scores[d.chosen] == pytest.approx(0.9)


def test_bad_inputs_name_the_problem(router):
    with pytest.raises(ValueError, match="returned 2 candidates"):
        StepCascade(lambda c, k: [("a", [-0.1])] * 2, Teacher(), router, k=K).act("x")
    with pytest.raises(ValueError, match="scores in \\[0, 1\\]"):
        StepCascade(
            _slm, Teacher(), router, k=K, verifier=lambda c, t: [2.0] * len(t)
        ).act("x")
    with pytest.raises(TypeError, match="'text' and 'token_logprobs'"):
        StepCascade(lambda c, k: [object()] * k, Teacher(), router, k=K).act("x")
    with pytest.raises(ValueError, match="'k' parameter"):
        StepCascade(_slm, Teacher(), router, k=0)
    with pytest.raises(ValueError, match="'on_teacher_error' parameter"):
        StepCascade(_slm, Teacher(), router, on_teacher_error="ignore")
    with pytest.raises(TypeError, match="'budget' parameter"):
        StepCascade(_slm, Teacher(), router, budget="3")
    with pytest.raises(ValueError, match="'max_calls' parameter of FixedBudget"):
        FixedBudget(-1)
    with pytest.raises(ValueError, match="min_threshold"):
        PacedBudget(2, min_threshold=0.5, max_threshold=0.1)
    with pytest.raises(TypeError, match="fitted router"):
        StepCascade(_slm, Teacher(), object())
    narrow = EntropyRouter(feature=0).fit(
        np.random.default_rng(0).uniform(size=(50, 3)), [0, 1] * 25
    )
    with pytest.raises(ValueError, match="expects 3 features"):
        StepCascade(_slm, Teacher(), narrow)


def test_teacher_failure_raises_or_falls_back(router):
    with pytest.raises(TimeoutError):
        _cascade(router, Teacher(fail=True)).act("hard")
    cascade = _cascade(router, Teacher(fail=True), on_teacher_error="fallback")
    d = cascade.act("hard")
    assert d.escalated and d.actor == "slm"
    assert d.action in d.candidates
    assert "TimeoutError" in d.fallback


def test_log_streams_jsonl_and_retrains(router, tmp_path):
    log = tmp_path / "decisions.jsonl"
    cascade = _cascade(router, budget=1, log_path=log)
    for ep in range(6):
        for c in ["easy", "hard", "hard", "easy"]:
            cascade.act(c, episode_id=ep, group=ep % 3)
        cascade.end_episode(ep, success=ep % 2 == 0)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 24
    assert [x["step"] for x in lines[:4]] == [0, 1, 2, 3]
    assert lines[2]["threshold"] is None  # budget spent
    assert set(FEATURE_NAMES) <= set(lines[0])
    frame = cascade.to_frame()
    assert frame["outcome"].tolist()[:4] == [True] * 4
    path = cascade.write_log(tmp_path / "decisions.parquet")
    back = pd.read_parquet(path)
    assert len(back) == 24 and back["escalated"].sum() == 6
    refit = CVaRBrierRouter(calibration=None, random_state=0).fit(
        back[list(FEATURE_NAMES)], ~back["outcome"], groups=back["group"]
    )
    assert refit.predict_proba(back[list(FEATURE_NAMES)]).shape == (24, 2)
    with pytest.raises(ValueError, match=r"\.parquet or \.jsonl"):
        cascade.write_log(tmp_path / "x.csv")


def test_decide_and_resolve_for_async_callers(router):
    cascade = _cascade(router)
    cands = _slm("hard", K)
    d = cascade.decide(
        "hard",
        [c.text for c in cands],
        [c.token_logprobs for c in cands],
        token_entropies=[c.token_entropies for c in cands],
        verifier_scores=_verifier("hard", [c.text for c in cands]),
        episode_id="conv",
    )
    assert d.escalated and d.action in d.candidates
    cascade.resolve(d, None, error="HTTP 500")
    assert d.actor == "slm" and d.fallback == "HTTP 500"
    d2 = cascade.decide(
        "hard",
        [c.text for c in cands],
        [c.token_logprobs for c in cands],
        episode_id="conv",
    )
    cascade.resolve(d2, "from-llm")
    assert (d2.step, d2.action, d2.actor) == (1, "from-llm", "llm")


def test_concurrent_episodes_keep_their_own_steps(router):
    cascade = _cascade(router, budget=2)

    def episode(i):
        return [cascade.act("hard", episode_id=i).step for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:
        steps = list(pool.map(episode, range(16)))
    assert steps == [[0, 1, 2, 3, 4]] * 16
    frame = cascade.to_frame()
    assert (frame.groupby("episode_id")["escalated"].sum() == 2).all()


def test_select_logprob_executes_the_slms_most_likely_candidate(router):
    # The verifier prefers candidate 0; the SLM's most likely sequence (the
    # largest sum of token log-probs) is candidate 2.
    def slm(context, k):
        sums = [-3.0, -2.0, -0.5, -4.0]
        return [(f"c{i}", [s / 2, s / 2]) for i, s in enumerate(sums[:k])]

    def verifier(context, texts):
        return [0.9, 0.1, 0.2, 0.3][: len(texts)]

    picks = {}
    for select in ("verifier", "logprob"):
        cascade = StepCascade(
            slm, Teacher(), router, verifier=verifier, k=K, threshold=1.0, select=select
        )
        d = cascade.act("ctx")
        picks[select] = (d.chosen, d.action)
    assert picks == {"verifier": (0, "c0"), "logprob": (2, "c2")}
    with pytest.raises(ValueError, match="'select' parameter of StepCascade"):
        StepCascade(slm, Teacher(), router, k=K, threshold=0.5, select="best")
