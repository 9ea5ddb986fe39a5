"""Prefect flows of the drift monitor (issue 7): ``monitor`` and ``retrain``.

``monitor`` compares a run's new embeddings (``runs/<run_id>/embeddings.zarr``) with the reference
set recorded with the current encoder, writes the report (Markdown + table artifacts, the
``drift_reports`` Parquet table, ``drift_report.json`` in the run folder), emits the Prefect event
``sqflow.drift.detected`` with the statistics as payload when the policy says drift (so Prefect
Automations can act on it too), and then triggers ``retrain``:

- with a registered deployment named ``retrain_deployment`` (a Prefect server with a worker or
  ``serve``): through ``prefect.deployments.run_deployment`` (waits for it, ``retrain_timeout_s``);
- otherwise (ephemeral mode, tests): ``retrain`` runs in-process as a subflow.

``retrain`` trains a new encoder version, records its reference set and centers, re-embeds the
run's batch and records the lineage (old -> new version, reason); if it fails, the old version
stays current and the monitor's result and artifact say so (the monitor itself completes, so the
nightly run goes on with the old model).

From the ``nightly`` flow, after ``embed`` and before ``cluster``::

    mon = monitor_flow(run_id=run_id, config=settings.flow_parameters())  # or run_monitor(settings, run_id)
    rec["monitor"] = mon
    rec["encoder_version"] = mon["encoder_version"]   # changes when a retrain succeeded
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from data_contracts.settings import PipelineSettings
from sqflow.layout import OutputLayout, current_version
from sqflow.pipeline.monitor import retrain_outcome
from tasks.artifacts import artifact_key
from tasks.monitor import monitor_task, retrain_task

from .settings import flow_settings

DRIFT_EVENT = "sqflow.drift.detected"
DEFAULT_RETRAIN_DEPLOYMENT = "retrain/sqflow-retrain"

__all__ = [
    "DRIFT_EVENT",
    "DEFAULT_RETRAIN_DEPLOYMENT",
    "monitor_flow",
    "retrain_flow",
    "run_monitor",
]


@flow(name="retrain", log_prints=True)
def retrain_flow(
    run_id: str,
    reason: str,
    config: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """New encoder version after drift (see :func:`sqflow.pipeline.monitor.retrain_stage`); fails (old
    version kept current) when any step fails."""
    return retrain_task(flow_settings(config), run_id, reason, policy)


def _deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False
    except Exception as exc:  # noqa: BLE001 - no API reachable: run in-process
        get_run_logger().warning(
            "could not look up deployment %r (%s): retraining in-process", name, exc
        )
        return False


def _emit(run_id: str, mon: dict[str, Any]) -> str | None:
    from prefect.events import emit_event

    ev = emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"sqflow.run.{run_id}",
            "prefect.resource.name": f"sqflow run {run_id}",
            "sqflow.encoder-version": mon["reference_version"],
        },
        payload={
            "run_id": run_id,
            "reference_version": mon["reference_version"],
            "status": mon["status"],
            "flagged": mon["flagged"],
            "statistics": mon["statistics"],
            "reasons": mon["reasons"],
        },
    )
    return str(ev.id) if ev is not None else None


def _retrain(
    settings: PipelineSettings,
    run_id: str,
    reason: str,
    policy: dict[str, Any] | None,
    deployment: str | None,
    timeout_s: float,
) -> dict[str, Any]:
    log = get_run_logger()
    lay = OutputLayout.of(settings)
    old = current_version(lay.models_dir)
    params = {
        "run_id": run_id,
        "reason": reason,
        "config": settings.flow_parameters(),
        "policy": policy,
    }
    if deployment and _deployment_exists(deployment):
        from prefect.deployments import run_deployment

        log.info("drift: triggering deployment %r", deployment)
        fr = run_deployment(deployment, parameters=params, timeout=timeout_s)
        mode, state = f"deployment {deployment} (flow run {fr.id})", fr.state
    else:
        log.info("drift: retraining in-process (subflow; no deployment %r registered)", deployment)
        state = retrain_flow(**params, return_state=True)
        mode = "subflow"
    now = current_version(lay.models_dir)
    ok = state is not None and state.is_completed()
    done = retrain_outcome(settings, run_id)  # from the lineage: subflow or deployment alike
    out = {
        "mode": mode,
        "old_version": old,
        "current_version": now,
        "state": state.name if state is not None else "unknown",
        "outcome": done["outcome"] if ok else "failed",
        "gate": done["gate"],
    }
    if ok and done["outcome"] == "refused":
        g = done["gate"] or {}
        out.update(
            status="completed",
            new_version=done["new_version"],
            message=f"retrain REFUSED: {done['new_version']} not better than {old} on held-out "
            f"data ({g.get('criterion')}: {g.get('new', float('nan')):.4f} vs "
            f"{g.get('old', float('nan')):.4f}); encoder {now} stays current",
        )
        log.warning(out["message"])
    elif ok:
        out.update(
            status="completed",
            new_version=now,
            message=f"retrained: encoder {old} -> {now} ({reason})",
        )
    else:
        msg = (state.message if state is not None else None) or "no final state"
        out.update(
            status="failed",
            new_version=done["new_version"] if done["outcome"] == "failed" else None,
            message=f"retrain FAILED ({msg}); encoder {now} stays current",
        )
        log.error(out["message"])
    return out


def run_monitor(
    settings: PipelineSettings,
    run_id: str,
    *,
    policy: dict[str, Any] | None = None,
    retrain: bool = True,
    retrain_deployment: str | None = DEFAULT_RETRAIN_DEPLOYMENT,
    retrain_timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """The monitor stage inside a running flow (``settings``: the run's typed settings, as the
    nightly flow holds them). Returns the monitor task's dict plus ``event_id`` (None unless
    drift), ``retrain`` (``status`` one of completed / failed / not needed / disabled / no
    decision, ``old_version``, ``new_version``, ``message``), ``encoder_version`` (current after
    the stage), ``artifacts`` and ``seconds``."""
    t0 = time.perf_counter()
    log = get_run_logger()
    mon = monitor_task(settings, run_id, policy)
    mon["event_id"] = _emit(run_id, mon) if mon["drifted"] else None
    if mon["drifted"] and retrain:
        reason = f"drift in run {run_id}: " + "; ".join(
            r for r in mon["reasons"][1:] if "flags drift" in r
        )
        mon["retrain"] = _retrain(
            settings, run_id, reason, policy, retrain_deployment, retrain_timeout_s
        )
    elif mon["drifted"]:
        mon["retrain"] = {"status": "disabled", "message": "drift detected; retrain=False"}
    elif mon["drifted"] is None:
        mon["retrain"] = {"status": "no decision", "message": "insufficient data: no decision"}
    else:
        mon["retrain"] = {"status": "not needed", "message": "no drift"}
    lay = OutputLayout.of(settings)
    mon["encoder_version"] = current_version(lay.models_dir)
    md = mon["markdown"] + f"\n## Retraining\n\n**{mon['retrain']['message']}**\n"
    if mon.get("event_id"):
        md += f"\nEvent `{DRIFT_EVENT}` emitted (id `{mon['event_id']}`).\n"
    mon["markdown"] = md
    mon["artifacts"] = {
        "report": str(
            create_markdown_artifact(
                md, key=artifact_key(run_id, "drift"), description=f"drift report of run {run_id}"
            )
        ),
        "table": str(
            create_table_artifact(
                [
                    {"run_id": run_id, "reference_version": mon["reference_version"], **r}
                    for r in mon["statistics"]
                ],
                key=artifact_key(run_id, "drift-statistics"),
                description=f"drift statistics of run {run_id}",
            )
        ),
    }
    log.info("monitor: %s; %s", mon["status"], mon["retrain"]["message"])
    mon["seconds"] = time.perf_counter() - t0
    return mon


@flow(name="monitor", log_prints=True)
def monitor_flow(
    run_id: str,
    config: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    retrain: bool = True,
    retrain_deployment: str | None = DEFAULT_RETRAIN_DEPLOYMENT,
    retrain_timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Drift check of an embedded run against the current encoder's reference; retrain on
    drift (see the module docstring). ``policy``: fields of ``DriftPolicy`` (None: defaults)."""
    return run_monitor(
        flow_settings(config),
        run_id,
        policy=policy,
        retrain=retrain,
        retrain_deployment=retrain_deployment,
        retrain_timeout_s=retrain_timeout_s,
    )
