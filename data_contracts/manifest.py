"""Contracts of the ``sample`` boundary: the source description, the run manifest and quarantine.

The ``sample`` stage reads a source (:class:`SourceSpec`) and writes, per run:

* ``manifest.parquet``: one row per accepted item, columns :data:`MANIFEST_COLUMNS`
  (``sample_id`` unique string, ``source_ref`` where the item lives in the source, ``label``
  int64 or -1 for unlabeled, ``split`` string) plus :class:`ManifestMeta` as JSON beside it;
* ``quarantine.parquet``: one :class:`QuarantineRecord` per rejected item with its reason.

This module imports nothing of sqflow (layer rule); pandas is used only to check frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

MANIFEST_CONTRACT_VERSION: Literal["1"] = "1"

SourceKind = Literal["mnist", "idx", "image_folder", "npy", "npz", "parquet", "timeseries"]
SampleMode = Literal["all", "uniform", "stratified", "incremental"]

#: Columns of manifest.parquet and their dtypes (pandas names).
MANIFEST_COLUMNS: dict[str, str] = {
    "sample_id": "str",
    "source_ref": "str",
    "label": "int64",
    "split": "str",
}
#: Columns of quarantine.parquet (the later BI ``quarantine`` table has the same names).
QUARANTINE_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "sample_ref": "str",
    "reason": "str",
    "detected_at": "datetime64[us, UTC]",
}


def no_bool(value: Any) -> Any:
    """Before-validator of numeric settings: refuse a boolean (pydantic would read ``true`` as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; valid: a number")
    return value


#: an int or float setting: TOML/JSON ``true`` is refused instead of read as 1
Int = Annotated[int, BeforeValidator(no_bool)]
Float = Annotated[float, BeforeValidator(no_bool)]


class ManifestContractError(ValueError):
    """A manifest or quarantine frame violates its contract (the message names the column)."""


class SourceSpec(BaseModel):
    """Where the items of a run come from.

    kind:
      ``mnist``: the built-in MNIST (``split`` = "train", "test" or "all"; no path).
      ``idx``: ``path`` = IDX image file, ``labels_path`` = optional IDX label file.
      ``image_folder``: ``path`` = folder of PNG/JPEG files (searched recursively); sample id =
      relative path without extension; ``labels_path`` = optional CSV with columns
      ``sample_id,label`` (and optionally ``split``).
      ``npy``: ``path`` = .npy array (N, ...) ; ``labels_path`` = optional .npy (N,) labels.
      ``npz``: ``path`` = .npz with arrays ``x`` (or ``data``/``X``/``images``), optional ``y``
      (or ``labels``) and ``ids``.
      ``parquet``: ``path`` = Parquet file or folder; feature columns ``feature_columns`` (or
      every numeric column but ``label_column``/``id_column``); optional ``label_column`` and
      ``id_column``.
      ``timeseries``: ``path`` = .npy/.npz array (N, T, C) or long-format Parquet
      (``series_id, t, channel..., [label]``); see ``sqflow.sources_timeseries``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: SourceKind = Field(description="Type of the source; see the class docstring.")
    path: str | None = Field(default=None, description="File or folder of the data.")
    labels_path: str | None = Field(default=None, description="Optional labels file.")
    split: str = Field(default="train", description="For kind='mnist': train, test or all.")
    name: str | None = Field(default=None, description="Dataset name (default from the source).")
    image_size: tuple[Annotated[Int, Field(ge=1)], Annotated[Int, Field(ge=1)]] | None = Field(
        default=None, description="Expected (H, W) of images; None: the most common size."
    )
    feature_columns: list[str] | None = Field(default=None, description="Parquet features.")
    label_column: str | None = Field(default="label", description="Parquet label column.")
    id_column: str | None = Field(default="sample_id", description="Parquet id column.")
    value_range: tuple[Float, Float] | None = Field(
        default=None,
        description="Allowed [min, max] of values; None: 0..255 for images, finite for vectors.",
    )

    @field_validator("value_range")
    @classmethod
    def _range_not_empty(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"[{v[0]:g}, {v[1]:g}] is empty; valid: [min, max] with min < max")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> SourceSpec:
        if self.kind != "mnist" and not self.path:
            raise ValueError(f"source kind={self.kind!r} needs a path (file or folder)")
        if self.kind == "mnist" and self.split not in ("train", "test", "all"):
            raise ValueError(
                f"split={self.split!r} for the built-in MNIST; valid: train, test, all"
            )
        return self

    @property
    def dataset(self) -> str:
        """Dataset name used in store metadata and output rows."""
        if self.name:
            return self.name
        if self.kind == "mnist":
            return f"mnist-{self.split}"
        return Path(str(self.path)).stem or self.kind


class SampleSpec(BaseModel):
    """How the sample stage chooses items from the accepted ones."""

    model_config = ConfigDict(extra="forbid")

    mode: SampleMode = Field(default="all", description="all, uniform, stratified, incremental")
    n: Int | None = Field(
        default=None,
        gt=0,
        description="Items to draw (uniform/stratified; optional cap for incremental).",
    )
    seed: Int = Field(default=0, ge=0, description="Seed of the draw (>= 0).")

    @model_validator(mode="after")
    def _n_needed(self) -> SampleSpec:
        if self.mode in ("uniform", "stratified") and self.n is None:
            raise ValueError(f"sample mode={self.mode!r} needs n (the number of items to draw)")
        return self


class ManifestMeta(BaseModel):
    """Written as ``manifest.json`` beside ``manifest.parquet``."""

    model_config = ConfigDict(extra="forbid")

    contract_version: Literal["1"] = MANIFEST_CONTRACT_VERSION
    run_id: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    source: SourceSpec
    sample: SampleSpec
    item_shape: list[int] = Field(description="Shape of one item, e.g. [28, 28] or [16].")
    n_scanned: int = Field(ge=0, description="Items found in the source.")
    n_accepted: int = Field(ge=0, description="Items that passed every check.")
    n_quarantined: int = Field(ge=0)
    n_selected: int = Field(ge=0, description="Rows of the manifest (after the sample mode).")
    n_labeled: int = Field(ge=0)
    manifest_hash: str = Field(min_length=1, description="SHA-256 of the manifest rows.")
    created_at: AwareDatetime
    warnings: list[str] = Field(
        default_factory=list,
        description="Source-level warnings of the scan (e.g. a labels CSV matching no item, "
        "text columns left out of the features); the run went on.",
    )


class QuarantineRecord(BaseModel):
    """One item the sample stage refused, with the reason (one row of quarantine.parquet)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1)
    sample_ref: str = Field(min_length=1, description="Where the item lives in the source.")
    reason: str = Field(min_length=1, description="Why it was refused, human readable.")
    detected_at: AwareDatetime


