"""Issue 13 on real runs: the nightly flow on sources without labels (an MNIST image folder, a
Parquet of numeric features) and half labeled, through to DuckDB under the Prefect test harness,
with honest figures (report hold-out and reference set disjoint from the encoder's training
rows, checked on sample ids). Tiny encoders (1 epoch, a few hundred rows) keep each test short.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sqflow.layout import current_version, version_rows

N_ITEMS = 600


def _config(out, source, **kw):
    return {
        "output_dir": str(out),
        "source": source,
        "train_if_missing": True,
        "encoder_epochs": 1,
        "encoder_train_rows": 300,
        "encoder_batch_size": 100,
        "reference_rows": 200,
        "n_clusters": 5,
        "max_iter": 3,
        "store_chunk_rows": 256,
        "device": "cpu",
        **kw,
    }


@pytest.fixture(scope="module")
def mnist_test():
    from sqflow.datasets import load_mnist

    x, y = load_mnist("test")
    return x[:N_ITEMS], y[:N_ITEMS].astype(np.int64)


def _png_folder(root: Path, images: np.ndarray) -> Path:
    root.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"img{i:04d}.png")
    return root


def _duck(out, sql):
    con = duckdb.connect(str(Path(out) / "sqflow.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchdf()
    finally:
        con.close()


def _check_version_rows(models: Path, version: str) -> pd.DataFrame:
    rows = version_rows(models, version)
    train = set(rows.loc[rows["role"] == "train", "sample_id"])
    ref = set(rows.loc[rows["role"] == "reference", "sample_id"])
    assert train and ref and not train & ref  # the reference is never trained on
    from sqflow.store import open_store

    stored = {
        str(s)
        for s in open_store(models / "reference" / version / "embeddings.zarr")
        .read_sample_ids()
        .tolist()
    }
    assert stored == ref  # the embedded reference set is exactly the recorded one
    return rows


def _assert_label_free_outputs(out: Path, rec: dict) -> None:
    run_id = rec["run_id"]
    models = out / "models"
    version = current_version(models)
    meta = json.loads((models / version / "model.json").read_text())
    assert meta["mode"] == "label-free" and meta["n_labeled"] == 0
    assert meta["selfsup"]["objective"] == "nt-xent"
    _check_version_rows(models, version)
    # no label anywhere: null, never a stand-in number
    centers = _duck(out, f"SELECT * FROM cluster_centers WHERE run_id = '{run_id}'")
    assert len(centers) == 5
    assert centers["majority_label"].isna().all() and centers["label_purity"].isna().all()
    report = _duck(out, f"SELECT * FROM cluster_report WHERE run_id = '{run_id}'")
    assert report["purity"].isna().all() and report["knn_accuracy"].isna().all()
    runs = _duck(out, f"SELECT * FROM runs WHERE run_id = '{run_id}'")
    assert runs["retrain_outcome"].tolist() == ["none"]
    assert runs["new_encoder_version"].isna().all()
    saved = json.loads((out / "runs" / run_id / "run.json").read_text())
    assert saved["retrain_outcome"] == "none"
    assert saved["report"]["quality"]["knn_accuracy"] is None
    html = Path(rec["report"]["html"]).read_text()
    assert "No labels in this run" in html
    assert "no labels in this run, so no embedding-quality figure" in html
    held = pd.read_parquet(Path(rec["report"]["html"]).parent / "heldout.parquet")
    assert len(held) == 0


def test_label_free_nightly_on_an_image_folder(prefect_harness, mnist_test, tmp_path):
    from flows.nightly import nightly

    src = {"kind": "image_folder", "path": str(_png_folder(tmp_path / "imgs", mnist_test[0]))}
    out = tmp_path / "out"
    rec = nightly(config=_config(out, src))
    assert rec["status"] == "completed", rec.get("error")
    assert rec["train"]["mode"] == "label-free"
    assert rec["sample"]["n_selected"] == N_ITEMS
    _assert_label_free_outputs(out, rec)


def test_label_free_nightly_on_parquet_features(prefect_harness, mnist_test, tmp_path):
    """A Parquet of numeric features without a label column: 7 x 7 mean-pooled MNIST pixels."""
    from flows.nightly import nightly

    x = mnist_test[0].reshape(N_ITEMS, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(N_ITEMS, 49)
    df = pd.DataFrame(x.astype(np.float32), columns=[f"f{j:02d}" for j in range(49)])
    df.insert(0, "sample_id", [f"row{i:04d}" for i in range(N_ITEMS)])
    df.to_parquet(tmp_path / "features.parquet", index=False)
    out = tmp_path / "out"
    rec = nightly(
        config=_config(out, {"kind": "parquet", "path": str(tmp_path / "features.parquet")})
    )
    assert rec["status"] == "completed", rec.get("error")
    assert rec["train"]["mode"] == "label-free"
    _assert_label_free_outputs(out, rec)


def _features_parquet(tmp_path: Path, images: np.ndarray) -> Path:
    x = images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), 49)
    df = pd.DataFrame(x.astype(np.float32), columns=[f"f{j:02d}" for j in range(49)])
    df.insert(0, "sample_id", [f"row{i:04d}" for i in range(len(images))])
    path = tmp_path / "features.parquet"
    df.to_parquet(path, index=False)
    return path


def _rows(y: np.ndarray) -> np.ndarray:
    """Distinct feature rows, one per label of ``y``."""
    return np.arange(4 * len(y), dtype=float).reshape(len(y), 4)


def _auto_rule(settings, y: np.ndarray) -> dict:
    """The encoder's self-training arguments for labels ``y`` on distinct rows."""
    from sqflow.pipeline.encoder import _self_training

    return _self_training(settings, _rows(y), y)


