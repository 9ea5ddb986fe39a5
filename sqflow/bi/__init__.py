"""BI hand-off of a run (engine level, no Prefect): contract-checked Parquet, DuckDB, PostgreSQL.

    from sqflow.bi import publish_run
    res = publish_run({"runs": runs_df, "cluster_centers": centers_df, "assignments": asg_df,
                       "drift_reports": drift_df, "quarantine": quarantine_df},
                      parquet_dir="out/published", duckdb_path="out/sqflow.duckdb",
                      postgres_url=None)

Per-sink functions: :func:`write_parquet`, :func:`write_duckdb`, :func:`write_postgres`; all take
either the frames or a :class:`PreparedRun` from :func:`prepare_run` (validated once).

:func:`publish_run_tables` publishes tables derived from a run after it (a run's ``retrains``)
through the same journal and sinks.

``publish_run`` is all or nothing: a failing sink rolls the others back, and
:mod:`sqflow.bi.journal` lets a caller hold the commit until its own record says the run
completed, and the next run finish or roll back a publish that died half-way.
"""

from data_contracts.tables import CONTRACT_VERSION, TABLES, ContractViolation

from . import journal
from ._common import ContractVersionMismatch, PreparedRun, SinkError, mask_url, prepare_run
from .duck import write_duckdb
from .parquet import parquet_path, write_parquet
from .postgres import write_postgres
from .publish import PublishResult, publish_run, publish_run_tables

__all__ = [
    "CONTRACT_VERSION",
    "TABLES",
    "ContractViolation",
    "journal",
    "ContractVersionMismatch",
    "PreparedRun",
    "PublishResult",
    "SinkError",
    "mask_url",
    "parquet_path",
    "prepare_run",
    "publish_run",
    "publish_run_tables",
    "write_duckdb",
    "write_parquet",
    "write_postgres",
]
