"""PostgreSQL sink: the same tables in a PostgreSQL database given by an SQLAlchemy URL.

``postgresql://user:pass@host:5432/db`` (or ``postgresql+psycopg://...``) works; a bare
``postgresql://`` is sent through psycopg 3 (the driver sqflow installs). The URL is never
logged: messages carry it with the password masked.

Each publish runs in ONE transaction: take an advisory lock (publishers never interleave),
create missing tables (primary key on the contract's key, comments from the contract), check
the contract versions in ``sqflow_contracts``, delete the run's rows from every published table,
COPY the new rows in, record the contract versions, commit. Any failure rolls everything back,
so readers keep seeing the previous state, and a re-run replaces rather than duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from data_contracts.tables import TABLES, get_contract

from ..identifiers import check_identifier
from ._common import (
    ContractVersionMismatch,
    PreparedRun,
    SinkError,
    comment_text,
    contract_record,
    ensure_prepared,
    mask_url,
)

#: pg_advisory_xact_lock key of sqflow publishers (any constant shared by all of them).
ADVISORY_LOCK_KEY = 0x5F5F1_0B1

CONTRACTS_DDL = """CREATE TABLE IF NOT EXISTS sqflow_contracts (
    table_name TEXT PRIMARY KEY,
    contract_version TEXT NOT NULL,
    contract JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def table_ddl(table: str) -> str:
    c = get_contract(table)
    parts = [
        f'"{n}" {t}{"" if nullable else " NOT NULL"}'
        for n, t, nullable in c.sql_columns("postgresql")
    ]
    if c.key:
        parts.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in c.key) + ")")
    body = ",\n    ".join(parts)
    return f'CREATE TABLE IF NOT EXISTS "{table}" (\n    {body}\n)'


def engine_url(url: Any):
    """SQLAlchemy URL object; a driver-less ``postgresql://`` uses psycopg 3."""
    from sqlalchemy.engine import make_url

    if hasattr(url, "get_secret_value"):  # pydantic SecretStr from a settings model
        url = url.get_secret_value()
    u = make_url(str(url)) if not hasattr(url, "drivername") else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if not u.drivername.startswith("postgresql"):
        raise SinkError(
            f"PostgreSQL sink: {mask_url(u)} is not a PostgreSQL URL "
            "(valid: postgresql://user:password@host:port/database)"
        )
    return u


def _ensure_tables(cur, names: list[str]) -> None:
    cur.execute(CONTRACTS_DDL)
    for name in names:
        c = get_contract(name)
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{name}"',))
        existed = cur.fetchone()[0]
        if not existed:
            cur.execute(table_ddl(name))
            cur.execute(f'COMMENT ON TABLE "{name}" IS {_q(comment_text(name))}')
            for col in c.columns:
                cur.execute(f'COMMENT ON COLUMN "{name}"."{col.name}" IS {_q(col.description)}')
        cur.execute("SELECT contract_version FROM sqflow_contracts WHERE table_name = %s", (name,))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "INSERT INTO sqflow_contracts (table_name, contract_version, contract) "
                "VALUES (%s, %s, %s::jsonb)",
                (name, c.version, contract_record(name)),
            )
        elif row[0] != c.version:
            raise ContractVersionMismatch(
                f"PostgreSQL table {name!r} holds contract v{row[0]} but this sqflow writes "
                f"v{c.version}: migrate the table first"
            )
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            (name,),
        )
        have = [r[0] for r in cur.fetchall()]
        for col, sql_type in c.added_columns(have, "postgresql"):  # nullable, added later
            cur.execute(f'ALTER TABLE "{name}" ADD COLUMN "{col}" {sql_type}')
            have.append(col)
        if have != c.column_names:
            raise ContractVersionMismatch(
                f"PostgreSQL table {name!r} has columns {have}; contract v{c.version} wants "
                f"{c.column_names}: migrate the table first"
            )


def _rows(arrow) -> list[tuple]:
    cols = [arrow.column(i).to_pylist() for i in range(arrow.num_columns)]
    return list(zip(*cols))


