"""Atomic file writes: readers see the old file or the new one, never half of one.

The protocol (one place for it): write to ``.<name>.<pid>.tmp`` beside the target, ``fsync``
the temporary file, ``os.replace`` it onto the target, then ``fsync`` the folder so the rename
itself survives a crash. A failed write removes its temporary file and leaves the target as it
was. Every writer in the code base (run records, manifests, centers, BI Parquet files, the
DuckDB file swap, the cluster report) goes through :func:`atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_parquet",
    "atomic_write_text",
    "fsync_path",
]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """``fsync`` a file or a folder; silently does nothing where the OS does not allow it
    (some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parent folders created); when the ``with`` block
    ends without an error, the temporary file is fsynced and moved onto ``path`` and the folder
    fsynced. On an error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    """``np.save`` of ``array`` to ``path`` atomically; returns ``path``."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array))
    return Path(path)


def atomic_write_parquet(df: Any, path: str | os.PathLike[str]) -> Path:
    """``df.to_parquet(path, index=False)`` atomically (a pandas DataFrame); returns ``path``."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)
