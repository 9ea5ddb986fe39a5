"""Prefect tasks of the nightly pipeline: one coarse task per stage (never per sample), each
``task(<engine function>)`` over :mod:`sqflow.pipeline` (see :mod:`tasks.task_factory`).

Every task takes the run's typed settings (:class:`data_contracts.settings.PipelineSettings`)
and the run id and returns the stage's small JSON-able dict, which the flow puts in the run
record. I/O stages retry with exponential backoff on transient ``OSError``; contract and source
errors fail at once with their message.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from data_contracts.settings import PipelineSettings
from sqflow.pipeline.cluster import cluster_stage, plots_stage
from sqflow.pipeline.encoder import embed_stage, train_encoder_stage
from sqflow.pipeline.sample import sample_stage

from .progress import progress_reporter
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


def embed_with_progress(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """:func:`embed_stage` with a progress artifact (chunks written of those pending)."""
    return embed_stage(settings, run_id, progress=progress_reporter("embed: chunks written"))


def cluster_with_progress(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """:func:`cluster_stage` with two progress artifacts: SQ passes (of ``max_iter``; the fit
    may stop early, then it jumps to 100 %) and assignment chunks."""
    fit = progress_reporter("cluster: SQ passes")
    out = cluster_stage(
        settings,
        run_id,
        fit_progress=fit,
        assign_progress=progress_reporter("assignment: chunks written"),
    )
    fit(1, 1)
    return out


sample_task = task(sample_stage, name="sample", **IO_RETRY)
train_encoder_task = task(train_encoder_stage, name="train-encoder", **IO_RETRY)
embed_task = task(embed_with_progress, name="embed", **IO_RETRY)
cluster_task = task(cluster_with_progress, name="cluster", **IO_RETRY)
plots_task = task(plots_stage, name="plots")
