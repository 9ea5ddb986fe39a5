"""Prefect side of the BI hand-off: the ``publish-bi`` task around :func:`sqflow.bi.publish_run`.

Where the PostgreSQL URL comes from (first found wins; never from code, never logged):

1. ``postgres_url`` passed in (for tests and notebooks);
2. the environment variable ``SQFLOW_POSTGRES_URL`` of the process that runs the task;
3. a Prefect ``Secret`` block whose NAME is given by ``postgres_secret_block`` (argument, key
   ``postgres_secret_block`` of the run's config dict, or ``SQFLOW_POSTGRES_SECRET_BLOCK``);
   create it once with ``Secret(value="postgresql://user:pass@host/db").save("sqflow-postgres")``
   or in the UI (Blocks -> Secret).

None of them set: PostgreSQL is skipped (Parquet and DuckDB are always written). Messages and
the artifact show the URL with its password masked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from data_contracts.tables import ContractViolation
from sqflow.bi import ContractVersionMismatch, SinkError, mask_url, publish_run

ENV_URL = "SQFLOW_POSTGRES_URL"
ENV_SECRET_BLOCK = "SQFLOW_POSTGRES_SECRET_BLOCK"


def _log() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (plain function call)
        return logging.getLogger("sqflow.tasks.publish_bi")


def resolve_postgres_url(
    postgres_url: Any = None,
    postgres_secret_block: str | None = None,
    cfg: Mapping[str, Any] | None = None,
) -> str | None:
    """The PostgreSQL URL from the argument, ``SQFLOW_POSTGRES_URL`` or a Secret block (see the
    module docstring); None when none is configured."""
    if hasattr(postgres_url, "get_secret_value"):  # pydantic SecretStr
        postgres_url = postgres_url.get_secret_value()
    if postgres_url:
        return str(postgres_url)
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    block = (
        postgres_secret_block
        or (cfg or {}).get("postgres_secret_block")
        or os.environ.get(ENV_SECRET_BLOCK)
    )
    if not block:
        return None
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(block)
    except ValueError as exc:
        raise SinkError(
            f"Prefect Secret block {block!r} (PostgreSQL URL) cannot be loaded: "
            f"{exc}. Create it with Secret(value=URL).save({block!r})"
        ) from None
    value = secret.get()
    return str(value) if value else None


def transient_publish_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O errors (not a missing file), a locked DuckDB
    file and dropped database connections; never contract violations, version mismatches or
    constraint failures."""
    try:
        state.result()
    except (ContractViolation, ContractVersionMismatch, FileNotFoundError):
        return False
    except OSError:
        return True
    except SinkError as exc:
        return "cannot connect" in str(exc)
    except Exception as exc:  # noqa: BLE001 - DuckDB lock / dropped PostgreSQL connection
        import duckdb
        import psycopg
        from sqlalchemy.exc import OperationalError

        return isinstance(exc, (duckdb.IOException, OperationalError, psycopg.OperationalError))
    return False


def publish_bi_stage(
    tables: Mapping[str, pd.DataFrame],
    *,
    parquet_dir: str | os.PathLike[str],
    duckdb_path: str | os.PathLike[str] | None,
    postgres_url: Any = None,
    postgres_secret_block: str | None = None,
    cfg: Mapping[str, Any] | None = None,
    artifact: bool = True,
) -> dict[str, Any]:
    """Validate and publish one run's BI tables (Parquet, DuckDB, optional PostgreSQL); when
    called inside a Prefect run, leave a Markdown artifact listing what was written (tables,
    contract versions, rows, files, the masked database URL). Returns
    :meth:`sqflow.bi.PublishResult.to_dict`."""
    log = _log()
    url = resolve_postgres_url(postgres_url, postgres_secret_block, cfg)
    log.info(
        "publishing BI tables: Parquet %s, DuckDB %s, PostgreSQL %s",
        parquet_dir,
        duckdb_path or "-",
        mask_url(url) if url else "not configured",
    )
    res = publish_run(
        tables, parquet_dir=Path(parquet_dir), duckdb_path=duckdb_path, postgres_url=url
    )
    out = res.to_dict()
    if artifact:
        out["artifact"] = _artifact(res)
    log.info(
        "BI tables of run %s published: %s",
        res.run_id,
        ", ".join(f"{k} {v}" for k, v in res.rows.items()),
    )
    return out


def _artifact(res: Any) -> str | None:
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    from prefect.artifacts import create_markdown_artifact

    key = "sqflow-bi-" + "".join(c if c.isalnum() else "-" for c in res.run_id.lower())
    return str(
        create_markdown_artifact(
            res.to_markdown(), key=key, description=f"BI tables of run {res.run_id}"
        )
    )


#: The Prefect task: retried with exponential backoff on I/O and connection errors only; no
#: result cache (the inputs are DataFrames and publishing is idempotent per run_id anyway).
publish_bi_task = task(
    publish_bi_stage,
    name="publish-bi",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=transient_publish_error,
    cache_policy=NO_CACHE,
)


def attach_cluster_report(
    frames: dict[str, pd.DataFrame], published_dir: str | os.PathLike[str], run_id: str
) -> dict[str, pd.DataFrame]:
    """Add the run's ``cluster_report`` rows written by the report stage
    (``<published>/cluster_report/run_date=*/<run_id>.parquet``, contract-typed) to ``frames``,
    so DuckDB and PostgreSQL get them with the run's other tables. Unchanged when the report
    did not run or failed."""
    found = _stage_file(published_dir, "cluster_report", run_id)
    if found is None or "cluster_report" in frames:
        return frames
    return {**frames, "cluster_report": pd.read_parquet(found)}


def _stage_file(published_dir: str | os.PathLike[str], table: str, run_id: str) -> Path | None:
    """The Parquet file a stage wrote for ``run_id`` under ``<published>/<table>/``, if any."""
    found = sorted(Path(published_dir).glob(f"{table}/run_date=*/{run_id}.parquet"))
    return found[-1] if found else None


def attach_drift_reports(
    frames: dict[str, pd.DataFrame], published_dir: str | os.PathLike[str], run_id: str
) -> dict[str, pd.DataFrame]:
    """Add the run's ``drift_reports`` rows written by the monitor stage
    (``<published>/drift_reports/run_date=*/<run_id>.parquet``) to ``frames`` and set the
    ``runs`` row's ``monitor_ran``/``drift_detected`` from its ``decision`` row. Without such a
    file (the monitor did not run) ``frames`` is returned unchanged: no stand-in values."""
    found = _stage_file(published_dir, "drift_reports", run_id)
    if found is None or "drift_reports" in frames:
        return frames
    drift = pd.read_parquet(found)
    out = dict(frames)
    out["drift_reports"] = drift
    if "runs" in out:
        runs = out["runs"].copy()
        decision = drift.loc[drift["statistic"] == "decision", "drifted"]
        runs["monitor_ran"] = True
        runs["drift_detected"] = pd.array(
            [decision.iloc[0] if len(decision) else pd.NA] * len(runs), dtype="boolean"
        )
        out["runs"] = runs
    return out
