"""Deployments of the pipeline for ``serve()`` (single machine, ``sqflow serve``).

One deployment story (see README "Deployments"): ``prefect deploy --all`` registers the
deployments of ``prefect.yaml`` (``nightly/nightly``, ..., ``retrain/sqflow-retrain``) for a
work pool; ``sqflow serve`` registers the same flows under names of its own with the suffix
``-served`` (``nightly/nightly-served``, ..., ``retrain/sqflow-retrain-served``), so the two
never overwrite each other's entrypoint, pull step or schedule, and stopping ``serve`` pauses
only its own. Each family's retrain deployment has the same trigger
(:func:`flows.monitor.retrain_trigger`) for its own name, which the family's nightly puts in
the drift event: one drift event starts one retrain.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.monitor import SERVED_RETRAIN_DEPLOYMENT, monitor_flow, retrain_flow, retrain_trigger
from flows.nightly import cluster_flow, embed_flow, nightly, sample_flow, train_encoder_flow
from flows.settings import load_settings

#: the suffix of every deployment ``sqflow serve`` registers
SERVED_SUFFIX = "-served"

#: one retrain at a time per deployment; a retrain started while one runs is cancelled (the
#: running one already makes a new version; the stale-version check skips leftovers)
RETRAIN_CONCURRENCY = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def served_deployments(
    output: str | None = None, cron: str | None = None, timezone: str | None = None
) -> list[Any]:
    """RunnerDeployments: ``nightly-served`` on its cron (one run at a time), the stages on
    demand, and ``sqflow-retrain-served`` started by its drift trigger."""
    s = load_settings()
    params = {"config": {"output_dir": output}} if output else {"config": None}
    sched = Cron(cron or s.cron, timezone=timezone or s.timezone)
    retrain_name = SERVED_RETRAIN_DEPLOYMENT.split("/", 1)[1]
    return [
        nightly.to_deployment(
            name="nightly" + SERVED_SUFFIX,
            schedules=[sched],
            parameters=params,
            concurrency_limit=1,
            tags=["sqflow"],
            description="sample -> embed -> monitor -> cluster -> report -> publish, every night",
        ),
        train_encoder_flow.to_deployment(
            name="train-encoder" + SERVED_SUFFIX, parameters=params, tags=["sqflow"]
        ),
        sample_flow.to_deployment(
            name="sample" + SERVED_SUFFIX, parameters=params, tags=["sqflow"]
        ),
        embed_flow.to_deployment(name="embed" + SERVED_SUFFIX, tags=["sqflow"]),
        cluster_flow.to_deployment(name="cluster" + SERVED_SUFFIX, tags=["sqflow"]),
        monitor_flow.to_deployment(
            name="monitor" + SERVED_SUFFIX,
            parameters={"retrain_deployment": SERVED_RETRAIN_DEPLOYMENT},
            tags=["sqflow"],
        ),
        retrain_flow.to_deployment(
            name=retrain_name,
            tags=["sqflow"],
            concurrency_limit=RETRAIN_CONCURRENCY,
            triggers=[DeploymentEventTrigger(**retrain_trigger(SERVED_RETRAIN_DEPLOYMENT))],
            description="new encoder version after drift; started by sqflow.drift.detected",
        ),
    ]
