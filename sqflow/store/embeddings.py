"""The embedding store: one Zarr v3 group per dataset and encoder version.

Layout (root group at the store path or URL)::

    zarr.json        attributes = data_contracts.store.EmbeddingStoreMetadata
    embedding/       (n_rows, dim) float32, chunks (chunk_rows, dim), zstd by default
    sample_id/       (n_rows,) variable-length UTF-8 strings, e.g. "mnist-train-00042"
    label/           (n_rows,) int64, -1 = unlabeled
    _committed/      (n_chunks,) uint8 commit marker per chunk, one key each
    assignments/     optional groups written by the predict pass (see assignments.py)

``sample_id`` holds the pipeline's string ids themselves rather than int64 row numbers into a
manifest: the store stays self-describing (joins and audits need no second file), and the cost is
small next to the embedding (about 20 bytes a row before compression, vs 4 * dim).

Rows are preallocated (``n_rows`` is known from the sample manifest) and written in whole chunks;
see :mod:`sqflow.store._rows` for the commit protocol that makes writing resumable and safe for
several concurrent writers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

from data_contracts.store import STORE_CONTRACT_VERSION, EmbeddingStoreMetadata

from ..progress import ProgressArg, progress_bar
from ._rows import ArraySpec, RowGroup, create_or_resume
from ._zarr_io import (
    PathLike,
    StoreContractError,
    StoreNotFoundError,
    check_compression,
    location_string,
    open_zarr_store,
    try_open_group,
    validate_attrs,
)

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("embedding", "sample_id", "label")
#: Target uncompressed size of one embedding chunk when ``chunk_rows`` is not given.
TARGET_CHUNK_BYTES = 4 * 2**20

# Fields that must agree when create_store(..., if_exists="resume") finds an existing store.
_IDENTITY_FIELDS = (
    "dataset",
    "encoder_version",
    "encoder_hash",
    "source_manifest_hash",
    "dim",
    "n_rows",
    "chunk_rows",
    "compression",
    "compression_level",
)


def default_chunk_rows(dim: int) -> int:
    """Power of two in [1024, 2**20] so one float32 chunk of ``dim`` columns is about 4 MiB."""
    rows = TARGET_CHUNK_BYTES // (4 * max(dim, 1))
    return int(min(max(1 << (max(rows, 1).bit_length() - 1), 1024), 2**20))


@dataclass(frozen=True)
class StoreChunk:
    """Rows ``[start, stop)`` of chunk ``index``; columns not asked for are ``None``.

    embedding: (stop - start, dim) float32; sample_id: (stop - start,) numpy str array;
    label: (stop - start,) int64.
    """

    index: int
    start: int
    stop: int
    embedding: np.ndarray | None = None
    sample_id: np.ndarray | None = None
    label: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start


class EmbeddingStore(RowGroup):
    """An opened embedding store. Get one from :func:`create_store` (to write) or
    :func:`open_store` (to read, validated against the contract).

    Attributes: ``metadata`` (:class:`EmbeddingStoreMetadata`, validated when opened; its
    ``rows_committed`` is refreshed by this object's own commits only), ``location`` (path/URL),
    ``writable``. Commit state is read fresh from the store by ``rows_committed``,
    ``committed_chunks()`` and ``pending_chunks()``.
    """

    _what = "embedding store"
    _data_arrays = COLUMNS
    _identity_fields = ("kind", *_IDENTITY_FIELDS)

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return int(self.metadata.dim)

    @property
    def encoder_version(self) -> str:
        return str(self.metadata.encoder_version)

    @property
    def zarr_group(self) -> zarr.Group:
        """The root Zarr group (advanced use)."""
        return self._group

    @property
    def embedding(self) -> zarr.Array:
        """The full preallocated ``embedding`` Zarr array, (n_rows, dim) float32. Rows at and
        after ``rows_committed`` may be unwritten (zeros) or half-written: slice to
        ``rows_committed``, or use :meth:`to_dask` which does."""
        return self._arrays["embedding"]

    def to_dask(self, rows: Literal["committed", "all"] = "committed") -> Any:
        """Dask array of ``embedding``, limited to the committed rows (default); one Dask block
        per Zarr chunk, nothing read until computed. Committed blocks are read through the
        verified path (checksums, presence, digest: a damaged chunk raises
        :class:`StoreIntegrityError` on the worker that reads it). ``rows="all"`` is the raw
        preallocated array (``dask.array.from_zarr``), unverified."""
        import dask.array as da
        from dask.base import tokenize

        if rows == "all":
            return da.from_zarr(self.embedding)
        if rows != "committed":
            raise ValueError(f"rows={rows!r}; valid: 'committed' or 'all'")
        n = self.rows_committed
        view = _VerifiedRows(self, "embedding", n)
        return da.from_array(
            view,
            chunks=(self.chunk_rows, self.dim),
            lock=False,
            asarray=False,
            meta=np.empty((0, 0), dtype=np.float32),
            name=f"sqflow-embedding-{tokenize(self.location, n, self.metadata.updated_at)}",
        )

    # ------------------------------------------------------------------ reading
    def read_embeddings(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows ``[start, stop)`` of ``embedding``: (stop - start, dim) float32."""
        start, stop = self._check_read_range(start, stop)
        return self._read_rows("embedding", start, stop)

    def read_labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed ``label`` rows ``[start, stop)``: int64, -1 = unlabeled."""
        start, stop = self._check_read_range(start, stop)
        return self._read_rows("label", start, stop)

    def read_sample_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed ``sample_id`` rows ``[start, stop)`` as a numpy string array."""
        start, stop = self._check_read_range(start, stop)
        return self._read_rows("sample_id", start, stop)

    def iter_chunks(
        self,
        columns: Sequence[str] = COLUMNS,
        start_chunk: int = 0,
        stop_chunk: int | None = None,
    ) -> Iterator[StoreChunk]:
        """Yield committed chunks one at a time (memory: one chunk of each column).

        ``columns`` picks from ("embedding", "sample_id", "label"). Iteration stops at
        ``rows_committed`` as read when the iteration starts.
        """
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"columns={list(columns)}: unknown {unknown}; valid: {list(COLUMNS)}")
        committed = self.rows_committed
        last = -(-committed // self.chunk_rows)
        stop_chunk = last if stop_chunk is None else min(stop_chunk, last)
        for k in range(start_chunk, stop_chunk):
            lo, hi = self.chunk_bounds(k)
            yield StoreChunk(
                index=k,
                start=lo,
                stop=hi,
                **{c: self._read_chunk(c, k) for c in columns},
            )

    # ------------------------------------------------------------------ writing
    def write_chunk(
        self,
        k: int,
        embedding: np.ndarray,
        sample_id: Sequence[str] | np.ndarray,
        label: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Write and commit chunk ``k`` (rows ``chunk_bounds(k)``).

        embedding: (rows, dim) float array (cast to float32; must be finite);
        sample_id: (rows,) non-empty strings; label: (rows,) ints >= -1, default all -1.
        Data is written first, then the chunk's commit marker, then the summary attributes.
        Rewriting a committed chunk is allowed (same rows, e.g. a resumed run).
        """
        self._require_writable()
        lo, hi = self.chunk_bounds(k)
        rows = hi - lo
        emb = np.asarray(embedding)
        if emb.shape != (rows, self.dim):
            raise ValueError(
                f"embedding for chunk {k} has shape {emb.shape}; expected ({rows}, {self.dim}) "
                f"= (rows {lo}..{hi}, dim)"
            )
        if not np.issubdtype(emb.dtype, np.floating):
            raise ValueError(f"embedding dtype {emb.dtype} is not floating; valid: float32")
        emb = emb.astype(np.float32, copy=False)
        if not np.isfinite(emb).all():
            raise ValueError(f"embedding for chunk {k} (rows {lo}..{hi}) contains NaN or inf")
        ids = np.asarray(sample_id, dtype=np.dtypes.StringDType())
        if ids.shape != (rows,):
            raise ValueError(f"sample_id for chunk {k} has shape {ids.shape}; expected ({rows},)")
        if rows and (np.strings.str_len(ids) == 0).any():
            raise ValueError(f"sample_id for chunk {k} contains empty strings")
        if label is None:
            lab = np.full(rows, -1, dtype=np.int64)
        else:
            lab = np.asarray(label)
            if lab.shape != (rows,) or not np.issubdtype(lab.dtype, np.integer):
                raise ValueError(
                    f"label for chunk {k} has shape {lab.shape} dtype {lab.dtype}; expected "
                    f"({rows},) integers (-1 = unlabeled)"
                )
            if rows and lab.min() < -1:
                raise ValueError(f"label for chunk {k} has values < -1; valid: -1 or >= 0")
            lab = lab.astype(np.int64, copy=False)
        # Data first (all three arrays), marker last: a kill before the marker leaves the chunk
        # invisible and it is rewritten by the next run.
        self._arrays["embedding"][lo:hi] = emb
        self._arrays["sample_id"][lo:hi] = ids
        self._arrays["label"][lo:hi] = lab
        self._commit_chunk(k, {"embedding": emb, "sample_id": ids, "label": lab})
        log.debug("committed chunk %d (rows %d..%d) of %s", k, lo, hi, self.location)


# ---------------------------------------------------------------------- opening / creating
def _identity(
    *,
    dataset: str,
    encoder_version: str,
    encoder_hash: str,
    source_manifest_hash: str,
    dim: int,
    n_rows: int,
    chunk_rows: int,
    compression: str,
    compression_level: int,
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "encoder_version": encoder_version,
        "encoder_hash": encoder_hash,
        "source_manifest_hash": source_manifest_hash,
        "dim": dim,
        "n_rows": n_rows,
        "chunk_rows": chunk_rows,
        "compression": compression,
        "compression_level": compression_level,
    }


def create_store(
    path: PathLike,
    *,
    n_rows: int,
    dim: int,
    dataset: str,
    encoder_version: str,
    encoder_hash: str,
    source_manifest_hash: str,
    chunk_rows: int | None = None,
    compression: str = "zstd",
    compression_level: int = 3,
    if_exists: Literal["resume", "error", "overwrite"] = "resume",
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingStore:
    """Create (or reopen to resume) a writable embedding store of ``n_rows`` preallocated rows.

    Parameters
    ----------
    path: local folder (default) or fsspec URL (``file://``, ``memory://``, ``s3://`` ...).
    n_rows: total rows planned (the sample manifest's size), >= 1.
    dim: embedding dimension d, >= 1.
    dataset, encoder_version, encoder_hash, source_manifest_hash: identity recorded in the
        contract; a resumed store must match all of them.
    chunk_rows: rows per chunk; default :func:`default_chunk_rows` (about 4 MiB of float32).
    compression: "zstd" (default), "blosc" (zstd inside blosc, byte shuffle), "gzip" or "none";
        compression_level: codec level, default 3.
    if_exists: what to do when a store is already at ``path``: "resume" (default) checks that it
        has the same identity, keeps its committed chunks and returns it, so the caller continues
        with ``pending_chunks()``; "error" raises FileExistsError; "overwrite" deletes it.
    storage_options: passed to fsspec for URLs.

    Create the store once before starting several concurrent writers; each writer then calls
    :func:`open_store` with ``mode="r+"`` (or this function with ``if_exists="resume"``).
    """
    for name, value in (("n_rows", n_rows), ("dim", dim)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    chunk_rows = default_chunk_rows(dim) if chunk_rows is None else chunk_rows
    if not isinstance(chunk_rows, int | np.integer) or chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r} must be an integer >= 1")
    check_compression(compression, compression_level)
    n_rows, dim, chunk_rows = int(n_rows), int(dim), int(chunk_rows)
    identity = _identity(
        dataset=dataset,
        encoder_version=encoder_version,
        encoder_hash=encoder_hash,
        source_manifest_hash=source_manifest_hash,
        dim=dim,
        n_rows=n_rows,
        chunk_rows=chunk_rows,
        compression=compression,
        compression_level=int(compression_level),
    )
    store = create_or_resume(
        EmbeddingStore,
        open_zarr_store(path, read_only=False, storage_options=storage_options),
        "",
        location=location_string(path),
        model=EmbeddingStoreMetadata,
        identity=identity,
        resume_fields=_IDENTITY_FIELDS,
        fields={
            "kind": "sqflow.embedding_store",
            "dtype": "float32",
            "sample_id_dtype": "string",
            "label_dtype": "int64",
        },
        arrays=[
            ArraySpec(
                "embedding", (n_rows, dim), (chunk_rows, dim), "float32", 0.0, ("row", "component")
            ),
            ArraySpec("sample_id", (n_rows,), (chunk_rows,), str, "", ("row",)),
            ArraySpec("label", (n_rows,), (chunk_rows,), "int64", -1, ("row",)),
        ],
        n_rows=n_rows,
        chunk_rows=chunk_rows,
        compression=compression,
        compression_level=int(compression_level),
        if_exists=if_exists,
        storage_options=storage_options,
        caller="create_store got",
    )
    _check_arrays(store)
    return store


def open_store(
    path: PathLike | EmbeddingStore,
    *,
    mode: Literal["r", "r+"] = "r",
    expected_dim: int | None = None,
    expected_encoder: str | None = None,
    known_encoders: Iterable[str] | None = None,
    expected_encoder_hash: str | None = None,
    expected_manifest_hash: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingStore:
    """Open an existing embedding store and validate it against the contract.

    Raises :class:`StoreNotFoundError` when nothing is there and :class:`StoreContractError`
    naming the field when: an attribute is missing or invalid, the contract version is not ours,
    ``dim != expected_dim``, ``encoder_version != expected_encoder`` or not in
    ``known_encoders``, the encoder/manifest hash differs from the expected one, or an array's
    shape, dtype or chunking disagrees with the attributes.

    ``mode="r+"`` opens it for writing (e.g. one of several concurrent writers).
    Passing an already opened :class:`EmbeddingStore` re-checks the expectations on it.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode={mode!r}; valid: 'r' (read) or 'r+' (read and write)")
    if isinstance(path, EmbeddingStore):
        store = path
        if mode == "r+" and not store.writable:
            return open_store(
                store.location,
                mode=mode,
                expected_dim=expected_dim,
                expected_encoder=expected_encoder,
                known_encoders=known_encoders,
                expected_encoder_hash=expected_encoder_hash,
                expected_manifest_hash=expected_manifest_hash,
                storage_options=store.storage_options,
            )
    else:
        location = location_string(path)
        zstore = open_zarr_store(path, read_only=mode == "r", storage_options=storage_options)
        group = try_open_group(zstore, location=location)
        if group is None:
            raise StoreNotFoundError(
                f"no embedding store at {location} (no Zarr v3 group there); create one with "
                "sqflow.store.create_store"
            )
        meta = validate_attrs(
            EmbeddingStoreMetadata,
            dict(group.attrs),
            what="embedding store",
            location=location,
            supported=STORE_CONTRACT_VERSION,
        )
        store = EmbeddingStore(
            group,
            meta,
            location=location,
            storage_options=storage_options,
            writable=mode == "r+",
        )
        _check_arrays(store)
    _check_expectations(
        store,
        expected_dim=expected_dim,
        expected_encoder=expected_encoder,
        known_encoders=known_encoders,
        expected_encoder_hash=expected_encoder_hash,
        expected_manifest_hash=expected_manifest_hash,
    )
    return store


def _check_arrays(store: EmbeddingStore) -> None:
    emb = store._arrays["embedding"]
    if emb.shape != (store.n_rows, store.dim) or emb.chunks[1] != store.dim:
        raise StoreContractError(
            f"embedding store at {store.location}: array 'embedding' has shape {emb.shape}, "
            f"chunks {emb.chunks}; attributes say ({store.n_rows}, {store.dim}) in row chunks"
        )
    expected = {"embedding": np.dtype("float32"), "label": np.dtype("int64")}
    for name, dtype in expected.items():
        if store._arrays[name].dtype != dtype:
            raise StoreContractError(
                f"embedding store at {store.location}: array {name!r} has dtype "
                f"{store._arrays[name].dtype}; the contract says {dtype}"
            )
    if store._arrays["sample_id"].dtype.kind not in ("T", "U", "O"):
        raise StoreContractError(
            f"embedding store at {store.location}: array 'sample_id' has dtype "
            f"{store._arrays['sample_id'].dtype}; the contract says variable-length strings"
        )


def _check_expectations(
    store: EmbeddingStore,
    *,
    expected_dim: int | None,
    expected_encoder: str | None,
    known_encoders: Iterable[str] | None,
    expected_encoder_hash: str | None,
    expected_manifest_hash: str | None,
) -> None:
    meta = store.metadata
    where = f"embedding store at {store.location}"
    if expected_dim is not None and meta.dim != expected_dim:
        raise StoreContractError(
            f"{where} has dim={meta.dim}, but expected_dim={expected_dim}; the encoder that "
            "wrote it produces a different embedding size"
        )
    if expected_encoder is not None and meta.encoder_version != expected_encoder:
        raise StoreContractError(
            f"{where} has encoder_version={meta.encoder_version!r}, but "
            f"expected_encoder={expected_encoder!r}"
        )
    if known_encoders is not None:
        known = sorted(known_encoders)
        if meta.encoder_version not in known:
            raise StoreContractError(
                f"{where} has encoder_version={meta.encoder_version!r}, which is not a known "
                f"encoder; valid (known_encoders): {known}"
            )
    if expected_encoder_hash is not None and meta.encoder_hash != expected_encoder_hash:
        raise StoreContractError(
            f"{where} has encoder_hash={meta.encoder_hash!r}, but "
            f"expected_encoder_hash={expected_encoder_hash!r}"
        )
    if expected_manifest_hash is not None and meta.source_manifest_hash != expected_manifest_hash:
        raise StoreContractError(
            f"{where} has source_manifest_hash={meta.source_manifest_hash!r}, but "
            f"expected_manifest_hash={expected_manifest_hash!r}"
        )


class _VerifiedRows:
    """Array-like view of one data array of a store, for ``dask.array.from_array``: row slices
    are read through the store's verified chunk path. Pickles with the store (workers reopen
    nothing: the Zarr group travels)."""

    def __init__(self, store: RowGroup, name: str, n_rows: int) -> None:
        arr = store._arrays[name]
        self._store, self._name = store, name
        self.shape = (n_rows, *arr.shape[1:])
        self.dtype = arr.dtype
        self.ndim = arr.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        start, stop, step = key[0].indices(self.shape[0])
        rows = self._store._read_rows(self._name, start, stop)[::step]
        return rows[(slice(None), *key[1:])] if len(key) > 1 else rows


# ---------------------------------------------------------------------- convenience
ChunkProducer = Callable[[int, int], tuple[np.ndarray, Sequence[str], Sequence[int] | None]]


def write_embeddings(
    store: EmbeddingStore,
    produce: ChunkProducer,
    *,
    worker: int = 0,
    n_workers: int = 1,
    progress: ProgressArg = False,
) -> int:
    """Resumable write loop: for every uncommitted chunk owned by ``worker`` (of ``n_workers``),
    call ``produce(start, stop)`` -> ``(embedding (rows, dim), sample_id (rows,), label (rows,)
    or None)`` and commit it. Chunks already committed are skipped without calling ``produce``.
    ``progress``: a terminal bar (True) or ``report(chunks done, chunks pending)`` (see
    :mod:`sqflow.progress`). Returns the number of chunks written by this call."""
    pending = store.pending_chunks(worker, n_workers)
    log.info(
        "writing %d pending chunks of %s (worker %d of %d)",
        len(pending),
        store.location,
        worker,
        n_workers,
    )
    bar = progress_bar(progress, len(pending), "embedding store", "chunk")
    try:
        for k in pending:
            lo, hi = store.chunk_bounds(k)
            embedding, sample_id, label = produce(lo, hi)
            store.write_chunk(k, embedding, sample_id, label)
            bar.update(1)
    finally:
        bar.close()
    # Chunks committed by other writers after our last commit are not in our last summary.
    store.refresh_summary()
    return len(pending)


def read_labels(store: PathLike | EmbeddingStore, **open_kwargs: Any) -> np.ndarray:
    """All committed labels (n,) int64 of a store (path/URL or opened store)."""
    return open_store(store, **open_kwargs).read_labels()


def read_sample_ids(store: PathLike | EmbeddingStore, **open_kwargs: Any) -> np.ndarray:
    """All committed sample ids (n,) as a numpy string array."""
    return open_store(store, **open_kwargs).read_sample_ids()
