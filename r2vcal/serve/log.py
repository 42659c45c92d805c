"""The decision log of ``r2vcal serve``: JSON lines or crash-safe Parquet.

A ``.jsonl`` log is written by the routing core
(:class:`~r2vcal.cascade.StepRouter`, ``log_path``); a ``.parquet`` log by
:class:`ParquetLog`, whose columns are :meth:`~r2vcal.cascade.Decision.arrow_schema`
(the decision's fields, then the features).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r2vcal.cascade import Decision

__all__: list[str] = []


def log_paths(log_path: str | Path | None) -> tuple[Path | None, Path | None]:
    """``(jsonl, parquet)``: which log ``log_path`` asks for (its folder made).

    Parameters
    ----------
    log_path : str, Path or None
        Ends in ``.jsonl`` (or ``.json``) or ``.parquet``.

    Returns
    -------
    tuple of Path or None
    """
    if log_path is None:
        return None, None
    path = Path(log_path)
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(
            "The 'log_path' parameter of create_app must end in .jsonl or "
            f".parquet. Got {path.name!r} instead."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return (None, path) if path.suffix == ".parquet" else (path, None)


class ParquetLog:
    """Decisions as Parquet, crash-safe.

    Every flush (``every`` rows) writes a complete part file
    ``<path>.parts/part-NNNNNN.parquet`` (written to a temporary name, then
    renamed), so a crash loses at most the rows not yet flushed. A clean
    shutdown merges the parts, after any rows a previous run left in ``path``,
    into ``path``. After a crash, the next start picks the parts up again;
    ``pandas.read_parquet("<path>.parts")`` reads them meanwhile.
    """

    def __init__(self, path: Path, schema: Any, every: int) -> None:
        import pyarrow.parquet as pq

        self.path, self.every, self.schema = path, max(int(every), 1), schema
        self.parts = path.with_name(path.name + ".parts")
        if path.exists():
            if not path.is_file():
                raise ValueError(
                    f"The 'log_path' {str(path)!r} exists and is not a file."
                )
            old = pq.read_schema(path)
            if old.names != schema.names:
                raise ValueError(
                    f"The decision log {str(path)!r} has other columns than this "
                    "server writes (a different router or version); pass another "
                    "log path."
                )
        self.parts.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._next = 1 + max(
            (int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.parquet")),
            default=0,
        )

    def append(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)
            if len(self.rows) >= self.every:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        final = self.parts / f"part-{self._next:06d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(final)
        self._next += 1
        self.rows = []

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.lock:
            self._flush()
            tables = [pq.read_table(self.path)] if self.path.is_file() else []
            parts = sorted(self.parts.glob("part-*.parquet"))
            tables += [pq.read_table(p) for p in parts]
            merged = pa.concat_tables(tables) if tables else self.schema.empty_table()
            tmp = self.path.with_name(self.path.name + ".tmp")
            pq.write_table(merged, tmp)
            tmp.replace(self.path)
            for p in parts:
                p.unlink()
            try:
                self.parts.rmdir()
            except OSError:
                pass

    @classmethod
    def for_decisions(
        cls, path: Path, feature_names: Sequence[str], every: int
    ) -> ParquetLog:
        """A log of :class:`~r2vcal.cascade.Decision` rows (:meth:`add`)."""
        return cls(path, Decision.arrow_schema(feature_names), every)

    def add(self, decision: Decision) -> None:
        """Append one decision (:meth:`~r2vcal.cascade.Decision.arrow_row`)."""
        self.append(decision.arrow_row())
