"""Shared by the BI sinks: validate a run's frames once, turn them into Arrow tables with the
contract's schema, and mask database URLs for messages."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from data_contracts.tables import TABLES, ContractViolation, get_contract, validate_frame

from ..identifiers import check_identifier


class SinkError(RuntimeError):
    """A sink could not write (the message names the sink and target, never a password)."""


class ContractVersionMismatch(SinkError):
    """A database table was created under another version of its contract."""


@dataclass(frozen=True)
class PreparedRun:
    """A run's tables, validated against their contracts and converted to Arrow."""

    run_id: str
    run_date: dt.date
    frames: dict[str, pd.DataFrame]
    arrow: dict[str, pa.Table] = field(repr=False)

    @property
    def rows(self) -> dict[str, int]:
        return {name: t.num_rows for name, t in self.arrow.items()}


def to_arrow(table: str, df: pd.DataFrame) -> pa.Table:
    """``df`` (already validated) as an Arrow table with exactly the contract's schema and the
    contract recorded in the schema metadata (key ``sqflow.contract``)."""
    schema = get_contract(table).arrow_schema()
    t = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    return t.replace_schema_metadata(schema.metadata)


def prepare_run(tables: Mapping[str, pd.DataFrame]) -> PreparedRun:
    """Validate every frame of one run against its contract before anything is written.

    ``tables`` maps table names (see :data:`data_contracts.tables.TABLES`) to frames; ``runs``
    is required and has exactly one row; every row of every frame carries that row's
    ``run_id``. Raises :class:`ContractViolation` naming the table, column and rows.
    """
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ContractViolation(unknown[0], f"no such table; valid: {sorted(TABLES)}")
    if "runs" not in tables:
        raise ContractViolation(
            "runs", f"a published run needs its 'runs' row; got tables {sorted(tables)}"
        )
    frames = {name: validate_frame(name, df) for name, df in tables.items()}
    runs = frames["runs"]
    if len(runs) != 1:
        raise ContractViolation(
            "runs", f"expected exactly one row (the run being published), got {len(runs)}"
        )
    run_id = str(runs["run_id"].iloc[0])
    run_date = runs["started_at"].iloc[0].tz_convert("UTC").date()
    return _prepared(frames, run_id, run_date)


def prepare_run_tables(
    tables: Mapping[str, pd.DataFrame], run_id: str, run_date: dt.date
) -> PreparedRun:
    """Like :func:`prepare_run` for tables derived from a run that is (or is being) published
    without its ``runs`` row (e.g. its ``retrains``): every row must carry ``run_id``;
    ``run_date`` is the date of the run's ``started_at`` (UTC), its Parquet partition."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ContractViolation(unknown[0], f"no such table; valid: {sorted(TABLES)}")
    if "runs" in tables:
        raise ContractViolation(
            "runs",
            "a run's own row is published with the run (publish_run), not as a derived table",
        )
    if not tables:
        raise ValueError("tables is empty: name at least one table to publish")
    if not isinstance(run_date, dt.date):
        raise TypeError(f"run_date must be a datetime.date, got {type(run_date).__name__}")
    frames = {name: validate_frame(name, df) for name, df in tables.items()}
    return _prepared(frames, run_id, run_date)


def _prepared(frames: dict[str, pd.DataFrame], run_id: str, run_date: dt.date) -> PreparedRun:
    check_identifier(run_id, "run_id")  # it becomes part of file paths in the sinks
    for name, df in frames.items():
        bad = df.index[df["run_id"] != run_id]
        if len(bad):
            rows = [int(i) for i in bad[:10]]
            raise ContractViolation(
                name,
                f"column 'run_id' must be {run_id!r} (the run being published) in every row; "
                f"rows {rows} have {sorted(set(df.loc[bad, 'run_id']))[:3]}",
                [
                    {"column": "run_id", "index": i, "failure_case": df.at[i, "run_id"]}
                    for i in rows
                ],
            )
    arrow = {name: to_arrow(name, df) for name, df in frames.items()}
    return PreparedRun(run_id, run_date, frames, arrow)


def ensure_prepared(tables: Mapping[str, pd.DataFrame] | PreparedRun) -> PreparedRun:
    return tables if isinstance(tables, PreparedRun) else prepare_run(tables)


def mask_url(url: Any) -> str:
    """The URL with its password replaced by ``***`` (for messages and artifacts)."""
    from sqlalchemy.engine import make_url

    if hasattr(url, "get_secret_value"):  # pydantic SecretStr
        url = url.get_secret_value()
    try:
        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a parseable URL: show nothing of it
        return "<unparseable database URL>"


def contract_record(table: str) -> str:
    return json.dumps(get_contract(table).metadata(), sort_keys=True)


def comment_text(table: str) -> str:
    c = get_contract(table)
    return f"{c.description} sqflow contract {c.name} v{c.version}."
