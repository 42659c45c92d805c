"""Fit a router on the shipped MMLU-Pro cascade, read its reliability diagram and
its reliability-cost frontier, and compare it with two baselines."""

import os
from pathlib import Path

import matplotlib.pyplot as plt
from sklearn.model_selection import train_test_split

from r2vcal import CVaRBrierRouter, EntropyRouter, RandomRouter, compare_routers
from r2vcal.datasets import load_mmlu_pro_cascade
from r2vcal.plotting import FrontierDisplay, ReliabilityDisplay
from r2vcal.thresholds import budget_threshold

out = Path(os.environ.get("R2VCAL_FIGURES", "."))
data = load_mmlu_pro_cascade(as_frame=True)
X, y, groups = data.data, data.target, data.groups
slm_ok, llm_ok = data.slm_success, data.llm_success
idx_train, idx_test = train_test_split(
    range(len(y)), test_size=0.3, stratify=groups, random_state=0
)
tr, te = X.index[idx_train], X.index[idx_test]

costs = dict(cost_slm=1.0, cost_llm=10.0, miss_cost=20.0)
routers = {
    "CVaRBrierRouter": CVaRBrierRouter(cvar_weight=1.0, cvar_tail=0.2, **costs),
    "length": EntropyRouter("log_n_chars", **costs),  # a one-feature heuristic
    "random": RandomRouter(0.25, random_state=0),
}
for name, router in routers.items():
    if name == "CVaRBrierRouter":
        router.fit(X.loc[tr], y.loc[tr], groups=groups.loc[tr])
    else:
        router.fit(X.loc[tr], y.loc[tr])
router = routers["CVaRBrierRouter"]
p_test = router.predict_proba(X.loc[te])[:, 1]
print(f"Bayes threshold {router.threshold_:.3f}; temperature {router.temperature_:.3f}")
print(f"escalation rate at the Bayes threshold: {router.route(X.loc[te]).mean():.3f}")

# Reliability diagram: router and the length heuristic on the same axes.
fig, ax = plt.subplots(figsize=(5.5, 5))
for name in ("CVaRBrierRouter", "length"):
    ReliabilityDisplay.from_estimator(
        routers[name], X.loc[te], y.loc[te], n_bins=10, name=name, ax=ax
    )
ax.set_title("MMLU-Pro cascade, held-out questions")
fig.savefig(out / "mmlu_reliability.png", dpi=110, bbox_inches="tight")

# Reliability-cost frontier with the oracle and two operating points marked.
fig, ax = plt.subplots(figsize=(6, 4.5))
FrontierDisplay.from_predictions(
    p_test,
    slm_ok.loc[te],
    llm_ok.loc[te],
    cost_slm=1.0,
    cost_llm=10.0,
    thresholds={
        "Bayes": router.threshold_,
        "25% budget": budget_threshold(p_test, 0.25),
    },
    name="CVaRBrierRouter",
    ax=ax,
)
fig.savefig(out / "mmlu_frontier.png", dpi=110, bbox_inches="tight")

table = compare_routers(
    routers,
    X.loc[te],
    y.loc[te],
    groups=groups.loc[te],
    slm_success=slm_ok.loc[te],
    llm_success=llm_ok.loc[te],
    reference="length",
    n_resamples=100,
)
wide = table.pivot(index="router", columns="metric", values="estimate")
cols = ["brier", "ece", "worst_group_brier", "auroc", "frontier_auc", "success@0.25"]
print(wide[[c for c in cols if c in wide.columns]].round(4).to_string())
