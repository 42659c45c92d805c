"""The router and featurizer inside a plain agent loop (StepCascade will wrap this).

The SLM, the verifier, the teacher and the environment are plain callables here;
swap in real ones (pipelines.policies, your own client) with the same shapes.
"""

import numpy as np
import pandas as pd

from r2vcal import CVaRBrierRouter
from r2vcal.features import FEATURE_NAMES, CandidateFeaturizer

rng = np.random.default_rng(0)
K, HORIZON = 5, 8


def slm_propose(context, k):  # -> k candidates: (text, per-token log-probs)
    n_tok = rng.integers(2, 8, size=k)
    return [(f"act{rng.integers(3)}", -rng.gamma(1.0, 0.4, size=t)) for t in n_tok]


def verifier(context, text):  # process-verifier score in [0, 1]
    return float(rng.beta(4, 2) if text == "act0" else rng.beta(2, 4))


def teacher(context):  # the expensive LLM
    return "act0"


def env_step(action):  # -> observation, done, tool_error
    return f"ran {action}", False, bool(rng.random() < 0.1 * (action != "act0"))


featurizer = CandidateFeaturizer().set_output(transform="pandas")
# A router trained on logged steps (here: a toy table of features and labels).
logged = pd.DataFrame(rng.normal(size=(400, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
logged["verifier_max"] = rng.uniform(size=400)
needed_help = (logged["verifier_max"] + rng.normal(0, 0.1, 400) < 0.6).astype(int)
router = CVaRBrierRouter(random_state=0).fit(
    logged, needed_help, groups=rng.integers(0, 5, 400)
)

decisions, history, steps, tool_error = [], [], [], False
for t in range(HORIZON):  # one episode
    context = " | ".join(history)
    cands = slm_propose(context, K)
    scores = [verifier(context, text) for text, _ in cands]
    steps.append(
        {
            "token_logprobs": [lp for _, lp in cands],
            "verifier_scores": scores,
            "candidate_texts": [text for text, _ in cands],
            "episode_id": "ep0",
            "step": t,
            "horizon": HORIZON,
            "context_length": len(context.split()),
            "tool_error": tool_error,
            "truncated": False,
        }
    )
    # the whole episode so far, so that verifier_trend sees the previous steps
    f_t = featurizer.transform(pd.DataFrame(steps)).iloc[[-1]]
    p_t = router.predict_proba(f_t)[0, 1]
    escalate = p_t >= router.threshold_
    action = teacher(context) if escalate else cands[int(np.argmax(scores))][0]
    obs, done, tool_error = env_step(action)
    history.append(f"{action} -> {obs}")
    decisions.append(
        {
            "step": t,
            "p_fail": round(p_t, 3),
            "escalated": escalate,
            "action": action,
            **f_t.iloc[0].to_dict(),
        }
    )
    if done:
        break

log = pd.DataFrame(decisions)  # keep it: these rows retrain the router later
print(log[["step", "p_fail", "escalated", "action", "verifier_max"]].to_string())
