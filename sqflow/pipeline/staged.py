"""Where a stage keeps BI rows that belong to the run but must not be visible to BI readers
before the run is published: ``runs/<run_id>/bi/<table>.parquet`` (the monitor's
``drift_reports``, the report's ``cluster_report``). The publish stage reads them and writes
them with the run's other tables, one commit per sink (:mod:`sqflow.bi.journal`)."""

from __future__ import annotations

from pathlib import Path

from ..identifiers import check_identifier
from ..layout import OutputLayout

__all__ = ["staged_table_path"]


def staged_table_path(lay: OutputLayout, run_id: str, table: str) -> Path:
    """``<output>/runs/<run_id>/bi/<table>.parquet`` (both names checked: they form a path)."""
    check_identifier(run_id, "run_id")
    check_identifier(table, "table")
    return lay.run_dir(run_id) / "bi" / f"{table}.parquet"
