"""The cluster report of a nightly run: loader from the output folder and the report stage.

* :func:`build_report_for_run` (plain function; what ``sqflow report RUN_ID`` calls) reads a
  run's outputs from the pipeline's output folder (see :mod:`sqflow.layout`) and calls the engine
  :func:`sqflow.report.build_report`. It writes ``runs/<run_id>/report/report.html`` (the
  self-contained page), ``cluster_report.parquet`` and ``report.json`` beside it.
* :func:`report_stage`: the same, plus the run's ``cluster_report`` BI rows in
  ``runs/<run_id>/bi/cluster_report.parquet`` (the BI sink's Arrow schema), checked against
  the registered contract :data:`data_contracts.tables.CLUSTER_REPORT` first. Like the
  monitor's ``drift_reports`` rows they stay private to the run until the publish stage makes
  them visible in Parquet, DuckDB and PostgreSQL with the run's other tables. (The
  Prefect task, :mod:`tasks.report`, adds the Markdown and table artifacts.)

What is read (all written by ``nightly``): ``run.json`` (status, dataset, encoder version,
counts, quarantine reasons, objective, passes, timings), ``manifest.parquet`` / ``.json``
(sample ids, source refs, labels, splits, item shape), ``embeddings.zarr`` with the
assignments ``<run_id>`` inside, ``centers.npy``, ``drift_report.json`` when the monitor ran,
and the ``report/cluster_report.parquet`` of earlier runs (trends, previous values).
Embeddings are read through the store's verified chunk reads (:meth:`EmbeddingStore.to_dask`),
like the cluster stage: a damaged chunk raises :class:`sqflow.store.StoreIntegrityError`
naming the store, the array and the chunk (the nightly records it as the report's error).

The labeled hold-out (embedding quality) is the labeled rows of the run whose sample ids are
not among the rows the run's encoder version trained or validated on (its ``rows.parquet``,
:func:`heldout_rows`); when there are none (or no labels, or a version without recorded rows)
the page says why and shows no figure. The sample ids used are written to
``report/heldout.parquet``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data_contracts.run_record import RunRecord
from data_contracts.settings import PipelineSettings
from data_contracts.tables import CLUSTER_REPORT, validate_frame

from ..atomic_files import atomic_write_parquet
from ..layout import OutputLayout

__all__ = [
    "TREND_RUNS",
    "build_report_for_run",
    "report_dir",
    "report_stage",
    "validate_cluster_report",
]

log = logging.getLogger(__name__)

#: sample ids of the items the embedding-quality figures were measured on (in the report folder)
HELDOUT_FILE = "heldout.parquet"

#: runs kept in the size trend (this run included)
TREND_RUNS = 7


def validate_cluster_report(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` conformed to the registered ``cluster_report`` contract
    (:data:`data_contracts.tables.CLUSTER_REPORT`), or :class:`ContractViolation` naming the
    columns and rows that violate it."""
    return validate_frame("cluster_report", df)


def report_dir(layout: OutputLayout, run_id: str) -> Path:
    return layout.run_dir(run_id) / "report"


def _previous_runs(
    lay: OutputLayout, run_id: str, started_at: str | None, encoder_version: str | None, k: int
) -> list[Any]:
    """Earlier completed runs (oldest first, at most TREND_RUNS - 1): their report table when
    they have one, else the cluster sizes of their run.json. Cluster sizes of a run with
    another encoder version or number of clusters are left out (its cluster numbers mean
    other clusters); its quality figures are kept."""
    from sqflow.report import REPORT_TABLE, PreviousRun, summarise_previous

    out = []
    for rec in lay.run_records():
        rid = rec.run_id
        if rid == run_id or not rec.completed:
            continue
        if started_at and rec.started_at >= started_at:
            continue
        clusters = rec.clusters
        same = rec.encoder_version == encoder_version and int(rec.n_clusters or len(clusters)) == k
        prev = None
        tp = report_dir(lay, rid) / REPORT_TABLE
        if tp.exists():
            try:
                prev = summarise_previous(pd.read_parquet(tp), rid)
            except (OSError, ValueError, KeyError):
                prev = None
        if prev is None and clusters:
            prev = PreviousRun(rid, {int(c["cluster_id"]): int(c["size"]) for c in clusters})
        if prev is not None:
            if not same:
                prev.sizes = {}
            out.append(prev)
    return out[-(TREND_RUNS - 1) :]


def _drift(rd: Path, rec: RunRecord) -> tuple[dict[str, Any] | None, str | None]:
    p = rd / "drift_report.json"
    if p.exists():
        d = json.loads(p.read_text())
        stats = [
            {
                "statistic": s.get("statistic") or s.get("name"),
                "value": s.get("value"),
                "threshold": s.get("threshold"),
                "p_value": s.get("p_value"),
                "drifted": s.get("drifted"),
            }
            for s in d.get("statistics", [])
        ]
        return {
            "drifted": d.get("drifted"),
            "status": d.get("status"),
            "reasons": d.get("reasons", []),
            "statistics": stats,
        }, None
    mon = rec.monitor
    if isinstance(mon, dict) and mon.get("error"):
        return None, (
            f"The drift monitor failed for this run ({mon['error']}), so no drift "
            "decision was made."
        )
    if isinstance(mon, dict) and "drifted" in mon:
        return {
            "drifted": mon.get("drifted"),
            "status": mon.get("status"),
            "reasons": mon.get("reasons", []),
            "statistics": mon.get("statistics", []),
        }, None
    note = mon.strip() if isinstance(mon, str) else ""
    for prefix in ("not run:", "not run"):
        if note.lower().startswith(prefix):
            note = note[len(prefix) :].strip()
    return None, (
        "The drift monitor did not run for this run"
        + (f": {note.rstrip('.')}." if note else ", so no drift decision was made.")
    )


