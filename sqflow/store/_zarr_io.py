"""Low-level helpers shared by the embedding and assignment stores: where a store lives (local
folder or fsspec URL), codecs, errors, timestamps and the contract check on open."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any, TypeVar
from urllib.parse import urlsplit

import zarr
import zarr.codecs
import zarr.errors
from pydantic import BaseModel, ValidationError
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

PathLike = str | os.PathLike[str]
M = TypeVar("M", bound=BaseModel)
COMPRESSIONS: tuple[str, ...] = ("zstd", "blosc", "gzip", "none")


class StoreContractError(ValueError):
    """A store's metadata attributes or arrays do not follow its data contract, or do not match
    what the caller expects (dimension, encoder, manifest, ...)."""


class StoreIntegrityError(StoreContractError):
    """A committed chunk of a store is missing, damaged (checksum), or holds other data than was
    committed (digest); or a metadata file cannot be read. The message names the store, the
    array and the chunk (or the file)."""


class StoreNotFoundError(FileNotFoundError):
    """No store (no root ``zarr.json``) at the given path or URL."""


def producer_version() -> str:
    """Version of the installed sqflow distribution (``"0+unknown"`` when not installed)."""
    try:
        return importlib_metadata.version("sqflow")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def utc_now() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


def location_string(path: PathLike) -> str:
    """The path or URL as text, for messages and for the ``embedding_store`` back-reference."""
    return os.fspath(path)


def open_zarr_store(
    path: PathLike, *, read_only: bool, storage_options: dict[str, Any] | None = None
) -> Store:
    """Return the Zarr store object for a local folder or an fsspec URL.

    - a plain path (``"runs/emb.zarr"``) or a ``file://`` URL -> :class:`zarr.storage.LocalStore`.
      ``file://`` is mapped to LocalStore on purpose: LocalStore writes every key to a temporary
      file and renames it (atomic), whereas fsspec's local filesystem writes in place, so a
      SIGKILL during a metadata write could leave a truncated ``zarr.json``.
    - any other URL (``memory://``, ``s3://``, ``gs://``, ...) -> :class:`zarr.storage.FsspecStore`
      with ``storage_options`` passed to fsspec. Object stores write whole objects atomically.
    """
    text = os.fspath(path)
    if "://" not in text:
        if storage_options:
            raise ValueError(
                f"storage_options={storage_options!r} given for the local path {text!r}; "
                "storage_options apply only to fsspec URLs such as 's3://bucket/emb.zarr'"
            )
        return LocalStore(text, read_only=read_only)
    scheme = urlsplit(text).scheme
    if scheme == "file":
        local = text[len("file://") :]
        if not local:
            raise ValueError(
                f"path {text!r}: a file:// URL needs a path, e.g. 'file:///data/e.zarr'"
            )
        return LocalStore(local, read_only=read_only)
    return FsspecStore.from_url(text, storage_options=storage_options, read_only=read_only)


def try_open_group(zstore: Store, path: str = "", *, location: str = "") -> zarr.Group | None:
    """The Zarr v3 group at ``path`` inside ``zstore``, or ``None`` when there is none.

    A ``zarr.json`` that is there but cannot be parsed raises :class:`StoreIntegrityError`
    naming the file (Zarr's own error names no path)."""
    try:
        return zarr.open_group(
            zstore, path=path, mode="r" if zstore.read_only else "r+", zarr_format=3
        )
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
        zarr.errors.ContainsArrayError,  # an array, not a group, is there
    ):
        return None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        where = "/".join(p for p in (location.rstrip("/"), path, "zarr.json") if p)
        raise StoreIntegrityError(
            f"{where} cannot be read as Zarr v3 group metadata ({type(exc).__name__}: {exc}); "
            "the file is damaged: restore it or rewrite the store"
        ) from exc


def make_compressors(compression: str, level: int) -> list[Any]:
    """Zarr v3 compressor list for ``compression`` in :data:`COMPRESSIONS`.

    Every list ends with a CRC32C checksum of the encoded chunk, so a flipped or truncated chunk
    fails to decode instead of reading as other numbers; zstd also checks its own frame
    checksum. ("none" = no compression, still checksummed.)"""
    crc = zarr.codecs.Crc32cCodec()
    if compression == "zstd":
        return [zarr.codecs.ZstdCodec(level=level, checksum=True), crc]
    if compression == "blosc":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="shuffle"), crc]
    if compression == "gzip":
        return [zarr.codecs.GzipCodec(level=level), crc]
    if compression == "none":
        return [crc]
    raise ValueError(f"compression={compression!r} is not supported; valid: {list(COMPRESSIONS)}")


def check_compression(compression: str, level: int) -> None:
    """Fail early, naming the parameter, on an unknown codec or an out-of-range level."""
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression={compression!r} is not supported; valid: {list(COMPRESSIONS)}"
        )
    ranges = {"zstd": (-131072, 22), "blosc": (0, 9), "gzip": (0, 9), "none": (-(2**31), 2**31)}
    lo, hi = ranges[compression]
    if not isinstance(level, int) or not lo <= level <= hi:
        raise ValueError(
            f"compression_level={level!r} is out of range for {compression!r}; valid: {lo}..{hi}"
        )


def validate_attrs(
    model: type[M], attrs: dict[str, Any], *, what: str, location: str, supported: str
) -> M:
    """Validate group attributes against a contract model, raising :class:`StoreContractError`
    that names every offending attribute and lists the valid ones."""
    version = attrs.get("contract_version")
    if version is not None and version != supported:
        raise StoreContractError(
            f"{what} at {location}: contract_version={version!r} is not supported; "
            f"this sqflow reads contract_version={supported!r}"
        )
    try:
        return model.model_validate(attrs)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(whole record)"
            if err["type"] == "missing":
                problems.append(f"attribute {field!r} is missing")
            elif err["type"] == "extra_forbidden":
                problems.append(f"attribute {field!r} is not part of the contract")
            else:
                problems.append(f"attribute {field!r}={err.get('input')!r}: {err['msg']}")
        raise StoreContractError(
            f"{what} at {location} does not follow the {model.__name__} contract "
            f"(version {supported}): "
            + "; ".join(problems)
            + f". Valid attributes: {sorted(model.model_fields)}"
        ) from None
