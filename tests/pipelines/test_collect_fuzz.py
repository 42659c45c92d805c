"""Property tests (hypothesis) for collection over interleaved runs on one file.

A fast in-process environment stands in for a benchmark. Each example plays a
sequence of operations on one output file: complete runs, runs killed after k
episodes (leaving a torn final line of any length), runs refused because
another run holds the lock, two runs racing in threads (``flock`` conflicts
between open files of one process too), and foreign lines written by someone
else. The property: no operation crashes with anything but a clear
``OutputLockedError``/``ValueError``; no record is ever lost or duplicated; a
refused run leaves the file byte for byte as it was; a last full run leaves
exactly one correct record per ``(task, seed)``.
"""

from __future__ import annotations

import fcntl
import json
import tempfile
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipelines.collect import CollectConfig, OutputLockedError, load_records, main
from pipelines.envs import SHARED_ENVS, env_key
from pipelines.envs.base import base_info

TASKS = [f"t{i}" for i in range(4)]
N_SEEDS = 3


class Killed(Exception):
    """Stands for ``kill -9`` between two episodes."""


class FakeEnv:
    """Deterministic, instant episodes of 1-3 steps; can be told to die."""

    name = "fake"
    max_steps = 10

    def __init__(self) -> None:
        self.kill_after: int | None = None
        self.delay = 0.0
        self.n_resets = 0

    def tasks(self, split: str = "test") -> list[str]:
        return list(TASKS)

    def reset(self, task: str, seed: int = 0) -> str:
        if self.kill_after is not None and self.n_resets >= self.kill_after:
            raise Killed
        self.n_resets += 1
        self._len = 1 + zlib.crc32(f"{task}|{seed}".encode()) % 3
        self._t = 0
        self._task, self._seed = task, seed
        return f"goal of {task} under seed {seed}"

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        time.sleep(self.delay)
        self._t += 1
        done = self._t >= self._len
        return f"obs {self._t} é ✓", done, done and self._seed != 1, base_info(self._t)

    def expert_action(self) -> str:
        return "go north"


ENV = FakeEnv()
SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _cfg(out: Path, tasks: list[str], n_seeds: int) -> CollectConfig:
    return CollectConfig(
        env="fake",
        out=str(out),
        tasks=tasks,
        n_seeds=n_seeds,
        families=[],
        n_jobs=1,
        backend=None,
        progress=False,
    )


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "wall_time"}


_REFERENCE: dict[str, dict[str, Any]] = {}


def _reference() -> dict[str, dict[str, Any]]:
    """The record of every key, from one clean run."""
    if not _REFERENCE:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ref.jsonl"
            main(_cfg(out, TASKS, N_SEEDS))
            _REFERENCE.update({r["key"]: r for r in load_records(out)})
    return _REFERENCE


def _keys(out: Path) -> list[str]:
    return [r["key"] for r in load_records(out)]


run_op = st.tuples(
    st.just("run"),
    st.lists(st.sampled_from(TASKS), min_size=1, max_size=4, unique=True),
    st.integers(1, N_SEEDS),
)
kill_op = st.tuples(
    st.just("kill"),
    st.lists(st.sampled_from(TASKS), min_size=1, max_size=4, unique=True),
    st.integers(1, N_SEEDS),
    st.integers(0, 3),  # episodes finished before the kill
    st.floats(0, 1),  # share of the next line written when killed (1: all but \n)
)
locked_op = st.tuples(st.just("locked"), st.integers(1, N_SEEDS))
race_op = st.tuples(st.just("race"), st.integers(1, N_SEEDS), st.integers(1, N_SEEDS))
foreign_op = st.tuples(
    st.just("foreign"),
    st.sampled_from(
        [
            '{"schema": "r2vcal.trajectory/v2", "key": "fake|t0|0"}',
            '{"other": "tool"}',
            "a,b,c",
            "",
            '{"schema": "r2vcal.trajectory/v1", "key": "fake|t',
        ]
    ),
    st.floats(0, 1),  # where among the complete lines
)
ops = st.lists(st.one_of(run_op, kill_op, locked_op, race_op, foreign_op), max_size=6)


def _play(out: Path, op: tuple) -> None:
    kind = op[0]
    before_bytes = out.read_bytes() if out.exists() else b""
    before = set(_keys(out))
    if kind == "run":
        main(_cfg(out, op[1], op[2]))
    elif kind == "kill":
        _, tasks, n_seeds, k, share = op
        ENV.kill_after = ENV.n_resets + k
        try:
            main(_cfg(out, tasks, n_seeds))
            event("kill: run finished first")
        except Killed:
            missing = sorted(set(_reference()) - set(_keys(out)))
            if missing:  # the next record, torn mid-write
                line = json.dumps(_reference()[missing[0]])
                with open(out, "ab") as fh:
                    fh.write(line.encode()[: round(share * len(line.encode()))])
            event("kill")
        finally:
            ENV.kill_after = None
    elif kind == "locked":
        with open(out, "ab") as other:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(OutputLockedError, match="locked by another"):
                main(_cfg(out, TASKS, op[1]))
            with pytest.raises(OutputLockedError):
                load_records(out, repair=True)
        assert out.read_bytes() == before_bytes
        event("locked")
    elif kind == "race":
        errors: list[BaseException] = []

        def run(n_seeds: int) -> None:
            try:
                main(_cfg(out, TASKS, n_seeds))
            except OutputLockedError:
                errors.append(OutputLockedError())

        ENV.delay = 0.0005
        thread = threading.Thread(target=run, args=(op[1],))
        thread.start()
        run(op[2])
        thread.join()
        ENV.delay = 0.0
        event(f"race: {len(errors)} locked out")
    else:
        _, text, where = op
        raw = out.read_bytes() if out.exists() else b""
        lines = raw.splitlines(keepends=True)
        complete = [ln for ln in lines if ln.endswith(b"\n")]
        torn = lines[len(complete) :]
        i = round(where * len(complete))
        bad = [*complete[:i], text.encode() + b"\n", *complete[i:], *torn]
        out.write_bytes(b"".join(bad))
        tampered = out.read_bytes()
        expected = "first line" if i == 0 else f"line {i + 1}"
        with pytest.raises(ValueError, match=expected):
            main(_cfg(out, TASKS, N_SEEDS))
        with pytest.raises(ValueError, match=expected):
            load_records(out, repair=True)
        assert out.read_bytes() == tampered  # refused, untouched
        out.write_bytes(raw)  # the user removes the line again
        event("foreign line refused")
    after = set(_keys(out))
    assert before <= after, f"{kind} lost records {before - after}"


@SETTINGS
@given(ops=ops)
def test_interleaved_runs_lose_and_duplicate_nothing(ops):
    SHARED_ENVS[env_key("fake", {})] = ENV
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "traj.jsonl"
        for op in ops:
            _play(out, op)
            keys = _keys(out)
            assert len(keys) == len(set(keys)), "duplicated record"
        summary = main(_cfg(out, TASKS, N_SEEDS))
        assert summary["n_total"] == len(TASKS) * N_SEEDS
        lines = out.read_text(encoding="utf-8").splitlines()
        recs = [json.loads(ln) for ln in lines]  # every line parses
        assert sorted(r["key"] for r in recs) == sorted(_reference())
        for r in recs:
            assert _strip(r) == _strip(_reference()[r["key"]])
        assert out.read_bytes().endswith(b"\n")
        # idempotent: another run adds nothing and changes nothing
        snapshot = out.read_bytes()
        assert main(replace(_cfg(out, TASKS, N_SEEDS)))["n_new"] == 0
        assert out.read_bytes() == snapshot
