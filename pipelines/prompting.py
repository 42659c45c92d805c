"""The SLM prompt, shared by every step of the chain.

Behavioral cloning (:mod:`pipelines.bc`), the verifier, DPO, the rollouts and
the closed loop all query the SLM through :func:`format_prompt`, so that it is
always asked as it was trained. Template::

    <initial observation: goal + first room, at most ``max_goal_chars``>
    Done: <action 1>; <action 2>; ...; <action t-h-1>
    > <action t-h>
    <observation t-h, at most ``max_obs_chars``>
    ...
    > <action t-1>
    <observation t-1>
    Action:

and the completion is ``" <action t>"``. The last ``n_turns`` turns are shown
in full (``h = n_turns``); the agent's own earlier actions (at most the last
``n_actions``) are listed on the ``Done:`` line. Runs of spaces and blank lines
are collapsed, and with ``drop_prompt_lines`` the lines an observation starts
with ``">"`` (TextWorld's command prompt and status bar) are dropped.

The template's settings are one :class:`PromptConfig`; :data:`PROMPT_DEFAULTS`
holds its defaults as a dict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACTION_CUE",
    "HISTORY_CUE",
    "PROMPT_DEFAULTS",
    "PromptConfig",
    "clean_text",
    "format_prompt",
    "prompt_kwargs_of",
]

#: The line that ends every prompt; the completion starts after it.
ACTION_CUE = "Action:"
#: The line listing the agent's earlier actions starts with this.
HISTORY_CUE = "Done:"
#: Defaults of :func:`format_prompt` (and of every config's prompt fields).
PROMPT_DEFAULTS: dict[str, Any] = {
    "n_turns": 1,
    "n_actions": 20,
    "max_goal_chars": 700,
    "max_obs_chars": 120,
    "drop_prompt_lines": True,
}
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n\s*\n+")


def clean_text(text: str, max_chars: int | None = None) -> str:
    """Collapse runs of spaces and blank lines; cut to ``max_chars``.

    Parameters
    ----------
    text : str
    max_chars : int, optional
        Keep at most this many characters (from the start).

    Returns
    -------
    str

    Examples
    --------
    >>> clean_text("You open it.\\n\\n\\n>      -= Bedroom =-")
    'You open it.\\n> -= Bedroom =-'
    """
    out = _BLANKS.sub("\n", _SPACES.sub(" ", str(text))).strip()
    out = "\n".join(line.strip() for line in out.split("\n"))
    if max_chars is not None and len(out) > max_chars:
        out = out[:max_chars]
    return out


def _clean_obs(text: str, max_chars: int | None, drop_prompt_lines: bool) -> str:
    if drop_prompt_lines:
        text = "\n".join(
            ln for ln in str(text).split("\n") if not ln.lstrip().startswith(">")
        )
    return clean_text(text, max_chars)


def format_prompt(
    initial_observation: str,
    history: Sequence[tuple[str, str]] = (),
    *,
    n_turns: int = PROMPT_DEFAULTS["n_turns"],
    n_actions: int = PROMPT_DEFAULTS["n_actions"],
    max_goal_chars: int = PROMPT_DEFAULTS["max_goal_chars"],
    max_obs_chars: int = PROMPT_DEFAULTS["max_obs_chars"],
    drop_prompt_lines: bool = PROMPT_DEFAULTS["drop_prompt_lines"],
) -> str:
    """The SLM prompt at a step (template in the module docstring).

    Parameters
    ----------
    initial_observation : str
        What ``reset`` returned (goal and first room).
    history : sequence of (action, observation)
        The turns so far, oldest first.
    n_turns : int, default=1
        How many of the last turns to show in full.
    n_actions : int, default=20
        How many of the earlier actions (before the turns shown in full) to
        list on the :data:`HISTORY_CUE` line; ``0`` leaves the line out.
    max_goal_chars, max_obs_chars : int, default=700, 120
        Character budgets of the first observation and of each later one.
    drop_prompt_lines : bool, default=True
        Drop observation lines starting with ``">"`` (TextWorld's command
        prompt and status bar).

    Returns
    -------
    str
        Ends with :data:`ACTION_CUE`; the action follows after a space.

    Examples
    --------
    >>> hist = [("open box", "You open it.\\n>  -= Hall =-  1/3"), ("go east", "A hall.")]
    >>> print(format_prompt("Find the key.", hist))
    Find the key.
    Done: open box
    > go east
    A hall.
    Action:
    """
    if n_turns < 0:
        raise ValueError(f"n_turns must be >= 0; got {n_turns!r}.")
    if n_actions < 0:
        raise ValueError(f"n_actions must be >= 0; got {n_actions!r}.")
    hist = list(history)
    shown = hist[-n_turns:] if n_turns else []
    earlier = hist[: len(hist) - len(shown)]
    parts = [_clean_obs(initial_observation, max_goal_chars, drop_prompt_lines)]
    if n_actions and earlier:
        acts = [clean_text(a) for a, _ in earlier[-n_actions:]]
        parts.append(f"{HISTORY_CUE} " + "; ".join(acts))
    for action, obs in shown:
        parts.append(f"> {clean_text(action)}")
        parts.append(_clean_obs(obs, max_obs_chars, drop_prompt_lines))
    parts.append(ACTION_CUE)
    return "\n".join(p for p in parts if p)


def prompt_kwargs_of(cfg: Any) -> dict[str, Any]:
    """The :func:`format_prompt` keyword arguments held by a config.

    Parameters
    ----------
    cfg : dataclass or dict
        A config that nests a :class:`PromptConfig` as ``prompt`` (or its
        :func:`~dataclasses.asdict`), or a flat dict with the fields of
        :data:`PROMPT_DEFAULTS` (``run_summary.json``'s ``prompt_kwargs``);
        missing fields take their defaults.

    Returns
    -------
    dict

    Examples
    --------
    >>> prompt_kwargs_of({"prompt": {"n_turns": 2}})["n_turns"]
    2
    >>> prompt_kwargs_of({"n_turns": 3}) == {**PROMPT_DEFAULTS, "n_turns": 3}
    True
    """
    if isinstance(cfg, dict):
        inner = cfg.get("prompt", cfg)
    else:
        inner = getattr(cfg, "prompt", cfg)
    if isinstance(inner, PromptConfig):
        return inner.kwargs()
    get = inner.get if isinstance(inner, dict) else lambda k, d: getattr(inner, k, d)
    return {k: get(k, v) for k, v in PROMPT_DEFAULTS.items()}


@dataclass
class PromptConfig:
    """Settings of the prompt template (:func:`format_prompt`).

    Parameters
    ----------
    n_turns : int
        How many of the last turns to show in full.
    n_actions : int
        How many earlier actions to list on the :data:`HISTORY_CUE` line.
    max_goal_chars : int
        Character budget of the first observation.
    max_obs_chars : int
        Character budget of each later observation.
    drop_prompt_lines : bool
        Drop observation lines starting with ``">"``.
    """

    n_turns: int = PROMPT_DEFAULTS["n_turns"]
    n_actions: int = PROMPT_DEFAULTS["n_actions"]
    max_goal_chars: int = PROMPT_DEFAULTS["max_goal_chars"]
    max_obs_chars: int = PROMPT_DEFAULTS["max_obs_chars"]
    drop_prompt_lines: bool = PROMPT_DEFAULTS["drop_prompt_lines"]

    def kwargs(self) -> dict[str, Any]:
        """The :func:`format_prompt` keyword arguments."""
        return asdict(self)
