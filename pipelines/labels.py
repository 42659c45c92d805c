"""Step labels: "escalating here would have helped" (DESIGN §6).

* :func:`counterfactual_label` — replay the seeded episode to step t, then let
  the SLM finish (a) after its own action and (b) after the teacher's; the label
  is 1 when (b) succeeds and (a) fails. Written once for the rollouts
  (:mod:`pipelines.rollout`) and the closed loop (:mod:`pipelines.closed_loop`).
* :func:`verifier_label` — the R2V paper's cheaper label from verifier scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["counterfactual_label", "label_confusion", "verifier_label"]


def counterfactual_label(
    slm_ok: bool,
    slm_action: str,
    teacher: str | None,
    teacher_branch: Callable[[], bool],
) -> tuple[int, bool, bool]:
    """The counterfactual label at a step: ``(y, slm_ok, llm_ok)``.

    Parameters
    ----------
    slm_ok : bool
        Does the SLM succeed after its own action at this step?
    slm_action : str
        The SLM's action at this step.
    teacher : str or None
        The teacher's action (``None``: the teacher has none).
    teacher_branch : callable
        ``teacher_branch()`` plays the teacher's action at this step, lets the
        SLM finish and returns whether it succeeded. Called only when the
        teacher's action differs from the SLM's (otherwise ``llm_ok`` is
        ``slm_ok``).

    Returns
    -------
    y : int
        1 when the teacher's step leads to success and the SLM's does not.
    slm_ok, llm_ok : bool

    Examples
    --------
    >>> counterfactual_label(False, "go east", "go west", lambda: True)
    (1, False, True)
    >>> counterfactual_label(False, "go east", " go east", lambda: True)
    (0, False, False)
    """
    same = teacher is None or teacher.strip() == slm_action.strip()
    llm_ok = bool(slm_ok) if same else bool(teacher_branch())
    return int(llm_ok and not slm_ok), bool(slm_ok), llm_ok


def verifier_label(v_teacher: float, scores: Any, margin: float = 0.0) -> int:
    """The R2V paper's step label from verifier scores.

    1 when the verifier scores the teacher's action above every SLM candidate
    by more than ``margin``.

    >>> verifier_label(0.9, [0.2, 0.5]), verifier_label(0.4, [0.2, 0.5])
    (1, 0)
    """
    return int(v_teacher > max(scores) + margin)


def label_confusion(table: Any) -> dict[str, int]:
    """Counts of ``y_counterfactual`` × ``y_verifier`` (keys ``cf{a}_ver{b}``)."""
    cf = table["y_counterfactual"].astype(int)
    vf = table["y_verifier"].astype(int)
    return {
        f"cf{a}_ver{b}": int(((cf == a) & (vf == b)).sum())
        for a in (0, 1)
        for b in (0, 1)
    }