def heldout_rows(
    lay: OutputLayout, encoder_version: str, sample_ids: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray | None, str | None]:
    """Rows of a run (``sample_ids``/``labels``, label -1 = none) that may judge the embedding
    of ``encoder_version``: labeled, and not among the rows the version was trained or
    validated on (``rows.parquet``, role ``train``; checked on sample ids). Returns (row
    indices, None) when at least 2 such rows exist, else (None, the reason shown instead of
    the figures)."""
    from sqflow.layout import version_rows

    lab_rows = np.flatnonzero(labels >= 0)
    if len(lab_rows) == 0:
        return None, "no labels in this run, so no embedding-quality figure can be measured"
    try:
        vr = version_rows(lay.models_dir, encoder_version)
    except FileNotFoundError:
        return None, (
            f"encoder {encoder_version} was registered before sqflow recorded the rows it "
            "trained on, so no labeled item can be shown to be held out; no figure"
        )
    trained = set(vr.loc[vr["role"] == "train", "sample_id"].astype(str))
    held = lab_rows[~np.isin(sample_ids[lab_rows].astype(str), list(trained))]
    if set(sample_ids[held].astype(str)) & trained:  # the promise of the page, enforced
        raise RuntimeError("held-out rows overlap the encoder's training rows")
    if len(held) < 2:
        return None, (
            f"all but {len(held)} of this run's {len(lab_rows)} labeled items were used to "
            f"train or validate encoder {encoder_version}, so there is no held-out set; no figure"
        )
    return held, None


def build_report_for_run(
    output_dir: str | os.PathLike[str],
    run_id: str,
    *,
    models_dir: str | os.PathLike[str] | None = None,
    record: RunRecord | None = None,
    max_heldout: int = 2000,
) -> Path:
    """Build the cluster report of run ``run_id`` in the output folder ``output_dir`` and
    return the path of its HTML page (``runs/<run_id>/report/report.html``).

    ``record``: the run record that ``nightly`` holds in memory (it has the full convergence
    curve, ``cluster.loss_curve``; ``run.json`` need not exist yet); None reads ``run.json``
    (whose convergence curve is the objective estimate after each pass). Raises FileNotFoundError naming what is missing when
    the run folder is incomplete (the run failed or has not clustered yet).
    """
    return _build(
        output_dir, run_id, models_dir=models_dir, record=record, max_heldout=max_heldout
    ).html_path


