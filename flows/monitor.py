"""Prefect flows of the drift monitor: ``monitor`` and ``retrain``, and how drift reaches a
retrain (issue 16: through a Prefect deployment trigger; the nightly never waits for it).

``monitor`` compares a run's new embeddings (``runs/<run_id>/embeddings.zarr``) with the
reference set recorded with the current encoder, writes the report (Markdown + table
artifacts, the ``drift_reports`` Parquet table, ``drift_report.json`` in the run folder) and,
when the policy says drift, emits the Prefect event ``sqflow.drift.detected``:

* resource ``sqflow.dataset.<dataset>`` with the labels ``sqflow.dataset``,
  ``sqflow.encoder-version`` (the version that drifted) and ``sqflow.retrain-deployment`` (the
  retrain deployment meant to act on it); related resource ``sqflow.run.<run_id>``;
* payload ``run_id``, ``reason``, ``config`` (the run's settings), the statistics.

How the retrain happens then (``retrain["status"]`` in the monitor's result says which):

* **A Prefect server with the retrain deployment** (``prefect deploy --all`` or ``sqflow
  serve``): the deployment carries a trigger (:func:`retrain_trigger`) on that event for its own
  ``sqflow.retrain-deployment`` label; the automation starts a ``retrain`` flow run with the
  run id, reason, config and drifted version from the event. The monitor does not wait
  (status ``requested``). The deployment runs one retrain at a time and cancels a new one
  that collides (``CANCEL_NEW``), and a retrain whose ``from_version`` is no longer current
  skips (another retrain already replaced it): retrains never pile up.
* **No server / no such deployment** (ephemeral ``sqflow demo``, tests): the fallback is an
  in-process ``retrain`` subflow. The standalone ``monitor`` flow runs it at once; the nightly
  asks for ``retrain="after-run"`` (status ``pending``) and runs it after publishing (the
  retrain re-embeds the run's store, which publish reads), under the lock it already holds;
  its outcome goes into run.json and the run's state, not into the BI tables of the night. Either way
  tonight's clusters use the encoder the night started with; the new one serves from the next
  night on.

``retrain`` takes the output lock (waiting up to ``lock_timeout_s`` for a nightly run that
holds it), trains a new encoder version, records its reference set and centers, re-embeds the
run's batch and records the lineage (see :func:`sqflow.pipeline.monitor.retrain_stage`). When
the attempt ends (promoted, refused or failed) it publishes the run's ``retrains`` BI rows
(:func:`sqflow.pipeline.publish.publish_retrains_stage`), still under the lock.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from data_contracts.settings import PipelineSettings
from sqflow.fault_points import kill_point
from sqflow.layout import OutputLayout, current_version, output_lock
from sqflow.pipeline.monitor import record_skipped_retrain, retrain_outcome
from tasks.artifacts import artifact_key
from tasks.monitor import monitor_task, retrain_task
from tasks.publish_bi import publish_retrains_task

from .settings import flow_settings

DRIFT_EVENT = "sqflow.drift.detected"
#: the retrain deployment of ``prefect.yaml`` (``prefect deploy --all``)
DEFAULT_RETRAIN_DEPLOYMENT = "retrain/sqflow-retrain"
#: the retrain deployment that ``sqflow serve`` registers (its own name: no takeover)
SERVED_RETRAIN_DEPLOYMENT = "retrain/sqflow-retrain-served"
#: how long a retrain waits for a nightly run holding the output lock (seconds)
RETRAIN_LOCK_TIMEOUT_S = 4 * 3600.0

RetrainMode = Literal["auto", "after-run", "off"]

__all__ = [
    "DEFAULT_RETRAIN_DEPLOYMENT",
    "DRIFT_EVENT",
    "SERVED_RETRAIN_DEPLOYMENT",
    "monitor_flow",
    "retrain_flow",
    "retrain_in_process",
    "retrain_trigger",
    "run_monitor",
]


def retrain_trigger(deployment: str = DEFAULT_RETRAIN_DEPLOYMENT) -> dict[str, Any]:
    """The deployment trigger of the retrain deployment ``deployment`` ("flow/name"), as the
    dict that ``prefect.yaml`` holds under ``triggers:`` (and ``sqflow serve`` passes to
    ``DeploymentEventTrigger``): one retrain per ``sqflow.drift.detected`` event labelled for
    this deployment, evaluated per dataset and drifted encoder version, with the run id, the
    reason, the run's settings and the drifted version taken from the event."""
    return {
        "type": "event",
        "name": f"sqflow: retrain on drift ({deployment})",
        "description": "sqflow.drift.detected -> retrain the encoder of that dataset",
        "enabled": True,
        "expect": [DRIFT_EVENT],
        "match": {
            "prefect.resource.id": "sqflow.dataset.*",
            "sqflow.retrain-deployment": deployment,
        },
        "for_each": ["prefect.resource.id", "sqflow.encoder-version"],
        "posture": "Reactive",
        "threshold": 1,
        "within": 0,
        "parameters": {
            "run_id": "{{ event.payload.run_id }}",
            "reason": "{{ event.payload.reason }}",
            "config": "{{ event.payload.config }}",
            "from_version": "{{ event.resource['sqflow.encoder-version'] }}",
        },
    }


