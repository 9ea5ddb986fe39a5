"""Data sets: an IDX reader and the MNIST files vendored as package data.

IDX is the file format of MNIST (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in C order.
Only unsigned-byte data (dtype code ``0x08``) is accepted here, which covers MNIST and its
look-alikes (Fashion-MNIST, KMNIST, EMNIST).

Files may be gzip-compressed (detected from the content, not the file name).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["load_idx", "load_mnist", "mnist_dir", "verify_sha256", "MNIST_FILES"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08

#: split -> (images file, labels file, expected number of rows)
MNIST_FILES: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IDX file {str(p)!r} does not exist or is not a file")
    raw = p.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip stream
            raise ValueError(
                f"IDX file {str(p)!r}: corrupt or truncated gzip data ({exc})"
            ) from exc
    return raw


def _parse_idx(path: str | os.PathLike[str], expected_ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with ``expected_ndim`` dimensions."""
    raw = _read_bytes(path)
    name = str(path)
    if len(raw) < 4:
        raise ValueError(f"IDX file {name!r} is truncated: {len(raw)} bytes, no 4-byte header")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"IDX file {name!r} has a bad magic number {raw[:4].hex()}: "
            "an IDX file starts with bytes 00 00 <dtype> <ndim>"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UBYTE:
        raise ValueError(
            f"IDX file {name!r} has data type code 0x{dtype_code:02x}; only unsigned bytes "
            "(0x08) are supported"
        )
    if ndim != expected_ndim:
        raise ValueError(
            f"IDX file {name!r} has bad magic number {raw[:4].hex()}: {ndim} dimension(s), "
            f"expected {expected_ndim} ({'images' if expected_ndim == 3 else 'labels'})"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"IDX file {name!r} is truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n_items = int(np.prod(shape, dtype=np.int64))
    available = len(raw) - header_len
    if available < n_items:
        raise ValueError(
            f"IDX file {name!r} is truncated: header says shape {shape} ({n_items} bytes of data) "
            f"but only {available} bytes follow the header"
        )
    if available > n_items:
        raise ValueError(
            f"IDX file {name!r} has {available - n_items} unexpected trailing bytes after "
            f"shape {shape}"
        )
    # copy() so the array owns writable memory instead of viewing the immutable bytes object
    return (
        np.frombuffer(raw, dtype=np.uint8, count=n_items, offset=header_len).reshape(shape).copy()
    )


def load_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an IDX image file and, optionally, its IDX label file.

    Parameters
    ----------
    images_path:
        IDX file of unsigned bytes with 3 dimensions (N, H, W); gzip or raw.
    labels_path:
        IDX file of unsigned bytes with 1 dimension (N,); gzip or raw. ``None`` for no labels.

    Returns
    -------
    images:
        ``uint8`` array of shape (N, H, W), pixel values 0-255.
    labels:
        ``int64`` array of shape (N,), or ``None`` when ``labels_path`` is ``None``.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        Bad magic number, unsupported data type, wrong number of dimensions, truncated file,
        trailing bytes, or a label count different from the image count; the message names
        the file.
    """
    images = _parse_idx(images_path, expected_ndim=3)
    if labels_path is None:
        return images, None
    labels = _parse_idx(labels_path, expected_ndim=1).astype(np.int64)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"count mismatch: IDX label file {str(labels_path)!r} has {labels.shape[0]} labels "
            f"but image file {str(images_path)!r} has {images.shape[0]} images"
        )
    return images, labels


def mnist_dir() -> Path:
    """Folder of the vendored MNIST files inside the installed ``sqflow`` package."""
    # The package is installed as plain files (no zip import), so the traversable is a real path.
    return Path(str(resources.files("sqflow") / "data" / "mnist"))


def _read_sha256sums(folder: Path) -> dict[str, str]:
    sums_path = folder / "SHA256SUMS"
    if not sums_path.is_file():
        raise FileNotFoundError(f"checksum list {str(sums_path)!r} is missing")
    sums: dict[str, str] = {}
    for line in sums_path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``ValueError`` naming ``path`` when its SHA-256 differs from ``expected`` (hex)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} is missing")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest != expected.lower():
        raise ValueError(
            f"data file {str(p)!r} has been altered: SHA-256 {digest}, expected {expected.lower()}"
        )


def load_mnist(
    split: str = "train", *, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load the vendored MNIST digits.

    Parameters
    ----------
    split:
        ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
    data_dir:
        Folder holding the four ``.gz`` files and ``SHA256SUMS``; default: the copy shipped
        inside the package (see :func:`mnist_dir`).

    Returns
    -------
    images:
        ``uint8`` (N, 28, 28), pixel values 0-255.
    labels:
        ``int64`` (N,), digits 0-9.

    Every file is checked against ``SHA256SUMS`` before it is parsed; a missing or altered file
    raises ``FileNotFoundError`` / ``ValueError`` naming the file.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split={split!r} is not valid; use one of {sorted(MNIST_FILES)}")
    folder = Path(data_dir) if data_dir is not None else mnist_dir()
    images_name, labels_name, expected_n = MNIST_FILES[split]
    sums = _read_sha256sums(folder)
    for fname in (images_name, labels_name):
        if fname not in sums:
            raise ValueError(f"{str(folder / 'SHA256SUMS')!r} has no checksum for {fname!r}")
        verify_sha256(folder / fname, sums[fname])
    images, labels = load_idx(folder / images_name, folder / labels_name)
    assert labels is not None
    if images.shape[0] != expected_n:
        raise ValueError(
            f"MNIST {split} file {str(folder / images_name)!r} has {images.shape[0]} images, "
            f"expected {expected_n}"
        )
    return images, labels
