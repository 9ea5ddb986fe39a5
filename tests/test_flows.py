"""The nightly flow and its stages on real Prefect (``prefect_test_harness``), a real Dask
LocalCluster, real Zarr stores and the built-in MNIST; no mocks.

One session fixture starts the harness (about 13 s) and trains a tiny encoder registry once.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sqflow.layout import OutputLayout, RunLockedError, output_lock
from sqflow.sources import SourceError


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A registered tiny encoder (1,000 MNIST training images, 1 epoch) shared by the tests."""
    from sqflow.pipeline.encoder import train_encoder_stage

    models = tmp_path_factory.mktemp("models")
    out = tmp_path_factory.mktemp("train-out")
    info = train_encoder_stage(_cfg(out, models_dir=str(models), encoder_augment=True))
    assert info["version"] == "triplet-v0001"
    assert (models / "CURRENT").read_text().strip() == "triplet-v0001"
    record = json.loads((models / "triplet-v0001" / "model.json").read_text())
    assert record["augment"] == {"rotation": 10.0, "shift": 0.08}  # the setting reached training
    return models


def _cfg(out, **kw):
    from flows.settings import flow_settings

    base = {
        "output_dir": str(out),
        "encoder_train_rows": 1000,
        "encoder_epochs": 1,
        "reference_rows": 500,
        "n_clusters": 10,
        "max_iter": 5,
        "store_chunk_rows": 512,
        "dask_workers": 2,
    }
    return flow_settings({**base, **kw})


def _config(out, models, **kw):
    return {
        "output_dir": str(out),
        "models_dir": str(models),
        "n_clusters": 10,
        "max_iter": 5,
        "store_chunk_rows": 512,
        "train_if_missing": False,
        **kw,
    }


def _published(out, table):
    return pd.concat(
        [pd.read_parquet(p) for p in sorted((Path(out) / "published" / table).glob("*/*.parquet"))]
    )


