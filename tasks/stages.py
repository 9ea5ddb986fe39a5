"""Prefect tasks of the nightly pipeline: one coarse task per stage (never per sample).

Each task takes plain JSON-able arguments (a config dict from ``flows.settings`` and paths), does
its work with the engine (``sqflow``), writes its outputs atomically or resumably under the
output folder (see :mod:`sqflow.layout`) and returns a small dict that the flow puts in the run
record. I/O stages retry with exponential backoff on transient ``OSError``; contract and source
errors fail at once with their message.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from data_contracts.manifest import (
    QUARANTINE_COLUMNS,
    ManifestMeta,
    SampleSpec,
    SourceSpec,
    check_frame,
    check_manifest,
)
from sqflow.atomic_files import atomic_save_npy, atomic_write_parquet, atomic_write_text
from sqflow.layout import (
    OutputLayout,
    current_version,
    model_record,
    register_encoder,
)
from sqflow.sources import manifest_hash, open_source, select

from .publish_bi import transient_publish_error


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (plain function call)
        return logging.getLogger("sqflow.tasks")


def _transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient I/O errors (OSError but not a missing file)."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    except BaseException:  # noqa: BLE001 - everything else is not transient
        return False
    return False


IO_RETRY = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": _transient_io,
}


def _layout(cfg: dict[str, Any]) -> OutputLayout:
    return OutputLayout.at(cfg["output_dir"], cfg.get("models_dir"))


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ------------------------------------------------------------------------------ sample
def sample_stage(cfg: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Scan the source, quarantine bad items, apply the sample mode, write the manifest."""
    log = _log()
    t0 = time.perf_counter()
    lay = _layout(cfg)
    spec = SourceSpec.model_validate(cfg["source"])
    mode = SampleSpec.model_validate(cfg["sample"])
    source = open_source(spec)
    scan = source.scan()
    log.info(
        "source %s: %d items found, %d accepted, %d quarantined",
        spec.dataset,
        scan.n_scanned,
        len(scan.items),
        len(scan.rejected),
    )
    seen = lay.seen_sample_ids(spec.dataset) if mode.mode == "incremental" else None
    manifest = select(scan.items, mode, seen)
    if len(manifest) == 0:
        raise RuntimeError(
            f"sample mode {mode.mode!r} selected no item from {spec.dataset} "
            f"({len(scan.items)} accepted"
            + (f", {len(seen)} already seen by earlier runs" if seen is not None else "")
            + ")"
        )
    check_manifest(manifest)
    rd = lay.run_dir(run_id)
    detected = pd.Timestamp.now(tz="UTC").as_unit("us")
    quarantine = pd.DataFrame(
        {
            "run_id": pd.Series([run_id] * len(scan.rejected), dtype="str"),
            "sample_ref": pd.Series([r for r, _ in scan.rejected], dtype="str"),
            "reason": pd.Series([why for _, why in scan.rejected], dtype="str"),
            "detected_at": pd.Series([detected] * len(scan.rejected), dtype="datetime64[us, UTC]"),
        }
    )
    check_frame(quarantine, QUARANTINE_COLUMNS, "quarantine")
    for ref, why in scan.rejected[:20]:
        log.warning("quarantined %s: %s", ref, why)
    mhash = manifest_hash(manifest)
    meta = ManifestMeta(
        run_id=run_id,
        dataset=spec.dataset,
        source=spec,
        sample=mode,
        item_shape=list(scan.item_shape),
        n_scanned=scan.n_scanned,
        n_accepted=len(scan.items),
        n_quarantined=len(scan.rejected),
        n_selected=len(manifest),
        n_labeled=int((manifest["label"] >= 0).sum()),
        manifest_hash=mhash,
        created_at=datetime.now(UTC),
    )
    atomic_write_parquet(manifest, rd / "manifest.parquet")
    atomic_write_parquet(quarantine, rd / "quarantine.parquet")
    atomic_write_text(rd / "manifest.json", meta.model_dump_json(indent=2))
    top = pd.Series([w.split(":")[0] for _, w in scan.rejected]).value_counts().head(5)
    return {
        **meta.model_dump(mode="json"),
        "manifest_path": str(rd / "manifest.parquet"),
        "quarantine_path": str(rd / "quarantine.parquet"),
        "top_quarantine_reasons": {str(k): int(v) for k, v in top.items()},
        "seconds": time.perf_counter() - t0,
    }


