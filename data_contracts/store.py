"""Contract of the Zarr embedding store's metadata attributes (and of its assignment groups).

The embedding store written by ``sqflow.store`` keeps these fields as the attributes of its root
Zarr group; each assignment group (cluster id and distance of every row, written by the predict
pass) keeps :class:`AssignmentStoreMetadata` as its group attributes. Readers validate them on
open, so a store from another encoder, another dimension or a newer contract fails with a message
that names the field instead of producing wrong clusters later.

This module imports nothing of sqflow (layer rule: ``data_contracts`` depends only on pydantic).
Regenerate the committed JSON Schemas after any change with::

    sqflow schemas            # writes data_contracts/schemas/*.schema.json
    sqflow schemas --check    # exits 1 if the committed files are stale
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

#: Version of this contract. Bump on any incompatible change; readers refuse other versions.
STORE_CONTRACT_VERSION: Literal["1"] = "1"

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EMBEDDING_STORE_SCHEMA_PATH = SCHEMA_DIR / "embedding_store.schema.json"
ASSIGNMENT_STORE_SCHEMA_PATH = SCHEMA_DIR / "assignment_store.schema.json"

CompressionName = Literal["zstd", "blosc", "gzip", "none"]


class _CommittedRows(BaseModel):
    """Shared fields and checks of a chunked, resumable, row-committed Zarr group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contract_version: Literal["1"] = Field(
        description="Version of this contract; readers refuse any other value."
    )
    n_rows: int = Field(ge=0, description="Rows preallocated (the planned total N).")
    chunk_rows: int = Field(gt=0, description="Rows per Zarr chunk; all writes are chunk-aligned.")
    rows_committed: int = Field(
        ge=0,
        description=(
            "Rows known complete when the attributes were last written: the length of the "
            "contiguous prefix of chunks whose commit marker is set. A lower bound: the per-chunk "
            "markers in the `_committed` array are the authority."
        ),
    )
    complete: bool = Field(description="True once every chunk of the n_rows is committed.")
    compression: CompressionName = Field(description="Codec of the data arrays.")
    compression_level: int = Field(description="Codec level (ignored for 'none').")
    created_at: AwareDatetime = Field(description="When the group was created (UTC).")
    updated_at: AwareDatetime = Field(description="When a chunk was last committed (UTC).")
    producer_version: str = Field(min_length=1, description="sqflow version that wrote it.")
    integrity: Literal["crc32c+digest-v1"] | None = Field(
        default=None,
        description=(
            "How the chunks are verified. 'crc32c+digest-v1': every chunk of every array ends "
            "with a CRC32C checksum (a flipped or truncated chunk fails to decode) and the "
            "`_digests` array holds, per committed chunk, a CRC-32 of each data array's decoded "
            "rows (a missing, swapped or stale chunk is detected). Absent (null): written by an "
            "older sqflow, chunks unverified."
        ),
    )
    identity_digest: str | None = Field(
        default=None,
        description=(
            "SHA-256 (hex) of the identity attributes (canonical JSON of the fields that say "
            "what the rows are and who produced them); an edited attribute no longer matches. "
            "Absent with integrity absent."
        ),
    )

    @model_validator(mode="after")
    def _rows_consistent(self) -> _CommittedRows:
        if self.rows_committed > self.n_rows:
            raise ValueError(
                f"rows_committed={self.rows_committed} exceeds n_rows={self.n_rows}; "
                "valid: 0 <= rows_committed <= n_rows"
            )
        if self.complete and self.rows_committed != self.n_rows:
            raise ValueError(
                f"complete=True but rows_committed={self.rows_committed} != n_rows={self.n_rows}"
            )
        if self.updated_at < self.created_at:
            raise ValueError("updated_at is earlier than created_at")
        return self


class EmbeddingStoreMetadata(_CommittedRows):
    """Root-group attributes of an embedding store (one per dataset and encoder version).

    Arrays beside it: ``embedding`` (n_rows x dim, float32, chunks of chunk_rows rows),
    ``sample_id`` (n_rows, variable-length UTF-8 string), ``label`` (n_rows, int64, -1 =
    unlabeled) and ``_committed`` (one uint8 commit marker per chunk).
    """

    kind: Literal["sqflow.embedding_store"] = Field(
        description="Marks the group as an sqflow embedding store."
    )
    dataset: str = Field(min_length=1, description="Dataset name, e.g. 'mnist-train'.")
    encoder_version: str = Field(min_length=1, description="Encoder version, e.g. 'triplet-v3'.")
    encoder_hash: str = Field(
        min_length=1, description="Hash of the encoder weights (hex digest recommended)."
    )
    dim: int = Field(gt=0, description="Embedding dimension d.")
    dtype: Literal["float32"] = Field(description="dtype of the `embedding` array.")
    sample_id_dtype: Literal["string"] = Field(
        description="`sample_id` holds variable-length UTF-8 strings like 'mnist-train-00042'."
    )
    label_dtype: Literal["int64"] = Field(description="dtype of `label`; -1 means unlabeled.")
    source_manifest_hash: str = Field(
        min_length=1, description="Hash of the sample manifest the rows come from."
    )


class AssignmentStoreMetadata(_CommittedRows):
    """Group attributes of an assignment output: ``cluster_id`` (n_rows, int32) and ``distance``
    (n_rows, float32) of every row of an embedding store, plus ``_committed`` markers."""

    kind: Literal["sqflow.assignments"] = Field(description="Marks the group as assignments.")
    embedding_store: str = Field(
        min_length=1, description="Path or URL of the embedding store the rows belong to."
    )
    encoder_version: str = Field(min_length=1, description="Encoder version of that store.")
    source_manifest_hash: str = Field(min_length=1, description="Manifest hash of that store.")
    n_clusters: int | None = Field(default=None, gt=0, description="Number of centers, if known.")
    model_hash: str | None = Field(
        default=None, description="Hash of the fitted centers/model, if known."
    )
    distance_metric: str = Field(
        default="euclidean", min_length=1, description="What `distance` measures."
    )


def _schema_text(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


SCHEMAS: dict[Path, type[BaseModel]] = {
    EMBEDDING_STORE_SCHEMA_PATH: EmbeddingStoreMetadata,
    ASSIGNMENT_STORE_SCHEMA_PATH: AssignmentStoreMetadata,
}


def export_schemas(check: bool = False) -> list[Path]:
    """Write (or with ``check=True`` only compare) the JSON Schemas of the store contracts.

    Returns the paths that were written (``check=False``) or that are stale (``check=True``).
    """
    out: list[Path] = []
    for path, model in SCHEMAS.items():
        text = _schema_text(model)
        current = path.read_text() if path.exists() else None
        if current != text:
            out.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return out


__all__ = [
    "STORE_CONTRACT_VERSION",
    "AssignmentStoreMetadata",
    "EmbeddingStoreMetadata",
    "export_schemas",
]
