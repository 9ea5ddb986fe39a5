"""The publish journal: what lets the next run finish or roll back a publish that died half-way.

A run reaches three sinks that cannot share one transaction (Parquet files, a DuckDB file, a
PostgreSQL database). Each sink on its own shows a run whole or not at all (Parquet: the
``runs`` file is the commit marker, written last; DuckDB and PostgreSQL: one transaction). The
journal makes the sinks agree with each other and with the run record:

1. before any sink is touched, :func:`begin` writes ``<journal_dir>/<run_id>.json`` (state
   ``writing``, which sinks, the run date; atomically, fsynced);
2. the sinks are written (any failure: every sink is rolled back, the journal removed, the
   error raised: the run is published nowhere);
3. the journal's state becomes ``written``; the run is still not committed: the caller
   commits by recording the run as completed (the nightly writes ``run.json``) and then calls
   :func:`finish` with ``committed=True`` (journal removed) or ``False`` (rolled back);
4. a process killed anywhere in 1-3 leaves the journal behind. The next run calls
   :func:`recover` under the output lock: a run whose record says completed keeps its rows
   (journal removed), any other is rolled back from every sink (rows deleted, ``runs`` first).

So the commit point of a run is its run record turning ``completed``; before that a BI reader
may see the run for the moments between the sinks' commits and the record's, never half of it,
and never after the next run's recovery unless the record says completed.

A publish of tables derived from a run after the run itself (its ``retrains``,
:func:`sqflow.bi.publish_run_tables`) has its own entry, ``<run_id>.<table>.json``, that
records those ``tables``. It is never held: it commits when every sink is written. A failure,
or a process that dies with the entry left, removes those tables' rows of the run from EVERY
sink of the entry (the sinks not reached still hold the previous rows, which would otherwise
disagree), never the run's other rows: the derived rows are then visible nowhere until they
are published again (their source, e.g. ``models/lineage.jsonl``, still holds them).

The journal never holds a password: PostgreSQL is recorded by its masked URL; rolling it back
needs the URL from the caller.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text, fsync_path
from ..identifiers import check_identifier
from ._common import SinkError, mask_url

log = logging.getLogger("sqflow.bi")

#: default journal folder inside the Parquet folder (a leading ``_`` keeps it out of the
#: datasets pyarrow, Spark and DuckDB's hive readers discover)
JOURNAL_FOLDER = "_sqflow_journal"

__all__ = [
    "JOURNAL_FOLDER",
    "begin",
    "finish",
    "journal_key",
    "journal_path",
    "mark_written",
    "note_sink",
    "read_journals",
    "recover",
    "rollback_run",
]


def journal_key(run_id: str, tables: Sequence[str] | None = None) -> str:
    """Name of the journal entry of a run's publish (``run_id``), or of a publish of just
    ``tables`` of it (``<run_id>.<table>[.<table>...]``)."""
    check_identifier(run_id, "run_id")
    if tables is None:
        return run_id
    for t in tables:
        check_identifier(t, "table")
    return check_identifier(".".join([run_id, *sorted(tables)]), "journal key")


def journal_path(
    journal_dir: str | os.PathLike[str], run_id: str, tables: Sequence[str] | None = None
) -> Path:
    return Path(journal_dir) / f"{journal_key(run_id, tables)}.json"


def begin(
    journal_dir: str | os.PathLike[str],
    run_id: str,
    *,
    run_date: str,
    parquet_dir: str | os.PathLike[str] | None,
    duckdb_path: str | os.PathLike[str] | None,
    postgres_url: Any,
    tables: Sequence[str] | None = None,
) -> Path:
    """Record (durably) that ``run_id`` (or only its ``tables``) is about to be written to the
    given sinks."""
    entry = {
        "run_id": run_id,
        "tables": sorted(tables) if tables is not None else None,
        "run_date": run_date,
        "state": "writing",
        "parquet_dir": str(parquet_dir) if parquet_dir is not None else None,
        "duckdb_path": str(duckdb_path) if duckdb_path is not None else None,
        "postgres": mask_url(postgres_url) if postgres_url else None,
        "pid": os.getpid(),
        "began_at": datetime.now(UTC).isoformat(),
    }
    return atomic_write_text(journal_path(journal_dir, run_id, tables), json.dumps(entry, indent=2))


def mark_written(journal_dir: str | os.PathLike[str], run_id: str) -> None:
    """Every sink holds the run; the caller's record decides (see :func:`finish`)."""
    p = journal_path(journal_dir, run_id)
    entry = json.loads(p.read_text())
    entry["state"] = "written"
    entry["written_at"] = datetime.now(UTC).isoformat()
    atomic_write_text(p, json.dumps(entry, indent=2))


def note_sink(
    journal_dir: str | os.PathLike[str],
    run_id: str,
    sink: str,
    tables: Sequence[str] | None = None,
) -> None:
    """Record (durably) that ``sink`` is about to be written: a rollback cleans only the sinks
    a publish reached."""
    p = journal_path(journal_dir, run_id, tables)
    entry = json.loads(p.read_text())
    entry.setdefault("sinks_started", []).append(sink)
    atomic_write_text(p, json.dumps(entry, indent=2))


