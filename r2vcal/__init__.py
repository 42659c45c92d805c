"""r2vcal: calibrated step-level SLM->LLM escalation for agents.

``import r2vcal`` loads numpy, scipy, scikit-learn and pandas only; torch and
matplotlib are imported lazily by the code paths that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
