"""The monitor flow under prefect_test_harness on real MNIST: no drift on a clean batch, drift on
a rotated batch triggers a retrain (new encoder version, new reference, re-embedded batch,
lineage), and a retrain that fails leaves the old version current."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from sqflow.layout import current_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An output folder with encoder v0001 (trained on 2,000 MNIST training images, 2 epochs)
    and its reference set, and two sampled + embedded runs: ``run-clean`` (1,000 test images)
    and ``run-rot`` (1,000 other test images rotated by 90 degrees, labeled)."""
    import torch
    from scipy import ndimage

    from flows.settings import flow_settings
    from sqflow.datasets import load_mnist
    from sqflow.pipeline.encoder import embed_stage, train_encoder_stage
    from sqflow.pipeline.sample import sample_stage

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("monitor")
    xt, yt = load_mnist("test")
    np.save(root / "clean.npy", xt[:1000])
    np.save(root / "clean_y.npy", yt[:1000].astype(np.int64))
    rot = ndimage.rotate(xt[1000:2000], 90, axes=(1, 2), reshape=False, order=1)
    np.save(root / "rot.npy", rot.astype(np.uint8))
    np.save(root / "rot_y.npy", yt[1000:2000].astype(np.int64))
    common = {
        "output_dir": str(root / "out"),
        "encoder_epochs": 2,
        "encoder_train_rows": 2000,
        "reference_rows": 1500,
        "n_clusters": 10,
        "seed": 0,
        "device": "cpu",
        "store_chunk_rows": 512,
        "encoder_batch_size": 250,
    }
    cfg = flow_settings({**common, "source": {"kind": "mnist", "split": "train"}})
    assert train_encoder_stage(cfg)["version"] == "triplet-v0001"
    for run_id, name in (("run-clean", "clean"), ("run-rot", "rot")):
        c = flow_settings(
            {
                **common,
                "source": {
                    "kind": "npy",
                    "path": str(root / f"{name}.npy"),
                    "labels_path": str(root / f"{name}_y.npy"),
                },
            }
        )
        sample_stage(c, run_id)
        embed_stage(c, run_id)
    return root, common


def _copy(base, tmp_path, source: str) -> dict:
    root, common = base
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    return {
        **common,
        "output_dir": str(out),
        "source": {
            "kind": "npy",
            "path": str(root / f"{source}.npy"),
            "labels_path": str(root / f"{source}_y.npy"),
        },
    }


def test_clean_batch_no_drift_no_retrain(prefect_harness, base, tmp_path):
    from flows.monitor import monitor_flow

    cfg = _copy(base, tmp_path, "clean")
    mon = monitor_flow(run_id="run-clean", config=cfg)
    assert mon["status"] == "no_drift", mon["markdown"]
    assert mon["event_id"] is None
    assert mon["retrain"]["status"] == "not needed"
    assert mon["encoder_version"] == "triplet-v0001"
    df = pd.read_parquet(mon["drift_reports_table"])
    assert list(df["statistic"]) == ["mmd", "ks", "distortion", "occupancy", "decision"]
    assert set(df["run_id"]) == {"run-clean"} and set(df["reference_version"]) == {"triplet-v0001"}
    assert not df["drifted"].any()
    assert (
        json.loads((tmp_path / "out" / "runs" / "run-clean" / "drift_report.json").read_text())[
            "status"
        ]
        == "no_drift"
    )


