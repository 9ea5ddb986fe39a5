"""Assignment pass over an embedding store: nearest center and distance of every committed row,
written chunk by chunk into the store's resumable assignment output (never loading the store)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .distances import nearest
from .progress import ProgressArg, progress_bar
from .store import AssignmentStore, EmbeddingStore, open_assignment_writer, open_store


def model_hash(est) -> str:
    """Short SHA-256 of the fitted centers and rank: names the model an output came from."""
    h = hashlib.sha256(np.ascontiguousarray(est.cluster_centers_, dtype=np.float64).tobytes())
    h.update(repr(float(est.rank)).encode())
    return h.hexdigest()[:16]


def assign_block(block, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id int64, Euclidean distance float64) of every row of one block."""
    block = np.asarray(block)
    if not np.isfinite(block).all():
        raise ValueError("embedding block contains NaN or infinity; the store is corrupt")
    labels, d2 = nearest(block, centers)
    return labels, np.sqrt(d2)


def assign_store(
    est,
    store: EmbeddingStore | Any,
    *,
    client=None,
    name: str = "default",
    target: Any = None,
    max_in_flight: int | None = None,
    progress: ProgressArg = False,
    storage_options: dict | None = None,
    if_exists: str = "resume",
) -> AssignmentStore:
    """Write the nearest center and its distance for every committed row of ``store``.

    Parameters
    ----------
    est : fitted StochasticQuantization
    store : EmbeddingStore or its path/URL
    client : distributed.Client, optional
        Run the per-chunk assignment on this cluster (chunks read by the workers); None runs it
        here, one chunk at a time.
    name, target : where the output goes (see :func:`sqflow.store.open_assignment_writer`).
    max_in_flight : int, optional
        Chunks computed at once on the cluster (default: 2 per worker thread) — bounds memory.
    if_exists : {"resume", "overwrite", "error"}, default="resume"
        An output of that name already there: "resume" skips the chunks an interrupted earlier
        call with the SAME model committed (another model raises ``StoreContractError`` naming
        the field); "overwrite" starts it afresh; "error" raises ``FileExistsError``.

    Returns the (committed) :class:`~sqflow.store.AssignmentStore`.
    """
    check_is_fitted(est)
    emb = (
        store
        if isinstance(store, EmbeddingStore)
        else open_store(store, storage_options=storage_options)
    )
    if est.n_features_in_ != emb.dim:
        raise ValueError(
            f"model has {est.n_features_in_} features but the store's dim is {emb.dim}"
        )
    centers = np.ascontiguousarray(est.cluster_centers_, dtype=np.float64)
    writer = open_assignment_writer(
        emb,
        name=name,
        target=target,
        n_clusters=int(est.cluster_centers_.shape[0]),  # the K used (also for "auto")
        model_hash=model_hash(est),
        if_exists=if_exists,
    )
    pending = writer.pending_chunks()
    bar = progress_bar(progress, len(pending), "assign", "chunk") if progress else None
    try:
        if client is None:
            for k in pending:
                a, b = writer.chunk_bounds(k)
                ids, dist = assign_block(emb.read_embeddings(a, b), centers)
                writer.write(a, ids, dist)
                if bar is not None:
                    bar.update(1)
        else:
            from dask import delayed
            from distributed import as_completed

            blocks = emb.to_dask().to_delayed()[:, 0]
            limit = max_in_flight or 2 * max(1, sum(client.nthreads().values()))
            centers_f = client.scatter(centers, broadcast=True)
            running: dict = {}

            def launch(k: int):
                fut = client.compute(delayed(assign_block, pure=True)(blocks[k], centers_f))
                running[fut] = k
                return fut

            queue = iter(pending[limit:])
            finished = as_completed([launch(k) for k in pending[:limit]])
            for fut in finished:
                k = running.pop(fut)
                ids, dist = fut.result()
                writer.write(writer.chunk_bounds(k)[0], ids, dist)  # commits chunk k
                if bar is not None:
                    bar.update(1)
                nxt = next(queue, None)
                if nxt is not None:
                    finished.add(launch(nxt))
    finally:
        if bar is not None:
            bar.close()
    writer.commit()
    return writer
