"""Prefect flows: ``nightly`` (sample -> embed -> monitor -> cluster -> report -> publish) and
its stages as flows of their own (``sample``, ``train-encoder``, ``embed``, ``cluster``; the
monitor and retrain flows live in :mod:`flows.monitor`).

Every flow takes ``config``: JSON-able overrides of the settings (:mod:`flows.settings`, which
also reads ``sqflow.toml`` and ``SQFLOW_*`` variables where the flow runs), validated once at
the top of the flow into :class:`data_contracts.settings.PipelineSettings`, which every task
receives. One nightly flow run has
one ``run_id`` (``YYYYMMDDTHHMMSSZ-<flow run id prefix>``) that is in every output row; its :class:`data_contracts.run_record.RunRecord` is ``run.json``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed

from data_contracts.run_record import RunRecord
from flows.crashed_runs import settle_flow_runs
from flows.monitor import (
    DEFAULT_RETRAIN_DEPLOYMENT,
    SERVED_RETRAIN_DEPLOYMENT,
    monitor_flow,
    retrain_in_process,
)
from flows.settings import flow_settings
from sqflow.atomic_files import atomic_write_text
from sqflow.fault_points import kill_point
from sqflow.layout import OutputLayout, current_version, new_run_id, output_lock
from sqflow.pipeline.publish import finish_publish
from sqflow.pipeline.recovery import recover_output
from sqflow.process_guard import start_process_guard
from tasks.artifacts import create_run_artifacts, run_summary_markdown
from tasks.publish_bi import resolve_postgres_url
from tasks.report import report_task
from tasks.stages import (
    cluster_task,
    embed_task,
    plots_task,
    publish_task,
    sample_task,
    train_encoder_task,
)


def _flow_run_id() -> str | None:
    fid = flow_run.get_id()
    return str(fid) if fid else None


@flow(name="sample", log_prints=True)
def sample_flow(config: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Read the source and write the run's manifest and quarantine."""
    return sample_task(flow_settings(config), run_id or new_run_id(_flow_run_id()))