def test_label_free_nightly_with_self_training(prefect_harness, mnist_test, tmp_path):
    """encoder_self_training without labels: pseudo-labels over n_clusters pseudo-classes from
    epoch 1 of 2, recorded in the registry; with n_clusters = 'auto' it is a clear error."""
    from flows.nightly import nightly

    src = {"kind": "parquet", "path": str(_features_parquet(tmp_path, mnist_test[0]))}
    out = tmp_path / "out"
    rec = nightly(config=_config(out, src, encoder_self_training=True, encoder_epochs=2))
    assert rec["status"] == "completed", rec.get("error")
    models = out / "models"
    meta = json.loads((models / current_version(models) / "model.json").read_text())
    assert meta["mode"] == "label-free"
    pl = meta["pseudo_labels"]
    assert pl["n_clusters"] == 5 and pl["start_epoch"] == 1 and pl["source"] == "manifold"
    # the teacher labelled the training rows after epoch 1 (MLP features of the Parquet rows)
    assert pl["teacher_result"]["components"] == 5
    assert pl["teacher_result"]["n_pseudo_labeled"] > 0
    assert meta["selfsup"]["space"] == "hidden"
    _assert_label_free_outputs(out, rec)

    from data_contracts.settings import PipelineSettings
    from sqflow.pipeline.encoder import _self_training

    auto = PipelineSettings(**_config(out, src, encoder_self_training=True, n_clusters="auto"))
    with pytest.raises(ValueError, match="integer n_clusters"):
        _auto_rule(auto, np.full(10, -1))
    labeled = np.arange(10) % 2
    assert _auto_rule(auto, labeled) == {}  # every row labeled: nothing to pseudo-label
    # the default, 'auto': on for label-free rows with a fixed K, off with labels or K='auto'
    default = PipelineSettings(**_config(out, src, encoder_epochs=2))
    assert default.encoder_self_training == "auto"
    on = _auto_rule(default, np.full(300, -1))
    assert on["pseudo_labels"]["source"] == "manifold" and on["pseudo_labels"]["n_clusters"] == 5
    assert _auto_rule(default, np.array([0, 1, -1, -1])) == {}
    k_auto = PipelineSettings(**_config(out, src, n_clusters="auto", encoder_epochs=2))
    assert _auto_rule(k_auto, np.full(300, -1)) == {}
    # 'auto' stays off where the teacher could not work, rather than failing the night:
    # one epoch leaves none to train on pseudo-labels; 15 rows are below UMAP's 15 neighbours
    one_epoch = PipelineSettings(**_config(out, src))
    assert one_epoch.encoder_epochs == 1 and _auto_rule(one_epoch, np.full(300, -1)) == {}
    assert _auto_rule(default, np.full(15, -1)) == {}
    assert _auto_rule(default, np.full(16, -1)) != {}
    # ... and 300 rows of which only 15 are distinct (a stuck camera) are 15 rows to UMAP
    stuck = np.concatenate([_rows(np.full(14, -1)), np.zeros((286, 4))])
    assert _self_training(default, stuck, np.full(300, -1)) == {}


