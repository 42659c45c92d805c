"""The pass-through part of an environment wrapper: :class:`EnvWrapper`.

:class:`pipelines.perturb.PerturbedEnv` and :class:`pipelines.envs.MemoEnv` both
wrap an environment and hand everything they do not change to it. The shared
part lives here, in a module with no ``pipelines`` imports of its own, so that
``pipelines.perturb`` and ``pipelines.envs`` can both build on it without
importing each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EnvWrapper"]


class EnvWrapper:
    """Base of environment wrappers: what a subclass does not define is ``env``'s.

    Subclasses set ``self.env`` in ``__init__`` and override the protocol
    methods they change (``reset``, ``step``, ...).

    Attributes
    ----------
    env : Env
        The wrapped environment.

    Examples
    --------
    >>> class Named:
    ...     name = "toy"
    ...     def tasks(self, split="test"):
    ...         return [split]
    >>> w = EnvWrapper()
    >>> w.env = Named()
    >>> w.name, w.tasks("train")
    ('toy', ['train'])
    """

    env: Any

    def __getattr__(self, item: str) -> Any:
        if item == "env":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(item)
        return getattr(self.env, item)

    def tasks(self, split: str = "test") -> list[str]:
        """Delegate to the wrapped environment."""
        return self.env.tasks(split)

    def expert_action(self) -> str | None:
        """Delegate to the wrapped environment (the expert sees the true state)."""
        return self.env.expert_action()
