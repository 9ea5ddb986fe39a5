"""Assignment outputs of the predict pass: ``cluster_id`` and ``distance`` of every row of an
embedding store, written chunk by chunk and resumable like the store itself.

Layout: a Zarr group, by default ``assignments/<name>`` inside the embedding store (``target``
puts it at another path or URL instead)::

    zarr.json      attributes = data_contracts.store.AssignmentStoreMetadata
    cluster_id/    (n_rows,) int32, -1 = not written yet
    distance/      (n_rows,) float32, NaN = not written yet
    _committed/    (n_chunks,) uint8 commit marker per chunk

It uses the embedding store's ``chunk_rows``, so a predict pass over
``store.to_dask()`` writes exactly one assignment chunk per Dask block.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from data_contracts.store import STORE_CONTRACT_VERSION, AssignmentStoreMetadata

from ._rows import ArraySpec, RowGroup, create_or_resume
from ._zarr_io import (
    PathLike,
    StoreNotFoundError,
    check_compression,
    location_string,
    open_zarr_store,
    try_open_group,
    validate_attrs,
)
from .embeddings import EmbeddingStore, open_store

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# What a resumed output must share with the existing one. Not `embedding_store`: the same store
# may be reached by another path or URL (a relative path, a copy on object storage).
_IDENTITY_FIELDS = (
    "encoder_version",
    "source_manifest_hash",
    "n_rows",
    "chunk_rows",
    "n_clusters",
    "model_hash",
    "distance_metric",
    "compression",
    "compression_level",
)


class AssignmentStore(RowGroup):
    """Cluster id and distance per row. Write with :meth:`write` (whole chunks, each committed
    right after its data) and :meth:`commit`; read with :meth:`read_cluster_ids`,
    :meth:`read_distances` or :meth:`iter_chunks` (committed rows only)."""

    _what = "assignment store"
    _data_arrays = ("cluster_id", "distance")
    _identity_fields = ("kind", "embedding_store", *_IDENTITY_FIELDS)

    @property
    def n_clusters(self) -> int | None:
        return self.metadata.n_clusters

    def write(self, start_row: int, cluster_ids: Any, distances: Any) -> int:
        """Write rows ``[start_row, start_row + len(cluster_ids))`` and commit each chunk.

        start_row: multiple of ``chunk_rows``; the length must be a multiple of ``chunk_rows`` or
        end at ``n_rows`` (one or more whole chunks). cluster_ids: (n,) integers in
        ``[0, n_clusters)`` (stored as int32); distances: (n,) finite floats >= 0 (float32).
        Returns the number of chunks committed. Rewriting committed chunks is allowed.
        """
        self._require_writable()
        ids = np.asarray(cluster_ids)
        dist = np.asarray(distances)
        n = ids.shape[0] if ids.ndim == 1 else -1
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"cluster_ids has shape {ids.shape} dtype {ids.dtype}; expected (n,) integers"
            )
        if dist.shape != (n,) or not np.issubdtype(dist.dtype, np.floating):
            raise ValueError(
                f"distances has shape {dist.shape} dtype {dist.dtype}; expected ({n},) floats "
                "(same length as cluster_ids)"
            )
        spans = self._chunk_spans(int(start_row), n)
        upper = self.n_clusters
        if n and (ids.min() < 0 or (upper is not None and ids.max() >= upper)):
            raise ValueError(
                f"cluster_ids out of range [{ids.min()}, {ids.max()}]; valid: 0.."
                f"{'n_clusters-1' if upper is None else upper - 1}"
            )
        if ids.size and ids.max() > np.iinfo(np.int32).max:
            raise ValueError("cluster_ids exceed int32; valid: < 2**31")
        if n and not (np.isfinite(dist).all() and (dist >= 0).all()):
            raise ValueError("distances must be finite and >= 0")
        ids32 = ids.astype(np.int32, copy=False)
        dist32 = dist.astype(np.float32, copy=False)
        for k, lo, hi in spans:
            a, b = self.chunk_bounds(k)
            # data first, marker after (see _rows.py)
            self._arrays["cluster_id"][a:b] = ids32[lo:hi]
            self._arrays["distance"][a:b] = dist32[lo:hi]
            self._commit_chunk(k, {"cluster_id": ids32[lo:hi], "distance": dist32[lo:hi]})
        return len(spans)

    def commit(self) -> int:
        """Re-read all commit markers and write the summary attributes (``rows_committed``,
        ``complete``, ``updated_at``). Chunks are already durable after :meth:`write`; call this
        at the end (or after concurrent writers finish). Returns rows_committed."""
        return self.refresh_summary()

    def close(self) -> None:
        """Commit the summary if writable."""
        if self.writable:
            self.commit()

    def __enter__(self) -> AssignmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_cluster_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed ``cluster_id`` rows ``[start, stop)``: int32."""
        start, stop = self._check_read_range(start, stop)
        return self._read_rows("cluster_id", start, stop)

    def read_distances(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed ``distance`` rows ``[start, stop)``: float32."""
        start, stop = self._check_read_range(start, stop)
        return self._read_rows("distance", start, stop)

    def iter_chunks(self) -> Any:
        """Yield ``(start, stop, cluster_id, distance)`` per committed chunk."""
        last = -(-self.rows_committed // self.chunk_rows)
        for k in range(last):
            a, b = self.chunk_bounds(k)
            yield a, b, self._read_chunk("cluster_id", k), self._read_chunk("distance", k)


def _reference(location: str) -> str:
    """Back-reference to record: absolute for local paths (a relative one means nothing later)."""
    return location if "://" in location else os.path.abspath(location)


def _resolve(
    store_or_path: PathLike | EmbeddingStore,
    name: str,
    target: PathLike | None,
    storage_options: dict[str, Any] | None,
    read_only: bool,
) -> tuple[EmbeddingStore, Any, str, str]:
    """-> (embedding store, zarr store object, group path inside it, location for messages)."""
    if not _NAME.match(name) or name in (".", ".."):  # '..' would name the store's parent
        raise ValueError(f"name={name!r}; valid: letters, digits, '_', '.', '-' (not '.' or '..')")
    emb = (
        store_or_path
        if isinstance(store_or_path, EmbeddingStore)
        else open_store(store_or_path, storage_options=storage_options)
    )
    if target is None:
        zstore = open_zarr_store(
            emb.location, read_only=read_only, storage_options=emb.storage_options
        )
        group_path = f"assignments/{name}"
        location = f"{emb.location.rstrip('/')}/{group_path}"
    else:
        zstore = open_zarr_store(target, read_only=read_only, storage_options=storage_options)
        group_path = ""
        location = location_string(target)
    return emb, zstore, group_path, location


def open_assignment_writer(
    store_or_path: PathLike | EmbeddingStore,
    *,
    name: str = "default",
    target: PathLike | None = None,
    n_rows: int | None = None,
    n_clusters: int | None = None,
    model_hash: str | None = None,
    distance_metric: str = "euclidean",
    compression: str = "zstd",
    compression_level: int = 3,
    if_exists: Literal["resume", "error", "overwrite"] = "resume",
    storage_options: dict[str, Any] | None = None,
) -> AssignmentStore:
    """Create (or reopen to resume) the assignment output of an embedding store.

    store_or_path: the embedding store (opened, or its path/URL).
    name: group name under ``assignments/`` in the store (ignored layout-wise with ``target``).
    target: another path/URL for the output instead of inside the store.
    n_rows: rows to assign; default the store's ``rows_committed`` now.
    n_clusters, model_hash: recorded and checked (ids must be < n_clusters; a resumed output must
        come from the same model). if_exists: "resume" (default: keep committed chunks if the
        identity matches, else StoreContractError naming the field), "error", "overwrite".
    The writer uses the embedding store's ``chunk_rows``; call ``pending_chunks()`` to skip work
    already committed, ``write(start_row, cluster_ids, distances)`` per chunk, ``commit()`` at
    the end (or use it as a context manager).
    """
    check_compression(compression, compression_level)
    emb, zstore, group_path, location = _resolve(
        store_or_path, name, target, storage_options, read_only=False
    )
    rows = emb.rows_committed if n_rows is None else int(n_rows)
    if not 1 <= rows <= emb.n_rows:
        raise ValueError(
            f"n_rows={rows} for the assignments of {emb.location}; valid: 1..{emb.n_rows} "
            f"(the embedding store has {emb.rows_committed} rows committed)"
        )
    if n_clusters is not None and n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be >= 1")
    identity = {
        "embedding_store": _reference(emb.location),
        "encoder_version": emb.metadata.encoder_version,
        "source_manifest_hash": emb.metadata.source_manifest_hash,
        "n_rows": rows,
        "chunk_rows": emb.chunk_rows,
        "n_clusters": n_clusters,
        "model_hash": model_hash,
        "distance_metric": distance_metric,
        "compression": compression,
        "compression_level": compression_level,
    }
    return create_or_resume(
        AssignmentStore,
        zstore,
        group_path,
        location=location,
        model=AssignmentStoreMetadata,
        identity=identity,
        resume_fields=_IDENTITY_FIELDS,
        fields={"kind": "sqflow.assignments"},
        arrays=[
            ArraySpec("cluster_id", (rows,), (emb.chunk_rows,), "int32", -1, ("row",)),
            ArraySpec("distance", (rows,), (emb.chunk_rows,), "float32", float("nan"), ("row",)),
        ],
        n_rows=rows,
        chunk_rows=emb.chunk_rows,
        compression=compression,
        compression_level=compression_level,
        if_exists=if_exists,
        storage_options=storage_options,
        caller="this writer has",
    )


def open_assignments(
    store_or_path: PathLike | EmbeddingStore,
    *,
    name: str = "default",
    target: PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> AssignmentStore:
    """Open assignments read-only, validated against :class:`AssignmentStoreMetadata`."""
    emb, zstore, group_path, location = _resolve(
        store_or_path, name, target, storage_options, read_only=True
    )
    group = try_open_group(zstore, group_path, location=location)
    if group is None:
        raise StoreNotFoundError(
            f"no assignments at {location}; write them with open_assignment_writer"
        )
    meta = validate_attrs(
        AssignmentStoreMetadata,
        dict(group.attrs),
        what="assignment store",
        location=location,
        supported=STORE_CONTRACT_VERSION,
    )
    return AssignmentStore(
        group, meta, location=location, storage_options=storage_options, writable=False
    )


def write_assignments(
    store_or_path: PathLike | EmbeddingStore,
    cluster_id: Any,
    distance: Any,
    *,
    progress: bool = False,
    **writer_kwargs: Any,
) -> AssignmentStore:
    """Write cluster ids and distances of all rows, chunk by chunk, and commit.

    cluster_id: (n,) integers; distance: (n,) floats; numpy or Dask arrays (a Dask array is
    computed one chunk at a time, so memory stays at one chunk). ``n`` sets ``n_rows``.
    ``writer_kwargs`` go to :func:`open_assignment_writer` (name, target, n_clusters, ...).
    Resumable: committed chunks of an earlier interrupted call are skipped.
    """
    n = int(cluster_id.shape[0])
    if distance.shape[0] != n:
        raise ValueError(
            f"distance has {distance.shape[0]} rows but cluster_id has {n}; they must match"
        )
    writer = open_assignment_writer(store_or_path, n_rows=n, **writer_kwargs)
    for k in tqdm(writer.pending_chunks(), desc="assignments", unit="chunk", disable=not progress):
        a, b = writer.chunk_bounds(k)
        writer.write(a, np.asarray(cluster_id[a:b]), np.asarray(distance[a:b]))
    writer.commit()
    return writer
