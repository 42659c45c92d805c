"""Benchmark environments behind one small protocol (:class:`Env`).

:func:`make_env` is the one place environments are built: a benchmark by name,
optionally behind seeded perturbations (:class:`pipelines.perturb.PerturbedEnv`)
and a transition memo (:class:`MemoEnv`). :func:`shared_env` returns one
unperturbed environment per process and setting (task lists, game
preparation, collection workers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipelines.envs.base import INFO_KEYS, Env, base_info
from pipelines.envs.memo import MemoEnv

__all__ = [
    "ENV_NAMES",
    "INFO_KEYS",
    "SHARED_ENVS",
    "Env",
    "MemoEnv",
    "base_info",
    "env_key",
    "make_env",
    "perturbed",
    "shared_env",
]

#: The benchmarks :func:`make_env` knows.
ENV_NAMES = ("textworld", "humaneval", "terminal")
#: The environments :func:`shared_env` has built, by :func:`env_key`.
SHARED_ENVS: dict[str, Any] = {}


def _benchmark(name: str, kwargs: dict[str, Any]) -> Any:
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


def make_env(
    name: str,
    *,
    perturb: tuple[Sequence[str], float] | None = None,
    step_limit: int | None = None,
    memo: bool = False,
    **kwargs: Any,
) -> Any:
    """Build an environment by name, fresh (it owns its benchmark instance).

    Parameters
    ----------
    name : {"textworld", "humaneval", "terminal"}
        Benchmark name.
    perturb : (families, rate), optional
        Wrap the benchmark in a :class:`pipelines.perturb.PerturbedEnv` with the
        operators of these families (:func:`pipelines.perturb.make_family`) at
        this rate; ``([], rate)`` gives a clean episode with ``max_steps``.
    step_limit : int, optional
        Step limit of the perturbed episode (``PerturbedEnv(max_steps=...)``;
        default: the environment's); only with ``perturb``.
    memo : bool, default=False
        Serve repeated transitions from memory (:class:`MemoEnv`). The memo owns
        the environment built here: nothing else may step it.
    **kwargs
        Passed to the benchmark's constructor (its own ``max_steps`` too).

    Returns
    -------
    Env
    """
    env = _benchmark(name, kwargs)
    if perturb is not None:
        env = perturbed(env, *perturb, step_limit=step_limit)
    elif step_limit is not None:
        raise ValueError(
            "The 'step_limit' parameter of make_env needs 'perturb' (a "
            "(families, rate) pair; ([], 0.0) for clean episodes). "
            f"Got step_limit={step_limit!r} with perturb=None."
        )
    return MemoEnv(env) if memo else env


def perturbed(
    env: Any, families: Sequence[str], rate: float, *, step_limit: int | None = None
) -> Any:
    """``env`` behind the operators of ``families`` at ``rate``.

    Parameters
    ----------
    env : Env
    families : sequence of str
        Perturbation families (:func:`pipelines.perturb.make_family`).
    rate : float
        Firing probability per operator and step.
    step_limit : int, optional
        Step limit of the perturbed episode (default: the environment's).

    Returns
    -------
    pipelines.perturb.PerturbedEnv
    """
    from pipelines.perturb import PerturbedEnv, make_family

    ops = [op for fam in families for op in make_family(fam, rate)]
    return PerturbedEnv(env, ops, max_steps=step_limit)


def env_key(name: str, kwargs: dict[str, Any]) -> str:
    """The key of an environment setting in :data:`SHARED_ENVS`."""
    return name + json.dumps(kwargs, sort_keys=True, default=str)


def shared_env(name: str, kwargs: dict[str, Any]) -> Any:
    """One unperturbed environment per process and setting (built on first use).

    Parameters
    ----------
    name : str
        Benchmark name (see :func:`make_env`).
    kwargs : dict
        Its constructor arguments.

    Returns
    -------
    Env
        Shared: use it for task lists and expert episodes, never wrap it in a
        :class:`MemoEnv` (that needs an environment of its own).
    """
    key = env_key(name, kwargs)
    if key not in SHARED_ENVS:
        SHARED_ENVS[key] = make_env(name, **kwargs)
    return SHARED_ENVS[key]
