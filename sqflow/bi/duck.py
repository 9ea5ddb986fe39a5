"""DuckDB sink: the BI tables as real tables in one DuckDB file (self-contained: a BI tool needs
only the file), typed by the contracts and upserted per run_id in one transaction.

Each publish: create missing tables (with column comments from the contract), check the
contract version recorded in ``sqflow_contracts``, then in ONE transaction delete the run's
rows from every published table and insert the new ones, and record the contract versions. A
failure anywhere rolls the whole run back: readers see the previous state.

DuckDB allows one writing process per file, and a process holding the file blocks writers from
other processes. So by default the upsert runs on a copy that then atomically replaces the file
(:func:`write_duckdb` ``swap=True``): BI tools keep their (read-only) connections to the old
file and see the new run on their next connection; a failed publish leaves the file untouched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from data_contracts.tables import TABLES, get_contract

from ..atomic_files import atomic_path
from ..identifiers import check_identifier
from ._common import (
    ContractVersionMismatch,
    PreparedRun,
    comment_text,
    contract_record,
    ensure_prepared,
)

MARKER_TABLE = "runs"

CONTRACTS_DDL = """CREATE TABLE IF NOT EXISTS sqflow_contracts (
    table_name VARCHAR PRIMARY KEY,
    contract_version VARCHAR NOT NULL,
    contract JSON NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)"""


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def table_ddl(table: str) -> str:
    cols = ",\n    ".join(
        f'"{n}" {t}{"" if nullable else " NOT NULL"}'
        for n, t, nullable in get_contract(table).sql_columns("duckdb")
    )
    return f'CREATE TABLE "{table}" (\n    {cols}\n)'


def _ensure_table(con, table: str) -> None:
    c = get_contract(table)
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = ? "
        "AND table_schema = current_schema()",
        [table],
    ).fetchall()
    if kinds and kinds[0][0] == "VIEW":  # the older layout kept views over Parquet here
        con.execute(f'DROP VIEW "{table}"')
        kinds = []
    if not kinds:
        con.execute(table_ddl(table))
        con.execute(f'COMMENT ON TABLE "{table}" IS {_q(comment_text(table))}')
        for col in c.columns:
            con.execute(f'COMMENT ON COLUMN "{table}"."{col.name}" IS {_q(col.description)}')
    row = con.execute(
        "SELECT contract_version FROM sqflow_contracts WHERE table_name = ?", [table]
    ).fetchone()
    if row is None:
        con.execute(
            "INSERT INTO sqflow_contracts VALUES (?, ?, ?, now())",
            [table, c.version, contract_record(table)],
        )
    elif row[0] != c.version:
        raise ContractVersionMismatch(
            f"DuckDB table {table!r} holds contract v{row[0]} but this sqflow writes "
            f"v{c.version}: migrate the table (or publish into a new database file) first"
        )
    have = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]
    for name, sql_type in c.added_columns(have, "duckdb"):  # nullable columns added later
        con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {sql_type}')
        have.append(name)
    if have != c.column_names:
        raise ContractVersionMismatch(
            f"DuckDB table {table!r} has columns {have}; contract v{c.version} wants "
            f"{c.column_names}: migrate the table or publish into a new database file"
        )


def _upsert(con, run: PreparedRun) -> None:
    """Create missing tables, then replace the run's rows of every given table, in one
    transaction; checkpoint so that the file holds everything (no write-ahead log left)."""
    sources = {name: f"_sqflow_src_{name}" for name in run.arrow}
    for name, view in sources.items():
        con.register(view, run.arrow[name])
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(CONTRACTS_DDL)
        for name in TABLES:  # every table exists (empty) for BI tools from the start
            _ensure_table(con, name)
        for name, arrow in run.arrow.items():
            cols = ", ".join(f'"{c}"' for c in arrow.column_names)
            con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run.run_id])
            con.execute(f'INSERT INTO "{name}" ({cols}) SELECT {cols} FROM {sources[name]}')
            con.execute(
                "INSERT OR REPLACE INTO sqflow_contracts VALUES (?, ?, ?, now())",
                [name, get_contract(name).version, contract_record(name)],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    for view in sources.values():
        con.unregister(view)
    con.execute("CHECKPOINT")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_duckdb(
    tables: Mapping[str, pd.DataFrame] | PreparedRun,
    duckdb_path: str | os.PathLike[str],
    *,
    swap: bool = True,
) -> Path:
    """Validate (unless already prepared) and upsert one run into the DuckDB file (created if
    missing). All tables and the contract records change in one transaction.

    ``swap=True`` (default): the upsert runs on a copy of the file that then replaces it
    (``os.replace``; publishers serialised by ``.<name>.lock``). BI tools that hold the file
    open (read-only) never block the nightly publish and never see a half-written file; they
    see the new run when they reconnect. ``swap=False`` writes in place (needs exclusive
    access to the file; cheaper for very large files)."""
    import duckdb

    run = ensure_prepared(tables)
    path = Path(duckdb_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not swap:
        con = duckdb.connect(str(path))
        try:
            _upsert(con, run)
        finally:
            con.close()
        return path
    _swap(path, lambda con: _upsert(con, run))
    return path


def _swap(path: Path, change) -> None:
    """Run ``change(con)`` on a copy of the DuckDB file at ``path`` (created when missing) and
    move the copy onto ``path`` when it returns; publishers serialised by ``.<name>.lock``. A
    failure (or a killed process) leaves ``path`` untouched; the copy is a ``.<name>.<pid>.tmp``
    file that the next run's recovery removes."""
    import duckdb

    with _flock(path.with_name(f".{path.name}.lock")), atomic_path(path) as tmp:
        tmp_wal = Path(f"{tmp}.wal")
        tmp.unlink(missing_ok=True)
        tmp_wal.unlink(missing_ok=True)
        try:
            if path.exists():
                if Path(f"{path}.wal").exists():  # an interrupted in-place writer: replay it
                    duckdb.connect(str(path)).close()
                shutil.copyfile(path, tmp)
            con = duckdb.connect(str(tmp))
            try:
                change(con)
            finally:
                con.close()
        finally:
            tmp_wal.unlink(missing_ok=True)