@flow(name="retrain", flow_run_name="retrain-{run_id}", log_prints=True)
def retrain_flow(
    run_id: str,
    reason: str,
    config: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    from_version: str | None = None,
    lock_timeout_s: float = RETRAIN_LOCK_TIMEOUT_S,
    hold_lock: bool = True,
) -> Any:
    """New encoder version after drift in run ``run_id`` (see
    :func:`sqflow.pipeline.monitor.retrain_stage`); fails (old version kept current) when any
    step fails. Holds the output lock (waits up to ``lock_timeout_s`` seconds for a nightly
    run). ``from_version``: the version that drifted; when another version is current by the
    time the lock is ours, nothing is retrained (state Completed, named "Skipped").
    ``hold_lock=False``: the caller (a nightly run's in-process fallback) holds it."""
    settings = flow_settings(config)
    lay = OutputLayout.of(settings)
    with (
        output_lock(lay, f"retrain-{run_id}", timeout_s=lock_timeout_s)
        if hold_lock
        else contextlib.nullcontext()
    ):
        now = current_version(lay.models_dir)
        if from_version and now != from_version:
            msg = (
                f"skipped: the drift was against {from_version} but {now} is current "
                "(already retrained)"
            )
            get_run_logger().info(msg)
            record_skipped_retrain(settings, run_id, from_version, reason, msg)
            _publish_retrains(settings, run_id)  # a skipped attempt is a row too
            _retrain_artifact(settings, run_id, f"**Retrain {msg}.**")
            return Completed(
                name="Skipped", message=msg, data={"status": "skipped", "message": msg}
            )
        try:
            out = retrain_task(settings, run_id, reason, policy)
        except Exception as exc:
            _retrain_artifact(
                settings, run_id, f"**Retrain FAILED**: {exc}", reason=reason, old=now
            )
            _publish_retrains(settings, run_id)  # the failed attempt is a row too
            raise
        kill_point("after-retrain")  # fault injection: lineage written, retrains not published
        out["bi"] = _publish_retrains(settings, run_id)
        kill_point("after-retrain-publish")  # fault injection: retrains rows published
    _retrain_artifact(
        settings,
        run_id,
        f"**Retrained: encoder `{out['old_version']}` -> `{out['new_version']}`.**",
        reason=reason,
        old=out["old_version"],
        new=out["new_version"],
        after=(out.get("after") or {}).get("status"),
    )
    return out


