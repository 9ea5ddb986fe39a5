"""Zarr v3 stores of the pipeline: the embedding store (one per dataset and encoder version) and
the assignment outputs of the predict pass. Local folders by default, any fsspec URL otherwise.

Writing is preallocated, chunk-aligned and committed chunk by chunk (data first, then a per-chunk
commit marker, then the ``rows_committed`` attribute), so a killed writer resumes after its last
committed chunk and several writers owning disjoint chunks never lose rows. See
``sqflow/store/_rows.py`` for the protocol and ``data_contracts/store.py`` for the metadata
contract.

Verified stores: every chunk is checksummed (CRC32C), a per-chunk digest is recorded at commit,
and reads of committed chunks check both; :func:`verify_store` checks a whole store.
"""

from ._zarr_io import StoreContractError, StoreIntegrityError, StoreNotFoundError
from .assignments import (
    AssignmentStore,
    open_assignment_writer,
    open_assignments,
    write_assignments,
)
from .embeddings import (
    EmbeddingStore,
    StoreChunk,
    create_store,
    default_chunk_rows,
    open_store,
    read_labels,
    read_sample_ids,
    write_embeddings,
)
from .verify import StoreReport, verify_store

__all__ = [
    "AssignmentStore",
    "EmbeddingStore",
    "StoreChunk",
    "StoreContractError",
    "StoreIntegrityError",
    "StoreNotFoundError",
    "StoreReport",
    "create_store",
    "default_chunk_rows",
    "open_assignment_writer",
    "open_assignments",
    "open_store",
    "read_labels",
    "read_sample_ids",
    "write_assignments",
    "verify_store",
    "write_embeddings",
]
