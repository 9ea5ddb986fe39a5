"""End to end on a real Prefect server: ``prefect server start`` on 127.0.0.1 (free port, temp
PREFECT_HOME), ``prefect deploy --all`` from prefect.yaml onto a process work pool, the cron
schedule read back through the REST API, a real ``prefect worker`` executing a small nightly run
(which trains its own tiny encoder), state and artifacts read back through the API, and headless
Chromium rendering the flow run and artifact pages (screenshot kept as a test artifact).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
ARTIFACTS = Path(os.environ.get("SQFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

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
        SQFLOW_PROJECT_DIR=str(REPO),
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
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chrome-profile'}",
        "--virtual-time-budget=20000",
        "--window-size=1400,1100",
    ]
    if screenshot is not None:
        subprocess.run(
            [*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True
        )
    res = subprocess.run(
        [*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    return res.stdout


def test_deploy_schedule_worker_run_and_ui(server, tmp_path):
    api, env = server["api"], server["env"]
    _run([PREFECT, "work-pool", "create", "sqflow-process", "--type", "process"], env)
    _run([PREFECT, "--no-prompt", "deploy", "--all"], env)

    # the cron schedule, through the API
    dep = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30).json()
    (sched,) = dep["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * *" and sched["schedule"]["timezone"] == "UTC"
    assert sched["active"] and dep["work_pool_name"] == "sqflow-process"
    assert dep["concurrency_limit"] == 1 or dep.get("global_concurrency_limit")

    # a real worker executes a small nightly run (training its own tiny encoder first)
    out = tmp_path / "out"
    config = {
        "output_dir": str(out),
        "source": {"kind": "mnist", "split": "test"},
        "sample": {"mode": "uniform", "n": 1000},
        "encoder_train_rows": 600,
        "encoder_epochs": 1,
        "reference_rows": 300,
        "n_clusters": 10,
        "max_iter": 5,
        "store_chunk_rows": 512,
    }
    wlog = server["tmp"] / "worker.log"
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "sqflow-process", "--type", "process"],
        env=env,
        cwd=REPO,
        stdout=open(wlog, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        fr = httpx.post(
            f"{api}/deployments/{dep['id']}/create_flow_run",
            json={"parameters": {"config": config}},
            timeout=30,
        ).json()

        def finished():
            r = httpx.get(f"{api}/flow_runs/{fr['id']}", timeout=30).json()
            return (
                r if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
            )

        run = _wait(finished, 420, "nightly flow run on the worker", worker, wlog)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert run["state"]["type"] == "COMPLETED", wlog.read_text()[-4000:]

    # artifacts of that run, through the API
    arts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [fr["id"]]}}},
        timeout=30,
    ).json()
    by_key = {a["key"]: a for a in arts if a.get("key")}
    (summary,) = [a for k, a in by_key.items() if k.startswith("sqflow-summary-")]
    run_id = summary["key"].removeprefix("sqflow-summary-")
    assert summary["type"] == "markdown"
    assert "## Monitor (drift)" in summary["data"] and "**Decision: " in summary["data"]
    assert "| 10000 | 10000 | 0 | 1000 | 1000 |" in summary["data"]
    table = by_key[f"sqflow-clusters-{run_id}"]
    assert table["type"] == "table" and '"size"' in str(table["data"])
    for plot in ("latent", "convergence"):
        assert f"{plot} plot (PNG)" in str(by_key[f"sqflow-{plot}-{run_id}"]["data"])
    (run_dir,) = (out / "runs").iterdir()
    assert run_dir.name.lower().replace("_", "-") == run_id
    assert (run_dir / "plots" / "latent.png").exists()
    assert list((out / "published" / "assignments").glob("*/*.parquet"))

    # a real browser renders the flow run page and the summary artifact
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "e2e_flow_run.png"
    dom = _chromium(f"{server['ui']}/runs/flow-run/{fr['id']}", tmp_path, shot)
    assert run["name"] in dom and "nightly" in dom and "Completed" in dom
    assert "Can't connect to Server API" not in dom
    assert shot.stat().st_size > 20_000
    dom = _chromium(
        f"{server['ui']}/artifacts/artifact/{summary['id']}",
        tmp_path,
        ARTIFACTS / "e2e_summary_artifact.png",
    )
    assert "Monitor (drift)" in dom and "Decision:" in dom and "Clustering" in dom
    # the plots artifact embeds both PNGs, and the browser renders them as images
    plots = by_key[f"sqflow-plots-{run_id}"]
    dom = _chromium(
        f"{server['ui']}/artifacts/artifact/{plots['id']}",
        tmp_path,
        ARTIFACTS / "e2e_plots_artifact.png",
    )
    assert dom.count('<img src="data:image/png;base64,') == 2

    # `sqflow serve` registers the same flows from one process, with the schedule from flags
    slog = server["tmp"] / "serve.log"
    serve = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("sqflow")),
            "serve",
            "--cron",
            "30 3 * * *",
            "--timezone",
            "Europe/Kyiv",
            "--output",
            str(tmp_path / "served"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=open(slog, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def served():
            d = httpx.get(f"{api}/deployments/name/nightly/nightly", timeout=30).json()
            s = d["schedules"][0]["schedule"] if d.get("schedules") else {}
            return d if s.get("cron") == "30 3 * * *" else None

        d = _wait(served, 120, "sqflow serve", serve, slog)
        assert d["schedules"][0]["schedule"]["timezone"] == "Europe/Kyiv"
        assert d["parameters"]["config"]["output_dir"] == str(tmp_path / "served")
        names = {
            x["name"] for x in httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        }
        assert {"nightly", "train-encoder", "sample", "embed", "cluster"} <= names
    finally:
        serve.send_signal(2)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