def test_drift_triggers_retrain_with_new_version_and_reference(prefect_harness, base, tmp_path):
    from flows.monitor import monitor_flow
    from sqflow.store import open_store

    # retrain_min_gain=-1: the gate accepts any new version (this test is about promotion)
    cfg = {**_copy(base, tmp_path, "rot"), "retrain_min_gain": -1.0}
    out = tmp_path / "out"
    mon = monitor_flow(run_id="run-rot", config=cfg)
    assert mon["status"] == "drift" and mon["drifted"] is True, mon["markdown"]
    assert "mmd" in mon["flagged"]
    assert mon["event_id"]  # sqflow.drift.detected was emitted
    r = mon["retrain"]
    # no retrain deployment on this API: the documented fallback, an in-process subflow
    assert r["status"] == "completed" and r["mode"] == "in-process subflow", r
    assert r["old_version"] == "triplet-v0001" and r["new_version"] == "triplet-v0002"
    assert r["outcome"] == "promoted" and r["gate"]["criterion"] == "heldout_knn5_accuracy"
    assert current_version(out / "models") == "triplet-v0002"
    assert mon["encoder_version"] == "triplet-v0002"
    # the new version trained on the batch; its reference holds no row of it (disjoint sets)
    from sqflow.layout import version_rows

    batch_ids = set(pd.read_parquet(out / "runs" / "run-rot" / "manifest.parquet")["sample_id"])
    rows = version_rows(out / "models", "triplet-v0002")
    train_ids = set(rows.loc[rows["role"] == "train", "sample_id"])
    ref_ids = set(rows.loc[rows["role"] == "reference", "sample_id"])
    assert batch_ids <= train_ids and not ref_ids & train_ids
    # the batch checked against the batch-free new reference: not compared with itself
    after = {
        s["statistic"]: s
        for s in json.loads((out / "models" / "lineage.jsonl").read_text().splitlines()[-1])[
            "after"
        ]["statistics"]
    }
    assert after["mmd"]["value"] > 0.0
    # new reference, its centers, the batch re-embedded with the new version, old store kept
    ref = open_store(out / "models" / "reference" / "triplet-v0002" / "embeddings.zarr")
    assert ref.encoder_version == "triplet-v0002" and ref.is_complete
    assert np.load(out / "models" / "reference" / "triplet-v0002" / "centers.npy").shape == (10, 3)
    assert (
        open_store(out / "runs" / "run-rot" / "embeddings.zarr").encoder_version == "triplet-v0002"
    )
    assert (
        open_store(out / "runs" / "run-rot" / "embeddings-triplet-v0001.zarr").encoder_version
        == "triplet-v0001"
    )
    lines = [json.loads(s) for s in (out / "models" / "lineage.jsonl").read_text().splitlines()]
    assert lines[-1]["from_version"] == "triplet-v0001"
    assert lines[-1]["to_version"] == "triplet-v0002"
    assert lines[-1]["status"] == "completed" and "drift in run run-rot" in lines[-1]["reason"]
    assert (out / "models" / "triplet-v0002" / "lineage.json").exists()
    df = pd.read_parquet(mon["drift_reports_table"])
    assert bool(df.loc[df["statistic"] == "decision", "drifted"].iloc[0]) is True
    assert "retrained: encoder triplet-v0001 -> triplet-v0002" in mon["markdown"]
    # the same drift asks again (a second trigger): v0002 is current, nothing is trained, and
    # the skipped attempt is a lineage record that makes a valid ``retrains`` row
    from data_contracts.tables import validate_frame
    from flows.monitor import retrain_flow
    from sqflow.layout import read_lineage
    from sqflow.pipeline.publish import retrains_frame

    state = retrain_flow(
        run_id="run-rot", reason="again", config=cfg, from_version="triplet-v0001",
        return_state=True,
    )  # fmt: skip
    assert state.name == "Skipped" and current_version(out / "models") == "triplet-v0002"
    mine = read_lineage(out / "models", "run-rot")
    assert [r["outcome"] for r in mine] == ["promoted", "skipped"]
    assert mine[-1]["to_version"] is None and mine[-1]["current_after"] == "triplet-v0002"
    rows = validate_frame("retrains", retrains_frame("mnist", "run-rot", mine))
    assert rows["outcome"].tolist() == ["promoted", "skipped"]


def test_retrain_not_better_on_held_out_labels_is_refused(prefect_harness, base, tmp_path):
    """With the default gate (not worse), the version retrained on 2,000 labeled training images
    plus 1,000 rotated ones (2 epochs) is worse on the held-out upright reference rows: it is
    refused, stays in the registry marked REFUSED, and the old version stays current."""
    from flows.monitor import monitor_flow
    from sqflow.store import open_store

    cfg = _copy(base, tmp_path, "rot")
    out = tmp_path / "out"
    mon = monitor_flow(run_id="run-rot", config=cfg)
    r = mon["retrain"]
    assert r["status"] == "completed" and r["outcome"] == "refused", r
    assert r["new_version"] == "triplet-v0002" and r["gate"]["new"] < r["gate"]["old"]
    assert r["gate"]["n_rows"] == 1500  # v0001's reference rows: neither version trained on them
    assert "REFUSED" in r["message"] and "triplet-v0001 stays current" in r["message"]
    assert current_version(out / "models") == "triplet-v0001"
    assert mon["encoder_version"] == "triplet-v0001"
    refused = json.loads((out / "models" / "triplet-v0002" / "REFUSED.json").read_text())
    assert refused["current"] == "triplet-v0001"
    store = open_store(out / "runs" / "run-rot" / "embeddings.zarr")
    assert store.encoder_version == "triplet-v0001"  # the batch was not re-embedded
    last = json.loads((out / "models" / "lineage.jsonl").read_text().splitlines()[-1])
    assert last["outcome"] == "refused" and last["current_after"] == "triplet-v0001"


