"""Sources and sampling: every bad item ends in quarantine with its reason, a missing or empty
source fails clearly, and the sample modes pick what they promise (real files, no mocks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_contracts.manifest import SampleSpec, SourceSpec, check_manifest
from sqflow.sources import SourceError, manifest_hash, open_source, select


def _png(path, arr, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(6):
        _png(root / "line1" / f"ok{i}.png", rng.integers(0, 256, (28, 28)))
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "ok_jpeg.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _png(root / "small.png", rng.integers(0, 256, (20, 20)))
    _png(root / "colour.png", rng.integers(0, 256, (28, 28, 3)), mode="RGB")
    _png(root / "line1" / "ok0.jpeg", rng.integers(0, 256, (28, 28)))  # duplicate id line1/ok0
    _png(root / "badlabel.png", rng.integers(0, 256, (28, 28)))
    (root / "notes.txt").write_text("not an image, ignored")
    labels = tmp_path / "labels.csv"
    labels.write_text("sample_id,label\nline1/ok0,3\nline1/ok1,4\nbadlabel,seven\nghost,1\n")
    return root, labels


def test_image_folder_quarantines_each_bad_item_with_its_reason(image_folder):
    root, labels = image_folder
    src = open_source(SourceSpec(kind="image_folder", path=str(root), labels_path=str(labels)))
    res = src.scan()
    reasons = dict(res.rejected)
    assert set(reasons) == {
        "broken.png",
        "small.png",
        "colour.png",
        "line1/ok0.png",
        "badlabel.png",
    }
    assert reasons["broken.png"].startswith("cannot decode image")
    assert "unexpected size" in reasons["small.png"] and "(20, 20)" in reasons["small.png"]
    assert "unexpected channels" in reasons["colour.png"]
    assert "duplicate sample id 'line1/ok0'" in reasons["line1/ok0.png"]
    assert "'seven'" in reasons["badlabel.png"]
    assert res.n_scanned == 12 and len(res.items) == 7 and res.item_shape == (28, 28)
    check_manifest(res.items)
    lab = dict(zip(res.items["sample_id"], res.items["label"]))
    assert lab["line1/ok0"] == 3 and lab["line1/ok1"] == 4 and lab["ok_jpeg"] == -1
    x = src.load(res.items["source_ref"].tolist()[:3])
    assert x.shape == (3, 28, 28) and x.dtype == np.uint8
    direct = np.asarray(Image.open(root / res.items["source_ref"].iloc[1]))
    np.testing.assert_array_equal(x[1], direct)


def test_missing_and_empty_sources_fail_clearly(tmp_path):
    with pytest.raises(SourceError, match="does not exist") as e:
        open_source(SourceSpec(kind="image_folder", path=str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(SourceError, match="NPY file .* does not exist"):
        open_source({"kind": "npy", "path": str(tmp_path / "x.npy")}).scan()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    (bad / "b.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match="no readable item .*2 quarantined.*cannot decode"):
        open_source(SourceSpec(kind="image_folder", path=str(bad))).scan()
    with pytest.raises(ValueError, match="needs a path"):
        SourceSpec(kind="parquet")


def test_npy_npz_parquet_vectors(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    x[3, 2] = np.nan
    x[7, 0] = np.inf
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "y.npy", np.arange(50) % 3)
    src = open_source(
        SourceSpec(kind="npy", path=str(tmp_path / "v.npy"), labels_path=str(tmp_path / "y.npy"))
    )
    res = src.scan()
    assert dict(res.rejected) == {
        "v.npy#3": "value is NaN or infinite",
        "v.npy#7": "value is NaN or infinite",
    }
    assert len(res.items) == 48 and res.items["label"].tolist()[:3] == [0, 1, 2]
    np.testing.assert_array_equal(src.load(["v.npy#10", "v.npy#4"]), x[[10, 4]])

    ids = np.array([f"s{i}" for i in range(50)])
    ids[9] = "s8"
    np.savez(tmp_path / "v.npz", x=np.nan_to_num(x, posinf=0), ids=ids)
    res = open_source(SourceSpec(kind="npz", path=str(tmp_path / "v.npz"))).scan()
    assert dict(res.rejected) == {"v.npz#9": "duplicate sample id 's8'"}
    assert (res.items["label"] == -1).all()

    df = pd.DataFrame(np.nan_to_num(x, nan=0, posinf=0), columns=[f"f{i}" for i in range(8)])
    df.loc[5, "f1"] = np.inf
    df["label"] = [1.0] * 49 + [2.5]
    df["sample_id"] = [f"row{i}" for i in range(50)]
    df.to_parquet(tmp_path / "v.parquet")
    res = open_source(SourceSpec(kind="parquet", path=str(tmp_path / "v.parquet"))).scan()
    assert dict(res.rejected) == {
        "v.parquet#5": "value is NaN or infinite",
        "v.parquet#49": "label not an integer: 2.5; valid: -1 (unlabeled) or an integer "
        "0..9223372036854775807",
    }
    assert res.item_shape == (8,) and res.items["sample_id"].iloc[0] == "row0"

    np.save(tmp_path / "w.npy", np.arange(4.0))
    with pytest.raises(SourceError, match=r"shape \(4,\); expected \(N, ...\)"):
        open_source(SourceSpec(kind="npy", path=str(tmp_path / "w.npy"))).scan()


def test_mnist_source_and_sample_modes():
    src = open_source(SourceSpec(kind="mnist", split="test"))
    res = src.scan()
    assert len(res.items) == 10000 and not res.rejected and res.item_shape == (28, 28)
    assert res.items["sample_id"].iloc[42] == "mnist-test-00042"
    from sqflow.datasets import load_mnist

    images, labels = load_mnist("test")
    np.testing.assert_array_equal(src.load(["mnist:test#5", "mnist:test#2"]), images[[5, 2]])
    assert res.items["label"].tolist() == labels.tolist()

    items = res.items
    u = select(items, SampleSpec(mode="uniform", n=500, seed=3))
    assert len(u) == 500 and u["sample_id"].is_unique
    assert manifest_hash(u) == manifest_hash(
        select(items, SampleSpec(mode="uniform", n=500, seed=3))
    )
    s = select(items, SampleSpec(mode="stratified", n=1000))
    share = s["label"].value_counts(normalize=True).sort_index()
    full = items["label"].value_counts(normalize=True).sort_index()
    assert len(s) == 1000 and np.abs(share - full).max() < 0.002
    inc = select(items, SampleSpec(mode="incremental", n=300), seen_ids=set(u["sample_id"]))
    assert len(inc) == 300 and not set(inc["sample_id"]) & set(u["sample_id"])
    with pytest.raises(ValueError, match="needs n"):
        SampleSpec(mode="uniform")


def test_idx_source_and_unreadable_idx(tmp_path):
    from sqflow.datasets import mnist_dir

    d = mnist_dir()
    src = open_source(
        SourceSpec(
            kind="idx",
            path=str(d / "t10k-images-idx3-ubyte.gz"),
            labels_path=str(d / "t10k-labels-idx1-ubyte.gz"),
        )
    )
    res = src.scan()
    assert (
        len(res.items) == 10000
        and res.items["sample_id"].iloc[7] == "t10k-images-idx3-ubyte-000007"
    )
    assert res.items["label"].between(0, 9).all()
    bad = tmp_path / "cut.idx"
    bad.write_bytes(
        b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 100
    )
    with pytest.raises(SourceError, match="IDX source unreadable.*cut.idx"):
        open_source(SourceSpec(kind="idx", path=str(bad))).scan()


def test_manifest_json_schemas_are_current():
    from data_contracts.manifest import export_schemas

    assert export_schemas(check=True) == [], "run `sqflow schemas`"
