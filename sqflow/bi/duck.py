"""DuckDB sink: the BI tables as real tables in one DuckDB file (self-contained: a BI tool needs
only the file), typed by the contracts and upserted per run_id in one transaction.

Each publish: create missing tables (with column comments from the contract), check the
contract version recorded in ``sqflow_contracts``, then in ONE transaction delete the run's
rows from every published table and insert the new ones, and record the contract versions. A
failure anywhere rolls the whole run back: readers see the previous state.

DuckDB allows one writing process per file: a BI tool should open the file read-only (see the
README's "BI hand-off"); while a writer holds it, publishing fails with an I/O error (retried by
the Prefect task).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from data_contracts.tables import get_contract

from ._common import (
    ContractVersionMismatch,
    PreparedRun,
    comment_text,
    contract_record,
    ensure_prepared,
)

CONTRACTS_DDL = """CREATE TABLE IF NOT EXISTS sqflow_contracts (
    table_name VARCHAR PRIMARY KEY,
    contract_version VARCHAR NOT NULL,
    contract JSON NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)"""


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def table_ddl(table: str) -> str:
    cols = ",\n    ".join(f'"{n}" {t}{"" if nullable else " NOT NULL"}'
                          for n, t, nullable in get_contract(table).sql_columns("duckdb"))
    return f'CREATE TABLE "{table}" (\n    {cols}\n)'


def _ensure_table(con, table: str) -> None:
    c = get_contract(table)
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = ? "
        "AND table_schema = current_schema()", [table]).fetchall()
    if kinds and kinds[0][0] == "VIEW":  # the older layout kept views over Parquet here
        con.execute(f'DROP VIEW "{table}"')
        kinds = []
    if not kinds:
        con.execute(table_ddl(table))
        con.execute(f'COMMENT ON TABLE "{table}" IS {_q(comment_text(table))}')
        for col in c.columns:
            con.execute(f'COMMENT ON COLUMN "{table}"."{col.name}" IS {_q(col.description)}')
    row = con.execute("SELECT contract_version FROM sqflow_contracts WHERE table_name = ?",
                      [table]).fetchone()
    if row is not None and row[0] != c.version:
        raise ContractVersionMismatch(
            f"DuckDB table {table!r} holds contract v{row[0]} but this sqflow writes "
            f"v{c.version}: migrate the table (or publish into a new database file) first")
    have = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position", [table]).fetchall()]
    if have != c.column_names:
        raise ContractVersionMismatch(
            f"DuckDB table {table!r} has columns {have}; contract v{c.version} wants "
            f"{c.column_names}: migrate the table or publish into a new database file")


def write_duckdb(tables: Mapping[str, pd.DataFrame] | PreparedRun,
                 duckdb_path: str | os.PathLike[str]) -> Path:
    """Validate (unless already prepared) and upsert one run into the DuckDB file (created if
    missing). All tables and the contract records change in one transaction."""
    import duckdb

    run = ensure_prepared(tables)
    path = Path(duckdb_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    sources = {name: f"_sqflow_src_{name}" for name in run.arrow}
    try:
        for name, view in sources.items():
            con.register(view, run.arrow[name])
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(CONTRACTS_DDL)
            for name in run.arrow:
                _ensure_table(con, name)
            for name, arrow in run.arrow.items():
                cols = ", ".join(f'"{c}"' for c in arrow.column_names)
                con.execute(f'DELETE FROM "{name}" WHERE run_id = ?', [run.run_id])
                con.execute(f'INSERT INTO "{name}" ({cols}) SELECT {cols} FROM {sources[name]}')
                con.execute(
                    "INSERT OR REPLACE INTO sqflow_contracts VALUES (?, ?, ?, now())",
                    [name, get_contract(name).version, contract_record(name)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for view in sources.values():
            con.unregister(view)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path
