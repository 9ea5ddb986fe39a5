"""Parquet sink: one dataset per table, partitioned by run date, one file per run.

Layout under ``parquet_dir``::

    <table>/run_date=YYYY-MM-DD/<run_id>.parquet

Each file is written to a temporary name in the same folder (``.<run_id>.parquet.<pid>.tmp``,
which no ``*.parquet`` glob matches), flushed to disk and renamed over the target, so a reader
sees the old file or the new one, never half of one. Re-publishing a run replaces its file (and
removes a copy of it from any other run_date folder), so a run is never counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_files import atomic_path
from ._common import PreparedRun, ensure_prepared


def parquet_path(
    parquet_dir: str | os.PathLike[str], table: str, run_date: object, run_id: str
) -> Path:
    return Path(parquet_dir) / table / f"run_date={run_date}" / f"{run_id}.parquet"


def write_parquet(
    tables: Mapping[str, pd.DataFrame] | PreparedRun, parquet_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Validate (unless already prepared) and write every table of one run; returns the file
    of each table. A contract violation raises before any file is touched."""
    run = ensure_prepared(tables)
    return {
        name: write_table_file(parquet_dir, name, run.run_date, run.run_id, table)
        for name, table in run.arrow.items()
    }


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