def test_failed_retrain_keeps_the_old_version_current(prefect_harness, base, tmp_path, monkeypatch):
    import sqflow.pipeline.monitor as tm
    from flows.monitor import monitor_flow
    from sqflow.store import open_store

    def broken(*args, **kwargs):
        raise OSError("no space left on device (injected by the test)")

    monkeypatch.setattr(tm, "_reembed_run", broken)
    cfg = {**_copy(base, tmp_path, "rot"), "retrain_min_gain": -1.0}  # promoted, then fails
    out = tmp_path / "out"
    mon = monitor_flow(run_id="run-rot", config=cfg)
    assert mon["status"] == "drift"
    r = mon["retrain"]
    assert r["status"] == "failed" and r["outcome"] == "failed", r
    assert "triplet-v0001 stays current" in r["message"]
    assert current_version(out / "models") == "triplet-v0001"
    assert mon["encoder_version"] == "triplet-v0001"
    # the half-made version was registered by training, then marked failed and not current
    failed = json.loads((out / "models" / "triplet-v0002" / "FAILED.json").read_text())
    assert "no space left on device" in failed["error"]
    last = json.loads((out / "models" / "lineage.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "failed" and last["current_after"] == "triplet-v0001"
    assert (
        open_store(out / "runs" / "run-rot" / "embeddings.zarr").encoder_version == "triplet-v0001"
    )
    assert "FAILED" in mon["markdown"]


def test_drift_event_starts_the_retrain_deployment_through_its_trigger(
    prefect_harness, base, tmp_path
):
    """With a retrain deployment that carries the drift trigger (served here by a real Prefect
    Runner that runs flow runs in a subprocess), the monitor only emits the event and returns;
    the server's automation starts the retrain flow run with the event's run id, reason,
    config and drifted version, and that run makes the new version current."""
    import asyncio
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.events import DeploymentEventTrigger
    from prefect.runner import Runner

    from flows.deployments import RETRAIN_CONCURRENCY
    from flows.monitor import monitor_flow, retrain_flow, retrain_trigger

    dep = "retrain/sqflow-retrain-test"
    runner = Runner(name="sqflow-retrain-test", query_seconds=1)
    runner.add_flow(
        retrain_flow,
        name="sqflow-retrain-test",
        concurrency_limit=RETRAIN_CONCURRENCY,
        triggers=[DeploymentEventTrigger(**retrain_trigger(dep))],
    )
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            asyncio.run(runner.start(run_once=True, webserver=False))
            stop.wait(1.0)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        cfg = {**_copy(base, tmp_path, "rot"), "retrain_min_gain": -1.0}
        mon = monitor_flow(run_id="run-rot", config=cfg, retrain_deployment=dep)
        r = mon["retrain"]
        # the monitor did not wait: the retrain is requested, the old version still current
        assert r["status"] == "requested" and r["deployment"] == dep, r
        assert mon["encoder_version"] == "triplet-v0001"
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["sqflow-retrain-test"])
                    )
                )
                if runs and runs[0].state is not None and runs[0].state.is_final():
                    break
                time.sleep(2)
    finally:
        stop.set()
        th.join(timeout=60)
    (fr,) = runs  # exactly one retrain for one event
    assert fr.state.is_completed(), fr.state
    assert fr.name == "retrain-run-rot"
    assert fr.parameters["run_id"] == "run-rot" and fr.parameters["from_version"] == "triplet-v0001"
    assert fr.parameters["config"]["output_dir"] == str(tmp_path / "out")
    assert "drift in run run-rot" in fr.parameters["reason"]
    assert current_version(tmp_path / "out" / "models") == "triplet-v0002"


