"""The ``publish`` stage: the run's BI tables (runs, cluster_centers, assignments, quarantine,
plus the monitor's drift_reports and the report's cluster_report when they ran), each checked
against its contract, into Parquet, DuckDB and PostgreSQL when configured (:mod:`sqflow.bi`).
And :func:`publish_retrains_stage`: the ``retrains`` rows of a run (one per retrain attempt its
drift requested, from ``models/lineage.jsonl``), published by the retrain flow when an attempt
ends, through the same journal and sinks.

Where the PostgreSQL URL comes from is the caller's business (the Prefect task resolves it from
the environment or a Secret block, :mod:`tasks.publish_bi`); this module only writes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.run_record import RunRecord
from data_contracts.settings import PipelineSettings

from ..bi import journal, mask_url, publish_run, publish_run_tables
from ..bi.journal import JOURNAL_FOLDER
from ..bi.publish import PublishResult
from ..layout import OutputLayout, lineage_outcome, read_lineage
from .staged import staged_table_path

log = logging.getLogger(__name__)


def publish_stage(
    settings: PipelineSettings,
    run_id: str,
    record: RunRecord,
    *,
    postgres_url: str | None = None,
    on_published: Callable[[PublishResult], None] | None = None,
) -> dict[str, Any]:
    """Parquet tables for BI (one file per run and table under ``published/<table>/
    run_date=<date>/<run_id>.parquet``, written atomically; re-publishing a run replaces its
    files), the same tables in ``sqflow.duckdb`` and in PostgreSQL when configured, each frame
    checked against its contract first. Every row carries ``run_id``.

    ``postgres_url``: the database to publish into as well (None: Parquet and DuckDB only);
    ``on_published(result)``: called after the tables are written (the Prefect task leaves an
    artifact from it). Returns ``tables``, ``duckdb``, ``postgres`` (masked), ``rows``,
    ``seconds``."""
    from sqflow.store import open_assignments, open_store

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    rd = lay.run_dir(run_id)
    store = open_store(rd / "embeddings.zarr")
    asg = open_assignments(store, name=run_id)
    clusters = record.clusters
    frames: dict[str, pd.DataFrame] = {
        "runs": pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "flow_run_id": record.flow_run_id,
                    "started_at": pd.Timestamp(record.started_at),
                    "finished_at": pd.Timestamp.now(tz="UTC"),
                    "status": "completed",
                    "dataset": record.dataset,
                    "encoder_version": record.encoder_version,
                    "n_samples": int(record.sample["n_selected"]),
                    "n_quarantined": int(record.sample["n_quarantined"]),
                    "n_clusters": int(record.cluster.get("n_clusters") or len(record.clusters)),
                    "objective": float(record.cluster["objective"]),
                    "drift_detected": None,
                    "monitor_ran": False,
                    "retrain_outcome": record.retrain_outcome,
                    "new_encoder_version": record.new_encoder_version,
                    "degraded_reasons": json.dumps(list(record.degraded_reasons)),
                    "config": json.dumps(settings.flow_parameters(), sort_keys=True, default=str),
                }
            ]
        ).astype({"drift_detected": "boolean"}),
        "cluster_centers": pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "cluster_id": c["cluster_id"],
                    "center": c["center"],
                    "size": c["size"],
                    "mean_distance": c["mean_distance"],
                    "majority_label": c["majority_label"],
                    "label_purity": c["label_purity"],
                }
                for c in clusters
            ]
        ).astype(
            {"majority_label": "Int64", "label_purity": "Float64", "mean_distance": "Float64"}
        ),
        "assignments": pd.DataFrame(
            {
                "run_id": pd.Series([run_id] * store.n_rows, dtype="str"),
                "sample_id": pd.Series(store.read_sample_ids().tolist(), dtype="str"),
                "cluster_id": asg.read_cluster_ids().astype(np.int32),
                "distance": asg.read_distances().astype(np.float32),
                "label": pd.array(
                    np.where(store.read_labels() >= 0, store.read_labels(), -1), dtype="Int64"
                ),
                "encoder_version": pd.Series([store.encoder_version] * store.n_rows, dtype="str"),
            }
        ),
        "quarantine": pd.read_parquet(rd / "quarantine.parquet"),
    }
    frames["assignments"].loc[frames["assignments"]["label"] < 0, "label"] = pd.NA
    # contract-checked BI sinks: Parquet, DuckDB tables, PostgreSQL when configured
    frames = attach_drift_reports(frames, lay, run_id)  # the monitor's, if it ran
    frames = attach_cluster_report(frames, lay, run_id)  # the report's, if it ran
    log.info(
        "publishing BI tables: Parquet %s, DuckDB %s, PostgreSQL %s",
        lay.published,
        lay.duckdb_path,
        mask_url(postgres_url) if postgres_url else "not configured",
    )
    # the run commits when its record says completed: the nightly then calls finish_publish
    res = publish_run(
        frames,
        parquet_dir=lay.published,
        duckdb_path=lay.duckdb_path,
        postgres_url=postgres_url,
        journal_dir=journal_dir(lay),
        hold_commit=True,
    )
    log.info(
        "BI tables of run %s published: %s",
        res.run_id,
        ", ".join(f"{k} {v}" for k, v in res.rows.items()),
    )
    if on_published is not None:
        on_published(res)
    bi = res.to_dict()
    return {
        "tables": bi["parquet_files"],
        "duckdb": bi["duckdb_path"],
        "postgres": bi["postgres"],
        "rows": bi["rows"],
        "seconds": time.perf_counter() - t0,
    }


def journal_dir(lay: OutputLayout) -> Path:
    """The publish journal of an output folder (:mod:`sqflow.bi.journal`)."""
    return lay.published / JOURNAL_FOLDER


def finish_publish(
    settings: PipelineSettings, run_id: str, *, committed: bool, postgres_url: str | None = None
) -> dict[str, Any]:
    """End the publish of ``run_id`` once its record is written: ``committed`` (run.json says
    completed) keeps its BI rows, otherwise they are removed from every sink (the run failed
    after publishing: it must not show as completed anywhere). Nothing to do when the run did
    not reach publish."""
    return journal.finish(
        journal_dir(OutputLayout.of(settings)),
        run_id,
        committed=committed,
        postgres_url=postgres_url,
    )


def attach_cluster_report(
    frames: dict[str, pd.DataFrame], lay: OutputLayout, run_id: str
) -> dict[str, pd.DataFrame]:
    """Add the run's ``cluster_report`` rows written by the report stage
    (``runs/<run_id>/bi/cluster_report.parquet``, contract-typed) to ``frames``, so every sink
    gets them with the run's other tables. Unchanged when the report did not run or failed."""
    found = staged_table_path(lay, run_id, "cluster_report")
    if not found.exists() or "cluster_report" in frames:
        return frames
    return {**frames, "cluster_report": pd.read_parquet(found)}


