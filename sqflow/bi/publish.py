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
from ._common import PreparedRun, prepare_run, prepare_run_tables
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
    return _publish(
        run,
        time.perf_counter() - t0,
        parquet_dir=parquet_dir,
        duckdb_path=duckdb_path,
        postgres_url=postgres_url,
        journal_dir=journal_dir,
        hold_commit=hold_commit,
        scope=None,
    )


def publish_run_tables(
    tables: Mapping[str, pd.DataFrame],
    *,
    run_id: str,
    run_date: dt.date,
    parquet_dir: str | os.PathLike[str] | None,
    duckdb_path: str | os.PathLike[str] | None = None,
    postgres_url: Any = None,
    journal_dir: str | os.PathLike[str] | None = None,
) -> PublishResult:
    """Publish tables derived from run ``run_id`` after the run itself (its ``retrains``):
    replace the run's rows of exactly these tables in every configured sink; the run's other
    tables are not touched. ``run_date``: the date of the run's ``started_at`` (UTC), so that
    the Parquet file lands in the run's partition. An empty frame clears the table's rows of
    the run.

    The same path as :func:`publish_run`: validated against the contracts first (nothing
    written on a violation), a journal entry of its own (``<run_id>.<table>``, see
    :mod:`sqflow.bi.journal`), Parquet (atomic file per table), DuckDB and PostgreSQL (one
    transaction each), committed at once. A failing sink, or a process that dies before the
    end, removes these tables' rows of the run from every sink of the entry (visible nowhere,
    never half); a new publish restores them. The run's own commit still decides whether
    the run is visible: rolling the run back removes these rows with it. A BI reader joins
    them to ``runs`` on ``run_id``."""
    t0 = time.perf_counter()
    run = prepare_run_tables(tables, run_id, run_date)
    return _publish(
        run,
        time.perf_counter() - t0,
        parquet_dir=parquet_dir,
        duckdb_path=duckdb_path,
        postgres_url=postgres_url,
        journal_dir=journal_dir,
        hold_commit=False,
        scope=sorted(run.arrow),
    )


def _publish(
    run: PreparedRun,
    validate_s: float,
    *,
    parquet_dir: Any,
    duckdb_path: Any,
    postgres_url: Any,
    journal_dir: Any,
    hold_commit: bool,
    scope: list[str] | None,
) -> PublishResult:
    """Journal, sinks in order, rollback on failure (see :func:`publish_run`); ``scope``: the
    tables of a derived-tables publish (None: the whole run)."""
    res = PublishResult(run.run_id, run.run_date, run.rows, seconds={"validate": validate_s})
    jdir = journal_dir if journal_dir is not None else default_journal_dir(parquet_dir, duckdb_path)
    if jdir is not None:
        journal.begin(
            jdir,
            run.run_id,
            run_date=run.run_date.isoformat(),
            parquet_dir=parquet_dir,
            duckdb_path=duckdb_path,
            postgres_url=postgres_url,
            tables=scope,
        )
    current = None  # the sink being written

    def reach(sink: str) -> None:
        nonlocal current
        current = sink
        if jdir is not None:
            journal.note_sink(jdir, run.run_id, sink, scope)

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
        what = f"tables {scope}" if scope is not None else "it"
        log.error("run %s: publish failed; removing %s from every sink", run.run_id, what)
        # a transactional sink that failed committed nothing (PostgreSQL may be unreachable);
        # a derived-tables publish clears every sink (the others hold the previous rows)
        skip = (current,) if current in ("duckdb", "postgres") and scope is None else ()
        try:
            if jdir is not None:
                journal.finish(
                    jdir,
                    run.run_id,
                    committed=False,
                    postgres_url=postgres_url,
                    skip=skip,
                    tables=scope,
                )
            else:
                journal.rollback_run(
                    run.run_id,
                    parquet_dir=parquet_dir,
                    duckdb_path=duckdb_path if current != "duckdb" or scope else None,
                    # written last: it failed or was not reached (a run); derived: all sinks
                    postgres_url=postgres_url if scope is not None else None,
                    tables=scope,
                )
        except Exception as exc:  # noqa: BLE001 - the journal stays; the next run retries
            log.error("run %s: rollback incomplete (%s); the next run retries it", run.run_id, exc)
        raise
    if jdir is not None:
        if hold_commit:
            journal.mark_written(jdir, run.run_id)
        else:
            journal.finish(jdir, run.run_id, committed=True, tables=scope)
    return res
