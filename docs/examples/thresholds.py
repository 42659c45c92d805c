"""Three ways to pick the escalation threshold from one calibrated router."""

import numpy as np

from r2vcal import CVaRBrierRouter
from r2vcal.thresholds import (
    bayes_threshold,
    budget_threshold,
    miss_rate_upper_bound,
    risk_controlled_threshold,
)

rng = np.random.default_rng(0)
n = 12_000
X = rng.normal(size=(n, 5))
seeds = rng.integers(0, 8, size=n)
y = (rng.random(n) < 1 / (1 + np.exp(-(2 * X[:, 0] - 1.5)))).astype(int)
fit, calib, test = np.split(rng.permutation(n), [6000, 9000])

router = CVaRBrierRouter(random_state=0).fit(X[fit], y[fit], groups=seeds[fit])
p_calib = router.predict_proba(X[calib])[:, 1]
p_test = router.predict_proba(X[test])[:, 1]

# 1. Cost: escalate when p >= (c_LLM - c_SLM) / kappa.
tau_bayes = bayes_threshold(cost_slm=1.0, cost_llm=10.0, miss_cost=40.0)
# 2. Budget: escalate (about) 15 % of the steps.
tau_budget = budget_threshold(p_calib, 0.15)
# 3. Risk control: miss rate <= 5 % with probability >= 90 % over the calibration draw.
tau_risk = risk_controlled_threshold(p_calib, y[calib], max_miss_rate=0.05, delta=0.1)

for name, tau in [("Bayes", tau_bayes), ("budget", tau_budget), ("risk", tau_risk)]:
    escalate = p_test >= tau
    miss = np.mean(~escalate & (y[test] == 1))  # kept on the SLM but needed help
    ucb = miss_rate_upper_bound(p_calib, y[calib], tau, delta=0.1)
    print(
        f"{name:>6}: tau={tau:.3f}  escalation {escalate.mean():.3f}  "
        f"test miss rate {miss:.4f}  (calibration 90% UCB {ucb:.4f})"
    )

# route() uses threshold_, fixed at fit (the Bayes rule from the router's own
# costs unless `threshold=` was given); pass another threshold per call:
print("route(threshold=tau_risk) escalates", router.route(X[test], tau_risk).mean())
