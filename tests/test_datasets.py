"""IDX reader and vendored MNIST: shapes, published counts, and every refusal path."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from sqflow.datasets import MNIST_FILES, load_idx, load_mnist, mnist_dir

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def idx_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    ip, lp = tmp_path / "img.idx", tmp_path / "lab.idx"
    ip.write_bytes(_idx_bytes(images))
    lp.write_bytes(_idx_bytes(labels))
    return ip, lp, images, labels


@pytest.mark.parametrize("split,counts", [("train", TRAIN_COUNTS), ("test", TEST_COUNTS)])
def test_load_mnist_matches_published_counts(split: str, counts: list[int]) -> None:
    images, labels = load_mnist(split)
    assert images.shape == (sum(counts), 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == counts
    assert images.max() == 255 and images.min() == 0


def test_load_idx_raw_and_gzip_agree(idx_pair, tmp_path: Path) -> None:
    ip, lp, images, labels = idx_pair
    x, y = load_idx(ip, lp)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    assert y.dtype == np.int64
    gz = tmp_path / "img.idx.gz"
    gz.write_bytes(gzip.compress(ip.read_bytes()))
    xg, none = load_idx(gz)
    np.testing.assert_array_equal(xg, images)
    assert none is None


def test_bad_magic_number_names_file(idx_pair) -> None:
    ip, lp, *_ = idx_pair
    raw = bytearray(ip.read_bytes())
    raw[0] = 0x12
    ip.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"img\.idx.*magic"):
        load_idx(ip, lp)


def test_labels_file_passed_as_images_is_refused(idx_pair) -> None:
    _, lp, *_ = idx_pair
    with pytest.raises(ValueError, match=r"lab\.idx.*1 dimension"):
        load_idx(lp)


def test_truncated_file(idx_pair) -> None:
    ip, lp, *_ = idx_pair
    ip.write_bytes(ip.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"img\.idx.*truncated"):
        load_idx(ip, lp)


def test_truncated_gzip(idx_pair, tmp_path: Path) -> None:
    ip, *_ = idx_pair
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(ip.read_bytes())[:-10])
    with pytest.raises(ValueError, match=r"cut\.gz.*truncated"):
        load_idx(gz)


def test_count_mismatch(idx_pair, tmp_path: Path) -> None:
    ip, _, _, labels = idx_pair
    lp = tmp_path / "short.idx"
    lp.write_bytes(_idx_bytes(labels[:5]))
    with pytest.raises(ValueError, match=r"count mismatch.*short\.idx.*5 labels.*7 images"):
        load_idx(ip, lp)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        load_idx(tmp_path / "nope.idx")


@pytest.fixture
def mnist_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "mnist"
    dst.mkdir()
    for name in (*MNIST_FILES["test"][:2], "SHA256SUMS"):
        shutil.copy(mnist_dir() / name, dst / name)
    return dst


def test_altered_mnist_file_refused(mnist_copy: Path) -> None:
    target = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*altered"):
        load_mnist("test", data_dir=mnist_copy)


def test_missing_mnist_file_refused(mnist_copy: Path) -> None:
    (mnist_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*missing"):
        load_mnist("test", data_dir=mnist_copy)


def test_copy_loads_and_bad_split_is_named(mnist_copy: Path) -> None:
    images, labels = load_mnist("test", data_dir=mnist_copy)
    assert images.shape == (10_000, 28, 28)
    with pytest.raises(ValueError, match="split='validation'.*'test'.*'train'"):
        load_mnist("validation")
