"""The drift monitor's stages (issue 7; no Prefect): compare a run's embeddings with the reference
recorded with the current encoder, write the report, and retrain when asked.

Files (under the pipeline's output folder, see :mod:`sqflow.layout`)::

    models/reference/<version>/centers.npy SQ centers fitted on half of that version's reference
    models/reference/<version>/centers_fit_rows.npy   that half (row indices): the drift check
                                           leaves it out of its center-based tests
    runs/<run_id>/drift_report.json        the full DriftReport (+ reference version, paths)
    runs/<run_id>/drift_report.md          the same as Markdown
    runs/<run_id>/embeddings-<old>.zarr    after a retrain: the run's store from the old encoder
    runs/<run_id>/bi/drift_reports.parquet the run's drift_reports rows (contract-checked),
                                           private to the run until the publish stage makes
                                           them visible with the run's other BI tables
    models/lineage.jsonl                   one line per retrain: old -> new version, reason, status
    models/<new>/lineage.json              the same record beside the new version
    models/<new>/FAILED.json               a version whose retrain failed (never made current)
    models/<new>/REFUSED.json              a version the promotion gate refused (not current)

The model registry (``models/CURRENT``, ``register_encoder``) and the encoder training with its
reference set are the pipeline's (:func:`sqflow.pipeline.encoder.fit_register_and_reference`);
this module decides what a retrain learns from (:func:`retrain_rows`), whether its version is
promoted (:func:`promotion_gate`), and rolls ``CURRENT`` back when a retrain fails. Whoever
triggers a retrain (the monitor's subflow, a deployment, an automation) calls
:func:`retrain_stage` and reads the outcome with :func:`retrain_outcome`.
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
from data_contracts.manifest import ManifestMeta, SampleSpec, check_manifest
from data_contracts.settings import PipelineSettings
from data_contracts.tables import validate_frame

from ..atomic_files import atomic_save_npy, atomic_write_parquet, atomic_write_text
from ..fault_points import kill_point
from ..layout import (
    ROWS_COLUMNS,
    OutputLayout,
    append_lineage,
    current_version,
    lineage_outcome,
    read_lineage,
    set_current,
    version_rows,
)
from ..sources import select
from .encoder import (
    embed_run,
    fit_register_and_reference,
    open_run_store,
    version_rows_frame,
)
from .staged import staged_table_path

__all__ = [
    "RetrainFailed",
    "drift_report_frame",
    "monitor_stage",
    "normalised_objective",
    "promotion_gate",
    "reference_centers",
    "retrain_outcome",
    "retrain_rows",
    "retrain_stage",
]

log = logging.getLogger(__name__)


def _policy(policy: DriftPolicy | dict[str, Any] | None, settings: PipelineSettings) -> DriftPolicy:
    if isinstance(policy, DriftPolicy):
        return policy
    data = dict(policy or {})
    # only used when no reference centers are given; n_clusters="auto" falls back to 10
    k = settings.n_clusters if isinstance(settings.n_clusters, int) else 10
    data.setdefault("n_clusters", max(2, k))
    data.setdefault("seed", settings.seed)
    return DriftPolicy.model_validate(data)


# ------------------------------------------------------------------------------ centers
def reference_centers(
    settings: PipelineSettings, version: str
) -> tuple[np.ndarray, str, np.ndarray]:
    """SQ centers of ``version``'s reference set, fitted on a seeded half of its rows (K =
    ``n_clusters``, r = ``rank``, ``seed``) and saved on first use as
    ``<models>/reference/<version>/centers.npy`` with those row indices in
    ``centers_fit_rows.npy``. The drift check leaves those rows out of the reference side of its
    center-based tests (distortion, occupancy), so their p-values are not in-sample. Returns
    (centers, path, fit row indices)."""
    from sqflow import StochasticQuantization
    from sqflow.store import open_store

    lay = OutputLayout.of(settings)
    folder = lay.reference_store(version).parent
    path, rows_path = folder / "centers.npy", folder / "centers_fit_rows.npy"
    store = open_store(lay.reference_store(version))
    k = settings.n_clusters  # "auto": K chosen once per version, on the fit half
    if path.exists() and rows_path.exists():
        c, fit = np.load(path), np.load(rows_path)
        if c.shape[1] == store.dim and (k == "auto" or c.shape[0] == k):
            return c, str(path), fit
    n = store.n_rows
    fit = np.sort(np.random.default_rng([settings.seed, 5]).permutation(n)[: n // 2])
    ref = store.read_embeddings()[fit]
    est = StochasticQuantization(
        k, k_range=settings.k_range, rank=settings.rank, random_state=settings.seed
    )
    c = np.asarray(est.fit(ref).cluster_centers_, dtype=np.float64)
    k = len(c)
    atomic_save_npy(rows_path, fit.astype(np.int64))
    atomic_save_npy(path, c)
    log.info(
        "fitted %d reference centers of %s on %d of its %d rows (objective %.4g) -> %s",
        k,
        version,
        len(fit),
        n,
        est.objective_,
        path,
    )
    return c, str(path), fit


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
    centers, centers_path, fit_rows = reference_centers(settings, version)
    report = detect_drift(
        reference, batch, centers=centers, rank=settings.rank, policy=pol, centers_fit_rows=fit_rows
    )
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


# ------------------------------------------------------------------------------ gate
#: neighbours of the labeled gate criterion (leave-one-out kNN accuracy, as in the report)
GATE_KNN_K = 5
#: fewest labeled held-out rows (of >= 2 classes) for the labeled criterion
GATE_MIN_LABELED = 20


def normalised_objective(z: np.ndarray, n_clusters: int, rank: float, seed: int) -> float:
    """Label-free quality of an embedding ``z`` (m, d): SQ (K = ``n_clusters``, r = ``rank``)
    fitted on a seeded half of the rows, its objective ``mean_i min_k ||z_i - c_k||^r`` on the
    other half divided by ``mean_i ||z_i - mean||^r`` of that half (the spread, so that a mere
    rescaling of the embedding changes nothing). 0 = every row on a center, 1 = no better than
    one center at the mean. Lower is better."""
    from sqflow import StochasticQuantization

    from ..distances import nearest_distance

    z = np.asarray(z, dtype=np.float64)
    perm = np.random.default_rng([seed, 6]).permutation(len(z))
    fit, test = z[perm[: len(z) // 2]], z[perm[len(z) // 2 :]]
    k = max(1, min(n_clusters, len(fit)))
    c = StochasticQuantization(k, rank=rank, random_state=seed).fit(fit).cluster_centers_
    _, d = nearest_distance(test, np.asarray(c, dtype=np.float64))
    spread = float(np.mean(np.linalg.norm(test - test.mean(0), axis=1) ** rank))
    return float(np.mean(d**rank)) / spread if spread > 0 else 1.0


def promotion_gate(
    z_old: np.ndarray,
    z_new: np.ndarray,
    labels: np.ndarray,
    *,
    n_clusters: int,
    rank: float,
    seed: int,
    min_gain: float = 0.0,
) -> dict[str, Any]:
    """Is the new encoder not worse than the old one on held-out rows (neither version trained
    on them)? ``z_old``/``z_new``: (m, d_old)/(m, d_new) embeddings of the same rows;
    ``labels`` (m,): -1 = unlabeled.

    With >= ``GATE_MIN_LABELED`` labeled rows of >= 2 classes the criterion is the
    leave-one-out kNN accuracy (k = ``GATE_KNN_K``) of the labeled rows (higher is better);
    otherwise the label-free :func:`normalised_objective` (lower is better; the score compared
    is ``1 - objective``). Promote when ``new score >= old score + min_gain``. Returns
    ``criterion``, ``old``, ``new``, ``min_gain``, ``n_rows``, ``promote``."""
    from sqflow.report.compute import knn_accuracy

    y = np.asarray(labels, dtype=np.int64)
    lab = np.flatnonzero(y >= 0)
    if len(lab) >= GATE_MIN_LABELED and len(np.unique(y[lab])) >= 2:
        crit, n = f"heldout_knn{GATE_KNN_K}_accuracy", len(lab)
        old = knn_accuracy(np.asarray(z_old)[lab], y[lab], GATE_KNN_K)
        new = knn_accuracy(np.asarray(z_new)[lab], y[lab], GATE_KNN_K)
    else:
        crit, n = "heldout_1_minus_normalised_sq_objective", len(y)
        old = 1.0 - normalised_objective(z_old, n_clusters, rank, seed)
        new = 1.0 - normalised_objective(z_new, n_clusters, rank, seed)
    return {
        "criterion": crit,
        "old": old,
        "new": new,
        "min_gain": float(min_gain),
        "n_rows": int(n),
        "promote": bool(new >= old + min_gain),
    }


# ------------------------------------------------------------------------------ retrain
class RetrainFailed(RuntimeError):
    """A retrain failed; the previous encoder version was kept (or put back) as current."""


def retrain_outcome(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """The last retrain of run ``run_id`` as the lineage recorded it: ``outcome`` (promoted /
    refused / failed; ``none`` when no retrain of this run is recorded), ``new_version`` (the
    version trained, also when refused or failed; None if training did not get that far),
    ``gate``, ``error``. Works the same after an in-process subflow and a deployment run."""
    mine = read_lineage(OutputLayout.of(settings).models_dir, run_id)
    if not mine:
        return {"outcome": "none", "new_version": None, "gate": None, "error": None}
    last = mine[-1]
    return {
        "outcome": lineage_outcome(last),
        "new_version": last.get("to_version"),
        "gate": last.get("gate"),
        "error": last.get("error"),
    }


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
    kill_point("reembed-swap")  # fault injection: the run has no live store for a moment
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


def retrain_rows(
    settings: PipelineSettings, run_id: str, old_version: str
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """What a retrain after drift in ``run_id`` learns from and is judged on: (training rows,
    reference rows, dataset). Training = the labeled rows the registry knows (role ``train``
    of ``old_version``'s ``rows.parquet``, label >= 0) + tonight's batch (the run's manifest,
    labeled or not; at most ``encoder_train_rows`` rows, seeded uniform). Reference = the old
    version's reference rows minus every training row, so it holds no row of the batch and
    no row either version trained on (the promotion gate's held-out set and the new
    version's drift reference)."""
    lay = OutputLayout.of(settings)
    old_rows = version_rows(lay.models_dir, old_version)
    rd = lay.run_dir(run_id)
    meta = ManifestMeta.model_validate_json((rd / "manifest.json").read_text())
    manifest = pd.read_parquet(rd / "manifest.parquet")
    check_manifest(manifest)
    if len(manifest) > settings.encoder_train_rows:
        manifest = select(
            manifest,
            SampleSpec(mode="uniform", n=settings.encoder_train_rows, seed=settings.seed),
        )
    batch = version_rows_frame(manifest, "train", meta.source)
    pool = old_rows[(old_rows["role"] == "train") & (old_rows["label"] >= 0)]
    pool = pool[~pool["sample_id"].isin(set(batch["sample_id"]))]
    train = pd.concat([pool, batch], ignore_index=True)[list(ROWS_COLUMNS)]
    ref = old_rows[old_rows["role"] == "reference"]
    ref = ref[~ref["sample_id"].isin(set(train["sample_id"]))].reset_index(drop=True)
    if len(ref) < 2:
        raise RuntimeError(
            f"the reference rows of {old_version} minus tonight's batch leave {len(ref)} rows: "
            "too few for a held-out comparison and a new reference set"
        )
    return train, ref, meta.dataset


def _embeddings_by_id(store: Any, sample_ids: pd.Series) -> np.ndarray:
    """Rows of ``store`` for ``sample_ids`` (in that order); KeyError naming a missing id."""
    ids = [str(v) for v in store.read_sample_ids().tolist()]
    pos = {s: i for i, s in enumerate(ids)}
    missing = [s for s in sample_ids if str(s) not in pos]
    if missing:
        raise KeyError(f"{len(missing)} sample ids not in {store.location}, e.g. {missing[:3]}")
    return store.read_embeddings()[[pos[str(s)] for s in sample_ids]]


def record_skipped_retrain(
    settings: PipelineSettings, run_id: str, from_version: str | None, reason: str, message: str
) -> dict[str, Any]:
    """Record in ``models/lineage.jsonl`` that run ``run_id``'s retrain was skipped (another
    version than ``from_version``, the one that drifted, was current when it started), so the
    attempt is a ``retrains`` row like any other. Returns the record."""
    models = OutputLayout.of(settings).models_dir
    at = datetime.now(UTC).isoformat()
    rec = {
        "run_id": run_id,
        "from_version": from_version,
        "to_version": None,
        "reason": reason,
        "outcome": "skipped",
        "status": "skipped",
        "message": message,
        "current_after": current_version(models),
        "started_at": at,
        "finished_at": at,
    }
    append_lineage(models, rec)
    return rec


def retrain_stage(
    settings: PipelineSettings,
    run_id: str,
    reason: str,
    policy: DriftPolicy | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain after drift in ``run_id``, then promote the new version only if it is not worse.

    1. Training rows and reference rows: :func:`retrain_rows` (the registry's labeled pool +
       tonight's batch; the old reference minus those rows).
    2. A new version is trained (mode from the labels), registered NOT current, with its rows
       and its reference set embedded.
    3. Gate (:func:`promotion_gate`) on the reference rows, which neither version trained on:
       held-out labeled kNN accuracy, or with too few labels the normalised SQ objective;
       ``settings.retrain_min_gain`` is the margin.
    4. Promoted: ``models/CURRENT`` -> new, centers of the new reference, the run's batch
       re-embedded (the old store kept), and the batch checked against the new reference
       (informational; the reference holds no row of the batch). Refused: the new version
       stays in the registry marked ``REFUSED.json``, the old one stays current, the batch
       keeps its embeddings.

    Every outcome is one line in ``models/lineage.jsonl`` (``outcome`` promoted / refused /
    failed, ``gate``), readable with :func:`retrain_outcome`. If any step fails,
    ``models/CURRENT`` is put back to the old version, a half-made new version is marked
    ``FAILED.json``, and :class:`RetrainFailed` is raised (its message says which version
    stays current). Returns ``outcome``, ``old_version``, ``new_version``, ``current_version``,
    ``gate``, ``reference_store``, ``centers``, ``batch_store``, ``after``, ``seconds``.
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
    centers_path = batch = None
    try:
        if old is None:
            raise FileNotFoundError(f"no current encoder in {str(lay.models_dir)!r} to retrain")
        train_rows, ref_rows, dataset = retrain_rows(settings, run_id, old)
        fit = fit_register_and_reference(
            settings,
            train_rows,
            ref_rows,
            {"dataset": dataset, "retrained_from": old, "retrain_run_id": run_id},
            make_current=False,
        )
        new = fit["version"]
        rec.update(
            to_version=new,
            n_train=fit["n_train"],
            n_labeled=fit["n_labeled"],
            mode=fit["mode"],
            reference_store=fit["reference_store"],
        )
        z_old = _embeddings_by_id(open_store(lay.reference_store(old)), ref_rows["sample_id"])
        z_new = _embeddings_by_id(open_store(lay.reference_store(new)), ref_rows["sample_id"])
        gate = promotion_gate(
            z_old,
            z_new,
            ref_rows["label"].to_numpy(np.int64),
            n_clusters=len(reference_centers(settings, old)[0]),  # the K the monitor uses
            rank=settings.rank,
            seed=settings.seed,
            min_gain=settings.retrain_min_gain,
        )
        rec["gate"] = gate
        log.info(
            "retrain gate (%s on %d held-out rows): %s %.4f, %s %.4f -> %s",
            gate["criterion"],
            gate["n_rows"],
            old,
            gate["old"],
            new,
            gate["new"],
            "promote" if gate["promote"] else "refuse",
        )
        if gate["promote"]:
            set_current(lay.models_dir, new)
            _, centers_path, _ = reference_centers(settings, new)
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
            append_lineage(
                lay.models_dir,
                {
                    **rec,
                    "status": "failed",
                    "outcome": "failed",
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
    after: dict[str, Any] = {"status": "not computed", "reason": "refused: batch not re-embedded"}
    if batch is not None:
        try:  # informational: the re-embedded batch against the new reference (batch-free)
            c, _, fit_rows = reference_centers(settings, new)
            rep = detect_drift(
                open_store(lay.reference_store(new)),
                open_store(batch["store"]),
                centers=c,
                rank=settings.rank,
                policy=_policy(policy, settings),
                centers_fit_rows=fit_rows,
            )
            after = {
                "status": rep.status,
                "flagged": rep.flagged,
                "reasons": rep.reasons,
                "statistics": rep.rows(),
            }
        except Exception as exc:  # noqa: BLE001 - never undoes a finished retrain
            after = {"status": "not computed", "error": f"{type(exc).__name__}: {exc}"}
    else:
        atomic_write_text(
            lay.models_dir / new / "REFUSED.json",
            json.dumps(
                {"version": new, "run_id": run_id, "gate": gate, "current": old},
                indent=2,
                default=str,
            ),
        )
    outcome = "promoted" if gate["promote"] else "refused"
    rec.update(
        status="completed",
        outcome=outcome,
        current_after=current_version(lay.models_dir),
        centers=centers_path,
        batch_store=batch["store"] if batch else None,
        previous_batch_store=batch["previous_store"] if batch else None,
        after=after,
        finished_at=datetime.now(UTC).isoformat(),
    )
    append_lineage(lay.models_dir, rec)
    log.info(
        "retrain %s: encoder %s -> %s (%s); current: %s",
        outcome.upper(),
        old,
        new,
        reason,
        rec["current_after"],
    )
    return {
        "outcome": outcome,
        "old_version": old,
        "new_version": new,
        "current_version": rec["current_after"],
        "reason": reason,
        "gate": gate,
        "reference_store": fit["reference_store"],
        "centers": centers_path,
        "batch_store": rec["batch_store"],
        "previous_batch_store": rec["previous_batch_store"],
        "after": after,
        "seconds": time.perf_counter() - t0,
    }