def run_rows(duckdb_path: str | os.PathLike[str], run_id: str) -> dict[str, int]:
    """Rows of ``run_id`` per published table in the DuckDB file (read-only; {} when the file
    does not exist)."""
    import duckdb

    check_identifier(run_id, "run_id")
    path = Path(duckdb_path)
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        have = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        return {
            t: con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', [run_id]).fetchone()[0]
            for t in TABLES
            if t in have
        }
    finally:
        con.close()


def delete_run(
    duckdb_path: str | os.PathLike[str], run_id: str, tables: Sequence[str] | None = None
) -> int:
    """Remove every row of ``run_id`` from every published table of the DuckDB file (or only
    from ``tables``), in one transaction on a swapped copy (see :func:`write_duckdb`). Returns
    the rows removed (0 and no write when the file does not exist or holds no such row)."""
    check_identifier(run_id, "run_id")
    path = Path(duckdb_path)
    scope = list(TABLES) if tables is None else [t for t in TABLES if t in tables]
    if sum(n for t, n in run_rows(path, run_id).items() if t in scope) == 0:
        return 0
    removed = 0

    def change(con) -> None:
        nonlocal removed
        have = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        con.execute("BEGIN TRANSACTION")
        try:
            for t in [MARKER_TABLE] + [t for t in TABLES if t != MARKER_TABLE]:
                if t in have and t in scope:
                    n = con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = ?', [run_id])
                    removed += n.fetchone()[0]
                    con.execute(f'DELETE FROM "{t}" WHERE run_id = ?', [run_id])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")

    _swap(path, change)
    return removed
