"""The encoder stages: train and register the triplet encoder (with its reference set), and
embed a run's manifest into its Zarr store. :func:`embed_manifest` is the one "embed these
manifest rows into a store" loop (train's reference set, ``embed``, and the retrain's re-embed
use it)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Literal

import numpy as np
import pandas as pd

from data_contracts.manifest import ManifestMeta, SampleSpec, SourceSpec, check_manifest
from data_contracts.settings import PipelineSettings

from ..fault_points import kill_point
from ..layout import ROWS_COLUMNS, OutputLayout, current_version, model_record, register_encoder
from ..progress import ProgressArg
from ..sources import Source, open_source, select

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
    progress: ProgressArg = True,
) -> tuple[Any, int, float]:
    """Embed every row of ``manifest`` (columns sample_id, source_ref, label) with ``encoder``
    into the embedding store at ``path``, chunk by committed chunk (``if_exists="resume"``
    continues after the last committed chunk). Returns (store, chunks written by this call,
    seconds spent loading items from the source). ``progress``: see :mod:`sqflow.progress`
    (default a terminal bar; chunks)."""
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

    written = write_embeddings(store, produce, progress=progress)
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
    progress: ProgressArg = True,
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
        progress=progress,
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


class _RowsSource:
    """Loads the rows of a version's ``rows`` frame, which may come from several sources (a
    retrain trains on the registry's labeled pool and tonight's batch): ``load`` takes row
    positions (as strings, the ``source_ref`` of :func:`_positional_manifest`)."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.rows = rows.reset_index(drop=True)
        self._open: dict[str, Source] = {}

    def _source(self, spec_json: str) -> Source:
        if spec_json not in self._open:
            self._open[spec_json] = open_source(SourceSpec.model_validate_json(spec_json))
        return self._open[spec_json]

    def load(self, refs: list[str]) -> np.ndarray:
        pos = np.asarray([int(r) for r in refs], dtype=np.int64)
        part = self.rows.iloc[pos]
        out: np.ndarray | None = None
        for spec_json, grp in part.groupby("source", sort=False):
            x = self._source(str(spec_json)).load(grp["source_ref"].tolist())
            if out is None:
                out = np.empty((len(part), *x.shape[1:]), dtype=x.dtype)
            elif x.shape[1:] != out.shape[1:]:
                raise ValueError(
                    f"items of source {spec_json} have shape {x.shape[1:]} but other rows "
                    f"of this training set have {out.shape[1:]}: one encoder needs one shape"
                )
            out[np.flatnonzero(part["source"].to_numpy() == spec_json)] = x
        return out if out is not None else np.empty((0,))


def rows_hash(rows: pd.DataFrame) -> str:
    """SHA-256 over version rows (sample_id, source_ref, label, source), in order."""
    h = hashlib.sha256()
    for col in ("sample_id", "source_ref", "label", "source"):
        h.update(col.encode())
        h.update("\x1f".join(map(str, rows[col].tolist())).encode())
    return h.hexdigest()