def test_nightly_with_k_chosen_from_the_data(prefect_harness, mnist_test, tmp_path):
    """``n_clusters = "auto"`` end to end, two nights: every stage reads the K the cluster
    stage chose, the run record and the BI ``runs`` table carry it, the report shows the
    choice, and the monitor decides on drift with a K of its own."""
    from flows.nightly import nightly

    src = {"kind": "parquet", "path": str(_features_parquet(tmp_path, mnist_test[0]))}
    out = tmp_path / "out"
    for night in range(2):
        rec = nightly(config=_config(out, src, n_clusters="auto", k_range=[3, 8]))
        assert rec["status"] == "completed", (night, rec.get("error"))
        k = rec["n_clusters"]
        assert isinstance(k, int) and 3 <= k <= 8
        assert rec["cluster"]["k_selection"]["n_clusters"] == k
        assert len(rec["cluster"]["clusters"]) == k
        html = Path(rec["report"]["html"]).read_text()
        assert f'data-field="k_selected">{k}<' in html
        assert 'alt="choice of the number of clusters"' in html
    # the nightly's monitor ran without error; its 200-row reference is below the default
    # policy's minimum, so it made no decision. With minimums that fit this small set the
    # monitor decides on the same run, with reference centers of a K it chose itself
    mon = rec["monitor"]
    assert "error" not in mon and mon["status"] == "insufficient_data", mon
    from flows.settings import flow_settings
    from sqflow.pipeline.monitor import monitor_stage

    cfg = _config(out, src, n_clusters="auto", k_range=[3, 8])
    small = {"min_batch_rows": 50, "min_reference_rows": 50}
    decided = monitor_stage(flow_settings(cfg), rec["run_id"], policy=small)
    assert decided["status"] in ("drift", "no_drift") and decided["statistics"], decided
    runs = _duck(out, "select run_id, n_clusters from runs order by run_id")
    assert len(runs) == 2 and runs["n_clusters"].iloc[-1] == k


def test_half_labeled_nightly_reports_on_held_out_rows_only(prefect_harness, mnist_test, tmp_path):
    """Half of the images carry a label. The encoder learns from labeled and unlabeled rows
    (semi-supervised); the report's figures use labeled items the encoder neither trained nor
    validated on, and the reference set is disjoint from the training rows."""
    from flows.nightly import nightly

    images, labels = mnist_test
    root = _png_folder(tmp_path / "imgs", images)
    lines = ["sample_id,label"] + [f"img{i:04d},{labels[i]}" for i in range(0, N_ITEMS, 2)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    src = {"kind": "image_folder", "path": str(root), "labels_path": str(tmp_path / "labels.csv")}
    out = tmp_path / "out"
    rec = nightly(config=_config(out, src))
    assert rec["status"] == "completed", rec.get("error")
    models = out / "models"
    version = current_version(models)
    meta = json.loads((models / version / "model.json").read_text())
    assert meta["mode"] == "semi-supervised" and 0 < meta["n_labeled"] < meta["n_train"]
    rows = _check_version_rows(models, version)
    trained = set(rows.loc[rows["role"] == "train", "sample_id"])
    held = set(pd.read_parquet(Path(rec["report"]["html"]).parent / "heldout.parquet")["sample_id"])
    labeled_ids = {f"img{i:04d}" for i in range(0, N_ITEMS, 2)}
    # the hold-out: every labeled item of the run that the encoder did not train on, no other
    assert held == labeled_ids - trained and len(held) >= 50
    assert not held & trained
    q = rec["report"]["quality"]
    assert q["n_heldout"] == len(held) and 0.0 <= q["knn_accuracy"] <= 1.0
    # with labels, purity is a number; the runs table says no retrain happened
    centers = _duck(out, f"SELECT * FROM cluster_centers WHERE run_id = '{rec['run_id']}'")
    assert centers["label_purity"].notna().any()
    html = Path(rec["report"]["html"]).read_text()
    assert "No labels in this run" not in html
    assert "never saw in training or validation" in html


def test_sqflow_demo_without_labels(prefect_harness, tmp_path, capsys):
    """``sqflow demo --no-labels``: the built-in MNIST with every label dropped, end to end."""
    from flows.cli import main

    out = tmp_path / "demo"
    argv = ["demo", "--no-labels", "--output", str(out), "--sample-n", "600", "--epochs", "1"]
    assert main([*argv, "--train-rows", "300", "--n-clusters", "5"]) == 0
    text = capsys.readouterr().out
    assert "every label dropped" in text and "(0 labeled)" in text
    assert "no labels in this run: no majority label, purity or accuracy" in text
    meta = json.loads((out / "models" / "triplet-v0001" / "model.json").read_text())
    assert meta["mode"] == "label-free" and meta["n_train"] == 300
    assert meta["n_reference"] == 10000  # reference drawn first, disjoint from training
    _check_version_rows(out / "models", "triplet-v0001")