def write_postgres(tables: Mapping[str, pd.DataFrame] | PreparedRun, url: Any) -> str:
    """Validate (unless already prepared) and upsert one run into PostgreSQL in one
    transaction. Returns the URL with the password masked."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    run = ensure_prepared(tables)
    u = engine_url(url)
    masked = mask_url(u)
    eng = create_engine(u, poolclass=NullPool)
    try:
        try:
            conn = eng.connect()
        except DBAPIError as exc:
            raise SinkError(
                f"PostgreSQL sink: cannot connect to {masked}: "
                f"{type(exc.orig).__name__}: {str(exc.orig).strip()}"
            ) from None
        try:
            with conn.begin():
                pg = conn.connection.driver_connection
                with pg.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                    _ensure_tables(cur, list(TABLES))  # all exist (empty) for BI tools
                    for name, arrow in run.arrow.items():
                        cols = ", ".join(f'"{c}"' for c in arrow.column_names)
                        cur.execute(f'DELETE FROM "{name}" WHERE run_id = %s', (run.run_id,))
                        if arrow.num_rows:
                            with cur.copy(f'COPY "{name}" ({cols}) FROM STDIN') as cp:
                                for row in _rows(arrow):
                                    cp.write_row(row)
                        cur.execute(
                            "INSERT INTO sqflow_contracts (table_name, contract_version, "
                            "contract, updated_at) VALUES (%s, %s, %s::jsonb, now()) "
                            "ON CONFLICT (table_name) DO UPDATE SET contract_version = "
                            "EXCLUDED.contract_version, contract = EXCLUDED.contract, "
                            "updated_at = now()",
                            (name, get_contract(name).version, contract_record(name)),
                        )
        finally:
            conn.close()
    finally:
        eng.dispose()
    return masked


def _connect(url: Any):
    """(engine, connection) to the database at ``url``; :class:`SinkError` naming the masked
    URL when it cannot be reached."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    u = engine_url(url)
    eng = create_engine(u, poolclass=NullPool)
    try:
        return eng, eng.connect()
    except DBAPIError as exc:
        eng.dispose()
        raise SinkError(
            f"PostgreSQL sink: cannot connect to {mask_url(u)}: "
            f"{type(exc.orig).__name__}: {str(exc.orig).strip()}"
        ) from None


def run_rows(url: Any, run_id: str) -> dict[str, int]:
    """Rows of ``run_id`` per published table that exists in the database."""
    check_identifier(run_id, "run_id")
    eng, conn = _connect(url)
    try:
        with conn.begin():
            with conn.connection.driver_connection.cursor() as cur:
                out = {}
                for t in TABLES:
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{t}"',))
                    if cur.fetchone()[0]:
                        cur.execute(f'SELECT count(*) FROM "{t}" WHERE run_id = %s', (run_id,))
                        out[t] = int(cur.fetchone()[0])
                return out
    finally:
        conn.close()
        eng.dispose()


def delete_run(url: Any, run_id: str, tables: Sequence[str] | None = None) -> int:
    """Remove every row of ``run_id`` from every published table (or only from ``tables``) in
    ONE transaction (under the publishers' advisory lock). Returns the rows removed."""
    check_identifier(run_id, "run_id")
    scope = list(TABLES) if tables is None else [t for t in TABLES if t in tables]
    eng, conn = _connect(url)
    removed = 0
    try:
        with conn.begin():
            with conn.connection.driver_connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                for t in ["runs"] + [t for t in TABLES if t != "runs"]:
                    if t not in scope:
                        continue
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{t}"',))
                    if cur.fetchone()[0]:
                        cur.execute(f'DELETE FROM "{t}" WHERE run_id = %s', (run_id,))
                        removed += cur.rowcount
    finally:
        conn.close()
        eng.dispose()
    return removed


def read_contract_versions(url: Any) -> dict[str, str]:
    """``sqflow_contracts`` of the database (table -> contract version)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(engine_url(url))
    try:
        with eng.connect() as conn:
            rows = conn.execute(text("SELECT table_name, contract_version FROM sqflow_contracts"))
            return {r[0]: r[1] for r in rows}
    finally:
        eng.dispose()


__all__ = [
    "delete_run",
    "engine_url",
    "read_contract_versions",
    "run_rows",
    "table_ddl",
    "write_postgres",
]