def test_nightly_whose_retrain_fails_ends_degraded(prefect_harness, base, tmp_path, monkeypatch):
    """Without a retrain deployment the nightly retrains in-process after publishing (the
    documented fallback); when that retrain fails the run still publishes its clusters and
    ends in the named state Completed("Degraded"), and run.json says why."""
    import sqflow.pipeline.monitor as tm
    from flows.nightly import nightly

    def broken(*args, **kwargs):
        raise OSError("no space left on device (injected by the test)")

    monkeypatch.setattr(tm, "_reembed_run", broken)
    # retrain_min_gain -1: the gate accepts the version trained on rotated digits
    cfg = _copy(base, tmp_path, "rot") | {
        "train_if_missing": False,
        "max_iter": 3,
        "retrain_min_gain": -1.0,
    }
    state = nightly(config=cfg, return_state=True)
    assert state.is_completed() and state.name == "Degraded", state
    assert "retrain failed" in state.message
    rec = state.result()
    assert rec["outcome"] == "degraded" and rec["monitor"]["retrain"]["status"] == "failed"
    saved = json.loads((tmp_path / "out" / "runs" / rec["run_id"] / "run.json").read_text())
    assert saved["status"] == "completed"
    assert saved["degraded_reasons"] and "retrain failed" in saved["degraded_reasons"][0]
    # the clusters were published all the same, with the encoder the night started with
    asg = pd.concat(
        pd.read_parquet(p)
        for p in (tmp_path / "out" / "published" / "assignments").glob("*/*.parquet")
    )
    assert len(asg) == 1000
    assert current_version(tmp_path / "out" / "models") == "triplet-v0001"
    # the flow run is named after the run id
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(state.state_details.flow_run_id)
    assert fr.name == f"nightly-{rec['run_id']}" and fr.state.name == "Degraded"
    # the embed and cluster tasks left progress artifacts, finished at 100 %
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        prog = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
        )
    mine = {a.description.split(" (")[0]: a for a in prog if a.flow_run_id == fr.id}
    assert {"embed: chunks written", "cluster: SQ passes", "assignment: chunks written"} <= set(
        mine
    ), [a.description for a in prog]
    assert all(float(a.data) == 100.0 for a in mine.values())


def test_nightly_without_a_server_retrains_in_process_after_publishing(
    prefect_harness, base, tmp_path
):
    """The fallback's success path: drift, the night's clusters published with the encoder the
    night started with, then the in-process retrain makes the new version current."""
    from flows.nightly import nightly

    # retrain_min_gain -1: the gate accepts the version trained on rotated digits
    cfg = _copy(base, tmp_path, "rot") | {
        "train_if_missing": False,
        "max_iter": 3,
        "retrain_min_gain": -1.0,
    }
    state = nightly(config=cfg, return_state=True)
    assert state.is_completed() and state.name == "Completed", state
    rec = state.result()
    r = rec["monitor"]["retrain"]
    assert r["status"] == "completed" and r["mode"] == "in-process subflow", r
    assert rec["outcome"] == "ok" and rec["encoder_version"] == "triplet-v0001"
    assert current_version(tmp_path / "out" / "models") == "triplet-v0002"
    asg = pd.concat(
        pd.read_parquet(p)
        for p in (tmp_path / "out" / "published" / "assignments").glob("*/*.parquet")
    )
    assert len(asg) == 1000
    saved = json.loads((tmp_path / "out" / "runs" / rec["run_id"] / "run.json").read_text())
    assert saved["monitor"]["retrain"]["new_version"] == "triplet-v0002"
    # the BI runs row says requested (published before the retrain); the retrains row has the
    # final outcome, in Parquet and DuckDB alike, and joins the runs row
    import duckdb

    pub = tmp_path / "out" / "published"
    (rfile,) = (pub / "retrains").glob(f"run_date=*/{rec['run_id']}.parquet")
    assert rfile.parent.name == next((pub / "runs").glob("run_date=*")).name
    parquet_rows = pd.read_parquet(rfile).to_dict("records")
    con = duckdb.connect(str(tmp_path / "out" / "sqflow.duckdb"), read_only=True)
    try:
        got = con.execute(
            "SELECT r.retrain_outcome, r.degraded_reasons, t.attempt, t.dataset, "
            "t.from_version, t.to_version, t.outcome, t.current_after, t.gate_criterion, "
            "t.gate_old_score, t.gate_new_score, t.gate_min_gain, t.started_at <= t.finished_at "
            "FROM runs r JOIN retrains t USING (run_id)"
        ).fetchall()
    finally:
        con.close()
    lineage = [
        json.loads(line)
        for line in (tmp_path / "out" / "models" / "lineage.jsonl").read_text().splitlines()
    ]
    (gate,) = [r["gate"] for r in lineage if r["run_id"] == rec["run_id"]]
    assert got == [
        (
            "requested",
            "[]",
            1,
            rec["dataset"],
            "triplet-v0001",
            "triplet-v0002",
            "promoted",
            "triplet-v0002",
            gate["criterion"],
            pytest.approx(gate["old"]),
            pytest.approx(gate["new"]),
            -1.0,
            True,
        )
    ]
    assert [(r["outcome"], r["to_version"]) for r in parquet_rows] == [
        ("promoted", "triplet-v0002")
    ]
    assert not list((pub / "_sqflow_journal").glob("*.json"))  # both publishes ended
