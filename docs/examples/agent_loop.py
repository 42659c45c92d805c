"""StepCascade inside a plain agent loop.

The SLM, the verifier, the teacher and the environment are plain callables here;
swap in real ones (pipelines.policies, an OpenAI-compatible client) with the same
shapes. The router is fitted on a toy table of logged steps.
"""

import numpy as np
import pandas as pd

from r2vcal import CVaRBrierRouter, StepCascade
from r2vcal.cascade import PacedBudget
from r2vcal.features import FEATURE_NAMES

rng = np.random.default_rng(0)


def slm(context, k):  # -> k candidates: (text, per-token log-probs)
    sure = "door" in context
    return [
        (
            f"act{rng.integers(1 if sure else 3)}",
            -rng.gamma(1.0, 0.05 if sure else 0.8, 4),
        )
        for _ in range(k)
    ]


def verifier(context, texts):  # process-verifier scores in [0, 1]
    return [0.8 if t == "act0" else 0.3 for t in texts]


def teacher(context):  # the expensive LLM
    return "act0"


logged = pd.DataFrame(rng.normal(size=(600, 18)), columns=FEATURE_NAMES)
logged["entropy_mean"] = rng.gamma(1.0, 0.5, 600)
needed_help = (logged["entropy_mean"] + rng.normal(0, 0.2, 600) > 0.6).astype(int)
router = CVaRBrierRouter(random_state=0).fit(
    logged, needed_help, groups=rng.integers(0, 5, 600)
)

cascade = StepCascade(
    slm,
    teacher,
    router,
    verifier=verifier,
    k=5,
    budget=PacedBudget(2),
    horizon=8,
)
for episode in range(2):
    context = "a hall"
    for t in range(8):
        d = cascade.act(context, episode_id=episode, group=episode)
        context = f"{d.action} -> {'a door' if t % 3 else 'a hall'}"  # env step
    cascade.end_episode(episode, success=True)

log = cascade.to_frame()  # one row per step: features, risk, decision, outcome
print(log[["episode_id", "step", "risk", "threshold", "actor", "action"]].round(3))
