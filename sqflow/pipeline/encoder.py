"""The encoder stages: train and register the triplet encoder (with its reference set), and
embed a run's manifest into its Zarr store. :func:`embed_manifest` is the one "embed these
manifest rows into a store" loop (train's reference set, ``embed``, and the retrain's re-embed
use it)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

import pandas as pd

from data_contracts.manifest import ManifestMeta, SampleSpec, check_manifest
from data_contracts.settings import PipelineSettings

from ..fault_points import kill_point
from ..layout import OutputLayout, current_version, model_record, register_encoder
from ..sources import Source, manifest_hash, open_source, select

log = logging.getLogger(__name__)


def embed_manifest(
    encoder: Any,
    source: Source,
    manifest: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    dataset: str,
    encoder_version: str,
    encoder_hash: str,
    source_manifest_hash: str,
    chunk_rows: int,
    batch_size: int,
    if_exists: Literal["resume", "overwrite"],
) -> tuple[Any, int, float]:
    """Embed every row of ``manifest`` (columns sample_id, source_ref, label) with ``encoder``
    into the embedding store at ``path``, chunk by committed chunk (``if_exists="resume"``
    continues after the last committed chunk). Returns (store, chunks written by this call,
    seconds spent loading items from the source)."""
    from sqflow.store import create_store, write_embeddings

    store = create_store(
        path,
        n_rows=len(manifest),
        dim=encoder.latent_dim,
        dataset=dataset,
        encoder_version=encoder_version,
        encoder_hash=encoder_hash,
        source_manifest_hash=source_manifest_hash,
        chunk_rows=chunk_rows,
        if_exists=if_exists,
    )
    ids = manifest["sample_id"].tolist()
    refs = manifest["source_ref"].tolist()
    labs = manifest["label"].to_numpy()
    t_load = 0.0

    def produce(lo: int, hi: int):
        nonlocal t_load
        kill_point("embed-chunk")  # fault injection (tests, bench): chunks before are committed
        t = time.perf_counter()
        x = source.load(refs[lo:hi])
        t_load += time.perf_counter() - t
        return encoder.embed(x, batch_size=batch_size), ids[lo:hi], labs[lo:hi]

    written = write_embeddings(store, produce, progress=True)
    return store, written, t_load


def embed_run(
    settings: PipelineSettings,
    lay: OutputLayout,
    run_id: str,
    encoder: Any,
    version: str,
    path: str | os.PathLike[str],
    *,
    if_exists: Literal["resume", "overwrite"],
) -> tuple[Any, int, float, pd.DataFrame, dict[str, Any]]:
    """Embed run ``run_id``'s manifest (``manifest.parquet`` + ``.json``) with ``encoder``
    (registered as ``version``) into the store at ``path`` (:func:`embed_manifest`). Returns
    (store, chunks written, load seconds, the manifest, the version's model record)."""
    rd = lay.run_dir(run_id)
    meta = ManifestMeta.model_validate_json((rd / "manifest.json").read_text())
    manifest = pd.read_parquet(rd / "manifest.parquet")
    check_manifest(manifest)
    rec = model_record(lay.models_dir, version)
    store, written, load_s = embed_manifest(
        encoder,
        open_source(meta.source),
        manifest,
        path,
        dataset=meta.dataset,
        encoder_version=version,
        encoder_hash=rec["encoder_hash"],
        source_manifest_hash=meta.manifest_hash,
        chunk_rows=settings.store_chunk_rows,
        batch_size=settings.embed_batch_size,
        if_exists=if_exists,
    )
    return store, written, load_s, manifest, rec


def open_run_store(lay: OutputLayout, run_id: str) -> Any:
    """The run's embedding store (``runs/<run_id>/embeddings.zarr``); RuntimeError when the
    embed stage has not committed every row yet."""
    from sqflow.store import open_store

    store = open_store(lay.run_dir(run_id) / "embeddings.zarr")
    if not store.is_complete:
        raise RuntimeError(
            f"embedding store {store.location} is incomplete "
            f"({store.rows_committed}/{store.n_rows} rows): re-run embed"
        )
    return store


def train_encoder_stage(settings: PipelineSettings) -> dict[str, Any]:
    """Train the triplet encoder on the labeled part of the source, register it as the next
    version (made current) and embed the reference set into ``<models>/reference/<version>``."""
    from sqflow.embedding import train_encoder

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    spec = settings.source
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
    n_train = min(settings.encoder_train_rows, len(labeled))
    train = select(
        labeled.reset_index(drop=True),
        SampleSpec(mode="stratified", n=n_train, seed=settings.seed),
    )
    x = source.load(train["source_ref"].tolist())
    y = train["label"].to_numpy()
    log.info(
        "training the encoder on %d labeled items (%d epochs, latent dim %d)",
        len(x),
        settings.encoder_epochs,
        settings.latent_dim,
    )
    enc = train_encoder(
        x,
        y,
        latent_dim=settings.latent_dim,
        epochs=settings.encoder_epochs,
        batch_size=settings.encoder_batch_size,
        seed=settings.seed,
        device=settings.device,
        progress=True,
        augment=settings.encoder_augment and x.ndim > 2,
    )
    train_s = time.perf_counter() - t0
    record = {
        "dataset": spec.dataset,
        "n_train": len(x),
        "epochs": settings.encoder_epochs,
        "latent_dim": settings.latent_dim,
        "train_seconds": train_s,
        "train_manifest_hash": manifest_hash(train),
        "best_val": enc.metadata.get("metrics", {}).get("best_monitored"),
        "augment": enc.metadata["params"]["augment"],
    }
    version = register_encoder(enc, lay.models_dir, record)
    rec = model_record(lay.models_dir, version)
    # reference set: labeled rows the monitor (drift issue) compares each night's batch with
    n_ref = min(settings.reference_rows, len(labeled))
    ref = select(
        labeled.reset_index(drop=True),
        SampleSpec(mode="stratified", n=n_ref, seed=settings.seed + 1),
    )
    path = lay.reference_store(version)
    embed_manifest(
        enc,
        source,
        ref,
        path,
        dataset=spec.dataset,
        encoder_version=version,
        encoder_hash=rec["encoder_hash"],
        source_manifest_hash=manifest_hash(ref),
        chunk_rows=settings.store_chunk_rows,
        batch_size=settings.embed_batch_size,
        if_exists="overwrite",
    )
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


def load_current_encoder(settings: PipelineSettings):
    """(encoder, version, model record) of ``models/CURRENT``; FileNotFoundError if none."""
    from sqflow.embedding import TripletEncoder

    lay = OutputLayout.of(settings)
    version = current_version(lay.models_dir)
    if version is None:
        raise FileNotFoundError(
            f"no encoder registered in {str(lay.models_dir)!r}: run `sqflow train-encoder` or "
            "the nightly flow with train_if_missing=true"
        )
    enc = TripletEncoder.load(lay.models_dir / version / "encoder.pt", device=settings.device)
    return enc, version, model_record(lay.models_dir, version)


def embed_stage(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """Embed the run's manifest with the current encoder into ``runs/<id>/embeddings.zarr``
    (chunk-committed: a retried or resumed task continues after the last committed chunk)."""
    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    enc, version, _ = load_current_encoder(settings)
    path = lay.run_dir(run_id) / "embeddings.zarr"
    store, written, load_s, manifest, rec = embed_run(
        settings, lay, run_id, enc, version, path, if_exists="resume"
    )
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
        "load_seconds": load_s,
        "seconds": time.perf_counter() - t0,
    }
