"""The small environment protocol every benchmark implements.

An environment is a deterministic text-in, text-out loop::

    obs = env.reset(task, seed)
    obs, done, success, info = env.step(action)

``(task, seed)`` fixes everything, so replaying the same actions reproduces the
same observations and ``info`` (needed to branch an episode at any step for
counterfactual labels).

Keys every ``info`` dict carries (the featurizer reads them):

``"tool_error"`` : bool
    The action's tool call failed (a crash, a timeout, an injected failure).
``"truncated"`` : bool
    The observation the agent sees was cut or partly hidden.
``"perturbations"`` : list of str
    Names of the perturbation operators that fired on this step (empty when
    none; see :mod:`pipelines.perturb`).
``"step"`` : int
    1-based index of this step in the episode.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["INFO_KEYS", "Env", "base_info"]

INFO_KEYS = ("tool_error", "truncated", "perturbations", "step")


@runtime_checkable
class Env(Protocol):
    """Protocol for benchmark environments.

    Attributes
    ----------
    name : str
        Short benchmark name (``"textworld"``, ``"humaneval"``, ``"terminal"``).
    """

    name: str

    def tasks(self, split: str = "test") -> list[str]:
        """Task identifiers of a split (``"train"``, ``"validation"``, ``"test"``)."""
        ...

    def reset(self, task: str, seed: int = 0) -> str:
        """Start ``task``; return the first observation (goal included)."""
        ...

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Apply ``action``; return ``(observation, done, success, info)``."""
        ...

    def expert_action(self) -> str | None:
        """The environment expert's next action in the current state."""
        ...


def base_info(step: int, **extra: Any) -> dict[str, Any]:
    """Build an ``info`` dict with the protocol keys set to their defaults.

    Parameters
    ----------
    step : int
        1-based step index.
    **extra
        Further keys (override the defaults).

    Returns
    -------
    dict

    Examples
    --------
    >>> base_info(1, tool_error=True)["tool_error"]
    True
    """
    info: dict[str, Any] = {
        "tool_error": False,
        "truncated": False,
        "perturbations": [],
        "step": step,
    }
    info.update(extra)
    return info