def test_nightly_two_runs_mnist(prefect_harness, registry, tmp_path):
    from prefect.artifacts import Artifact

    from flows.nightly import nightly
    from tasks.artifacts import artifact_key

    out = tmp_path / "out"
    rec = nightly(config=_config(out, registry, sample={"mode": "uniform", "n": 1500}))
    run_id = rec["run_id"]
    assert rec["status"] == "completed" and rec["encoder_version"] == "triplet-v0001"
    rd = out / "runs" / run_id
    saved = json.loads((rd / "run.json").read_text())
    assert saved["status"] == "completed"
    # the monitor ran on this run's store against the encoder's reference and decided
    mon = saved["monitor"]
    assert "error" not in mon and mon["status"] in ("drift", "no_drift") and mon["statistics"]
    assert mon["reference_version"] == "triplet-v0001"
    assert (rd / "drift_report.json").exists()
    # one checkpoint per SQ pass, the last one equals the final centers
    ckpts = sorted((rd / "checkpoints").glob("pass-*.npy"))
    assert len(ckpts) == rec["cluster"]["n_iter"] >= 1
    # every published row carries the run id; assignments cover exactly the manifest
    manifest = pd.read_parquet(rd / "manifest.parquet")
    asg = _published(out, "assignments")
    assert len(asg) == 1500 and set(asg["run_id"]) == {run_id}
    assert sorted(asg["sample_id"]) == sorted(manifest["sample_id"])
    centers = _published(out, "cluster_centers")
    assert set(centers["run_id"]) == {run_id} and centers["size"].sum() == 1500
    sizes = asg.groupby("cluster_id").size()
    for row in centers.itertuples():
        assert sizes.get(row.cluster_id, 0) == row.size
    runs = _published(out, "runs")
    assert runs["run_id"].tolist() == [run_id] and bool(runs["monitor_ran"].iloc[0])
    if mon["drifted"] is None:
        assert runs["drift_detected"].isna().all()
    else:
        assert bool(runs["drift_detected"].iloc[0]) == mon["drifted"]
    # the cluster report: an HTML page, and its rows in the BI tables
    assert Path(rec["report"]["html"]).stat().st_size > 10_000
    assert saved["outputs"]["cluster report"] == rec["report"]["html"]
    report_rows = _published(out, "cluster_report")
    assert set(report_rows["run_id"]) == {run_id}
    assert report_rows["size"].sum() == 1500
    for row in report_rows.itertuples():
        assert sizes.get(row.cluster_id, 0) == row.size
    # artifacts a person reads in the UI
    md = Artifact.get(artifact_key("summary", rec["dataset"]))
    assert md is not None and "## Monitor (drift)" in md.data and "**Decision: " in md.data
    assert "| 70000 | 70000 | 0 | 1500 | 1500 |" in md.data
    table = Artifact.get(artifact_key("clusters", rec["dataset"]))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sum(r["size"] for r in rows) == 1500
    for name in ("latent", "convergence"):
        assert Path(rec["plots"][name]).stat().st_size > 1000
    plots = Artifact.get(artifact_key("plots", rec["dataset"]))
    assert plots.data.count("](data:image/png;base64,") == 2

    # second run: incremental (only unseen items), warm-started from the first run's centers
    rec2 = nightly(config=_config(out, registry, sample={"mode": "incremental", "n": 800}))
    assert rec2["cluster"]["warm_start_from"] == f"run {run_id}"
    m2 = pd.read_parquet(out / "runs" / rec2["run_id"] / "manifest.parquet")
    assert len(m2) == 800 and not set(m2["sample_id"]) & set(manifest["sample_id"])
    # every row of both runs in DuckDB, and the report's cluster sizes add up to them
    con = duckdb.connect(str(out / "sqflow.duckdb"), read_only=True)
    for sql in (
        "SELECT run_id, count(*) FROM assignments GROUP BY run_id ORDER BY run_id",
        "SELECT run_id, sum(size) FROM cluster_report GROUP BY run_id ORDER BY run_id",
    ):
        assert con.execute(sql).fetchall() == [(run_id, 1500), (rec2["run_id"], 800)], sql
    con.close()

    # the embed stage resumes: a re-run finds every chunk committed and writes none
    from flows.settings import flow_settings
    from sqflow.pipeline.encoder import embed_stage

    again = embed_stage(flow_settings(_config(out, registry)), run_id)
    assert again["chunks_written"] == 0 and again["chunks_total"] == 3
    # a retried cluster stage resumes from this run's last checkpoint of the centers
    from sqflow.pipeline.cluster import cluster_stage

    redo = cluster_stage(_cfg(out, models_dir=str(registry), max_iter=2), run_id)
    assert redo["warm_start_from"] == f"checkpoint {ckpts[-1].name} of this run"
    assert redo["objective"] <= 1.1 * rec["cluster"]["objective"]  # resumed, not restarted


def test_io_tasks_retry_only_transient_errors():
    from prefect.states import Failed

    from tasks.stages import cluster_task, embed_task, publish_task, sample_task
    from tasks.task_factory import transient_io_error

    for t in (sample_task, embed_task, cluster_task, publish_task):
        assert t.retries == 2 and callable(t.retry_condition_fn)
        assert t is publish_task or t.retry_condition_fn is transient_io_error
        assert (
            len(t.retry_delay_seconds) == 2 and t.retry_delay_seconds[1] > t.retry_delay_seconds[0]
        )
    assert transient_io_error(None, None, Failed(data=OSError(5, "Input/output error")))
    assert not transient_io_error(None, None, Failed(data=FileNotFoundError("gone")))
    assert not transient_io_error(None, None, Failed(data=SourceError("no readable item")))


