"""Memoised replays of a deterministic environment: :class:`MemoEnv`.

Counterfactual labels and closed-loop arms replay the same seeded episodes over
and over: every branch starts with a prefix some earlier episode already
played, and two arms of a closed loop walk the same states until their
decisions differ. Because ``(task, seed, actions)`` fixes everything an
environment returns (:mod:`pipelines.envs.base`), each transition needs to be
computed once. :class:`MemoEnv` answers ``reset``, ``step``, ``expert_action``
and ``admissible_commands`` from a table keyed by that triple and touches the
wrapped environment only on a miss, after replaying the missing prefix on it.

On TextWorld a step costs ~18 ms (the interpreter plus the expert's plan
update) and a reset ~65 ms; the closed loop's arms hit the table on most steps.
"""

from __future__ import annotations

from typing import Any

from pipelines._wrapper import EnvWrapper

__all__ = ["MemoEnv"]

_Key = tuple[str, int, tuple[str, ...]]


class MemoEnv(EnvWrapper):
    """Wrap a deterministic environment; serve repeated transitions from memory.

    Parameters
    ----------
    env : Env
        A deterministic environment (e.g. a :class:`pipelines.perturb.PerturbedEnv`):
        the same ``(task, seed)`` and actions give the same observations,
        ``info``, expert actions and admissible commands.
    max_entries : int, default=500_000
        The table is cleared when it grows past this many transitions.

    Attributes
    ----------
    hits_, misses_ : int
        Transitions served from the table / computed on the wrapped environment.

    Notes
    -----
    Other attributes pass through to the wrapped environment; they describe the
    state the wrapped environment is *physically* in, which after a hit may lag
    the episode's position. ``reset_perturbations`` is kept per episode.
    """

    def __init__(self, env: Any, max_entries: int = 500_000) -> None:
        self.env = env
        self.max_entries = int(max_entries)
        self.max_steps = env.max_steps
        self.reset_perturbations: list[str] = []
        self.hits_ = 0
        self.misses_ = 0
        self._pos: _Key | None = None  # where the caller's episode is
        self._at: _Key | None = None  # where the wrapped environment is
        self._resets: dict[tuple[str, int], tuple[str, list[str]]] = {}
        self._steps: dict[tuple[_Key, str], tuple[str, bool, bool, dict[str, Any]]] = {}
        self._expert: dict[_Key, str | None] = {}
        self._commands: dict[_Key, list[str]] = {}

    # ----------------------------------------------------------- helpers
    def _here(self) -> _Key:
        if self._pos is None:
            raise RuntimeError("MemoEnv: call reset(task, seed) before stepping.")
        return self._pos

    def _sync(self) -> None:
        """Bring the wrapped environment to the caller's position."""
        pos = self._here()
        task, seed, actions = pos
        at = self._at
        if at is not None and at[:2] == (task, seed) and actions[: len(at[2])] == at[2]:
            todo = actions[len(at[2]) :]
        else:
            self.env.reset(task, seed)
            todo = actions
        for a in todo:
            self.env.step(a)
        self._at = pos

    # --------------------------------------------------------------- API
    def reset(self, task: str, seed: int = 0) -> str:
        """Start ``(task, seed)``; the first observation (memoised)."""
        key = (task, int(seed))
        if key not in self._resets:
            obs = self.env.reset(task, seed)
            fired = list(getattr(self.env, "reset_perturbations", []))
            self._resets[key] = (obs, fired)
            self._at = (task, int(seed), ())
        obs, fired = self._resets[key]
        self.reset_perturbations = list(fired)
        self._pos = (task, int(seed), ())
        return obs

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Apply ``action``; the wrapped environment's answer (memoised)."""
        pos = self._here()
        nxt = (pos[0], pos[1], (*pos[2], action))
        out = self._steps.get((pos, action))
        if out is None:
            self.misses_ += 1
            self._sync()
            obs, done, success, info = self.env.step(action)
            self._at = nxt
            if len(self._steps) >= self.max_entries:
                self._steps.clear()
                self._expert.clear()
                self._commands.clear()
            out = self._steps[(pos, action)] = (obs, done, success, dict(info))
        else:
            self.hits_ += 1
        self._pos = nxt
        obs, done, success, info = out
        return obs, done, success, _copy_info(info)

    def expert_action(self) -> str | None:
        """The expert's action at the current position (memoised)."""
        pos = self._here()
        if pos not in self._expert:
            self._sync()
            self._expert[pos] = self.env.expert_action()
        return self._expert[pos]

    def admissible_commands(self) -> list[str]:
        """The commands valid at the current position (memoised)."""
        pos = self._here()
        if pos not in self._commands:
            self._sync()
            self._commands[pos] = list(self.env.admissible_commands())
        return list(self._commands[pos])


def _copy_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in info.items()}
