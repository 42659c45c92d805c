"""Score the environment's admissible commands under the SLM (choice-based policy).

Free generation makes a tiny SLM name its action letter by letter; one wrong
token ("take red appel") and the step is wasted. When the environment lists
the commands it accepts (TextWorld's ``admissible_commands``), a policy can
instead **score** each of them by its sequence log-probability under the SLM,

    log π_θ(" " + command + EOS | prompt) = Σ_j log π_θ(token_j | prompt, token_<j),

and propose the ``k`` best as candidates. The log-probs and entropies of the
candidates are the model's real ones at the command's tokens (``log_softmax``
of the raw logits), and token entropies follow r2vcal's one definition
(:func:`r2vcal.features.topn_entropy` of the top :data:`~r2vcal.features.ENTROPY_TOP_N`
log-probs), so the router features (:class:`r2vcal.features.CandidateFeaturizer`)
keep their meaning. The
completion format is :mod:`pipelines.bc`'s (a space, the command, EOS).

* :class:`AdmissibleScoringPolicy` (in :mod:`pipelines.policies`) —
  ``score(context, commands)`` / ``propose(context, k, commands=...)``, one
  batched forward pass per call.
* :class:`ScoringAgent` (in :mod:`pipelines.agent`) — the drop-in for
  :class:`pipelines.agent.SLMAgent`
  (``decide(prompt, commands)``), deterministic, memoised per
  ``(prompt, commands)``; the executed candidate is the SLM's most likely
  command (``select="logprob"``) or the verifier's favourite among the ``k``
  (``select="verifier"``, DESIGN §1).

Free generation stays available (``policy="generate"`` in
:mod:`pipelines.run`, :mod:`pipelines.rollout`): it is what a user with a real
SLM and no command list runs.

This module re-exports them under their historical names.
"""

from __future__ import annotations

from pipelines.agent import ScoringAgent
from pipelines.policies import AdmissibleScoringPolicy
from r2vcal.cascade import SELECT_RULES

__all__ = ["SELECT_RULES", "AdmissibleScoringPolicy", "ScoringAgent"]
