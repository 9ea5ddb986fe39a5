"""The ``report`` Prefect task: :func:`sqflow.pipeline.report.report_stage` (the cluster report
page, its table and the ``cluster_report`` BI file) plus two artifacts (a Markdown summary with
a link to the page, and the per-cluster table)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from data_contracts.run_record import RunRecord
from data_contracts.settings import PipelineSettings
from sqflow.pipeline.report import report_stage

from . import task_factory  # noqa: F401 - installs the engine log forwarding
from .artifacts import create_report_artifacts

__all__ = ["report_task"]


def report_with_artifacts(
    settings: PipelineSettings, run_id: str, record: RunRecord | None = None
) -> dict[str, Any]:
    """:func:`report_stage`'s dict plus ``artifacts`` (ids of the Markdown link artifact and the
    table artifact)."""
    info = report_stage(settings, run_id, record)
    info["artifacts"] = create_report_artifacts(
        run_id, info, record.dataset if record is not None else None
    )
    return info


# no result cache: the report reads files that change between runs under the same inputs
report_task = task(report_with_artifacts, name="report", cache_policy=NO_CACHE)
