"""Prefect tasks of the drift monitor (issue 7), over :mod:`sqflow.pipeline.monitor` (what the
files are, how a failed retrain rolls back: see there)."""

from __future__ import annotations

from prefect import task

from sqflow.pipeline.monitor import monitor_stage, retrain_stage

from . import task_factory  # noqa: F401 - installs the engine log forwarding

__all__ = ["monitor_task", "retrain_task"]

monitor_task = task(monitor_stage, name="monitor")
retrain_task = task(retrain_stage, name="retrain")
