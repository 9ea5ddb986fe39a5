"""The ``publish`` Prefect task around :func:`sqflow.pipeline.publish.publish_stage`: where the
PostgreSQL URL comes from, which failures are retried, and the BI artifact.

Where the PostgreSQL URL comes from (first found wins; never from code, never logged):

1. ``postgres_url`` passed in (for tests and notebooks);
2. the environment variable ``SQFLOW_POSTGRES_URL`` of the process that runs the task;
3. a Prefect ``Secret`` block whose NAME is given by ``postgres_secret_block`` (argument, key
   the ``postgres_secret_block`` setting, or ``SQFLOW_POSTGRES_SECRET_BLOCK``);
   create it once with ``Secret(value="postgresql://user:pass@host/db").save("sqflow-postgres")``
   or in the UI (Blocks -> Secret).

None of them set: PostgreSQL is skipped (Parquet and DuckDB are always written). Messages and
the artifact show the URL with its password masked.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from data_contracts.run_record import RunRecord
from data_contracts.settings import PipelineSettings
from data_contracts.tables import ContractViolation
from sqflow.bi import ContractVersionMismatch, SinkError
from sqflow.pipeline.publish import publish_retrains_stage, publish_stage

from . import task_factory  # noqa: F401 - installs the engine log forwarding
from .artifacts import create_bi_artifact

ENV_URL = "SQFLOW_POSTGRES_URL"
ENV_SECRET_BLOCK = "SQFLOW_POSTGRES_SECRET_BLOCK"

__all__ = [
    "publish_retrains_task",
    "publish_task",
    "resolve_postgres_url",
    "transient_publish_error",
]


def resolve_postgres_url(
    postgres_url: Any = None,
    postgres_secret_block: str | None = None,
) -> str | None:
    """The PostgreSQL URL from the argument, ``SQFLOW_POSTGRES_URL`` or a Secret block (see the
    module docstring); None when none is configured."""
    if hasattr(postgres_url, "get_secret_value"):  # pydantic SecretStr
        postgres_url = postgres_url.get_secret_value()
    if postgres_url:
        return str(postgres_url)
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    block = postgres_secret_block or os.environ.get(ENV_SECRET_BLOCK)
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


def publish(settings: PipelineSettings, run_id: str, record: RunRecord) -> dict[str, Any]:
    """:func:`publish_stage` into the configured PostgreSQL too (URL resolved here, never
    logged), leaving a Markdown artifact of what was written."""
    url = resolve_postgres_url(None, settings.postgres_secret_block)
    return publish_stage(
        settings,
        run_id,
        record,
        postgres_url=url,
        on_published=lambda result: create_bi_artifact(result, record.dataset),
    )


#: retried with exponential backoff on I/O and connection errors only (publishing a run is
#: idempotent: its rows and files are replaced)
publish_task = task(
    publish,
    name="publish",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=transient_publish_error,
)


def publish_retrains(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """:func:`publish_retrains_stage` into the configured PostgreSQL too (URL resolved here)."""
    url = resolve_postgres_url(None, settings.postgres_secret_block)
    return publish_retrains_stage(settings, run_id, postgres_url=url)


#: the retrain flow's publish of a run's ``retrains`` rows; same retry policy (idempotent: the
#: run's retrains rows are replaced from the lineage)
publish_retrains_task = task(
    publish_retrains,
    name="publish-retrains",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=transient_publish_error,
)