def attach_drift_reports(
    frames: dict[str, pd.DataFrame], lay: OutputLayout, run_id: str
) -> dict[str, pd.DataFrame]:
    """Add the run's ``drift_reports`` rows written by the monitor stage
    (``runs/<run_id>/bi/drift_reports.parquet``) to ``frames`` and set the ``runs`` row's
    ``monitor_ran``/``drift_detected`` from its ``decision`` row. Without such a file (the
    monitor did not run) ``frames`` is returned unchanged: no stand-in values."""
    found = staged_table_path(lay, run_id, "drift_reports")
    if not found.exists() or "drift_reports" in frames:
        return frames
    drift = pd.read_parquet(found)
    out = dict(frames)
    out["drift_reports"] = drift
    if "runs" in out:
        runs = out["runs"].copy()
        decision = drift.loc[drift["statistic"] == "decision", "drifted"]
        runs["monitor_ran"] = True
        runs["drift_detected"] = pd.array(
            [decision.iloc[0] if len(decision) else pd.NA] * len(runs), dtype="boolean"
        )
        out["runs"] = runs
    return out


# ------------------------------------------------------------------------------ retrains
#: outcomes of a finished retrain attempt as ``models/lineage.jsonl`` records them
_ATTEMPT_OUTCOMES = ("promoted", "refused", "failed", "skipped")


