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

from ..fault_points import kill_point
from . import journal
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


def default_journal_dir(
    parquet_dir: str | os.PathLike[str] | None, duckdb_path: str | os.PathLike[str] | None
) -> Path | None:
    """Where :func:`publish_run` keeps its journal by default: ``<parquet_dir>/_sqflow_journal``,
    else ``<folder of the DuckDB file>/_sqflow_journal`` (None without either)."""
    if parquet_dir is not None:
        return Path(parquet_dir) / journal.JOURNAL_FOLDER
    if duckdb_path is not None:
        return Path(duckdb_path).parent / journal.JOURNAL_FOLDER
    return None


def publish_run(
    tables: Mapping[str, pd.DataFrame],
    *,
    parquet_dir: str | os.PathLike[str] | None,
    duckdb_path: str | os.PathLike[str] | None = None,
    postgres_url: Any = None,
    journal_dir: str | os.PathLike[str] | None = None,
    hold_commit: bool = False,
) -> PublishResult:
    """Publish one run's tables to every configured sink, all or nothing.

    ``tables``: table name -> frame (``runs`` with the run's one row is required; the others
    are optional, and an empty frame clears the table's rows of this run). Every frame is
    validated against its contract first (and the run id must be a safe identifier, it names
    files): a violation raises :class:`data_contracts.tables.ContractViolation` (naming table,
    column and rows) and nothing is written anywhere. Then a journal entry is written
    (``journal_dir``, default :func:`default_journal_dir`) and, in order: Parquet under
    ``parquet_dir`` (atomic file per table, the ``runs`` file last as the run's commit marker),
    the DuckDB file at ``duckdb_path`` and PostgreSQL at ``postgres_url`` (one transaction
    each). When a sink fails, the sinks already written are rolled back (the run's rows
    removed), the journal is removed and the error raised: the run is visible nowhere.

    ``hold_commit=False`` (default): the journal is removed on success. ``True``: the journal
    stays (state ``written``) until the caller records the run's outcome and calls
    :func:`sqflow.bi.journal.finish` (the nightly does so after ``run.json``); a process that
    dies before is finished or rolled back by :func:`sqflow.bi.journal.recover`.
    """
    t0 = time.perf_counter()
    run = prepare_run(tables)
    res = PublishResult(
        run.run_id, run.run_date, run.rows, seconds={"validate": time.perf_counter() - t0}
    )
    jdir = journal_dir if journal_dir is not None else default_journal_dir(parquet_dir, duckdb_path)
    if jdir is not None:
        journal.begin(
            jdir,
            run.run_id,
            run_date=run.run_date.isoformat(),
            parquet_dir=parquet_dir,
            duckdb_path=duckdb_path,
            postgres_url=postgres_url,
        )
    current = None  # the sink being written

    def reach(sink: str) -> None:
        nonlocal current
        current = sink
        if jdir is not None:
            journal.note_sink(jdir, run.run_id, sink)

    try:
        if parquet_dir is not None:
            reach("parquet")
            t = time.perf_counter()
            res.parquet_files = write_parquet(run, parquet_dir)
            res.seconds["parquet"] = time.perf_counter() - t
            log.info("run %s: Parquet written under %s", run.run_id, parquet_dir)
        kill_point("publish-parquet")
        if duckdb_path is not None:
            reach("duckdb")
            t = time.perf_counter()
            res.duckdb_path = write_duckdb(run, duckdb_path)
            res.seconds["duckdb"] = time.perf_counter() - t
            log.info("run %s: DuckDB upserted in %s", run.run_id, duckdb_path)
        kill_point("publish-duckdb")
        if postgres_url:
            reach("postgres")
            t = time.perf_counter()
            res.postgres = write_postgres(run, postgres_url)
            res.seconds["postgres"] = time.perf_counter() - t
            log.info("run %s: PostgreSQL upserted in %s", run.run_id, res.postgres)
    except BaseException:
        log.error("run %s: publish failed; removing it from every sink", run.run_id)
        # a transactional sink that failed committed nothing (PostgreSQL may be unreachable)
        skip = (current,) if current in ("duckdb", "postgres") else ()
        try:
            if jdir is not None:
                journal.finish(
                    jdir, run.run_id, committed=False, postgres_url=postgres_url, skip=skip
                )
            else:
                journal.rollback_run(
                    run.run_id,
                    parquet_dir=parquet_dir,
                    duckdb_path=duckdb_path if current != "duckdb" else None,
                    postgres_url=None,  # written last: it failed or was not reached
                )
        except Exception as exc:  # noqa: BLE001 - the journal stays; the next run retries
            log.error("run %s: rollback incomplete (%s); the next run retries it", run.run_id, exc)
        raise
    if jdir is not None:
        if hold_commit:
            journal.mark_written(jdir, run.run_id)
        else:
            journal.finish(jdir, run.run_id, committed=True)
    return res
