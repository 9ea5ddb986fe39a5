"""Retraining on unlabeled nights (issue 13): a drift night whose batch has no label retrains on
the registry's labeled pool plus the batch, and the promotion gate decides on held-out rows;
refused and promoted outcomes both land in run.json and the BI ``runs`` table. Plus the gate's
label-free criterion on its own."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from sqflow.layout import current_version, version_rows
from sqflow.pipeline.monitor import normalised_objective, promotion_gate


def test_normalised_objective_ignores_scale_and_prefers_clustered_data():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, size=(200, 3)) for c in np.eye(3) * 5])
    noise = rng.normal(size=(600, 3))
    a = normalised_objective(blobs, 3, 2.0, 0)
    assert a == pytest.approx(normalised_objective(blobs * 40.0, 3, 2.0, 0), rel=1e-6)
    assert a < 0.05 < normalised_objective(noise, 3, 2.0, 0)
    # without labels the gate uses it: clustered (new) beats noise (old), and not the reverse
    unl = np.full(600, -1)
    g = promotion_gate(noise, blobs, unl, n_clusters=3, rank=2.0, seed=0)
    assert g["criterion"] == "heldout_1_minus_normalised_sq_objective" and g["promote"]
    assert not promotion_gate(blobs, noise, unl, n_clusters=3, rank=2.0, seed=0)["promote"]
    # with enough labels it is the held-out kNN accuracy
    y = np.repeat([0, 1, 2], 200)
    g = promotion_gate(noise, blobs, y, n_clusters=3, rank=2.0, seed=0)
    assert g["criterion"] == "heldout_knn5_accuracy" and g["new"] == 1.0 and g["promote"]


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Encoder v0001 trained on 1,000 labeled MNIST training images (1 epoch) with a reference of
    600 others; two unlabeled batches of 600 test images rotated by 90 degrees."""
    import torch
    from scipy import ndimage

    from flows.settings import flow_settings
    from sqflow.datasets import load_mnist
    from sqflow.pipeline.encoder import train_encoder_stage

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nights")
    xt, _ = load_mnist("test")
    for i, name in enumerate(("night1", "night2")):
        rot = ndimage.rotate(xt[i * 600 : (i + 1) * 600], 90, axes=(1, 2), reshape=False, order=1)
        np.save(root / f"{name}.npy", rot.astype(np.uint8))  # no labels file: unlabeled
    common = {
        "output_dir": str(root / "out"),
        "encoder_epochs": 1,
        "encoder_train_rows": 1000,
        "encoder_batch_size": 200,
        "reference_rows": 600,
        "n_clusters": 10,
        "max_iter": 3,
        "seed": 0,
        "device": "cpu",
        "store_chunk_rows": 512,
        "train_if_missing": False,
    }
    cfg = flow_settings({**common, "source": {"kind": "mnist", "split": "train"}})
    assert train_encoder_stage(cfg)["version"] == "triplet-v0001"
    return root, common


def test_unlabeled_drift_nights_refused_then_promoted_in_runs(prefect_harness, nights):
    from flows.nightly import nightly

    root, common = nights
    out = Path(common["output_dir"])
    recs = []
    # night 1: a gate no version can pass (gain +1) -> refused; night 2: any version passes
    for name, gain in (("night1", 1.0), ("night2", -1.0)):
        src = {"kind": "npy", "path": str(root / f"{name}.npy")}
        rec = nightly(config={**common, "source": src, "retrain_min_gain": gain})
        assert rec["status"] == "completed", rec.get("error")
        assert rec["monitor"]["status"] == "drift", rec["monitor"].get("reasons")
        recs.append(rec)
    r1, r2 = recs
    assert (r1["retrain_outcome"], r1["new_encoder_version"]) == ("refused", "triplet-v0002")
    assert r1["encoder_version"] == "triplet-v0001"  # refused: the night stays on v0001
    assert (r2["retrain_outcome"], r2["new_encoder_version"]) == ("promoted", "triplet-v0003")
    # the night is clustered with the encoder it started with; the promoted one is current next
    assert r2["encoder_version"] == "triplet-v0001"
    assert current_version(out / "models") == "triplet-v0003"
    # the gate compared on held-out labeled rows (v0001's reference, never trained on)
    gate = r2["monitor"]["retrain"]["gate"]
    assert gate["criterion"] == "heldout_knn5_accuracy" and gate["n_rows"] == 600
    # both outcomes at a glance in the BI runs table (DuckDB)
    con = duckdb.connect(str(out / "sqflow.duckdb"), read_only=True)
    try:
        runs = con.execute(
            "SELECT run_id, retrain_outcome, new_encoder_version, encoder_version "
            "FROM runs ORDER BY started_at"
        ).fetchdf()
    finally:
        con.close()
    # without a retrain deployment the retrain runs in process after publish: the BI row says
    # it was requested; run.json (and models/lineage.jsonl) hold the outcome
    assert runs["retrain_outcome"].tolist() == ["requested", "requested"]
    assert runs["encoder_version"].tolist() == ["triplet-v0001", "triplet-v0001"]
    for r, outcome in ((r1, "refused"), (r2, "promoted")):
        saved = json.loads((out / "runs" / r["run_id"] / "run.json").read_text())
        assert saved["retrain_outcome"] == outcome
    # v0003 learnt from the labeled pool v0001 knew plus the unlabeled batch of night 2
    meta = json.loads((out / "models" / "triplet-v0003" / "model.json").read_text())
    assert meta["mode"] == "semi-supervised" and meta["n_labeled"] > 0
    batch = set(pd.read_parquet(out / "runs" / r2["run_id"] / "manifest.parquet")["sample_id"])
    rows = version_rows(out / "models", "triplet-v0003")
    train = rows[rows["role"] == "train"]
    assert batch <= set(train["sample_id"])
    assert (train.loc[train["sample_id"].isin(batch), "label"] == -1).all()
    pool = version_rows(out / "models", "triplet-v0001")
    assert set(train.loc[train["label"] >= 0, "sample_id"]) == set(
        pool.loc[(pool["role"] == "train") & (pool["label"] >= 0), "sample_id"]
    )
    # the new reference holds no row of the batch: the drift check after the retrain compares
    # the batch with other data (MMD^2 > 0), never with itself
    ref = set(rows.loc[rows["role"] == "reference", "sample_id"])
    assert ref and not ref & batch and not ref & set(train["sample_id"])
    last = json.loads((out / "models" / "lineage.jsonl").read_text().splitlines()[-1])
    mmd = next(s for s in last["after"]["statistics"] if s["statistic"] == "mmd")
    assert mmd["value"] > 0.0 and mmd["p_value"] < 1.0