def retrains_frame(dataset: str, run_id: str, attempts: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``retrains`` rows (contract :data:`data_contracts.tables.RETRAINS`) of run
    ``run_id`` from its lineage records (:func:`sqflow.layout.read_lineage`), attempt 1, 2, ... in
    order. Records of older sqflow versions (no ``outcome``) read as failed when their
    ``status`` says so, else promoted (as :func:`sqflow.pipeline.monitor.retrain_outcome`)."""
    rows = []
    for n, r in enumerate(attempts, 1):
        outcome = lineage_outcome(r)
        if outcome not in _ATTEMPT_OUTCOMES:
            raise ValueError(
                f"lineage record {n} of run {run_id!r} has outcome {outcome!r}; valid: "
                f"{list(_ATTEMPT_OUTCOMES)}"
            )
        gate = r.get("gate") or {}
        started = r.get("started_at") or r.get("finished_at")
        rows.append(
            {
                "run_id": run_id,
                "attempt": n,
                "dataset": dataset,
                "from_version": r.get("from_version"),
                "to_version": r.get("to_version"),
                "outcome": outcome,
                "current_after": r.get("current_after"),
                "reason": r.get("reason"),
                "error": r.get("error"),
                "gate_criterion": gate.get("criterion"),
                "gate_old_score": gate.get("old"),
                "gate_new_score": gate.get("new"),
                "gate_min_gain": gate.get("min_gain"),
                "gate_rows": gate.get("n_rows"),
                "started_at": started,
                "finished_at": r.get("finished_at") or started,
            }
        )
    cols = [
        "run_id", "attempt", "dataset", "from_version", "to_version", "outcome",
        "current_after", "reason", "error", "gate_criterion", "gate_old_score",
        "gate_new_score", "gate_min_gain", "gate_rows", "started_at", "finished_at",
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    return df.astype(
        {
            "gate_old_score": "Float64",
            "gate_new_score": "Float64",
            "gate_min_gain": "Float64",
            "gate_rows": "Int64",
        }
    )


def publish_retrains_stage(
    settings: PipelineSettings, run_id: str, *, postgres_url: str | None = None
) -> dict[str, Any]:
    """Publish the ``retrains`` rows of run ``run_id`` (every retrain attempt its drift
    requested, from the lineage) to Parquet, DuckDB and PostgreSQL when configured, replacing
    the run's earlier ``retrains`` rows (:func:`sqflow.bi.publish_run_tables`). Call it when an
    attempt ends (the retrain flow does), holding the output lock.

    Nothing is published when the run has no record (``run.json``: it is not a nightly run, so
    it has no ``runs`` row to join) or no attempt is recorded. Returns ``published`` (bool),
    ``rows``, ``tables``, ``duckdb``, ``postgres`` (masked), ``message``, ``seconds``."""
    from data_contracts.run_record import RunRecordError

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    out: dict[str, Any] = {"published": False, "rows": 0}
    try:
        rec = RunRecord.load(lay.run_dir(run_id) / "run.json")
    except (FileNotFoundError, RunRecordError) as exc:
        msg = f"run {run_id} has no readable run record ({exc}): its retrains are not published"
        log.info(msg)
        return {**out, "message": msg, "seconds": time.perf_counter() - t0}
    attempts = read_lineage(lay.models_dir, run_id)
    if not attempts:
        msg = f"no retrain of run {run_id} in the lineage: nothing to publish"
        return {**out, "message": msg, "seconds": time.perf_counter() - t0}
    frame = retrains_frame(rec.dataset or settings.source.dataset, run_id, attempts)
    res = publish_run_tables(
        {"retrains": frame},
        run_id=run_id,
        run_date=pd.Timestamp(rec.started_at).tz_convert("UTC").date(),
        parquet_dir=lay.published,
        duckdb_path=lay.duckdb_path,
        postgres_url=postgres_url,
        journal_dir=journal_dir(lay),
    )
    last = frame.iloc[-1]
    msg = (
        f"retrains of run {run_id} published ({len(frame)} attempt(s); last: "
        f"{last['outcome']}, {last['from_version']} -> {last['to_version']})"
    )
    log.info(msg)
    bi = res.to_dict()
    return {
        "published": True,
        "rows": len(frame),
        "tables": bi["parquet_files"],
        "duckdb": bi["duckdb_path"],
        "postgres": bi["postgres"],
        "message": msg,
        "seconds": time.perf_counter() - t0,
    }
