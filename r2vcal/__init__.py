"""r2vcal: calibrated step-level SLM->LLM escalation for agents.

``import r2vcal`` loads numpy, scipy, scikit-learn and pandas only; torch and
matplotlib are imported lazily by the code paths that need them.
"""

from r2vcal._version import VERSION as _VERSION
from r2vcal.baselines import (
    EntropyRouter,
    LogisticRouter,
    OracleRouter,
    RandomRouter,
    VerifierRouter,
    compare_routers,
)
from r2vcal.cascade import StepCascade, StepRouter
from r2vcal.features import FEATURE_NAMES, CandidateFeaturizer
from r2vcal.persist import load_router, save_router
from r2vcal.router import (
    PAPER_HIDDEN_LAYER_SIZES,
    CVaRBrierRouter,
    NoGroupsWarning,
)

#: The installed version (``importlib.metadata``; pyproject's in a bare checkout).
__version__: str = _VERSION

__all__ = [
    "FEATURE_NAMES",
    "PAPER_HIDDEN_LAYER_SIZES",
    "CVaRBrierRouter",
    "CandidateFeaturizer",
    "EntropyRouter",
    "LogisticRouter",
    "NoGroupsWarning",
    "OracleRouter",
    "RandomRouter",
    "StepCascade",
    "StepRouter",
    "VerifierRouter",
    "__version__",
    "compare_routers",
    "load_router",
    "save_router",
]