sample_task = task(sample_stage, name="sample", **IO_RETRY)


# ------------------------------------------------------------------------------ train
def train_encoder_stage(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train the triplet encoder on the labeled part of the source, register it as the next
    version (made current) and embed the reference set into ``<models>/reference/<version>``."""
    from sqflow.embedding import train_encoder
    from sqflow.store import create_store, write_embeddings

    log = _log()
    t0 = time.perf_counter()
    lay = _layout(cfg)
    spec = SourceSpec.model_validate(cfg["source"])
    if spec.kind == "mnist":  # the encoder learns from the training images only
        spec = spec.model_copy(update={"split": "train", "name": None})
    source = open_source(spec)
    items = source.scan().items
    labeled = items[items["label"] >= 0]
    if "train" in set(labeled["split"]):
        labeled = labeled[labeled["split"] == "train"]
    if labeled["label"].nunique() < 2:
        raise RuntimeError(
            f"train-encoder needs labeled items of at least two classes in {spec.dataset}; "
            f"found {len(labeled)} labeled rows of {labeled['label'].nunique()} classes"
        )
    n_train = min(int(cfg["encoder_train_rows"]), len(labeled))
    train = select(
        labeled.reset_index(drop=True),
        SampleSpec(mode="stratified", n=n_train, seed=int(cfg["seed"])),
    )
    x = source.load(train["source_ref"].tolist())
    y = train["label"].to_numpy()
    log.info(
        "training the encoder on %d labeled items (%d epochs, latent dim %d)",
        len(x),
        cfg["encoder_epochs"],
        cfg["latent_dim"],
    )
    enc = train_encoder(
        x,
        y,
        latent_dim=int(cfg["latent_dim"]),
        epochs=int(cfg["encoder_epochs"]),
        batch_size=int(cfg["encoder_batch_size"]),
        seed=int(cfg["seed"]),
        device=cfg.get("device"),
        progress=True,
        augment=bool(cfg.get("encoder_augment")) and x.ndim > 2,
    )
    train_s = time.perf_counter() - t0
    record = {
        "dataset": spec.dataset,
        "n_train": len(x),
        "epochs": int(cfg["encoder_epochs"]),
        "latent_dim": int(cfg["latent_dim"]),
        "train_seconds": train_s,
        "train_manifest_hash": manifest_hash(train),
        "best_val": enc.metadata.get("metrics", {}).get("best_monitored"),
        "augment": enc.metadata["params"]["augment"],
    }
    version = register_encoder(enc, lay.models_dir, record)
    rec = model_record(lay.models_dir, version)
    # reference set: labeled rows the monitor (drift issue) compares each night's batch with
    n_ref = min(int(cfg["reference_rows"]), len(labeled))
    ref = select(
        labeled.reset_index(drop=True),
        SampleSpec(mode="stratified", n=n_ref, seed=int(cfg["seed"]) + 1),
    )
    path = lay.reference_store(version)
    store = create_store(
        path,
        n_rows=len(ref),
        dim=enc.latent_dim,
        dataset=spec.dataset,
        encoder_version=version,
        encoder_hash=rec["encoder_hash"],
        source_manifest_hash=manifest_hash(ref),
        chunk_rows=_chunk_rows(cfg),
        if_exists="overwrite",
    )
    ids, refs, labs = ref["sample_id"].tolist(), ref["source_ref"].tolist(), ref["label"].to_numpy()

    def produce(lo: int, hi: int):
        return enc.embed(source.load(refs[lo:hi])), ids[lo:hi], labs[lo:hi]

    write_embeddings(store, produce, progress=True)
    log.info(
        "registered encoder %s (%s); reference set of %d rows at %s",
        version,
        rec["encoder_hash"][:12],
        len(ref),
        path,
    )
    return {
        "version": version,
        "encoder_hash": rec["encoder_hash"],
        "reference_store": str(path),
        "n_train": len(x),
        "seconds": time.perf_counter() - t0,
    }


train_encoder_task = task(train_encoder_stage, name="train-encoder", **IO_RETRY)


def _chunk_rows(cfg: dict[str, Any]) -> int:
    return int(cfg.get("store_chunk_rows") or 8192)


def load_current_encoder(cfg: dict[str, Any]):
    """(encoder, version, model record) of ``models/CURRENT``; FileNotFoundError if none."""
    from sqflow.embedding import TripletEncoder

    lay = _layout(cfg)
    version = current_version(lay.models_dir)
    if version is None:
        raise FileNotFoundError(
            f"no encoder registered in {str(lay.models_dir)!r}: run `sqflow train-encoder` or "
            "the nightly flow with train_if_missing=true"
        )
    enc = TripletEncoder.load(lay.models_dir / version / "encoder.pt", device=cfg.get("device"))
    return enc, version, model_record(lay.models_dir, version)


# ------------------------------------------------------------------------------ embed
def embed_stage(cfg: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Embed the run's manifest with the current encoder into ``runs/<id>/embeddings.zarr``
    (chunk-committed: a retried or resumed task continues after the last committed chunk)."""
    from sqflow.store import create_store, write_embeddings

    log = _log()
    t0 = time.perf_counter()
    lay = _layout(cfg)
    rd = lay.run_dir(run_id)
    meta = ManifestMeta.model_validate_json((rd / "manifest.json").read_text())
    manifest = pd.read_parquet(rd / "manifest.parquet")
    check_manifest(manifest)
    enc, version, rec = load_current_encoder(cfg)
    source = open_source(meta.source)
    path = rd / "embeddings.zarr"
    store = create_store(
        path,
        n_rows=len(manifest),
        dim=enc.latent_dim,
        dataset=meta.dataset,
        encoder_version=version,
        encoder_hash=rec["encoder_hash"],
        source_manifest_hash=meta.manifest_hash,
        chunk_rows=_chunk_rows(cfg),
        if_exists="resume",
    )
    ids = manifest["sample_id"].tolist()
    refs = manifest["source_ref"].tolist()
    labs = manifest["label"].to_numpy()
    t_load = [0.0]

    def produce(lo: int, hi: int):
        t = time.perf_counter()
        x = source.load(refs[lo:hi])
        t_load[0] += time.perf_counter() - t
        z = enc.embed(x, batch_size=int(cfg.get("embed_batch_size") or 4096))
        return z, ids[lo:hi], labs[lo:hi]

    written = write_embeddings(store, produce, progress=True)
    log.info(
        "embedded %d rows (%d chunks written, %d already committed) with %s on %s",
        len(manifest),
        written,
        store.n_chunks - written,
        version,
        enc.device,
    )
    return {
        "store": str(path),
        "n_rows": len(manifest),
        "dim": enc.latent_dim,
        "encoder_version": version,
        "encoder_hash": rec["encoder_hash"],
        "chunks_written": written,
        "chunks_total": store.n_chunks,
        "device": str(enc.device),
        "load_seconds": t_load[0],
        "seconds": time.perf_counter() - t0,
    }


embed_task = task(embed_stage, name="embed", **IO_RETRY)


# ------------------------------------------------------------------------------ cluster
@contextmanager
def dask_client(cfg: dict[str, Any]):
    """A ``distributed.Client``: to ``dask_address`` when set, else a LocalCluster that lives
    for the ``with`` block. Yields (client, seconds it took to start)."""
    from distributed import Client, LocalCluster

    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.worker",
        "distributed.core",
        "distributed.nanny",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    t = time.perf_counter()
    if cfg.get("dask_address"):
        client = Client(cfg["dask_address"], timeout="30s")
        cluster = None
    else:
        cluster = LocalCluster(
            n_workers=int(cfg.get("dask_workers") or 2),
            threads_per_worker=1,
            processes=bool(cfg.get("dask_processes")),
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    try:
        yield client, time.perf_counter() - t
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _warm_start(
    cfg: dict[str, Any], lay: OutputLayout, run_id: str, version: str, dim: int
) -> tuple[np.ndarray | None, str | None]:
    """Centers to start from: this run's last checkpoint (a retried task), else the previous
    completed run's centers when the encoder version and K are unchanged."""
    k = int(cfg["n_clusters"])
    ckpts = sorted((lay.run_dir(run_id) / "checkpoints").glob("pass-*.npy"))
    if ckpts:
        c = np.load(ckpts[-1])
        if c.shape == (k, dim):
            return c, f"checkpoint {ckpts[-1].name} of this run"
    if not cfg.get("warm_start", True):
        return None, None
    for rec in reversed(lay.run_records()):
        if (
            rec.get("status") == "completed"
            and rec.get("encoder_version") == version
            and rec.get("n_clusters") == k
            and rec.get("run_id") != run_id
        ):
            p = lay.run_dir(rec["run_id"]) / "centers.npy"
            if p.exists():
                c = np.load(p)
                if c.shape == (k, dim):
                    return c, f"run {rec['run_id']}"
    return None, None


def cluster_stage(cfg: dict[str, Any], run_id: str) -> dict[str, Any]:
    """SQ over the run's embedding store on a Dask cluster, checkpointing the centers after
    each pass, then the assignment (cluster id, distance) of every row into the store."""
    from sqflow import StochasticQuantization
    from sqflow.assign import assign_store
    from sqflow.store import StoreContractError, open_store

    log = _log()
    t0 = time.perf_counter()
    lay = _layout(cfg)
    rd = lay.run_dir(run_id)
    store = open_store(rd / "embeddings.zarr")
    if not store.is_complete:
        raise RuntimeError(
            f"embedding store {store.location} is incomplete "
            f"({store.rows_committed}/{store.n_rows} rows): re-run embed"
        )
    k = int(cfg["n_clusters"])
    init, warm_from = _warm_start(cfg, lay, run_id, store.encoder_version, store.dim)
    ck_dir = rd / "checkpoints"
    passes: list[dict[str, Any]] = []

    def checkpoint(info: dict[str, Any]) -> None:
        atomic_save_npy(ck_dir / f"pass-{info['pass']:03d}.npy", info["centers"])
        passes.append(
            {
                "pass": int(info["pass"]),
                "objective_estimate": float(info["objective_estimate"]),
                "n_steps": int(info["n_steps"]),
            }
        )
        log.info(
            "SQ pass %d: objective estimate %.6g (centers checkpointed)",
            info["pass"],
            info["objective_estimate"],
        )

    with dask_client(cfg) as (client, dask_start_s):
        log.info(
            "Dask client %s (%d workers; started in %.2f s)%s",
            client.dashboard_link or client.scheduler.address,
            len(client.scheduler_info()["workers"]),
            dask_start_s,
            f"; warm start from {warm_from}" if warm_from else "",
        )
        X = store.to_dask()
        est = StochasticQuantization(
            k,
            optimizer=cfg["optimizer"],
            rank=float(cfg["rank"]),
            batch_size=int(cfg["sq_batch_size"]),
            max_iter=int(cfg["max_iter"]),
            init=init if init is not None else "k-means++",
            random_state=int(cfg["seed"]),
            chunk_size=_chunk_rows(cfg),
            verbose=1,
        )
        t_fit = time.perf_counter()
        est.fit(X, callback=checkpoint)
        fit_s = time.perf_counter() - t_fit
        centers = np.asarray(est.cluster_centers_)
        t_assign = time.perf_counter()
        try:  # an interrupted assignment of this very model resumes
            out = assign_store(est, store, client=client, name=run_id, progress=True)
        except StoreContractError as exc:
            # a retried stage refitted the centers: the earlier attempt's rows are another model's
            log.info(
                "assignments %s belong to an earlier attempt (%s): rewriting them", run_id, exc
            )
            out = assign_store(
                est, store, client=client, name=run_id, progress=True, if_exists="overwrite"
            )
        assign_s = time.perf_counter() - t_assign
    atomic_save_npy(rd / "centers.npy", centers)
    cid = out.read_cluster_ids().astype(np.int64)
    dist = out.read_distances().astype(np.float64)
    labels = store.read_labels()
    sizes = np.bincount(cid, minlength=k)
    rows = []
    for j in range(k):
        m = cid == j
        lab = labels[m & (labels >= 0)]
        maj = int(np.bincount(lab).argmax()) if lab.size else None
        rows.append(
            {
                "cluster_id": j,
                "size": int(sizes[j]),
                "mean_distance": float(dist[m].mean()) if m.any() else None,
                "majority_label": maj,
                "label_purity": float(np.mean(lab == maj)) if lab.size else None,
                "center": [float(v) for v in centers[j]],
            }
        )
    r = float(cfg["rank"])
    objective = float(np.mean(dist**r))
    log.info("SQ: objective %.6g after %d passes; sizes %s", objective, est.n_iter_, sizes.tolist())
    return {
        "objective": objective,
        "n_iter": int(est.n_iter_),
        "n_steps": int(est.n_steps_),
        "loss_curve": [float(v) for v in est.loss_curve_],
        "passes": passes,
        "clusters": rows,
        "warm_start_from": warm_from,
        "centers_path": str(rd / "centers.npy"),
        "assignments": out.location,
        "dask_start_seconds": dask_start_s,
        "fit_seconds": fit_s,
        "assign_seconds": assign_s,
        "seconds": time.perf_counter() - t0,
    }


cluster_task = task(cluster_stage, name="cluster", **IO_RETRY)


# ------------------------------------------------------------------------------ plots
def plots_stage(cfg: dict[str, Any], run_id: str, loss_curve: list[float]) -> dict[str, str]:
    """Latent space (sample of the run's embeddings with the centers) and SQ convergence PNGs."""
    from sqflow.plots import plot_convergence, plot_latent
    from sqflow.store import open_store

    t0 = time.perf_counter()
    rd = _layout(cfg).run_dir(run_id)
    store = open_store(rd / "embeddings.zarr")
    n = store.rows_committed
    take = min(n, 8000)
    z = store.read_embeddings(0, take)
    lab = store.read_labels(0, take)
    centers = np.load(rd / "centers.npy")
    latent = plot_latent(
        z,
        lab,
        rd / "plots" / "latent.png",
        centers=centers,
        title=f"latent space, run {run_id} (first {take} of {n} rows)",
    )
    conv = plot_convergence(
        {f"SQ-{cfg['optimizer']} r={cfg['rank']:g}": loss_curve},
        rd / "plots" / "convergence.png",
        xlabel="block",
        ylabel="mean min_k ||z - y_k||^r",
    )
    return {"latent": str(latent), "convergence": str(conv), "seconds": time.perf_counter() - t0}


plots_task = task(plots_stage, name="plots")


# ------------------------------------------------------------------------------ publish
def publish_stage(cfg: dict[str, Any], run_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """Parquet tables for BI (one file per run and table under ``published/<table>/
    run_date=<date>/<run_id>.parquet``, written atomically; re-publishing a run replaces its
    files), the same tables in ``sqflow.duckdb`` and in PostgreSQL when configured, each frame
    checked against its contract first (``tasks.publish_bi``). Every row carries ``run_id``."""
    from sqflow.store import open_assignments, open_store

    t0 = time.perf_counter()
    lay = _layout(cfg)
    rd = lay.run_dir(run_id)
    store = open_store(rd / "embeddings.zarr")
    asg = open_assignments(store, name=run_id)
    clusters = record["cluster"]["clusters"]
    frames: dict[str, pd.DataFrame] = {
        "runs": pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "flow_run_id": record.get("flow_run_id"),
                    "started_at": pd.Timestamp(record["started_at"]),
                    "finished_at": pd.Timestamp.now(tz="UTC"),
                    "status": "completed",
                    "dataset": record["dataset"],
                    "encoder_version": record["encoder_version"],
                    "n_samples": int(record["sample"]["n_selected"]),
                    "n_quarantined": int(record["sample"]["n_quarantined"]),
                    "n_clusters": int(cfg["n_clusters"]),
                    "objective": float(record["cluster"]["objective"]),
                    "drift_detected": None,
                    "monitor_ran": False,
                    "config": json.dumps(cfg, sort_keys=True, default=str),
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
    from .publish_bi import attach_cluster_report, attach_drift_reports, publish_bi_stage

    frames = attach_drift_reports(frames, lay.published, run_id)  # the monitor's, if it ran
    frames = attach_cluster_report(frames, lay.published, run_id)  # the report's, if it ran
    bi = publish_bi_stage(frames, parquet_dir=lay.published, duckdb_path=lay.duckdb_path, cfg=cfg)
    return {
        "tables": bi["parquet_files"],
        "duckdb": bi["duckdb_path"],
        "postgres": bi["postgres"],
        "rows": bi["rows"],
        "seconds": time.perf_counter() - t0,
    }


publish_task = task(
    publish_stage, name="publish", **{**IO_RETRY, "retry_condition_fn": transient_publish_error}
)