def _positional_manifest(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` as an embed manifest whose source_ref is the row position (see _RowsSource)."""
    return pd.DataFrame(
        {
            "sample_id": rows["sample_id"].astype(str).to_numpy(),
            "source_ref": [str(i) for i in range(len(rows))],
            "label": rows["label"].to_numpy(np.int64),
        }
    )


def version_rows_frame(items: pd.DataFrame, role: str, spec: SourceSpec) -> pd.DataFrame:
    """The ``rows.parquet`` rows (:data:`sqflow.layout.ROWS_COLUMNS`) of ``items`` (a scan or
    manifest frame: sample_id, source_ref, label) read from the source ``spec``."""
    return pd.DataFrame(
        {
            "sample_id": items["sample_id"].astype(str).to_numpy(),
            "role": role,
            "label": items["label"].to_numpy(np.int64),
            "source_ref": items["source_ref"].astype(str).to_numpy(),
            "source": spec.model_dump_json(),
        }
    )


def _input_kind(rows: pd.DataFrame, x: np.ndarray) -> str | None:
    """The encoder's input kind from the rows' source kind, not from the shape: float
    (N, H, W) images stay images, (N, T, C) series of a time-series source are series."""
    kinds = {SourceSpec.model_validate_json(str(j)).kind for j in rows["source"].unique()}
    if "timeseries" in kinds:
        return "timeseries"
    return None if x.ndim == 2 else "image"


def fit_register_and_reference(
    settings: PipelineSettings,
    train_rows: pd.DataFrame,
    reference_rows: pd.DataFrame,
    record: dict[str, Any],
    *,
    make_current: bool,
) -> dict[str, Any]:
    """Train an encoder on ``train_rows`` (version rows, role ``train``; label -1 = unlabeled:
    the mode follows the labels, see :func:`sqflow.embedding.train_encoder`), register it with
    its rows (``rows.parquet``: train + reference, disjoint) and ``record`` merged into
    ``model.json``, and embed ``reference_rows`` into ``<models>/reference/<version>``.
    ``make_current``: also write ``models/CURRENT`` (a retrain decides after its gate).
    Returns ``version``, ``encoder_hash``, ``reference_store``, ``n_train``, ``n_labeled``,
    ``mode``, ``n_reference``, ``encoder`` (the trained object), ``seconds``."""
    from sqflow.embedding import train_encoder

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    overlap = set(train_rows["sample_id"]) & set(reference_rows["sample_id"])
    if overlap:
        raise RuntimeError(
            f"{len(overlap)} sample ids are both training and reference rows (e.g. "
            f"{sorted(overlap)[:3]}): the reference set must be disjoint from training"
        )
    train_rows = train_rows.reset_index(drop=True)
    x = _RowsSource(train_rows).load([str(i) for i in range(len(train_rows))])
    y = train_rows["label"].to_numpy(np.int64)
    n_lab = int((y >= 0).sum())
    log.info(
        "training the encoder on %d rows (%d labeled, %d unlabeled; %d epochs, latent dim %d)",
        len(x),
        n_lab,
        len(x) - n_lab,
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
        **_self_training(settings, x, y),
        # the source kind decides, not the shape: float (N, H, W) images stay images
        input_kind=_input_kind(train_rows, x),
    )
    meta = enc.metadata
    rows = pd.concat(
        [train_rows.assign(role="train"), reference_rows.assign(role="reference")],
        ignore_index=True,
    )[list(ROWS_COLUMNS)]
    full = {
        **record,
        "n_train": len(x),
        "n_labeled": n_lab,
        "n_reference": len(reference_rows),
        "mode": meta["mode"],
        "selfsup": meta["params"].get("selfsup"),
        "pseudo_labels": meta["params"].get("pseudo_labels"),
        "epochs": settings.encoder_epochs,
        "latent_dim": settings.latent_dim,
        "train_seconds": time.perf_counter() - t0,
        "train_manifest_hash": rows_hash(train_rows),
        "best_val": meta.get("metrics", {}).get("best_monitored"),
        "augment": meta["params"]["augment"],
    }
    version = register_encoder(enc, lay.models_dir, full, rows, make_current=make_current)
    rec = model_record(lay.models_dir, version)
    path = lay.reference_store(version)
    ref = reference_rows.reset_index(drop=True)
    embed_manifest(
        enc,
        _RowsSource(ref),
        _positional_manifest(ref),
        path,
        dataset=str(record.get("dataset")),
        encoder_version=version,
        encoder_hash=rec["encoder_hash"],
        source_manifest_hash=rows_hash(ref),
        chunk_rows=settings.store_chunk_rows,
        batch_size=settings.embed_batch_size,
        if_exists="overwrite",
    )
    log.info(
        "registered encoder %s (%s, %s); reference set of %d rows at %s%s",
        version,
        rec["encoder_hash"][:12],
        meta["mode"],
        len(ref),
        path,
        "" if make_current else " (not current yet)",
    )
    return {
        "version": version,
        "encoder_hash": rec["encoder_hash"],
        "reference_store": str(path),
        "n_train": len(x),
        "n_labeled": n_lab,
        "mode": meta["mode"],
        "n_reference": len(ref),
        "encoder": enc,
        "seconds": time.perf_counter() - t0,
    }


def _self_training(settings: PipelineSettings, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """train_encoder arguments of ``encoder_self_training``: pseudo-labels from half-way
    through the epochs (at most from epoch 5) and NT-Xent on the hidden layer; nothing when
    off, when every row is labeled (nothing to pseudo-label), or, for 'auto', when some row is
    labeled or the number of clusters is not fixed."""
    mode = settings.encoder_self_training
    if mode is False or bool((y >= 0).all()):
        return {}
    if mode == "auto":
        from ..embedding.teacher import distinct_rows, teacher_min_rows

        # measured to help label-free (README); with labels it is the user's call
        if (y >= 0).any():
            return {}
        why = None
        if settings.n_clusters == "auto":
            why = "n_clusters is 'auto' (self-training needs the number of pseudo-classes)"
        elif settings.encoder_epochs < 2:
            why = "encoder_epochs < 2 leaves no epoch to train on pseudo-labels"
        elif len(y) < teacher_min_rows(int(settings.n_clusters)):
            why = f"{len(y)} rows are too few for the manifold teacher"
        elif (n := len(distinct_rows(x)[0])) < teacher_min_rows(int(settings.n_clusters)):
            why = f"only {n} of the {len(y)} rows are distinct, too few for the manifold teacher"
        if why:
            log.info("encoder_self_training='auto' is off for these label-free rows: %s", why)
            return {}
    pl: dict[str, Any] = {
        "source": settings.encoder_pseudo_source,
        "start_epoch": max(1, min(5, settings.encoder_epochs // 2)),
    }
    if not (y >= 0).any():
        if settings.n_clusters == "auto":
            raise ValueError(
                "encoder_self_training on rows without any label needs an integer n_clusters "
                "(the number of pseudo-classes); n_clusters is 'auto'. Set n_clusters = K or "
                "encoder_self_training = false"
            )
        pl["n_clusters"] = int(settings.n_clusters)
    return {"pseudo_labels": pl, "selfsup_space": "hidden"}


def split_train_reference(
    pool: pd.DataFrame, settings: PipelineSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint (training rows, reference rows) of ``pool`` (scan rows; label -1 = unlabeled),
    both stratified by label (unlabeled rows are their own stratum). The reference gets
    ``reference_rows`` rows, at most half of the pool; training gets ``encoder_train_rows`` of
    the rest."""
    pool = pool.reset_index(drop=True)
    n_ref = min(settings.reference_rows, len(pool) // 2)
    ref = select(pool, SampleSpec(mode="stratified", n=n_ref, seed=settings.seed + 1))
    rest = pool[~pool["sample_id"].isin(set(ref["sample_id"]))].reset_index(drop=True)
    n_train = min(settings.encoder_train_rows, len(rest))
    train = select(rest, SampleSpec(mode="stratified", n=n_train, seed=settings.seed))
    return train, ref


def train_encoder_stage(settings: PipelineSettings) -> dict[str, Any]:
    """Train the encoder on the source's rows, labeled and unlabeled (label-free when none is
    labeled, semi-supervised when some are), register it as the next version (made current)
    with ``rows.parquet``, and embed its reference set into ``<models>/reference/<version>``.
    The reference rows are drawn first and never trained on (:func:`split_train_reference`);
    with a ``train`` split in the source only its rows are used."""
    t0 = time.perf_counter()
    spec = settings.source
    if spec.kind == "mnist":  # the encoder learns from the training images only
        spec = spec.model_copy(update={"split": "train", "name": None})
    items = open_source(spec).scan().items
    if "train" in set(items["split"]):
        items = items[items["split"] == "train"]
    if len(items) < 8:
        raise RuntimeError(
            f"train-encoder needs at least 8 items in {spec.dataset} (training and a disjoint "
            f"reference set); found {len(items)}"
        )
    train, ref = split_train_reference(items, settings)
    out = fit_register_and_reference(
        settings,
        version_rows_frame(train, "train", spec),
        version_rows_frame(ref, "reference", spec),
        {"dataset": spec.dataset},
        make_current=True,
    )
    out.pop("encoder")
    out["seconds"] = time.perf_counter() - t0
    return out


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


def embed_stage(
    settings: PipelineSettings, run_id: str, progress: ProgressArg = True
) -> dict[str, Any]:
    """Embed the run's manifest with the current encoder into ``runs/<id>/embeddings.zarr``
    (chunk-committed: a retried or resumed task continues after the last committed chunk).
    ``progress``: chunks written, see :mod:`sqflow.progress`."""
    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    enc, version, _ = load_current_encoder(settings)
    path = lay.run_dir(run_id) / "embeddings.zarr"
    store, written, load_s, manifest, rec = embed_run(
        settings, lay, run_id, enc, version, path, if_exists="resume", progress=progress
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