def _build(
    output_dir: str | os.PathLike[str],
    run_id: str,
    *,
    models_dir: Any = None,
    record: RunRecord | None = None,
    max_heldout: int = 2000,
) -> Any:
    from data_contracts.manifest import ManifestMeta
    from sqflow.report import HeldOut, RunHealth, build_report
    from sqflow.sources import open_source
    from sqflow.store import open_assignments, open_store

    lay = OutputLayout.at(output_dir, models_dir)
    rd = lay.run_dir(run_id)
    if not rd.is_dir():
        runs = sorted(p.name for p in (lay.root / "runs").glob("*") if p.is_dir())
        raise FileNotFoundError(
            f"no run {run_id!r} in {str(lay.root / 'runs')!r}; runs there: "
            f"{runs[-5:] if runs else 'none'}"
        )
    need = ([] if record is not None else [rd / "run.json"]) + [
        rd / "manifest.parquet",
        rd / "manifest.json",
        rd / "embeddings.zarr",
        rd / "centers.npy",
    ]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"run {run_id!r} has no {', '.join(missing)}: the report needs "
            "a run that got through clustering"
        )
    # nightly passes its in-memory record (run.json is written when the run ends)
    rec = record if record is not None else RunRecord.load(rd / "run.json")
    meta = ManifestMeta.model_validate_json((rd / "manifest.json").read_text())
    manifest = pd.read_parquet(rd / "manifest.parquet")
    store = open_store(rd / "embeddings.zarr")
    asg = open_assignments(store, name=run_id)
    cid = asg.read_cluster_ids().astype(np.int64)
    dist = asg.read_distances().astype(np.float64)
    labels = store.read_labels().astype(np.int64)
    ids = np.array([str(v) for v in store.read_sample_ids().tolist()], dtype=object)
    if manifest["sample_id"].astype(str).tolist() != ids.tolist():
        raise RuntimeError(
            f"run {run_id!r}: the embedding store's sample ids differ from the "
            "manifest's; re-run embed"
        )
    centers = np.load(rd / "centers.npy")
    source = open_source(meta.source)
    refs = manifest["source_ref"].to_numpy(object)
    row_of = {s: i for i, s in enumerate(ids)}
    images = len(meta.item_shape) >= 2

    def thumbnails(sample_ids: Sequence[str]) -> np.ndarray:
        return source.load([refs[row_of[s]] for s in sample_ids])

    # the committed rows through the store's verified chunk reads (checksum, presence and
    # commit digest): a damaged chunk raises StoreIntegrityError naming the store, the array
    # and the chunk, as in the cluster stage, instead of feeding the report wrong rows
    embeddings = store.to_dask()
    held, heldout_note = heldout_rows(lay, store.encoder_version, ids, labels)
    heldout = None
    if held is not None and len(held) > max_heldout:
        held = np.sort(np.random.default_rng(0).choice(held, max_heldout, replace=False))
    if held is not None:
        heldout = HeldOut(
            embeddings=embeddings[held].compute(),
            labels=labels[held],
            inputs=source.load(list(refs[held])),
            cluster_ids=cid[held],
        )
    out_dir = report_dir(lay, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the audit trail of the quality figures: which items they were measured on
    atomic_write_parquet(
        pd.DataFrame({"sample_id": [] if held is None else ids[held].astype(str).tolist()}),
        out_dir / HELDOUT_FILE,
    )
    cl = rec.cluster or {}
    curve = cl.get("loss_curve")
    curve_label = "block of samples"
    if not curve:
        curve = [p["objective_estimate"] for p in cl.get("passes", [])]
        curve_label = "pass over the data"
    samp = rec.sample or {}
    drift, note = _drift(rd, rec)
    timings = dict(rec.timings)
    health = RunHealth(
        drift=drift,
        monitor_note=note,
        n_items=len(ids),
        n_quarantined=int(samp.get("n_quarantined") or 0),
        quarantine_reasons=samp.get("top_quarantine_reasons") or {},
        objective=cl.get("objective"),
        loss_curve=curve,
        loss_curve_label=curve_label,
        n_passes=cl.get("n_iter"),
        timings=timings,
        dataset=rec.dataset,
        encoder_version=rec.encoder_version or store.encoder_version,
        started_at=rec.started_at,
        warm_start_from=cl.get("warm_start_from"),
    )
    result = build_report(
        run_id,
        report_dir(lay, run_id),
        embeddings=embeddings,
        cluster_ids=cid,
        distances=dist,
        centers=centers,
        sample_ids=ids,
        labels=labels if (labels >= 0).any() else None,
        thumbnails=thumbnails if images else None,
        item_kind="timeseries" if meta.source.kind == "timeseries" else "image",
        k_selection=(rec.cluster or {}).get("k_selection") if rec is not None else None,
        heldout=heldout,
        heldout_note=heldout_note,
        previous=_previous_runs(lay, run_id, rec.started_at, health.encoder_version, len(centers)),
        health=health,
        max_heldout=max_heldout,
    )
    return result


def report_stage(
    settings: PipelineSettings, run_id: str, record: RunRecord | None = None
) -> dict[str, Any]:
    """Build the report of ``run_id`` (see :func:`build_report_for_run`), write the
    ``cluster_report`` BI Parquet file (contract-checked) and return a small JSON-able dict:
    ``html``, ``table``, ``bi_parquet``, ``rows`` (the per-cluster records), ``quality``,
    ``seconds``."""
    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    res = _build(lay.root, run_id, models_dir=lay.models_dir, record=record)
    table = validate_cluster_report(res.table)
    import pyarrow.parquet as pq

    from ..atomic_files import atomic_path
    from .staged import staged_table_path

    schema = CLUSTER_REPORT.arrow_schema()
    arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    # private to the run until publish (one commit per sink with the run's other tables)
    bi_path = staged_table_path(lay, run_id, "cluster_report")
    with atomic_path(bi_path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(schema.metadata), str(tmp), compression="zstd")
    q = res.data.quality
    log.info("cluster report of run %s: %s", run_id, res.html_path)
    return {
        "html": str(res.html_path),
        "table": str(res.table_path),
        "bi_parquet": str(bi_path),
        "rows": _plain_records(table),
        "quality": {
            "knn_accuracy": q.knn_accuracy,
            "majority_agreement": q.majority_agreement,
            "trustworthiness": q.trustworthiness,
            "n_heldout": q.n_heldout,
            "previous": q.previous,
            "previous_run_id": q.previous_run_id,
        },
        "confused_pairs": [[p.a, p.b] for p in res.data.pairs],
        "seconds": time.perf_counter() - t0,
    }


def _plain_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Records with plain Python values (Prefect table artifacts reject NumPy scalars)."""
    out = []
    for rec in df.to_dict("records"):
        row = {}
        for k, v in rec.items():
            if v is None or (not isinstance(v, str) and pd.isna(v)):
                row[k] = None
            elif isinstance(v, np.integer):
                row[k] = int(v)
            elif isinstance(v, np.floating | float):
                row[k] = round(float(v), 6)
            else:
                row[k] = v
        out.append(row)
    return out