@flow(name="train-encoder", log_prints=True)
def train_encoder_flow(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the triplet encoder on the labeled items, register it, embed the reference set."""
    return train_encoder_task(flow_settings(config))


@flow(name="embed", log_prints=True)
def embed_flow(run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Embed a sampled run's manifest with the current encoder into its Zarr store."""
    return embed_task(flow_settings(config), run_id)


@flow(name="cluster", log_prints=True)
def cluster_flow(run_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """SQ on Dask over an embedded run's store; assignments for every row."""
    return cluster_task(flow_settings(config), run_id)


def _recorded_stage(
    stage: str, fn: Callable[[], dict[str, Any]], drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run a stage whose failure must not cost users tonight's clusters (monitor, report): the
    error is logged and returned as ``{"error", "seconds"}`` for the summary and run.json."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the summary, run.json and the log
        get_run_logger().error("%s stage failed: %s: %s", stage, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    return {k: v for k, v in out.items() if k not in drop}


def _nightly_run_name() -> str:
    """The flow run's name: ``nightly-<run id>`` (the run id is taken back from it)."""
    return "nightly-" + new_run_id(_flow_run_id())


def _this_run_id(started: datetime) -> str:
    """The run id in this flow run's name (:func:`_nightly_run_name`), else a new one."""
    name = flow_run.get_name() or ""
    return (
        name.removeprefix("nightly-")
        if name.startswith("nightly-")
        else new_run_id(_flow_run_id(), started)
    )


def _retrain_deployment() -> str:
    """The retrain deployment of this nightly's family: ``sqflow serve`` registers
    ``nightly-served`` next to ``retrain/sqflow-retrain-served``; ``prefect deploy --all`` (and
    a run without a deployment) uses ``retrain/sqflow-retrain``."""
    name = deployment.get_name() if deployment.get_id() else None
    return (
        SERVED_RETRAIN_DEPLOYMENT
        if (name or "").endswith("-served")
        else (DEFAULT_RETRAIN_DEPLOYMENT)
    )


def _degraded_reasons(rec: RunRecord) -> list[str]:
    """What went wrong in a completed run (non-fatal stages), for the state and run.json."""
    out = []
    if rec.stage_error("monitor"):
        out.append(f"monitor failed: {rec.stage_error('monitor')}")
    retrain = (rec.monitor or {}).get("retrain") if isinstance(rec.monitor, dict) else None
    if retrain and retrain.get("status") == "failed":
        out.append(f"retrain failed: {retrain.get('message')}")
    if rec.stage_error("report"):
        out.append(f"report failed: {rec.stage_error('report')}")
    return out


def _cleanup_after_killed_runs(settings: Any, lay: OutputLayout, run_id: str) -> str | None:
    """Under the output lock, before this run writes anything: guard this process's children
    (no orphan Prefect server or Dask workers if it is killed), finish or roll back a publish
    that died half-way, record killed runs as crashed (run.json and their Prefect flow runs),
    remove their stray temporary files. Returns the PostgreSQL URL (None: not configured)."""
    log = get_run_logger()
    start_process_guard()
    try:
        pg_url = resolve_postgres_url(None, settings.postgres_secret_block)
    except Exception as exc:  # noqa: BLE001 - publish reports it; recovery skips PostgreSQL
        log.warning("PostgreSQL URL not available for recovery: %s", exc)
        pg_url = None
    done = recover_output(settings, run_id, postgres_url=pg_url)
    settled = settle_flow_runs(lay.run_records(), _flow_run_id())
    if any(done.values()) or settled:
        log.warning(
            "cleaned up after killed runs: publishes %s, crashed %s, flow runs %s, "
            "%d orphan Parquet files, %d temporary files",
            done["publishes"],
            [c["run_id"] for c in done["crashed"]],
            settled,
            len(done["orphan_files"]),
            len(done["temp_files"]),
        )
    return pg_url


@flow(name="nightly", flow_run_name=_nightly_run_name, log_prints=True)
def nightly(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nightly run: sample -> embed -> monitor -> cluster -> report -> publish.

    The monitor compares the run's embeddings with the current encoder's reference and, on
    drift, emits ``sqflow.drift.detected``: the retrain deployment's trigger retrains (this run
    does not wait), or, with no deployment, the retrain runs in process after publish. The
    night is clustered with the encoder it started with. The monitor and the report are
    recorded but not fatal: when either fails the run ends Completed named "Degraded" and the
    clusters are still published.

    Holds ``<output>/.nightly.lock`` for the whole run (a second run on the same output waits
    ``lock_timeout_s`` and then fails with a clear message). Trains and registers an encoder
    first when none exists and ``train_if_missing`` is true. Leaves as artifacts a Markdown
    summary, a table of the clusters, the plots (embedded PNG) and links to the full-size PNG
    files; and ``runs/<run_id>/run.json`` + ``summary.md``.
    """
    log = get_run_logger()
    settings = flow_settings(config)
    lay = OutputLayout.of(settings)
    started = datetime.now(UTC)
    run_id = _this_run_id(started)
    with output_lock(lay, run_id, timeout_s=settings.lock_timeout_s):
        t_all = time.perf_counter()
        rec = RunRecord(
            run_id=run_id,
            flow_run_id=_flow_run_id(),
            started_at=started.isoformat(),
            n_clusters=settings.n_clusters,
            waited_for_lock_s=(datetime.now(UTC) - started).total_seconds(),
        )
        rd = lay.run_dir(run_id)
        log.info("nightly run %s -> %s", run_id, rd)
        pg_url = _cleanup_after_killed_runs(settings, lay, run_id)
        atomic_write_text(rd / "run.json", rec.to_json())  # "running": a killed run says so
        kill_point("start")
        try:
            rec.dataset = rec.add_stage("sample", sample_task(settings, run_id))["dataset"]
            kill_point("after-sample")
            if current_version(lay.models_dir) is None:
                if not settings.train_if_missing:
                    raise FileNotFoundError(
                        f"no encoder registered in {str(lay.models_dir)!r} and "
                        "train_if_missing is false: run the train-encoder flow first"
                    )
                log.info("no encoder registered yet: training one first")
                rec.add_stage("train", train_encoder_task(settings))
            embed = rec.add_stage("embed", embed_task(settings, run_id))
            rec.encoder_version = embed["encoder_version"]
            kill_point("after-embed")
            # the full drift report stays in drift_report.json; the record keeps the decision
            # on drift the monitor emits the event; a retrain deployment's trigger retrains
            # (this run does not wait); without one the retrain runs below, after publish
            monitor = rec.add_stage(
                "monitor",
                _recorded_stage(
                    "monitor",
                    lambda: monitor_flow(
                        run_id=run_id,
                        config=settings.flow_parameters(),
                        retrain="after-run",
                        retrain_deployment=_retrain_deployment(),
                        dataset=rec.dataset,
                    ),
                    drop=("report", "markdown"),
                ),
            )
            # "requested" while a retrain runs elsewhere (deployment trigger) or after publish
            rec.record_retrain(monitor)
            kill_point("after-monitor")
            cluster = rec.add_stage("cluster", cluster_task(settings, run_id))
            kill_point("after-cluster")
            rec.add_stage("plots", plots_task(settings, run_id, cluster["loss_curve"]))
            rec.add_stage(
                "report",
                _recorded_stage(
                    "report", lambda: report_task(settings, run_id, rec), drop=("rows",)
                ),
            )
            kill_point("after-report")
            rec.degraded_reasons = _degraded_reasons(rec)
            atomic_write_text(rd / "run.json", rec.to_json())  # still "running", stages so far
            rec.add_stage("publish", publish_task(settings, run_id, rec))
            kill_point("after-publish")
            retrain = monitor.get("retrain") or {}
            if retrain.get("status") == "pending":
                # no retrain deployment: retrain in-process, after publish (the retrain
                # re-embeds this run's store, which publish reads the assignments from)
                retrain.update(
                    retrain_in_process(
                        settings,
                        run_id,
                        retrain["reason"],
                        retrain["from_version"],
                        hold_lock=False,  # this run holds it
                    )
                )
                rec.record_retrain(monitor)  # the in-process retrain's outcome, for run.json
                rec.degraded_reasons = _degraded_reasons(rec)
            rec.status = "completed"
        except BaseException as exc:
            rec.status = "failed"
            rec.error = f"{type(exc).__name__}: {exc}"
            rec.traceback = traceback.format_exc(limit=5)
            raise
        finally:
            rec.finished_at = datetime.now(UTC).isoformat()
            rec.timings["total"] = time.perf_counter() - t_all
            rec.outputs = {
                "run folder": str(rd),
                "embedding store": str(rd / "embeddings.zarr"),
                "published Parquet": str(lay.published),
                "DuckDB": str(lay.duckdb_path),
                "models": str(lay.models_dir),
            }
            if (rec.report or {}).get("html"):
                rec.outputs["cluster report"] = rec.report["html"]
            atomic_write_text(rd / "run.json", rec.to_json())  # a failed run leaves its record too
            # the record decided: keep the published rows (completed) or remove them everywhere
            try:
                finish_publish(settings, run_id, committed=rec.completed, postgres_url=pg_url)
            except Exception as exc:  # noqa: BLE001 - journal kept: the next run rolls it back
                log.error("run %s: BI rollback incomplete: %s", run_id, exc)
        md = run_summary_markdown(rec)
        atomic_write_text(rd / "summary.md", md)
    result = rec.model_dump(mode="json") | {
        "outcome": rec.outcome,
        "artifacts": create_run_artifacts(rec, md, lay.run_records()),
    }
    if rec.degraded_reasons:
        # a named state the runs list shows: clusters published, but something failed
        log.warning("run %s is DEGRADED: %s", run_id, "; ".join(rec.degraded_reasons))
        return Completed(name="Degraded", message="; ".join(rec.degraded_reasons), data=result)
    return result
