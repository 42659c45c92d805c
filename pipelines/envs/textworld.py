"""TextWorld games, generated offline and cached on disk.

Task ids are ``"<kind>-<game seed>"``; the split is a function of the game seed
(train seeds start at 0, validation at 100000, test at 200000), so splits never
share a game. Two kinds of game:

``"simple"``
    The ``tw-simple`` challenge (``textworld.challenges``) with the settings in
    ``simple_settings`` (dense rewards, detailed goal by default).
``"custom"``
    :func:`textworld.generator.make_game` with a small world (``world_size``
    rooms, ``nb_objects`` objects, a quest of ``quest_length`` actions).

Generating a game takes 1-10 s; games are compiled once into ``cache_dir``
(default ``~/.cache/r2vcal/textworld``, or ``$R2VCAL_TEXTWORLD_CACHE``).
The environment expert follows TextWorld's ``policy_commands`` (the remaining
winning plan from the current state).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.envs.base import base_info

__all__ = ["SPLIT_OFFSETS", "TextWorldEnv", "default_cache_dir", "generate_game"]

SPLIT_OFFSETS = {"train": 0, "validation": 100_000, "test": 200_000}
_KINDS = ("simple", "custom")


def default_cache_dir() -> Path:
    """``$R2VCAL_TEXTWORLD_CACHE`` or ``~/.cache/r2vcal/textworld``."""
    env = os.environ.get("R2VCAL_TEXTWORLD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "r2vcal" / "textworld"


def _settings_key(kind: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, **settings}, sort_keys=True)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def generate_game(
    kind: str,
    seed: int,
    settings: dict[str, Any],
    cache_dir: str | Path,
) -> Path:
    """Generate (or reuse) one compiled game and return its ``.z8`` path.

    Parameters
    ----------
    kind : {"simple", "custom"}
        Game family.
    seed : int
        Game seed (also decides the split, see :data:`SPLIT_OFFSETS`).
    settings : dict
        ``tw-simple`` settings or ``world_size``/``nb_objects``/``quest_length``.
    cache_dir : str or Path
        Cache root.

    Returns
    -------
    Path
    """
    import textworld
    from textworld.challenges import simple

    if kind not in _KINDS:
        raise ValueError(
            f"The 'kind' parameter must be a str among {set(_KINDS)}. Got {kind!r}."
        )
    folder = Path(cache_dir) / _settings_key(kind, settings)
    target = folder / f"{seed}.z8"
    if target.is_file() and target.with_suffix(".json").is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".gen-", dir=folder))
    try:
        opts = textworld.GameOptions()
        opts.seeds = int(seed)
        opts.file_ext = ".z8"
        opts.path = str(tmpdir / "game.z8")
        opts.force_recompile = True
        if kind == "simple":
            game = simple.make(dict(settings), opts)
        else:
            opts.nb_rooms = int(settings.get("world_size", 3))
            opts.nb_objects = int(settings.get("nb_objects", 6))
            opts.quest_length = int(settings.get("quest_length", 3))
            opts.quest_breadth = 1
            game = textworld.generator.make_game(opts)
        path = Path(textworld.generator.compile_game(game, opts))
        # Publish atomically: json first, z8 last (its presence marks completion).
        tag = secrets.token_hex(4)
        tmp_json = folder / f".{seed}.{tag}.json"
        tmp_z8 = folder / f".{seed}.{tag}.z8"
        shutil.move(str(path.with_suffix(".json")), tmp_json)
        shutil.move(str(path), tmp_z8)
        os.replace(tmp_json, target.with_suffix(".json"))
        os.replace(tmp_z8, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


_UNSAFE = re.compile(r"[^\x20-\x7e]|\\")


def _command(action: str) -> str:
    r"""A command the interpreter can take: printable ASCII, no backslash.

    dumb-frotz reads ``\`` as the start of an escape sequence (and crashes the
    process on some), and a newline would send two commands; a model's
    free-form output may hold both.

    >>> _command("take key\\x\nfrom  box ")
    'take key x from box'
    """
    return " ".join(_UNSAFE.sub(" ", action).split())


class TextWorldEnv:
    """TextWorld text adventures behind the :class:`~pipelines.envs.Env` protocol.

    Parameters
    ----------
    kind : {"simple", "custom"}, default="simple"
        Game family (see module docstring).
    n_games : dict of str to int, optional
        Games per split; default ``{"train": 20, "validation": 5, "test": 5}``.
    settings : dict, optional
        Generation settings; defaults depend on ``kind``.
    max_steps : int, default=50
        Steps before the episode is cut (``info["step_limit"]``).
    cache_dir : str or Path, optional
        Compiled-game cache (see :func:`default_cache_dir`).

    Notes
    -----
    ``info`` carries ``admissible_commands``, ``score``, ``max_score`` and
    ``won`` besides the protocol keys. ``success`` is TextWorld's ``won``.
    """

    name = "textworld"

    def __init__(
        self,
        kind: str = "simple",
        *,
        n_games: dict[str, int] | None = None,
        settings: dict[str, Any] | None = None,
        max_steps: int = 50,
        cache_dir: str | Path | None = None,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(
                f"The 'kind' parameter of TextWorldEnv must be a str among "
                f"{set(_KINDS)}. Got {kind!r} instead."
            )
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps!r}.")
        self.kind = kind
        self.n_games = dict(n_games or {"train": 20, "validation": 5, "test": 5})
        unknown = set(self.n_games) - set(SPLIT_OFFSETS)
        if unknown:
            raise ValueError(
                f"n_games has unknown splits {sorted(unknown)}; use "
                f"{sorted(SPLIT_OFFSETS)}."
            )
        if settings is None:
            settings = (
                {"rewards": "dense", "goal": "detailed", "test": False}
                if kind == "simple"
                else {"world_size": 3, "nb_objects": 6, "quest_length": 3}
            )
        self.settings = dict(settings)
        self.max_steps = max_steps
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._env: Any = None
        self._env_path: Path | None = None
        self._state: Any = None
        self._t = 0
        self._done = True
        self.task: str | None = None

    # ----------------------------------------------------------- tasks
    def tasks(self, split: str = "test") -> list[str]:
        """Task ids of a split, e.g. ``["simple-200000", ...]``."""
        if split not in SPLIT_OFFSETS:
            raise ValueError(
                "The 'split' parameter must be a str among "
                f"{set(SPLIT_OFFSETS)}. Got {split!r} instead."
            )
        off = SPLIT_OFFSETS[split]
        return [f"{self.kind}-{off + i}" for i in range(self.n_games.get(split, 0))]

    def game_path(self, task: str) -> Path:
        """Compile ``task`` if needed and return its game file."""
        kind, _, seed = task.rpartition("-")
        if kind != self.kind or not seed.isdigit():
            raise ValueError(
                f"task {task!r} is not a {self.kind!r} TextWorld task id "
                f"(expected '{self.kind}-<seed>')."
            )
        return generate_game(self.kind, int(seed), self.settings, self.cache_dir)

    def prepare(self, splits: tuple[str, ...] = ("test",), n_jobs: int = 1) -> None:
        """Generate every game of ``splits`` ahead of time (in parallel).

        Parameters
        ----------
        splits : tuple of str, default=("test",)
        n_jobs : int, default=1
            ``joblib`` workers.
        """
        from joblib import Parallel, delayed

        tasks = [t for s in splits for t in self.tasks(s)]
        Parallel(n_jobs=n_jobs)(delayed(self.game_path)(t) for t in tasks)

    # ------------------------------------------------------------ loop
    def reset(self, task: str, seed: int = 0) -> str:
        """Start game ``task``; ``seed`` is unused (games are deterministic)."""
        import textworld

        path = self.game_path(task)
        if self._env is None or self._env_path != path:
            if self._env is not None:
                self._env.close()
            infos = textworld.EnvInfos(
                admissible_commands=True,
                policy_commands=True,
                description=True,
                objective=True,
                won=True,
                lost=True,
                score=True,
                max_score=True,
            )
            self._env = textworld.start(str(path), request_infos=infos)
            self._env_path = path
        self._state = self._env.reset()
        self.task = task
        self._t = 0
        self._done = False
        return f"{self._state.objective.strip()}\n\n{self._state.description.strip()}"

    def expert_action(self) -> str | None:
        """First command of TextWorld's remaining winning plan."""
        if self._state is None or self._done:
            return None
        plan = self._state.policy_commands or []
        return plan[0] if plan else None

    def admissible_commands(self) -> list[str]:
        """Commands the game accepts in the current state."""
        if self._state is None:
            return []
        return list(self._state.admissible_commands or [])

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Send a command to the game."""
        if self._env is None or self._done:
            raise RuntimeError("call reset(task, seed) before step(action).")
        self._t += 1
        state, _, done = self._env.step(_command(action))
        self._state = state
        won = bool(state.won)
        info = base_info(
            self._t,
            admissible_commands=list(state.admissible_commands or []),
            score=int(state.score),
            max_score=int(state.max_score),
            won=won,
        )
        if not done and self._t >= self.max_steps:
            done = True
            info["step_limit"] = True
        self._done = bool(done)
        return str(state.feedback).strip(), bool(done), won, info

    def close(self) -> None:
        """Stop the game interpreter."""
        if self._env is not None:
            self._env.close()
            self._env = None
            self._env_path = None

    def __getstate__(self) -> dict[str, Any]:
        # The interpreter is a live process: ship the configuration only.
        state = self.__dict__.copy()
        state.update(_env=None, _env_path=None, _state=None, _done=True)
        return state
