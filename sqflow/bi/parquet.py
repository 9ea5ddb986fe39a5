"""Parquet sink: one dataset per table, partitioned by run date, one file per run.

Layout under ``parquet_dir``::

    <table>/run_date=YYYY-MM-DD/<run_id>.parquet

Each file is written to a temporary name in the same folder (``.<run_id>.parquet.<pid>.tmp``,
which no ``*.parquet`` glob matches), flushed to disk and renamed over the target, so a reader
sees the old file or the new one, never half of one. Re-publishing a run replaces its file (and
removes a copy of it from any other run_date folder), so a run is never counted twice.

Commit marker: :func:`write_parquet` writes the ``runs`` file of a run LAST, and
:func:`delete_run_files` removes it FIRST. A run is committed in the Parquet hand-off exactly
when its ``runs`` file exists; BI readers that join (or semi-join) on ``runs`` see a run whole or
not at all, and the publish journal (:mod:`sqflow.bi.journal`) removes the data files of a
publish that died before its ``runs`` file was written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_files import atomic_path, fsync_path
from ..fault_points import kill_point
from ..identifiers import check_identifier
from ._common import PreparedRun, ensure_prepared

#: the table whose file is a run's commit marker in the Parquet hand-off
MARKER_TABLE = "runs"


def parquet_path(
    parquet_dir: str | os.PathLike[str], table: str, run_date: object, run_id: str
) -> Path:
    """``<parquet_dir>/<table>/run_date=<run_date>/<run_id>.parquet``; ``table`` and ``run_id``
    must be safe identifiers (:func:`sqflow.identifiers.check_identifier`), ``run_date`` a date
    or ``YYYY-MM-DD``."""
    check_identifier(table, "table")
    check_identifier(run_id, "run_id")
    day = str(run_date)
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"run_date {day!r} is not a date (valid: YYYY-MM-DD)")
    return Path(parquet_dir) / table / f"run_date={day}" / f"{run_id}.parquet"


def write_parquet(
    tables: Mapping[str, pd.DataFrame] | PreparedRun, parquet_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Validate (unless already prepared) and write every table of one run; returns the file
    of each table. A contract violation raises before any file is touched. The ``runs`` file
    (the run's commit marker) is written after every other table's file."""
    run = ensure_prepared(tables)
    # a derived-tables publish (prepare_run_tables) has no runs file: the run's own governs
    marker = [MARKER_TABLE] if MARKER_TABLE in run.arrow else []
    order = [n for n in run.arrow if n != MARKER_TABLE] + marker
    files = {}
    for name in order:
        if name == MARKER_TABLE:
            kill_point("publish-parquet-data")
        files[name] = write_table_file(parquet_dir, name, run.run_date, run.run_id, run.arrow[name])
    return {name: files[name] for name in run.arrow}


def run_files(parquet_dir: str | os.PathLike[str], run_id: str) -> dict[str, list[Path]]:
    """Every Parquet file of ``run_id`` under ``parquet_dir``, per table."""
    check_identifier(run_id, "run_id")
    root = Path(parquet_dir)
    out: dict[str, list[Path]] = {}
    if not root.is_dir():
        return out
    for table_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        found = sorted(table_dir.glob(f"run_date=*/{run_id}.parquet"))
        if found:
            out[table_dir.name] = found
    return out


def committed_run_ids(parquet_dir: str | os.PathLike[str]) -> set[str]:
    """Run ids whose ``runs`` file (commit marker) exists under ``parquet_dir``."""
    return {p.stem for p in Path(parquet_dir).glob(f"{MARKER_TABLE}/run_date=*/*.parquet")}


def delete_run_files(
    parquet_dir: str | os.PathLike[str], run_id: str, tables: Sequence[str] | None = None
) -> int:
    """Remove every Parquet file of ``run_id``: its ``runs`` file first (readers stop seeing
    the run at once), then the data files; ``tables``: only those tables' files (a derived
    table's publish, the run itself untouched). Returns the number of files removed."""
    files = run_files(parquet_dir, run_id)
    if tables is not None:
        files = {t: f for t, f in files.items() if t in tables}
    n = 0
    for table in [MARKER_TABLE] + [t for t in files if t != MARKER_TABLE]:
        for f in files.get(table, []):
            f.unlink(missing_ok=True)
            fsync_path(f.parent)
            n += 1
    return n


def write_table_file(
    parquet_dir: str | os.PathLike[str], table: str, run_date: object, run_id: str, arrow: pa.Table
) -> Path:
    """Write one run's already validated Arrow table of ``table`` atomically (temp file, fsync,
    rename) to ``<parquet_dir>/<table>/run_date=<date>/<run_id>.parquet``, replacing a copy of
    the same run under another date; returns the file."""
    root = Path(parquet_dir)
    target = parquet_path(root, table, run_date, run_id)
    with atomic_path(target) as tmp:
        pq.write_table(arrow, str(tmp), compression="zstd")
    # the same run published earlier under another date folder: remove that copy
    for other in (root / table).glob(f"run_date=*/{run_id}.parquet"):
        if other != target:
            other.unlink(missing_ok=True)
    return target