def _publish_retrains(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """The run's ``retrains`` BI rows, under the output lock the retrain holds (or its
    caller). A publish failure is logged and returned, never raised: it must not turn a
    finished retrain into a failed one (the lineage keeps the attempt; the next retrain of
    the run, or a re-run of this task, publishes it)."""
    try:
        return publish_retrains_task(settings, run_id)
    except Exception as exc:  # noqa: BLE001 - reported in the log and the flow's result
        msg = f"{type(exc).__name__}: {exc}"
        get_run_logger().error("retrains of run %s not published: %s", run_id, msg)
        return {"published": False, "error": msg}


def _retrain_artifact(
    settings: PipelineSettings,
    run_id: str,
    headline: str,
    reason: str | None = None,
    old: str | None = None,
    new: str | None = None,
    after: str | None = None,
) -> None:
    """The ``retrain`` artifact of the dataset (a new version per retrain)."""
    facts = (
        ("reason", reason),
        ("from version", old),
        ("new version", new),
        ("batch against the new reference", after),
    )
    lines = [f"# Retrain after drift in run `{run_id}`", "", headline, ""]
    lines += [f"- {k}: {v}" for k, v in facts if v]
    create_markdown_artifact(
        "\n".join(lines) + "\n",
        key=artifact_key("retrain", settings.source.dataset),
        description=f"retrain after drift in run {run_id}",
    )


def _deployment_exists(name: str) -> bool:
    """Whether the API this process talks to knows deployment ``name`` (no API: False)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False
    except Exception as exc:  # noqa: BLE001 - no API reachable: the in-process fallback
        get_run_logger().warning("could not look up deployment %r (%s)", name, exc)
        return False


def _emit(
    run_id: str, dataset: str, reason: str, mon: dict[str, Any], config: dict, deployment: str
) -> str | None:
    from prefect.events import emit_event

    ev = emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"sqflow.dataset.{dataset}",
            "prefect.resource.name": f"sqflow dataset {dataset}",
            "sqflow.dataset": dataset,
            "sqflow.encoder-version": mon["reference_version"],
            "sqflow.retrain-deployment": deployment,
        },
        related=[
            {
                "prefect.resource.id": f"sqflow.run.{run_id}",
                "prefect.resource.role": "sqflow-run",
                "prefect.resource.name": f"sqflow run {run_id}",
            }
        ],
        payload={
            "run_id": run_id,
            "reason": reason,
            "config": config,
            "reference_version": mon["reference_version"],
            "status": mon["status"],
            "flagged": mon["flagged"],
            "statistics": mon["statistics"],
            "reasons": mon["reasons"],
        },
    )
    return str(ev.id) if ev is not None else None


def retrain_in_process(
    settings: PipelineSettings,
    run_id: str,
    reason: str,
    from_version: str | None,
    policy: dict[str, Any] | None = None,
    hold_lock: bool = True,
) -> dict[str, Any]:
    """The fallback without a retrain deployment: ``retrain`` as a subflow of the calling flow
    (``hold_lock=False`` when the caller holds the output lock). Returns ``status`` (completed / skipped / failed),
    ``mode``, ``old_version``, ``new_version``, ``current_version``, ``state``, ``message``."""
    lay = OutputLayout.of(settings)
    old = current_version(lay.models_dir)
    state = retrain_flow(
        run_id=run_id,
        reason=reason,
        config=settings.flow_parameters(),
        policy=policy,
        from_version=from_version,
        hold_lock=hold_lock,
        return_state=True,
    )
    now = current_version(lay.models_dir)
    ok = state is not None and state.is_completed()
    done = retrain_outcome(settings, run_id)  # from the lineage: subflow or deployment alike
    out: dict[str, Any] = {
        "mode": "in-process subflow",
        "old_version": old,
        "current_version": now,
        "state": state.name if state is not None else "unknown",
        "outcome": done["outcome"] if ok else "failed",
        "gate": done["gate"],
    }
    if ok and state.name == "Skipped":
        out.update(status="skipped", outcome="none", new_version=None, message=state.message)
    elif ok and done["outcome"] == "refused":
        g = done["gate"] or {}
        out.update(
            status="completed",
            new_version=done["new_version"],
            message=f"retrain REFUSED: {done['new_version']} not better than {old} on held-out "
            f"data ({g.get('criterion')}: {g.get('new', float('nan')):.4f} vs "
            f"{g.get('old', float('nan')):.4f}); encoder {now} stays current",
        )
        get_run_logger().warning(out["message"])
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
        get_run_logger().error(out["message"])
    return out


def run_monitor(
    settings: PipelineSettings,
    run_id: str,
    *,
    dataset: str | None = None,
    policy: dict[str, Any] | None = None,
    retrain: RetrainMode | bool = "auto",
    retrain_deployment: str = DEFAULT_RETRAIN_DEPLOYMENT,
) -> dict[str, Any]:
    """The monitor stage inside a running flow (``settings``: the run's typed settings).

    ``retrain``: ``"auto"`` (True) asks the retrain deployment through the drift event when the
    API knows it, else retrains in-process now; ``"after-run"`` (the nightly, which holds the
    output lock) also goes through the deployment when there is one, else leaves the retrain
    to the caller (status ``pending``, see :func:`retrain_in_process`); ``"off"`` (False) only
    reports. Returns the monitor task's dict plus ``dataset``, ``event_id`` (None unless
    drift), ``retrain`` (``status``: requested / pending / completed / skipped / failed / not
    needed / disabled / no decision; ``mode``, ``message``, ``reason``, ``from_version``,
    ``deployment``), ``encoder_version`` (current after the stage), ``artifacts``,
    ``seconds``."""
    t0 = time.perf_counter()
    log = get_run_logger()
    mode = ("auto" if retrain else "off") if isinstance(retrain, bool) else retrain
    if mode not in ("auto", "after-run", "off"):
        raise ValueError(f"retrain={retrain!r}: valid are 'auto', 'after-run', 'off'")
    mon = monitor_task(settings, run_id, policy)
    dataset = dataset or settings.source.dataset
    mon["dataset"] = dataset
    mon["event_id"] = None
    if mon["drifted"]:
        reason = f"drift in run {run_id}: " + "; ".join(
            r for r in mon["reasons"][1:] if "flags drift" in r
        )
        deployed = mode != "off" and _deployment_exists(retrain_deployment)
        mon["event_id"] = _emit(
            run_id, dataset, reason, mon, settings.flow_parameters(), retrain_deployment
        )
        base = {"reason": reason, "from_version": mon["reference_version"]}
        if mode == "off":
            mon["retrain"] = {
                **base,
                "status": "disabled",
                "message": "drift detected; retrain off",
            }
        elif deployed:
            mon["retrain"] = {
                **base,
                "status": "requested",
                "mode": "deployment trigger",
                "deployment": retrain_deployment,
                "message": (
                    f"drift event emitted; the trigger of deployment {retrain_deployment} "
                    "starts the retrain (this run does not wait for it)"
                ),
            }
        elif mode == "after-run":
            mon["retrain"] = {
                **base,
                "status": "pending",
                "mode": "in-process after the run",
                "message": (
                    f"no deployment {retrain_deployment} on this API: retraining in-process "
                    "after the run"
                ),
            }
        else:
            mon["retrain"] = {
                **base,
                **retrain_in_process(settings, run_id, reason, mon["reference_version"], policy),
            }
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
                md,
                key=artifact_key("drift", dataset),
                description=f"drift report of run {run_id}",
            )
        ),
        "table": str(
            create_table_artifact(
                [
                    {"run_id": run_id, "reference_version": mon["reference_version"], **r}
                    for r in mon["statistics"]
                ],
                key=artifact_key("drift-statistics", dataset),
                description=f"drift statistics of run {run_id}",
            )
        ),
    }
    log.info("monitor: %s; %s", mon["status"], mon["retrain"]["message"])
    mon["seconds"] = time.perf_counter() - t0
    return mon


@flow(name="monitor", flow_run_name="monitor-{run_id}", log_prints=True)
def monitor_flow(
    run_id: str,
    config: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    retrain: RetrainMode | bool = "auto",
    retrain_deployment: str = DEFAULT_RETRAIN_DEPLOYMENT,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Drift check of an embedded run against the current encoder's reference; on drift, the
    event and the retrain (see the module docstring). ``policy``: fields of ``DriftPolicy``
    (None: defaults)."""
    return run_monitor(
        flow_settings(config),
        run_id,
        dataset=dataset,
        policy=policy,
        retrain=retrain,
        retrain_deployment=retrain_deployment,
    )