def check_frame(df: Any, columns: dict[str, str], what: str) -> None:
    """Raise :class:`ManifestContractError` unless ``df`` has exactly ``columns`` (names and
    dtypes as listed; any pandas string dtype counts as ``str``)."""
    missing = [c for c in columns if c not in df.columns]
    extra = [c for c in df.columns if c not in columns]
    if missing or extra:
        raise ManifestContractError(
            f"{what}: columns missing {missing}, unexpected {extra}; valid: {list(columns)}"
        )
    for col, want in columns.items():
        got = str(df[col].dtype)
        ok = want == "str" and (got in ("str", "string", "object") or got.startswith("string"))
        ok = ok or got == want
        if not ok:
            raise ManifestContractError(f"{what}: column {col!r} has dtype {got}; expected {want}")


def check_manifest(df: Any) -> None:
    """Contract of a manifest frame: columns, unique non-empty sample ids, labels >= -1."""
    check_frame(df, MANIFEST_COLUMNS, "manifest")
    if len(df) == 0:
        raise ManifestContractError("manifest: no rows (a run needs at least one accepted item)")
    if (df["sample_id"].str.len() == 0).any():
        raise ManifestContractError("manifest: column 'sample_id' has empty strings")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise ManifestContractError(
            f"manifest: column 'sample_id' has {len(dup)} duplicates, e.g. {dup.iloc[0]!r}"
        )
    bad = df.index[df["label"] < -1]
    if len(bad):
        raise ManifestContractError(
            f"manifest: column 'label' < -1 in rows {list(bad[:5])}; valid: -1 or >= 0"
        )


SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMAS: dict[Path, type[BaseModel]] = {
    SCHEMA_DIR / "manifest_meta.schema.json": ManifestMeta,
    SCHEMA_DIR / "quarantine_record.schema.json": QuarantineRecord,
}


def export_schemas(check: bool = False) -> list[Path]:
    """Write (or with ``check=True`` only list stale) JSON Schemas of these contracts."""
    out = []
    for path, model in SCHEMAS.items():
        text = json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        if not path.exists() or path.read_text() != text:
            out.append(path)
            if not check:
                path.write_text(text)
    return out
