"""Sources and sampling: every bad item ends in quarantine with its reason, a missing or empty
source fails clearly, and the sample modes pick what they promise (real files, no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_contracts.manifest import SampleSpec, SourceSpec, check_manifest
from sqflow.sources import SourceError, manifest_hash, open_source, parse_labels, select


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


# ---------------------------------------------------------------------------- per-item faults
_RANGE = "valid: -1 (unlabeled) or an integer 0..9223372036854775807"


@pytest.fixture
def bad_item_folder(tmp_path):
    """60 MNIST digits as PNG files (labels CSV) plus one of every bad item of issue 14."""
    from sqflow.datasets import load_mnist

    images, labels = load_mnist("test")
    root = tmp_path / "inspection"
    root.mkdir()
    rows = ["sample_id,label"]
    for i in range(60):
        Image.fromarray(images[i]).save(root / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{labels[i]}")
    rows[2:6] = [  # img001..img004: labels that do not fit int64 or are not integers
        "img001,99999999999999999999",
        "img002,1e30",
        "img003,-3",
        "img004,seven",
    ]
    # a file name that is not UTF-8 (Linux allows any bytes but / and NUL)
    Path(os.fsdecode(os.fsencode(root) + b"/bad\xffname.png")).write_bytes(
        (root / "img010.png").read_bytes()
    )
    os.mkfifo(root / "fifo.png")  # reading it would block the night
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "folder.png").mkdir()
    Image.fromarray(images[99]).save(tmp_path / "secret.png")  # outside the source
    (root / "outside.png").symlink_to(tmp_path / "secret.png")
    (root / "sub").mkdir()
    (root / "sub" / "inner.png").symlink_to(root / "img020.png")  # inside: an ordinary item
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(images[98]).save(tmp_path / "elsewhere" / "far.png")
    (root / "linkdir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"kind": "image_folder", "path": str(root), "labels_path": str(tmp_path / "labels.csv")}


#: sample_ref -> start of its quarantine reason, for ``bad_item_folder``
BAD_ITEMS = {
    "bad\\xffname.png": "file name is not valid UTF-8",
    "fifo.png": "not a regular file: a FIFO (named pipe)",
    "dangling.png": "dangling symlink: its target",
    "folder.png": "not a regular file: a folder named like an image",
    "outside.png": "symlink leaves the image folder: it points to",
    "img001.png": f"label out of range: '99999999999999999999'; {_RANGE} (labels CSV)",
    "img002.png": f"label out of range: '1e30'; {_RANGE} (labels CSV)",
    "img003.png": f"label out of range: '-3'; {_RANGE} (labels CSV)",
    "img004.png": f"label not an integer: 'seven'; {_RANGE} (labels CSV)",
}


def _check_bad_items(quarantine: pd.DataFrame) -> None:
    q = dict(zip(quarantine["sample_ref"], quarantine["reason"]))
    assert set(q) == set(BAD_ITEMS), q
    for ref, start in BAD_ITEMS.items():
        assert q[ref].startswith(start), (ref, q[ref])
    assert "secret.png" in q["outside.png"]


def test_every_bad_item_is_quarantined_by_the_sample_stage(tmp_path, bad_item_folder):
    import json

    from data_contracts.settings import PipelineSettings
    from sqflow.pipeline.sample import sample_stage

    settings = PipelineSettings(output_dir=tmp_path / "out", source=bad_item_folder)
    res = sample_stage(settings, "run-1")
    rd = tmp_path / "out" / "runs" / "run-1"
    _check_bad_items(pd.read_parquet(rd / "quarantine.parquet"))
    manifest = pd.read_parquet(rd / "manifest.parquet")
    check_manifest(manifest)
    # 60 digits - 4 bad labels + sub/inner; nothing from the symlinked folder
    assert len(manifest) == 57 and res["n_quarantined"] == len(BAD_ITEMS)
    assert "sub/inner" in set(manifest["sample_id"])
    assert not manifest["source_ref"].str.contains("far|secret|linkdir").any()
    assert res["top_quarantine_reasons"]["label out of range"] == 3
    assert json.loads((rd / "manifest.json").read_text())["warnings"] == []


def test_array_sources_quarantine_bad_labels_and_text_cells(tmp_path):
    from data_contracts.settings import PipelineSettings
    from sqflow.pipeline.sample import sample_stage

    x = np.random.default_rng(2).random((20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    y[2] = -3  # passed the scan and failed the run at the manifest check before
    np.savez(tmp_path / "v.npz", x=x, y=y)
    settings = PipelineSettings(
        output_dir=tmp_path / "out", source={"kind": "npz", "path": str(tmp_path / "v.npz")}
    )
    sample_stage(settings, "r1")
    q = pd.read_parquet(tmp_path / "out" / "runs" / "r1" / "quarantine.parquet")
    assert q[["sample_ref", "reason"]].values.tolist() == [
        ["v.npz#2", f"label out of range: -3; {_RANGE}"]
    ]
    # float labels: NaN is unlabeled, 1e30 / 2.5 / -3.0 are refused; uint64 beyond int64 too
    yf = np.where(np.arange(20) % 2 == 0, 1.0, np.nan)
    yf[[3, 5, 7]] = [1e30, 2.5, -3.0]
    np.savez(tmp_path / "f.npz", x=x, y=yf)
    res = open_source(SourceSpec(kind="npz", path=str(tmp_path / "f.npz"))).scan()
    assert dict(res.rejected) == {
        "f.npz#3": f"label out of range: 1e+30; {_RANGE}",
        "f.npz#5": f"label not an integer: 2.5; {_RANGE}",
        "f.npz#7": f"label out of range: -3.0; {_RANGE}",
    }
    assert (res.items["label"] == -1).sum() == 7
    nullable = pd.array([3, None, -3], dtype="Int64").to_numpy(
        dtype=object
    )  # pd.NA for the missing cell
    assert parse_labels(nullable)[0].tolist() == [3, -1, -1]
    assert parse_labels(nullable)[1] == {2: f"label out of range: -3; {_RANGE}"}
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "u.npy", np.full(20, 2**64 - 1, dtype=np.uint64))
    res = open_source(
        SourceSpec(kind="npy", path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "u.npy"))
    )
    with pytest.raises(SourceError, match="no readable item.*label out of range"):
        res.scan()

    # Parquet: a text cell in a numeric column quarantines its row; a text column is left out
    df = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    df["f3"] = [f"{v:.3f}" for v in x[:, 3]]
    df.loc[4, "f3"] = "abc"
    df["comment"] = [f"note {i}" for i in range(20)]
    df["label"] = [str(i % 3) for i in range(20)]
    df.loc[6, "label"] = "99999999999999999999"
    df.loc[8, "label"] = "seven"
    df.to_parquet(tmp_path / "t.parquet")
    settings = PipelineSettings(
        output_dir=tmp_path / "out", source={"kind": "parquet", "path": str(tmp_path / "t.parquet")}
    )
    res = sample_stage(settings, "r2")
    q = pd.read_parquet(tmp_path / "out" / "runs" / "r2" / "quarantine.parquet")
    assert dict(zip(q["sample_ref"], q["reason"])) == {
        "t.parquet#4": "feature not a number: column 'f3' holds 'abc'",
        "t.parquet#6": f"label out of range: '99999999999999999999'; {_RANGE}",
        "t.parquet#8": f"label not an integer: 'seven'; {_RANGE}",
    }
    assert res["item_shape"] == [4] and res["n_selected"] == 17
    (warning,) = res["warnings"]
    assert "t.parquet" in warning and "['comment']" in warning and "left out" in warning
    src = open_source(SourceSpec(kind="parquet", path=str(tmp_path / "t.parquet")))
    ok = src.scan().items
    np.testing.assert_allclose(src.load(ok["source_ref"].tolist()[:2]), x[:2], atol=1e-3)


def test_source_level_problems_fail_naming_the_file_or_warn(tmp_path, bad_item_folder):
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"f0": [0.1, 0.2], "comment": ["a", "b"], "klass": [1, 2]}).to_parquet(pq)
    with pytest.raises(SourceError, match=r"t\.parquet.*feature column 'comment' holds text"):
        open_source(
            SourceSpec(kind="parquet", path=str(pq), feature_columns=["f0", "comment"])
        ).scan()
    with pytest.raises(SourceError, match=r"t\.parquet' has no column 'category' \(source\.label_"):
        open_source(SourceSpec(kind="parquet", path=str(pq), label_column="category")).scan()
    with pytest.raises(SourceError, match=r"has no column 'uid' \(source\.id_column\)"):
        open_source(SourceSpec(kind="parquet", path=str(pq), id_column="uid")).scan()
    # the default label column may be absent: the rows are unlabeled, no error
    res = open_source(SourceSpec(kind="parquet", path=str(pq))).scan()
    assert res.items["label"].tolist() == [-1, -1] and res.item_shape == (2,)  # f0, klass
    res = open_source(SourceSpec(kind="parquet", path=str(pq), label_column="klass")).scan()
    assert res.items["label"].tolist() == [1, 2] and res.item_shape == (1,)

    root = bad_item_folder["path"]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("sample_id,label\nimg000,7\nimg005,\u00e9t\u00e9\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"labels CSV '.*latin1\.csv' is not UTF-8 text"):
        open_source(SourceSpec(kind="image_folder", path=root, labels_path=str(latin1))).scan()
    nomatch = tmp_path / "nomatch.csv"
    nomatch.write_text("sample_id,label\nimg000.png,7\nimg005.png,1\n")
    res = open_source(SourceSpec(kind="image_folder", path=root, labels_path=str(nomatch))).scan()
    (warning,) = res.warnings
    assert "nomatch.csv" in warning and "none of its 2 sample ids" in warning
    assert "write them without it" in warning  # the hint: ids carry the file extension
    assert (res.items["label"] == -1).all()
    bom = tmp_path / "bom.csv"  # a spreadsheet's UTF-8 export with a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbfsample_id,label\nimg000,7\n")
    res = open_source(SourceSpec(kind="image_folder", path=root, labels_path=str(bom))).scan()
    assert not res.warnings and dict(zip(res.items["sample_id"], res.items["label"]))["img000"] == 7


def test_items_changed_after_the_scan_are_refused_on_load(tmp_path, bad_item_folder):
    src = open_source(SourceSpec(kind="image_folder", path=bad_item_folder["path"]))
    refs = src.scan().items["source_ref"].tolist()
    root = Path(bad_item_folder["path"])
    (root / refs[0]).unlink()
    (root / refs[0]).symlink_to(tmp_path / "secret.png")
    with pytest.raises(SourceError, match="changed since the scan: symlink leaves the image"):
        src.load(refs[:2])


def test_nightly_run_quarantines_every_bad_item_and_completes(
    prefect_harness, tmp_path, bad_item_folder, monkeypatch
):
    """`sqflow nightly` (the CLI, in process, on the test harness's Prefect server) with a TOML
    file: trains a tiny encoder on the labeled digits, quarantines every bad item, completes."""
    from flows.cli import main
    from sqflow.layout import OutputLayout

    out = tmp_path / "out"
    toml = tmp_path / "sqflow.toml"
    toml.write_text(
        f'output_dir = "{out}"\nmodels_dir = "{tmp_path / "models"}"\n'
        "n_clusters = 3\nmax_iter = 3\nencoder_train_rows = 100\nencoder_epochs = 1\n"
        'reference_rows = 20\nstore_chunk_rows = 64\ndask_workers = 1\ndevice = "cpu"\n'
        "[source]\n" + "".join(f'{k} = "{v}"\n' for k, v in bad_item_folder.items())
    )
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    assert main(["nightly"]) == 0
    (rec,) = OutputLayout.at(out).run_records()
    assert rec.status == "completed", rec.error
    assert rec.sample["n_quarantined"] == len(BAD_ITEMS) and rec.sample["n_selected"] == 57
    published = pd.concat(
        pd.read_parquet(p) for p in sorted((out / "published" / "quarantine").glob("*/*.parquet"))
    )
    _check_bad_items(published)
    assert set(published["run_id"]) == {rec.run_id}
    asg = pd.concat(
        pd.read_parquet(p) for p in sorted((out / "published" / "assignments").glob("*/*.parquet"))
    )
    assert len(asg) == 57


def _vector_source(tmp_path, kind):
    """120 labeled vectors in 3 blobs with bad items; returns (source table, {ref: reason})."""
    rng = np.random.default_rng(5)
    y = np.arange(120) % 3
    x = (rng.normal(size=(120, 8)) + 4 * y[:, None]).astype(np.float32)
    if kind == "npz":
        y[[7, 9]] = [-3, -5]
        np.savez(tmp_path / "v.npz", x=x, y=y)
        return {"kind": "npz", "path": str(tmp_path / "v.npz")}, {
            "v.npz#7": f"label out of range: -3; {_RANGE}",
            "v.npz#9": f"label out of range: -5; {_RANGE}",
        }
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    df["f5"] = [repr(float(v)) for v in x[:, 5]]
    df.loc[11, "f5"] = "n/a"
    df["comment"] = "free text"
    df["label"] = [str(v) for v in y]
    df.loc[[13, 15, 17], "label"] = ["99999999999999999999", "1e30", "-3"]
    df.to_parquet(tmp_path / "v.parquet")
    return {"kind": "parquet", "path": str(tmp_path / "v.parquet")}, {
        "v.parquet#11": "feature not a number: column 'f5' holds 'n/a'",
        "v.parquet#13": f"label out of range: '99999999999999999999'; {_RANGE}",
        "v.parquet#15": f"label out of range: '1e30'; {_RANGE}",
        "v.parquet#17": f"label out of range: '-3'; {_RANGE}",
    }


@pytest.mark.parametrize("kind", ["npz", "parquet"])
def test_nightly_run_on_vectors_quarantines_bad_rows_and_completes(prefect_harness, tmp_path, kind):
    from flows.nightly import nightly
    from sqflow.layout import OutputLayout

    source, expected = _vector_source(tmp_path, kind)
    out = tmp_path / "out"
    rec = nightly(
        config={
            "output_dir": str(out),
            "source": source,
            "n_clusters": 3,
            "max_iter": 3,
            "encoder_train_rows": 100,
            "encoder_epochs": 1,
            "reference_rows": 20,
            "store_chunk_rows": 64,
            "dask_workers": 1,
            "device": "cpu",
        }
    )
    assert rec["status"] == "completed"
    (run,) = OutputLayout.at(out).run_records()
    assert run.status == "completed" and run.sample["item_shape"] == [8]
    q = pd.concat(
        pd.read_parquet(p) for p in sorted((out / "published" / "quarantine").glob("*/*.parquet"))
    )
    assert dict(zip(q["sample_ref"], q["reason"])) == expected
    if kind == "parquet":  # the text column was left out, and the run says so
        assert any("['comment']" in w for w in run.sample["warnings"])
    assert run.sample["n_selected"] == 120 - len(expected)
