"""Prefect's side of the clean-up after a killed nightly: its flow run must not stay RUNNING.

A nightly killed with ``kill -9`` cannot report its final state, and an ephemeral or local
Prefect server has no heartbeat automation watching it (Prefect marks runs without runner
heartbeats as crashed only for deployments served by a runner with
``PREFECT_RUNNER_HEARTBEAT_FREQUENCY`` set and a "zombie flow runs" automation configured on
the server). So the next nightly of the same output folder does it, under the output lock
(no other nightly of this folder is alive): every ``nightly`` flow run still RUNNING or PENDING
whose id is recorded in a run folder of this output is set to

* ``Crashed`` when that run's record is not ``completed`` (the engine's recovery,
  :func:`sqflow.pipeline.recovery.recover_output`, has just recorded it as ``crashed``);
* ``Completed`` when the record says completed (the process died after committing the run
  and before Prefect heard of it: run.json and every BI sink already agree it completed).
"""

from __future__ import annotations

import logging
from typing import Any

from data_contracts.run_record import RunRecord

log = logging.getLogger(__name__)

__all__ = ["settle_flow_runs"]


def settle_flow_runs(records: list[RunRecord], current_flow_run_id: str | None) -> list[dict]:
    """Set the final state of every nightly flow run of ``records`` that Prefect still shows as
    RUNNING/PENDING (see the module docstring). Returns ``{"flow_run_id", "run_id", "state"}``
    per flow run changed. Errors talking to Prefect are logged, never raised: a failed clean-up
    must not stop tonight's run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Crashed

    by_id: dict[str, RunRecord] = {
        r.flow_run_id: r for r in records if r.flow_run_id and r.flow_run_id != current_flow_run_id
    }
    if not by_id:
        return []
    changed: list[dict[str, Any]] = []
    try:
        import uuid

        with get_client(sync_client=True) as client:
            stuck = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[uuid.UUID(i) for i in by_id]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    ),
                )
            )
            for fr in stuck:
                rec = by_id[str(fr.id)]
                if rec.completed:
                    state = Completed(message=f"run {rec.run_id} had committed; process died after")
                else:
                    state = Crashed(
                        message=f"run {rec.run_id}: {rec.error or 'the process died'}"[:500]
                    )
                client.set_flow_run_state(fr.id, state, force=True)
                changed.append(
                    {"flow_run_id": str(fr.id), "run_id": rec.run_id, "state": state.type.value}
                )
    except Exception as exc:  # noqa: BLE001 - reported; tonight's run goes on
        log.warning(
            "could not settle earlier flow runs in Prefect: %s: %s", type(exc).__name__, exc
        )
    return changed
