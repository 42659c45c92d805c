"""Trajectory files (``r2vcal.trajectory/v1`` JSONL) and the examples built from them.

The record schema is described in :mod:`pipelines.collect`, which writes the
files; this module reads them (:func:`load_records`, :func:`read_trajectories`),
guards them (:func:`check_output_path`, :func:`locked_output`,
:func:`scan_records`, :func:`repair_torn_line`) and turns teacher steps into
prompt-completion examples (:func:`build_examples`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pipelines.prompting import format_prompt

__all__ = [
    "SCHEMA",
    "SUFFIX",
    "OutputLockedError",
    "build_examples",
    "check_output_path",
    "load_records",
    "locked_output",
    "read_trajectories",
    "repair_torn_line",
    "scan_records",
]

SCHEMA = "r2vcal.trajectory/v1"
#: The only file suffix collection writes to.
SUFFIX = ".jsonl"
# every record line starts with this (``schema`` is the record's first key)
_PREFIX = json.dumps({"schema": SCHEMA})[:-1].encode()


class OutputLockedError(RuntimeError):
    """Another collection run holds the lock on the output file."""


def _check_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record of one line, or ``None`` and what is wrong with it."""
    try:
        rec = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return None, f"is not valid JSON ({exc})"
    if not isinstance(rec, dict):
        return None, f"is a JSON {type(rec).__name__}, not a record object"
    if rec.get("schema") != SCHEMA:
        return None, (
            f"has schema {rec.get('schema')!r}, not {SCHEMA!r} (a foreign record, "
            "or one from another version)"
        )
    if not isinstance(rec.get("key"), str):
        return None, f"has no string 'key' (got {rec.get('key')!r})"
    return rec, ""


def scan_records(
    fh: IO[bytes], path: Path
) -> tuple[list[dict[str, Any]], int | None, bytes]:
    """Read every record; refuse a file with a foreign or unreadable line.

    Returns the records, the byte offset of a torn final line (``None`` when
    the file ends with a newline), and what repairing it needs: ``b""`` to
    cut the line off, ``b"\\n"`` when it is a complete record that only lacks
    its newline.
    """
    records: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    offset = 0
    fh.seek(0)
    for lineno, raw in enumerate(fh, start=1):
        if not raw.endswith(b"\n"):  # the final line, torn by a killed run
            rec, _ = _check_line(raw)
            if rec is not None and rec["key"] not in first_line:
                records.append(rec)
                return records, offset, b"\n"
            if raw.startswith(_PREFIX) or _PREFIX.startswith(raw):
                return records, offset, b""
        rec, problem = _check_line(raw)
        if rec is None:
            what = (
                "its first line is not an r2vcal.trajectory/v1 record (not a file "
                "written by pipelines.collect)"
                if lineno == 1
                else f"line {lineno} {problem}"
            )
            raise ValueError(
                f"{path}: {what}; refusing to read or modify it. Only a torn final "
                "line (no trailing newline) is repaired; move the file away or "
                "fix that line by hand."
                + (f" Line 1 {problem}." if lineno == 1 else "")
            )
        key = rec["key"]
        if key in first_line:
            raise ValueError(
                f"{path}: line {lineno} repeats the key {key!r} of line "
                f"{first_line[key]}; refusing to read or modify it. Remove the "
                "duplicate by hand."
            )
        first_line[key] = lineno
        records.append(rec)
        offset += len(raw)
    return records, None, b""


def repair_torn_line(fh: IO[bytes], offset: int | None, fix: bytes) -> None:
    if offset is None:
        return
    if fix:
        fh.seek(0, os.SEEK_END)
        fh.write(fix)
    else:
        fh.truncate(offset)
    fh.flush()
    os.fsync(fh.fileno())


def check_output_path(path: Path) -> None:
    if path.suffix != SUFFIX:
        raise ValueError(
            f"out must be a {SUFFIX} file; got {str(path)!r}. Collection never "
            f"writes to other files (did you mean {str(path.with_suffix(SUFFIX))!r}?)."
        )
    if path.exists() and not path.is_file():
        raise ValueError(f"out {str(path)!r} exists and is not a regular file.")


@contextlib.contextmanager
def locked_output(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for appending (created if missing) under an exclusive lock."""
    check_output_path(path)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(
                f"{path} is locked by another collection run (fcntl.flock); wait "
                "for it to finish, or pass another out."
            ) from None
        yield fh


def load_records(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a trajectory file, skipping a torn final line.

    Parameters
    ----------
    path : str or Path
    repair : bool, default=False
        Remove a torn final line (the last line, without its newline) from
        the file, under the same exclusive lock a collection run holds.

    Returns
    -------
    list of dict

    Raises
    ------
    ValueError
        When a line other than a torn final one is not an
        ``r2vcal.trajectory/v1`` record, or repeats a key; the message names
        the line. The file is left untouched.
    OutputLockedError
        With ``repair=True``, when a collection run holds the file.
    """
    path = Path(path)
    if not path.is_file():
        return []
    if repair:
        with locked_output(path) as fh:
            records, offset, fix = scan_records(fh, path)
            repair_torn_line(fh, offset, fix)
        return records
    with open(path, "rb") as fh:
        return scan_records(fh, path)[0]


def read_trajectories(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Load :mod:`pipelines.collect` records from one or more JSONL files.

    Parameters
    ----------
    paths : path or iterable of paths

    Returns
    -------
    list of dict
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records: list[dict[str, Any]] = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(
                f"trajectories file {str(p)!r} does not exist; create it with "
                "`python -m pipelines.collect --out ...`."
            )
        records += load_records(p)
    if not records:
        raise ValueError(f"no trajectory records found in {list(map(str, paths))}.")
    return records


def build_examples(
    records: Iterable[dict[str, Any]],
    *,
    only_successful: bool = True,
    **prompt_kwargs: Any,
) -> list[dict[str, Any]]:
    """Prompt-completion examples, one per teacher step.

    Parameters
    ----------
    records : iterable of dict
        Trajectory records (``r2vcal.trajectory/v1``).
    only_successful : bool, default=True
        Skip episodes the teacher did not win.
    **prompt_kwargs
        Passed to :func:`format_prompt` (``n_turns``, ``n_actions``, ...).

    Returns
    -------
    list of dict
        Keys ``prompt``, ``completion`` (``" " + action``), ``task``,
        ``seed``, ``t`` (1-based step), ``action``.
    """
    out = []
    for rec in records:
        if only_successful and not rec.get("success", False):
            continue
        history: list[tuple[str, str]] = []
        for s in rec["steps"]:
            prompt = format_prompt(rec["initial_observation"], history, **prompt_kwargs)
            out.append(
                {
                    "prompt": prompt,
                    "completion": " " + s["action"].strip(),
                    "task": rec["task"],
                    "seed": int(rec["seed"]),
                    "t": int(s["t"]),
                    "action": s["action"].strip(),
                }
            )
            history.append((s["action"], s["observation"]))
    return out
