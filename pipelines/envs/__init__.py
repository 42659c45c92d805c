"""Benchmark environments behind one small protocol (:class:`Env`)."""

from pipelines.envs.base import INFO_KEYS, Env, base_info
from pipelines.envs.memo import MemoEnv

__all__ = ["INFO_KEYS", "Env", "MemoEnv", "base_info", "make_env"]


def make_env(name: str, **kwargs):
    """Build an environment by name.

    Parameters
    ----------
    name : {"textworld", "humaneval", "terminal"}
        Benchmark name.
    **kwargs
        Passed to the environment's constructor.

    Returns
    -------
    Env
    """
    if name == "textworld":
        from pipelines.envs.textworld import TextWorldEnv

        return TextWorldEnv(**kwargs)
    if name == "humaneval":
        from pipelines.envs.humaneval import HumanEvalEnv

        return HumanEvalEnv(**kwargs)
    if name == "terminal":
        from pipelines.envs.terminal import TerminalEnv

        return TerminalEnv(**kwargs)
    raise ValueError(
        "The 'name' parameter of make_env must be a str among "
        f"{{'textworld', 'humaneval', 'terminal'}}. Got {name!r} instead."
    )
