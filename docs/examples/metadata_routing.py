"""Groups inside GridSearchCV / cross_validate: the silent drop, and the fix."""

import warnings

import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate

from r2vcal import CVaRBrierRouter, NoGroupsWarning

rng = np.random.default_rng(0)
X = rng.normal(size=(3000, 4))
seeds = rng.integers(0, 10, size=3000)  # perturbation seed of every step
y = (X[:, 0] + (seeds < 2) * X[:, 1] + rng.normal(size=3000) > 0.5).astype(int)

# 1. Without metadata routing, sklearn passes `groups` to the splitter only:
#    the router's fit never sees them and its CVaR term collapses to one group.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cross_validate(CVaRBrierRouter(), X, y, groups=seeds, cv=GroupKFold(3))
n_warned = sum(issubclass(w.category, NoGroupsWarning) for w in caught)
print(f"without routing: {n_warned} NoGroupsWarning(s) — groups were dropped")

# 2. With routing enabled and the request set, groups reach both the splitter
#    and CVaRBrierRouter.fit.
with sklearn.config_context(enable_metadata_routing=True):
    router = CVaRBrierRouter(random_state=0).set_fit_request(groups=True)
    search = GridSearchCV(
        router,
        {"cvar_weight": [0.0, 1.0, 5.0]},
        cv=GroupKFold(3),
        scoring="neg_brier_score",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGroupsWarning)  # would raise if dropped
        search.fit(X, y, groups=seeds)
    best = search.best_estimator_
    print("with routing: best", search.best_params_)
    print("groups seen by the refitted router:", best.group_labels_.tolist())
    # with routing on, cross_validate takes groups through `params` only
    cv = cross_validate(router, X, y, cv=GroupKFold(3), params={"groups": seeds})
    print("cross_validate fit times (s):", np.round(cv["fit_time"], 3).tolist())
