"""One entry point for the BI hand-off of a run: validate, then Parquet, DuckDB, PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._common import prepare_run
from .duck import write_duckdb
from .parquet import write_parquet
from .postgres import write_postgres

log = logging.getLogger("sqflow.bi")


@dataclass
class PublishResult:
    """What one publish wrote. Holds no secret: ``postgres`` is the masked URL."""

    run_id: str
    run_date: dt.date
    rows: dict[str, int]
    parquet_files: dict[str, Path] = field(default_factory=dict)
    duckdb_path: Path | None = None
    postgres: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_date": self.run_date.isoformat(),
            "rows": self.rows,
            "parquet_files": {k: str(v) for k, v in self.parquet_files.items()},
            "duckdb_path": str(self.duckdb_path) if self.duckdb_path else None,
            "postgres": self.postgres,
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        from data_contracts.tables import CONTRACT_VERSION

        lines = [
            f"# BI tables of run `{self.run_id}`",
            "",
            f"Run date (partition): {self.run_date.isoformat()}",
            "",
            "| table | contract | rows | Parquet file |",
            "|---|---|---:|---|",
        ]
        for name, n in self.rows.items():
            f = self.parquet_files.get(name)
            lines.append(f"| {name} | v{CONTRACT_VERSION[name]} | {n} | {f'`{f}`' if f else '-'} |")
        lines += [
            "",
            f"- DuckDB: {f'`{self.duckdb_path}`' if self.duckdb_path else 'not written'}",
            f"- PostgreSQL: {f'`{self.postgres}`' if self.postgres else 'not configured'}",
            "- Seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()),
            "",
        ]
        return "\n".join(lines)


def publish_run(
    tables: Mapping[str, pd.DataFrame],
    *,
    parquet_dir: str | os.PathLike[str] | None,
    duckdb_path: str | os.PathLike[str] | None = None,
    postgres_url: Any = None,
) -> PublishResult:
    """Publish one run's tables to every configured sink.

    ``tables``: table name -> frame (``runs`` with the run's one row is required; the others
    are optional, and an empty frame clears the table's rows of this run). Every frame is
    validated against its contract first: a violation raises
    :class:`data_contracts.tables.ContractViolation` (naming table, column and rows) and
    nothing is written anywhere. Then, in order: Parquet under ``parquet_dir`` (atomic file per
    table and run), the DuckDB file at ``duckdb_path``, PostgreSQL at ``postgres_url`` (one
    transaction each). Each sink is idempotent per run_id, so after a failure of a later sink
    the whole call can be repeated.
    """
    t0 = time.perf_counter()
    run = prepare_run(tables)
    res = PublishResult(
        run.run_id, run.run_date, run.rows, seconds={"validate": time.perf_counter() - t0}
    )
    if parquet_dir is not None:
        t = time.perf_counter()
        res.parquet_files = write_parquet(run, parquet_dir)
        res.seconds["parquet"] = time.perf_counter() - t
        log.info("run %s: Parquet written under %s", run.run_id, parquet_dir)
    if duckdb_path is not None:
        t = time.perf_counter()
        res.duckdb_path = write_duckdb(run, duckdb_path)
        res.seconds["duckdb"] = time.perf_counter() - t
        log.info("run %s: DuckDB upserted in %s", run.run_id, duckdb_path)
    if postgres_url:
        t = time.perf_counter()
        res.postgres = write_postgres(run, postgres_url)
        res.seconds["postgres"] = time.perf_counter() - t
        log.info("run %s: PostgreSQL upserted in %s", run.run_id, res.postgres)
    return res
