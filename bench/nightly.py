"""Benchmark: the nightly flow on the full built-in MNIST (70,000 images) with an already trained
encoder. Wall time per stage and the share spent in orchestration, measured:

* stage work = seconds measured inside each stage (sample, embed, monitor, cluster, plots,
  report, publish);
* Prefect overhead = wall time of the flow call - the sum of the stage work (flow/task engine,
  API calls, result handling, artifacts). The ephemeral API server is started before, by a
  trivial flow, and its start time is reported on its own (``prefect_ephemeral_start_s``): a
  deployed nightly run talks to a server that is already running;
* Dask overhead = LocalCluster start + (SQ fit on the Dask cluster - the same fit on the same
  embeddings in memory, same parameters and initial centers) + (assignment pass on the cluster -
  the same pass in-process); both references are re-run here, after the flow.

Usage::

    .venv/bin/python bench/nightly.py [--models DIR] [--work DIR] [--repeats 2]

Without ``--models`` an encoder is trained first (6,000 labeled images, 3 epochs; not part of
the measured run) and cached in ``~/.cache/sqflow-bench/models``. Prints a table and writes
``bench/results/nightly.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("sample", "embed", "monitor", "cluster", "plots", "report", "publish")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=str(Path.home() / ".cache" / "sqflow-bench" / "models"))
    ap.add_argument("--work", default=None, help="output folder (default: a temp dir)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="nightly runs (the first starts SQ from k-means++, later ones warm)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nightly.json"))
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sqflow-bench-prefect-"))

    from flows.settings import flow_settings
    from sqflow.layout import current_version

    models = Path(args.models)
    train_s = None
    if current_version(models) is None:
        from sqflow.pipeline.encoder import train_encoder_stage

        settings = flow_settings(
            {
                "output_dir": tempfile.mkdtemp(prefix="sqflow-bench-train-"),
                "models_dir": str(models),
            }
        )
        t = time.perf_counter()
        train_encoder_stage(settings)
        train_s = time.perf_counter() - t
        print(f"trained an encoder in {train_s:.1f} s (not part of the measured run)")
    work = Path(args.work or tempfile.mkdtemp(prefix="sqflow-bench-out-"))
    if work.exists():
        shutil.rmtree(work)

    from prefect import flow

    from flows.nightly import nightly

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    # Ephemeral Prefect starts a temporary API server on the first flow call of a process; a
    # deployed nightly run talks to an already running server. Measure that start on its own.
    t = time.perf_counter()
    warm_up()
    server_start = time.perf_counter() - t
    print(f"ephemeral Prefect API server start + trivial flow: {server_start:.1f} s")

    config = {
        "output_dir": str(work),
        "models_dir": str(models),
        "train_if_missing": False,
        "source": {"kind": "mnist", "split": "all"},
        "sample": {"mode": "all"},
    }
    runs = []
    for i in range(args.repeats):
        t = time.perf_counter()
        rec = nightly(config=config)
        wall = time.perf_counter() - t
        runs.append(_measure(rec, wall, work, cold=(i == 0)))
        r = runs[-1]
        print(
            f"run {i + 1} ({'first' if i == 0 else 'warm-started'}): wall {wall:.1f} s, "
            f"orchestration {r['orchestration_s']:.1f} s ({r['orchestration_share']:.1%})"
        )
    result = {
        "benchmark": "nightly flow, built-in MNIST 70,000 images, trained encoder",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "encoder_version": runs[0]["encoder_version"],
        "encoder_train_seconds": train_s,
        "n_rows": runs[0]["n_rows"],
        "runs": runs,
        "prefect_ephemeral_start_s": server_start,
        "note": "stage seconds are measured inside the task bodies; overheads as in the docstring",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _table(runs)
    print(f"wrote {args.out}")
    return 0


def _measure(rec: dict, wall: float, work: Path, cold: bool) -> dict:
    """Stage times from the run record plus the Dask reference re-runs."""
    from sqflow import StochasticQuantization
    from sqflow.assign import assign_store
    from sqflow.store import open_store

    c = rec["cluster"]
    stage = {s: float(rec["timings"][s]) for s in STAGES}
    run_dir = work / "runs" / rec["run_id"]
    store = open_store(run_dir / "embeddings.zarr")
    z = store.read_embeddings()
    # the same fit in memory: same parameters and the same initial centers
    k = int(rec["n_clusters"])
    init = None
    warm = c.get("warm_start_from")
    if warm and warm.startswith("run "):
        init = np.load(work / "runs" / warm[4:] / "centers.npy")
    settings = _settings(rec)
    est = StochasticQuantization(
        k,
        optimizer=settings["optimizer"],
        rank=float(settings["rank"]),
        batch_size=int(settings["sq_batch_size"]),
        max_iter=int(settings["max_iter"]),
        init=init if init is not None else "k-means++",
        random_state=int(settings["seed"]),
        chunk_size=int(settings["store_chunk_rows"]),
    )
    t = time.perf_counter()
    est.fit(z)
    fit_mem = time.perf_counter() - t
    t = time.perf_counter()
    assign_store(est, store, client=None, name="bench-local")
    assign_local = time.perf_counter() - t
    dask_over = (
        c["dask_start_seconds"]
        + (c["fit_seconds"] - fit_mem)
        + (c["assign_seconds"] - assign_local)
    )
    work_s = sum(stage.values())
    prefect_over = wall - work_s
    orch = prefect_over + max(dask_over, 0.0)
    return {
        "run_id": rec["run_id"],
        "cold": cold,
        "wall_s": wall,
        "stages_s": stage,
        "stage_work_s": work_s,
        "embed_device": rec["embed"]["device"],
        "n_rows": int(rec["embed"]["n_rows"]),
        "encoder_version": rec["encoder_version"],
        "sq_passes": c["n_iter"],
        "objective": c["objective"],
        "warm_start_from": warm,
        "prefect_overhead_s": prefect_over,
        "dask": {
            "start_s": c["dask_start_seconds"],
            "fit_on_cluster_s": c["fit_seconds"],
            "fit_in_memory_s": fit_mem,
            "assign_on_cluster_s": c["assign_seconds"],
            "assign_in_process_s": assign_local,
            "overhead_s": dask_over,
        },
        "orchestration_s": orch,
        "orchestration_share": orch / wall,
    }


def _settings(rec: dict) -> dict:
    from flows.settings import load_settings

    return load_settings(n_clusters=rec["n_clusters"]).flow_parameters()


def _table(runs: list[dict]) -> None:
    head = ["run", "wall s"] + [f"{s} s" for s in STAGES] + ["Prefect s", "Dask s", "orch. %"]
    print(" | ".join(head))
    for i, r in enumerate(runs):
        cells = [f"{i + 1} ({'first' if r['cold'] else 'warm-started'})", f"{r['wall_s']:.1f}"]
        cells += [f"{r['stages_s'][s]:.1f}" for s in STAGES]
        cells += [
            f"{r['prefect_overhead_s']:.1f}",
            f"{r['dask']['overhead_s']:.1f}",
            f"{r['orchestration_share']:.1%}",
        ]
        print(" | ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
