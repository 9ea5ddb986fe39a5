"""End to end on one real Prefect server: ``prefect server start`` on 127.0.0.1 (free port,
temp PREFECT_HOME), ``prefect deploy --all`` from prefect.yaml onto a process work pool (no
extra variables), the cron schedule, the retrain deployment's trigger and concurrency read back
through the REST API, and a real ``prefect worker`` executing two nightly runs of one dataset:
the first trains its own tiny encoder, the second reads rotated digits, detects drift, and its
``sqflow.drift.detected`` event makes the server's automation start the retrain deployment,
which registers a new encoder version. Artifact versions under stable keys, flow-run names and
states are read back through the API, and headless Chromium renders the flow run page, the
artifact history of the trend table and the summary (screenshots kept as test artifacts).
Then ``sqflow serve`` runs next to the deployed flows and leaves their schedule intact.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests._chromium import CHROMIUM, chromium_command

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
ARTIFACTS = Path(os.environ.get("SQFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited with {proc.returncode}\n"
                + (Path(log).read_text()[-3000:] if log else "")
            )
        try:
            got = pred()
            if got:
                return got
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(
        f"{what}: not ready after {timeout} s\n" + (Path(log).read_text()[-3000:] if log else "")
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SQFLOW_"))}
    env.update(
        PREFECT_HOME=str(tmp / "home"),
        PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="2",
        DASK_TEMPORARY_DIRECTORY=str(tmp / "dask"),
    )
    log = tmp / "server.log"
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(
            lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200,
            180,
            "prefect server",
            proc,
            log,
        )
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": env, "tmp": tmp}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run(cmd, env, timeout=180):
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _chromium(url: str, tmp: Path, screenshot: Path | None = None) -> str:
    args = chromium_command(tmp, "--window-size=1400,1100")
    if screenshot is not None:
        subprocess.run(
            [*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True
        )
    res = subprocess.run(
        [*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    return res.stdout


def _post(api: str, path: str, body: dict) -> list[dict]:
    res = httpx.post(f"{api}{path}", json=body, timeout=30)
    res.raise_for_status()
    return res.json()


def _create_run(api: str, deployment_id: str, parameters: dict) -> dict | None:
    """A flow run of the deployment (None while a busy server answers 503: try again)."""
    res = httpx.post(
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": parameters},
        timeout=30,
    )
    if res.status_code == 503:
        return None
    res.raise_for_status()
    return res.json()


def _final_run(api: str, flow_run_id: str) -> dict | None:
    r = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
    return r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def test_deploy_two_nights_drift_retrain_history_and_ui(server, tmp_path):
    import numpy as np
    from scipy import ndimage

    from sqflow.datasets import load_mnist

    api, env = server["api"], server["env"]
    assert "SQFLOW_PROJECT_DIR" not in env  # a fresh clone needs no extra variable
    _run([PREFECT, "work-pool", "create", "sqflow-process", "--type", "process"], env)
    _run([PREFECT, "--no-prompt", "deploy", "--all"], env)

    # the cron schedule and the working directory of the pull step, through the API
    dep = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30).json()
    (sched,) = dep["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * *" and sched["schedule"]["timezone"] == "UTC"
    assert sched["active"] and dep["work_pool_name"] == "sqflow-process"
    assert dep["concurrency_limit"] == 1 or dep.get("global_concurrency_limit")
    (pull,) = dep["pull_steps"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    # the retrain deployment: one at a time, a colliding one cancelled, started by its trigger
    rdep = httpx.get(f"{api}/deployments/name/retrain/sqflow-retrain", timeout=30).json()
    assert rdep["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    autos = [
        a
        for a in _post(api, "/automations/filter", {})
        if any(x.get("deployment_id") == rdep["id"] for x in a["actions"])
    ]
    (auto,) = autos
    assert auto["trigger"]["expect"] == ["sqflow.drift.detected"]
    assert auto["trigger"]["match"]["sqflow.retrain-deployment"] == "retrain/sqflow-retrain"

    # an encoder trained on 2,000 MNIST training images (as tests/test_monitor_flow.py does),
    # then two nights of one dataset ("digits"): 1,000 test images, then 1,000 rotated ones
    import torch

    from flows.settings import flow_settings
    from sqflow.pipeline.encoder import train_encoder_stage

    torch.set_num_threads(1)
    data = tmp_path / "data"
    data.mkdir()
    xt, yt = load_mnist("test")
    np.save(data / "clean.npy", xt[:1000])
    np.save(data / "clean_y.npy", yt[:1000].astype(np.int64))
    rot = ndimage.rotate(xt[1000:2000], 90, axes=(1, 2), reshape=False, order=1)
    np.save(data / "rot.npy", rot.astype(np.uint8))
    np.save(data / "rot_y.npy", yt[1000:2000].astype(np.int64))
    out = tmp_path / "out"
    common = {
        "output_dir": str(out),
        "encoder_train_rows": 2000,
        "encoder_epochs": 2,
        "encoder_batch_size": 250,
        "reference_rows": 1500,
        "n_clusters": 10,
        "seed": 0,
        "max_iter": 4,
        "store_chunk_rows": 512,
        "device": "cpu",
        "train_if_missing": False,
        # a night waits for a retrain that holds the output lock
        "lock_timeout_s": 900,
    }
    train = flow_settings(common | {"source": {"kind": "mnist", "split": "train"}})
    assert train_encoder_stage(train)["version"] == "triplet-v0001"

    def npy(name: str) -> dict:
        return {
            "source": {
                "kind": "npy",
                "path": str(data / f"{name}.npy"),
                "labels_path": str(data / f"{name}_y.npy"),
                "name": "digits",
            },
            "sample": {"mode": "all"},
        }

    # the gate would refuse a version trained on rotated digits (worse on upright held-out
    # rows); this test is about the trigger chain, so the rotated night accepts any version
    nights = [common | npy("clean"), common | npy("rot") | {"retrain_min_gain": -1.0}]
    wlog = server["tmp"] / "worker.log"
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "sqflow-process", "--type", "process"],
        env=env,
        cwd=tmp_path,  # the pull step, not the worker's folder, finds the project
        stdout=open(wlog, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runs = []
    try:
        for config in nights:
            fr = _wait(
                lambda config=config: _create_run(api, dep["id"], {"config": config}),
                120,
                "create the nightly flow run",
            )
            run = _wait(lambda fr=fr: _final_run(api, fr["id"]), 600, "nightly run", worker, wlog)
            assert run["state"]["type"] == "COMPLETED", wlog.read_text()[-4000:]
            runs.append(run)

        # night 2 drifted: its event made the automation start exactly one retrain run
        def retrain_done():
            got = _post(
                api,
                "/flow_runs/filter",
                {"flow_runs": {"deployment_id": {"any_": [rdep["id"]]}}},
            )
            return got if got and all(_final_run(api, r["id"]) for r in got) else None

        retrains = _wait(retrain_done, 600, "retrain flow run from the drift event", worker, wlog)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()

    recs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/run.json"))]
    assert len(recs) == 2
    # flow runs are named after the run id; the nightly did not wait for the retrain
    for run, rec in zip(runs, recs, strict=True):
        assert run["name"] == f"nightly-{rec['run_id']}" and run["state"]["name"] == "Completed"
        assert rec["degraded_reasons"] == []
    mon = recs[1]["monitor"]
    assert mon["status"] == "drift", mon["reasons"]
    assert mon["retrain"]["status"] == "requested" and recs[1]["encoder_version"] == "triplet-v0001"
    (retrain,) = retrains
    retrain = _final_run(api, retrain["id"])
    assert retrain["state"]["type"] == "COMPLETED", wlog.read_text()[-4000:]
    assert retrain["name"] == f"retrain-{recs[1]['run_id']}"
    assert retrain["parameters"]["run_id"] == recs[1]["run_id"]
    assert retrain["parameters"]["from_version"] == "triplet-v0001"
    assert retrain["parameters"]["config"]["output_dir"] == str(out)
    # the new encoder version, read back through the API (the retrain's artifact) and on disk
    (rart,) = _post(
        api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [retrain["id"]]}}}
    )
    assert rart["key"] == "sqflow-retrain-digits"
    assert "`triplet-v0001` -> `triplet-v0002`" in rart["data"]
    assert (out / "models" / "CURRENT").read_text().strip() == "triplet-v0002"

    # history: each kind has one key per dataset, with a version per night
    def versions(key: str) -> list[dict]:
        got = _post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})
        return sorted(got, key=lambda a: a["created"])

    for kind in ("summary", "clusters", "plots", "trend", "drift", "report"):
        got = versions(f"sqflow-{kind}-digits")
        assert len(got) == 2 and got[0]["id"] != got[1]["id"], (kind, got)
    trend = versions("sqflow-trend-digits")[-1]
    rows = json.loads(trend["data"]) if isinstance(trend["data"], str) else trend["data"]
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in recs]
    assert [r["drift"] for r in rows][1] == "drift" and all(r["objective"] for r in rows)
    summary = versions("sqflow-summary-digits")[-1]
    assert "file://" not in summary["data"] and "## Monitor (drift)" in summary["data"]

    # a real browser renders the flow run page, the trend table's history and the summary
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "e2e_flow_run.png"
    dom = _chromium(f"{server['ui']}/runs/flow-run/{runs[1]['id']}", tmp_path, shot)
    assert runs[1]["name"] in dom and "nightly" in dom and "Completed" in dom
    assert "Can't connect to Server API" not in dom
    assert shot.stat().st_size > 20_000
    # the key's page lists its versions, one per night, by flow run (named after the run id)
    dom = _chromium(
        f"{server['ui']}/artifacts/key/sqflow-trend-digits",
        tmp_path,
        ARTIFACTS / "e2e_trend_history.png",
    )
    assert "sqflow-trend-digits" in dom
    assert all(f"nightly-{r['run_id']}" in dom for r in recs)
    # the latest version: the trend table, one row per night
    dom = _chromium(
        f"{server['ui']}/artifacts/artifact/{trend['id']}",
        tmp_path,
        ARTIFACTS / "e2e_trend_table.png",
    )
    assert all(r["run_id"] in dom for r in recs)
    assert "objective" in dom and "knn_accuracy" in dom and "mmd" in dom
    dom = _chromium(
        f"{server['ui']}/artifacts/artifact/{summary['id']}",
        tmp_path,
        ARTIFACTS / "e2e_summary_artifact.png",
    )
    assert "Monitor (drift)" in dom and "Decision:" in dom and "Clustering" in dom
    plots = versions("sqflow-plots-digits")[-1]
    dom = _chromium(
        f"{server['ui']}/artifacts/artifact/{plots['id']}",
        tmp_path,
        ARTIFACTS / "e2e_plots_artifact.png",
    )
    assert dom.count('<img src="data:image/png;base64,') == 2


def test_serve_next_to_deploy_keeps_both_schedules(server, tmp_path):
    """`sqflow serve` registers its own `*-served` deployments: the deployed `nightly/nightly`
    keeps its entrypoint, pull step and active cron while serve runs and after it stops."""
    api, env = server["api"], server["env"]
    before = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30)
    if before.status_code == 404:  # run alone: deploy first
        _run([PREFECT, "work-pool", "create", "sqflow-process", "--type", "process"], env)
        _run([PREFECT, "--no-prompt", "deploy", "--all"], env)
        before = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30)
    before = before.json()
    slog = server["tmp"] / "serve.log"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",  # this checkout's code (an installed `sqflow` may be another's)
            "serve",
            "--cron",
            "30 3 * * *",
            "--timezone",
            "Europe/Kyiv",
            "--output",
            str(tmp_path / "served"),
        ],
        env=env | {"PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        stdout=open(slog, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def served():  # serve registers its deployments one after the other
            names = {x["name"] for x in _post(api, "/deployments/filter", {})}
            if not {"nightly-served", "sqflow-retrain-served"} <= names:
                return None
            d = httpx.get(f"{api}/deployments/name/nightly/nightly-served", timeout=30).json()
            s = d["schedules"][0]["schedule"] if d.get("schedules") else {}
            return (d, names) if s.get("cron") == "30 3 * * *" else None

        d, names = _wait(served, 180, "sqflow serve", serve, slog)
        assert d["schedules"][0]["schedule"]["timezone"] == "Europe/Kyiv"
        assert d["parameters"]["config"]["output_dir"] == str(tmp_path / "served")
        assert {"nightly", "sqflow-retrain", "train-encoder-served", "monitor-served"} <= names
        rdep = httpx.get(f"{api}/deployments/name/retrain/sqflow-retrain-served", timeout=30)
        autos = [
            a
            for a in _post(api, "/automations/filter", {})
            if any(x.get("deployment_id") == rdep.json()["id"] for x in a["actions"])
        ]
        assert len(autos) == 1
        assert autos[0]["trigger"]["match"]["sqflow.retrain-deployment"] == (
            "retrain/sqflow-retrain-served"
        )
    finally:
        serve.send_signal(2)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
    after = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30).json()
    for field in ("entrypoint", "pull_steps", "paused", "parameters", "work_pool_name"):
        assert after[field] == before[field], field
    (sched,) = after["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * *" and sched["active"]