@pytest.fixture
def png_folder(tmp_path):
    """40 MNIST test digits as PNG files plus three bad items, with a labels CSV."""
    from sqflow.datasets import load_mnist

    images, labels = load_mnist("test")
    root = tmp_path / "inspection"
    root.mkdir()
    rows = ["sample_id,label"]
    for i in range(40):
        Image.fromarray(images[i]).save(root / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{labels[i]}")
    (root / "truncated.png").write_bytes((root / "img000.png").read_bytes()[:40])
    Image.fromarray(images[0][:20, :20]).save(root / "cropped.png")
    Image.fromarray(np.stack([images[1]] * 3, axis=-1)).save(root / "rgb.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"kind": "image_folder", "path": str(root), "labels_path": str(tmp_path / "labels.csv")}


def test_image_folder_run_quarantines_bad_items(prefect_harness, registry, tmp_path, png_folder):
    from flows.nightly import nightly

    out = tmp_path / "out"
    rec = nightly(config=_config(out, registry, source=png_folder, n_clusters=3))
    assert rec["status"] == "completed"
    assert rec["sample"]["n_scanned"] == 43 and rec["sample"]["n_selected"] == 40
    q = _published(out, "quarantine").set_index("sample_ref")
    assert set(q.index) == {"truncated.png", "cropped.png", "rgb.png"}
    assert q.loc["truncated.png", "reason"].startswith("cannot decode image")
    assert "unexpected size" in q.loc["cropped.png", "reason"]
    assert "unexpected channels" in q.loc["rgb.png", "reason"]
    assert set(q["run_id"]) == {rec["run_id"]}
    asg = _published(out, "assignments")
    assert len(asg) == 40 and asg["label"].notna().all()
    # 40 items are below the drift policy's minimum batch: no decision, and none is faked
    assert rec["monitor"]["status"] == "insufficient_data" and rec["monitor"]["drifted"] is None
    assert _published(out, "runs")["drift_detected"].isna().all()


def test_failed_monitor_is_reported_and_the_clusters_still_published(
    prefect_harness, registry, tmp_path
):
    import shutil

    from prefect.artifacts import Artifact

    from flows.nightly import nightly
    from tasks.artifacts import artifact_key

    models = tmp_path / "models"
    shutil.copytree(registry, models)
    shutil.rmtree(models / "reference")  # a registry that lost its reference set
    out = tmp_path / "out"
    rec = nightly(config=_config(out, models, sample={"mode": "uniform", "n": 600}))
    assert rec["status"] == "completed"
    assert "no reference set for encoder 'triplet-v0001'" in rec["monitor"]["error"]
    md = Artifact.get(artifact_key("summary", rec["dataset"])).data
    assert "**The monitor stage FAILED** (FileNotFoundError: no reference set" in md
    runs = _published(out, "runs")
    assert not runs["monitor_ran"].any() and runs["drift_detected"].isna().all()
    assert len(_published(out, "assignments")) == 600
    assert Path(rec["report"]["html"]).exists()  # the report says the monitor did not decide
    assert "drift monitor failed" in Path(rec["report"]["html"]).read_text()


def test_missing_source_fails_the_run_clearly(prefect_harness, registry, tmp_path):
    from flows.nightly import nightly

    out = tmp_path / "out"
    missing = tmp_path / "no-such-dir"
    with pytest.raises(SourceError, match="image folder .*no-such-dir.* does not exist"):
        nightly(
            config=_config(out, registry, source={"kind": "image_folder", "path": str(missing)})
        )
    (run,) = OutputLayout.at(out).run_records()
    assert run.status == "failed" and str(missing) in run.error
    assert not (out / "published").exists()


def test_two_runs_on_one_output_never_overlap(prefect_harness, registry, tmp_path, png_folder):
    from flows.nightly import nightly

    out = tmp_path / "out"
    lay = OutputLayout.at(out)
    cfg = _config(out, registry, source=png_folder, n_clusters=3)
    with output_lock(lay, "other-run"):
        # a second run fails fast with a message naming the holder ...
        with pytest.raises(RunLockedError, match="another nightly run holds the lock.*other-run"):
            nightly(config={**cfg, "lock_timeout_s": 1})
        assert not (out / "runs").exists()
        # ... or waits for it when allowed to
        release = threading.Event()
        result = {}

        def waiter():
            result["rec"] = nightly(config={**cfg, "lock_timeout_s": 120})
            release.set()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(3)
        assert not release.is_set() and not (out / "runs").exists()
    t.join(180)
    assert result["rec"]["status"] == "completed"
    shutil.rmtree(out)


def test_settings_from_toml_and_environment(tmp_path, monkeypatch):
    from flows.settings import load_settings

    toml = tmp_path / "sqflow.toml"
    toml.write_text(
        'output_dir = "/data/x"\nn_clusters = 7\ntimezone = "Europe/Kyiv"\n'
        '[source]\nkind = "npy"\npath = "/data/v.npy"\n[sample]\nmode = "incremental"\n'
    )
    monkeypatch.setenv("SQFLOW_CONFIG", str(toml))
    monkeypatch.setenv("SQFLOW_N_CLUSTERS", "12")
    s = load_settings(max_iter=3)
    assert (s.n_clusters, s.max_iter, s.timezone, str(s.output_dir)) == (
        12,
        3,
        "Europe/Kyiv",
        "/data/x",
    )
    assert s.source.kind == "npy" and s.sample.mode == "incremental"
    monkeypatch.setenv("SQFLOW_SAMPLE__MODE", "uniform")
    with pytest.raises(ValueError, match="needs n"):
        load_settings()
    monkeypatch.setenv("SQFLOW_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_settings()


def test_infra_files_are_consistent():
    """prefect.yaml entrypoints are real flows; the compose file has the promised services (it
    is not run here: no Docker engine on the build machine)."""
    import importlib

    import yaml
    from prefect import Flow

    repo = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {
        "nightly",
        "train-encoder",
        "sample",
        "embed",
        "cluster",
        "monitor",
        "sqflow-retrain",
    }
    # the monitor finds the retrain deployment by "<flow name>/<deployment name>"
    from flows.monitor import DEFAULT_RETRAIN_DEPLOYMENT, retrain_flow

    assert DEFAULT_RETRAIN_DEPLOYMENT == f"{retrain_flow.name}/sqflow-retrain"
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        mod = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(mod, fn), Flow) and d["work_pool"]["name"] == "sqflow-process"
    assert names["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert names["nightly"]["concurrency_limit"] == 1
    compose = yaml.safe_load((repo / "infra" / "docker-compose.yml").read_text())
    assert {"postgres", "prefect-server", "dask-scheduler", "dask-worker", "prefect-worker"} <= set(
        compose["services"]
    )
    env = compose["services"]["prefect-worker"]["environment"]
    assert env["SQFLOW_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"


def test_two_processes_on_one_output_take_turns(registry, tmp_path, png_folder):
    """Two nightly runs started at the same moment in two processes (each with its own
    ephemeral Prefect): both complete, their locked intervals do not overlap, and the published
    tables hold each run's rows exactly once."""
    import os
    import subprocess
    import sys
    from datetime import datetime, timedelta

    out = tmp_path / "out"
    cfg = _config(out, registry, source=png_folder, n_clusters=3, lock_timeout_s=300)
    code = (
        "import json, sys; from flows.nightly import nightly; "
        "nightly(config=json.loads(sys.argv[1]))"
    )
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / f"prefect-{i}"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(cfg)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    runs = OutputLayout.at(out).run_records()
    assert [r.status for r in runs] == ["completed", "completed"]
    spans = sorted(
        (
            datetime.fromisoformat(r.started_at) + timedelta(seconds=r.waited_for_lock_s),
            datetime.fromisoformat(r.finished_at),
        )
        for r in runs
    )
    assert spans[0][1] <= spans[1][0], f"locked intervals overlap: {spans}"
    asg = _published(out, "assignments")
    assert asg.groupby("run_id").size().tolist() == [40, 40]