def read_journals(journal_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every journal entry left in ``journal_dir`` (a publish in progress or one that died)."""
    d = Path(journal_dir)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            entry = json.loads(p.read_text())
        except (OSError, ValueError):  # a torn entry cannot exist (atomic), but be safe
            entry = {"run_id": p.stem, "state": "unreadable"}
        entry["path"] = str(p)
        out.append(entry)
    return out


def _remove(
    journal_dir: str | os.PathLike[str], run_id: str, tables: Sequence[str] | None = None
) -> None:
    p = journal_path(journal_dir, run_id, tables)
    p.unlink(missing_ok=True)
    fsync_path(p.parent)


def rollback_run(
    run_id: str,
    *,
    parquet_dir: str | os.PathLike[str] | None,
    duckdb_path: str | os.PathLike[str] | None,
    postgres_url: Any = None,
    postgres_recorded: str | None = None,
    tables: Sequence[str] | None = None,
) -> dict[str, int]:
    """Remove every row of ``run_id`` from the given sinks (``runs`` first in each), or only
    its rows of ``tables``; returns
    the rows (DuckDB, PostgreSQL) or files (Parquet) removed per sink. Each sink is cleaned
    even when another fails; then :class:`SinkError` names the sinks that could not be cleaned
    (also PostgreSQL recorded as ``postgres_recorded``, its masked URL, without a
    ``postgres_url``: it cannot be cleaned without its URL)."""
    from .duck import delete_run as duck_delete
    from .parquet import delete_run_files
    from .postgres import delete_run as pg_delete

    check_identifier(run_id, "run_id")
    removed: dict[str, int] = {}
    errors: list[str] = []
    if parquet_dir is not None:  # the commit marker of Parquet goes first
        try:
            removed["parquet_files"] = delete_run_files(parquet_dir, run_id, tables)
        except OSError as exc:
            errors.append(f"Parquet {parquet_dir}: {exc}")
    if duckdb_path is not None:
        try:
            removed["duckdb"] = duck_delete(duckdb_path, run_id, tables)
        except Exception as exc:  # noqa: BLE001 - reported below, the others still cleaned
            errors.append(f"DuckDB {duckdb_path}: {type(exc).__name__}: {exc}")
    if postgres_url:
        try:
            removed["postgres"] = pg_delete(postgres_url, run_id, tables)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{type(exc).__name__}: {exc}")
    elif postgres_recorded:
        errors.append(
            f"PostgreSQL {postgres_recorded}: no URL configured (SQFLOW_POSTGRES_URL or the "
            "Secret block) to remove the run from it"
        )
    if errors:
        raise SinkError(f"run {run_id}: could not remove it from " + "; ".join(errors))
    return removed


def finish(
    journal_dir: str | os.PathLike[str],
    run_id: str,
    *,
    committed: bool,
    postgres_url: Any = None,
    skip: tuple[str, ...] = (),
    tables: Sequence[str] | None = None,
) -> dict[str, Any]:
    """End the publish of ``run_id``: ``committed`` (the run record says completed) keeps the
    rows and removes the journal; otherwise every sink the journal says was reached is rolled
    back first (except those in ``skip``: a transactional sink whose own write failed holds
    nothing of the run). If a sink cannot be cleaned, :class:`SinkError` is raised and the
    journal stays for the next run. Without a journal (nothing was published) this does
    nothing. ``tables``: the entry of a publish of just those tables (see the module
    docstring): rolling it back removes those tables' rows of the run from every sink of the
    entry."""
    p = journal_path(journal_dir, run_id, tables)
    out: dict[str, Any] = {"run_id": run_id}
    if tables is not None:
        out["tables"] = sorted(tables)
    if not p.exists():
        return {**out, "action": "none"}
    entry = json.loads(p.read_text())
    if committed:
        _remove(journal_dir, run_id, tables)
        return {**out, "action": "committed"}
    # derived tables: every sink (those not reached hold the previous rows); a run: the
    # sinks the publish reached
    sinks = {"parquet", "duckdb", "postgres"} if tables is not None else set()
    started = (sinks or set(entry.get("sinks_started", []))) - set(skip)
    removed = rollback_run(
        run_id,
        parquet_dir=entry.get("parquet_dir") if "parquet" in started else None,
        duckdb_path=entry.get("duckdb_path") if "duckdb" in started else None,
        postgres_url=postgres_url if "postgres" in started and entry.get("postgres") else None,
        postgres_recorded=entry.get("postgres") if "postgres" in started else None,
        tables=tables,
    )
    _remove(journal_dir, run_id, tables)
    log.info(
        "run %s: publish%s rolled back (%s)",
        run_id,
        f" of {sorted(tables)}" if tables is not None else "",
        removed,
    )
    return {**out, "action": "rolled back", "removed": removed}


def recover(
    journal_dir: str | os.PathLike[str],
    *,
    is_committed: Callable[[str], bool],
    postgres_url: Any = None,
) -> list[dict[str, Any]]:
    """Finish every publish a dead process left in ``journal_dir``: keep the runs
    ``is_committed(run_id)`` says completed, roll back the others. Call it only while no other
    publisher writes to these sinks (the nightly holds the output lock). Returns one action per
    journal entry."""
    actions = []
    for entry in read_journals(journal_dir):
        rid, tables = entry["run_id"], entry.get("tables")
        try:
            # a derived-tables publish is never held: an entry left means it died half-way
            committed = is_committed(rid) if tables is None else False
            actions.append(
                finish(
                    journal_dir,
                    rid,
                    committed=committed,
                    postgres_url=postgres_url,
                    tables=tables,
                )
            )
        except SinkError as exc:  # kept for the next run; this one goes on
            log.error("%s", exc)
            actions.append({"run_id": rid, "action": "rollback incomplete", "error": str(exc)})
    return actions
