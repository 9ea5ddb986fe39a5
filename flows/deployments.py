"""Deployments of the pipeline for ``serve()`` (single machine, ``sqflow serve``); the same
flows, schedule and concurrency as ``prefect.yaml`` (work pool, ``prefect deploy``)."""

from __future__ import annotations

from typing import Any

from prefect.schedules import Cron

from flows.monitor import DEFAULT_RETRAIN_DEPLOYMENT, monitor_flow, retrain_flow
from flows.nightly import cluster_flow, embed_flow, nightly, sample_flow, train_encoder_flow
from flows.settings import load_settings


def served_deployments(
    output: str | None = None, cron: str | None = None, timezone: str | None = None
) -> list[Any]:
    """RunnerDeployments: ``nightly`` on its cron (one run at a time), the stages on demand."""
    s = load_settings()
    params = {"config": {"output_dir": output}} if output else {"config": None}
    sched = Cron(cron or s.cron, timezone=timezone or s.timezone)
    return [
        nightly.to_deployment(
            name="nightly",
            schedules=[sched],
            parameters=params,
            concurrency_limit=1,
            tags=["sqflow"],
            description="sample -> embed -> monitor -> cluster -> report -> publish, every night",
        ),
        train_encoder_flow.to_deployment(name="train-encoder", parameters=params, tags=["sqflow"]),
        sample_flow.to_deployment(name="sample", parameters=params, tags=["sqflow"]),
        embed_flow.to_deployment(name="embed", tags=["sqflow"]),
        cluster_flow.to_deployment(name="cluster", tags=["sqflow"]),
        monitor_flow.to_deployment(name="monitor", tags=["sqflow"]),
        # the monitor finds this one by name and runs retraining through it
        retrain_flow.to_deployment(
            name=DEFAULT_RETRAIN_DEPLOYMENT.split("/", 1)[1], tags=["sqflow"]
        ),
    ]
