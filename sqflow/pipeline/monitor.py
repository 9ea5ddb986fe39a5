"""The drift monitor's stages (issue 7; no Prefect): compare a run's embeddings with the reference
recorded with the current encoder, write the report, and retrain when asked.

Files (under the pipeline's output folder, see :mod:`sqflow.layout`)::

    models/reference/<version>/centers.npy SQ centers fitted on that version's reference set
    runs/<run_id>/drift_report.json        the full DriftReport (+ reference version, paths)
    runs/<run_id>/drift_report.md          the same as Markdown
    runs/<run_id>/embeddings-<old>.zarr    after a retrain: the run's store from the old encoder
    runs/<run_id>/bi/drift_reports.parquet the run's drift_reports rows (contract-checked),
                                           private to the run until the publish stage makes
                                           them visible with the run's other BI tables
    models/lineage.jsonl                   one line per retrain: old -> new version, reason, status
    models/<new>/lineage.json              the same record beside the new version
    models/<new>/FAILED.json               a version whose retrain failed (never made current)

The model registry (``models/CURRENT``, ``register_encoder``) and the encoder training with its
reference set are the pipeline's (:func:`sqflow.pipeline.encoder.train_encoder_stage`); this module only
adds the steps around them and rolls ``CURRENT`` back when a retrain fails.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.drift_policy import DRIFT_REPORT_COLUMNS, DriftPolicy
from data_contracts.settings import PipelineSettings
from data_contracts.tables import validate_frame

from ..atomic_files import atomic_save_npy, atomic_write_parquet, atomic_write_text
from ..layout import OutputLayout, current_version
from .encoder import embed_run, open_run_store, train_encoder_stage
from .staged import staged_table_path

__all__ = [
    "RetrainFailed",
    "drift_report_frame",
    "monitor_stage",
    "reference_centers",
    "retrain_stage",
]

log = logging.getLogger(__name__)


def _policy(policy: DriftPolicy | dict[str, Any] | None, settings: PipelineSettings) -> DriftPolicy:
    if isinstance(policy, DriftPolicy):
        return policy
    data = dict(policy or {})
    data.setdefault("n_clusters", max(2, settings.n_clusters))
    data.setdefault("seed", settings.seed)
    return DriftPolicy.model_validate(data)


# ------------------------------------------------------------------------------ centers
def reference_centers(settings: PipelineSettings, version: str) -> tuple[np.ndarray, str]:
    """SQ centers of ``version``'s reference set: ``<models>/reference/<version>/centers.npy``, fitted
    (K = ``n_clusters``, r = ``rank``, ``seed``) and saved on first use. Returns (centers, path)."""
    from sqflow import StochasticQuantization
    from sqflow.store import open_store

    lay = OutputLayout.of(settings)
    path = lay.reference_store(version).parent / "centers.npy"
    store = open_store(lay.reference_store(version))
    k = settings.n_clusters
    if path.exists():
        c = np.load(path)
        if c.shape == (k, store.dim):
            return c, str(path)
    ref = store.read_embeddings()
    est = StochasticQuantization(k, rank=settings.rank, random_state=settings.seed)
    c = np.asarray(est.fit(ref).cluster_centers_, dtype=np.float64)
    atomic_save_npy(path, c)
    log.info(
        "fitted %d reference centers of %s (objective %.4g) -> %s", k, version, est.objective_, path
    )
    return c, str(path)


# ------------------------------------------------------------------------------ monitor
def drift_report_frame(report: Any, run_id: str, reference_version: str) -> pd.DataFrame:
    """The ``drift_reports`` table rows of one report: one row per statistic plus a
    ``decision`` row (value = statistics flagging drift, threshold = min_agreeing)."""
    now = pd.Timestamp.now(tz="UTC").as_unit("us")
    rows = report.rows() + [
        {
            "statistic": "decision",
            "value": float(len(report.flagged)),
            "threshold": float(report.policy["min_agreeing"]),
            "p_value": None,
            "drifted": report.drifted,
        }
    ]
    df = pd.DataFrame(
        {
            "run_id": pd.Series([run_id] * len(rows), dtype="str"),
            "reference_version": pd.Series([reference_version] * len(rows), dtype="str"),
            "statistic": pd.Series([r["statistic"] for r in rows], dtype="str"),
            "value": pd.Series([r["value"] for r in rows], dtype="float64"),
            "threshold": pd.Series([r["threshold"] for r in rows], dtype="float64"),
            "p_value": pd.Series([r["p_value"] for r in rows], dtype="Float64"),
            "drifted": pd.Series([r["drifted"] for r in rows], dtype="boolean"),
            "status": pd.Series([report.status] * len(rows), dtype="str"),
            "batch_rows": pd.Series([report.sizes["batch_rows"]] * len(rows), dtype="int64"),
            "reference_rows": pd.Series(
                [report.sizes["reference_rows"]] * len(rows), dtype="int64"
            ),
            "created_at": pd.Series([now] * len(rows), dtype="datetime64[us, UTC]"),
        }
    )
    if list(df.columns) != list(DRIFT_REPORT_COLUMNS):
        raise RuntimeError(
            f"drift_reports columns {list(df.columns)} differ from the contract "
            f"{list(DRIFT_REPORT_COLUMNS)}"
        )
    return validate_frame("drift_reports", df)  # the BI contract of the published table


def monitor_stage(
    settings: PipelineSettings, run_id: str, policy: DriftPolicy | dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compare ``runs/<run_id>/embeddings.zarr`` with the reference of the current encoder.

    Inputs: ``settings`` (the run's settings: ``output_dir``, ``models_dir``,
    ``n_clusters``, ``rank``, ``seed``), the run id (its store must be complete and made with the
    current encoder version), the policy (None: defaults; ``n_clusters``/``seed`` from settings).
    Writes ``drift_report.json/.md`` in the run folder and the ``drift_reports`` Parquet file.
    Returns a JSON-able dict: ``status``, ``drifted``, ``reasons``, ``statistics`` (table rows),
    ``reference_version``, ``report`` (full dict), ``markdown``, paths, ``seconds``.
    """
    from sqflow.drift import detect_drift
    from sqflow.store import open_store

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    pol = _policy(policy, settings)
    version = current_version(lay.models_dir)
    if version is None:
        raise FileNotFoundError(
            f"no encoder registered in {str(lay.models_dir)!r}: the monitor "
            "compares with the current encoder's reference; train one first"
        )
    rd = lay.run_dir(run_id)
    batch = open_run_store(lay, run_id)
    if batch.encoder_version != version:
        raise RuntimeError(
            f"run {run_id} was embedded with encoder {batch.encoder_version!r} but the current "
            f"encoder is {version!r}: re-run embed so batch and reference share one encoder"
        )
    ref_path = lay.reference_store(version)
    if not ref_path.exists():
        raise FileNotFoundError(
            f"no reference set for encoder {version!r} at {str(ref_path)!r}: the train-encoder "
            "stage records it; re-run train-encoder"
        )
    reference = open_store(ref_path)
    centers, centers_path = reference_centers(settings, version)
    report = detect_drift(reference, batch, centers=centers, rank=settings.rank, policy=pol)
    log.info("drift check of run %s against %s: %s", run_id, version, report.reasons[0])
    for r in report.reasons[1:]:
        log.info("  %s", r)
    md = (
        f"# Drift report, run `{run_id}`\n\nReference: encoder `{version}` reference set "
        f"({report.sizes['reference_rows']} rows); batch: {report.sizes['batch_rows']} rows.\n\n"
        + report.to_markdown()
    )
    frame = drift_report_frame(report, run_id, version)
    # private to the run until publish (a BI reader never sees drift rows of an unpublished run)
    table = atomic_write_parquet(frame, staged_table_path(lay, run_id, "drift_reports"))
    full = {
        "run_id": run_id,
        "reference_version": version,
        "centers": centers_path,
        **report.to_dict(),
    }
    atomic_write_text(rd / "drift_report.json", json.dumps(full, indent=2))
    atomic_write_text(rd / "drift_report.md", md)
    return {
        "run_id": run_id,
        "status": report.status,
        "drifted": report.drifted,
        "reasons": report.reasons,
        "statistics": report.rows(),
        "flagged": report.flagged,
        "reference_version": version,
        "batch_store": batch.location,
        "reference_store": str(ref_path),
        "report": full,
        "markdown": md,
        "report_path": str(rd / "drift_report.json"),
        "drift_reports_table": str(table),
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------ retrain
class RetrainFailed(RuntimeError):
    """A retrain failed; the previous encoder version was kept (or put back) as current."""


def _append_lineage(lay: OutputLayout, rec: dict[str, Any]) -> None:
    lay.models_dir.mkdir(parents=True, exist_ok=True)
    with open(lay.models_dir / "lineage.jsonl", "a") as fh:
        fh.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
    if rec.get("to_version") and (lay.models_dir / rec["to_version"]).is_dir():
        atomic_write_text(
            lay.models_dir / rec["to_version"] / "lineage.json",
            json.dumps(rec, indent=2, sort_keys=True, default=str),
        )


def _reembed_run(
    settings: PipelineSettings,
    lay: OutputLayout,
    run_id: str,
    version: str,
    old_version: str | None,
) -> dict[str, Any]:
    """Embed the run's manifest with ``version`` into a staging store, then swap it in as
    ``runs/<id>/embeddings.zarr`` (the old store is kept as ``embeddings-<old>.zarr``)."""
    from sqflow.embedding import TripletEncoder

    rd = lay.run_dir(run_id)
    enc = TripletEncoder.load(lay.models_dir / version / "encoder.pt", device=settings.device)
    stage = rd / f".embeddings-{version}.zarr"
    _, _, _, manifest, _ = embed_run(
        settings, lay, run_id, enc, version, stage, if_exists="overwrite"
    )
    live = rd / "embeddings.zarr"
    kept = rd / f"embeddings-{old_version or 'previous'}.zarr"
    if kept.exists():
        shutil.rmtree(kept)
    if live.exists():
        live.rename(kept)
    try:
        stage.rename(live)
    except OSError:
        if kept.exists() and not live.exists():
            kept.rename(live)
        raise
    return {
        "store": str(live),
        "previous_store": str(kept) if kept.exists() else None,
        "n_rows": len(manifest),
    }


def retrain_stage(
    settings: PipelineSettings,
    run_id: str,
    reason: str,
    policy: DriftPolicy | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain after drift: a new encoder version on the labeled items of the configured source
    (the pipeline's ``train_encoder_stage``: registers the version and embeds its reference
    set), SQ centers on the new reference, the run's batch re-embedded with the new version, and
    the lineage (old -> new, reason) recorded.

    If any step fails, ``models/CURRENT`` is put back to the old version, a half-made new
    version is marked ``FAILED.json``, the lineage records the failure, and
    :class:`RetrainFailed` is raised (its message says which version stays current).
    Returns ``old_version``, ``new_version``, ``reference_store``, ``centers``, ``batch_store``,
    ``after`` (the batch against the new reference: status and flagged statistics), ``seconds``.
    """
    from sqflow.drift import detect_drift
    from sqflow.store import open_store

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    old = current_version(lay.models_dir)
    new: str | None = None
    rec: dict[str, Any] = {
        "run_id": run_id,
        "from_version": old,
        "reason": reason,
        "started_at": datetime.now(UTC).isoformat(),
    }
    try:
        train = train_encoder_stage(settings)
        new = train["version"]
        rec.update(
            to_version=new, n_train=train["n_train"], reference_store=train["reference_store"]
        )
        centers, centers_path = reference_centers(settings, new)
        batch = _reembed_run(settings, lay, run_id, new, old)
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {exc}"
        now_current = None
        try:
            if old is not None:
                atomic_write_text(lay.models_dir / "CURRENT", old + "\n")
            elif (lay.models_dir / "CURRENT").exists():
                (lay.models_dir / "CURRENT").unlink()
            now_current = current_version(lay.models_dir)
        finally:
            if new is not None and (lay.models_dir / new).is_dir():
                atomic_write_text(
                    lay.models_dir / new / "FAILED.json",
                    json.dumps(
                        {
                            "version": new,
                            "error": msg,
                            "run_id": run_id,
                            "at": datetime.now(UTC).isoformat(),
                        },
                        indent=2,
                    ),
                )
            _append_lineage(
                lay,
                {
                    **rec,
                    "status": "failed",
                    "error": msg,
                    "current_after": now_current,
                    "finished_at": datetime.now(UTC).isoformat(),
                },
            )
        log.error(
            "retrain after drift in run %s FAILED (%s); encoder %s stays current",
            run_id,
            msg,
            now_current,
        )
        raise RetrainFailed(
            f"retrain failed ({msg}); encoder {now_current!r} stays current"
            + (f"; version {new!r} marked FAILED" if new else "")
        ) from exc
    after: dict[str, Any]
    try:  # informational: how the re-embedded batch looks against the new reference
        rep = detect_drift(
            open_store(lay.reference_store(new)),
            open_store(batch["store"]),
            centers=centers,
            rank=settings.rank,
            policy=_policy(policy, settings),
        )
        after = {"status": rep.status, "flagged": rep.flagged, "reasons": rep.reasons}
    except Exception as exc:  # noqa: BLE001 - never undoes a finished retrain
        after = {"status": "not computed", "error": f"{type(exc).__name__}: {exc}"}
    rec.update(
        status="completed",
        centers=centers_path,
        batch_store=batch["store"],
        previous_batch_store=batch["previous_store"],
        after=after,
        finished_at=datetime.now(UTC).isoformat(),
    )
    _append_lineage(lay, rec)
    log.info(
        "retrained: encoder %s -> %s (%s); batch re-embedded; against the new reference: %s",
        old,
        new,
        reason,
        after.get("status"),
    )
    return {
        "old_version": old,
        "new_version": new,
        "reason": reason,
        "reference_store": train["reference_store"],
        "centers": centers_path,
        "batch_store": batch["store"],
        "previous_batch_store": batch["previous_store"],
        "after": after,
        "seconds": time.perf_counter() - t0,
    }
