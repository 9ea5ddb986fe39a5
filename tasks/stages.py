"""Prefect tasks of the nightly pipeline: one coarse task per stage (never per sample), each
``task(<engine function>)`` over :mod:`sqflow.pipeline` (see :mod:`tasks.task_factory`).

Every task takes the run's typed settings (:class:`data_contracts.settings.PipelineSettings`)
and the run id and returns the stage's small JSON-able dict, which the flow puts in the run
record. I/O stages retry with exponential backoff on transient ``OSError``; contract and source
errors fail at once with their message.
"""

from __future__ import annotations

from prefect import task

from sqflow.pipeline.cluster import cluster_stage, plots_stage
from sqflow.pipeline.encoder import embed_stage, train_encoder_stage
from sqflow.pipeline.sample import sample_stage

from .publish_bi import publish_task
from .task_factory import IO_RETRY

__all__ = [
    "cluster_task",
    "embed_task",
    "plots_task",
    "publish_task",
    "sample_task",
    "train_encoder_task",
]

sample_task = task(sample_stage, name="sample", **IO_RETRY)
train_encoder_task = task(train_encoder_stage, name="train-encoder", **IO_RETRY)
embed_task = task(embed_stage, name="embed", **IO_RETRY)
cluster_task = task(cluster_stage, name="cluster", **IO_RETRY)
plots_task = task(plots_stage, name="plots")
