"""Distributed SQ benchmark (issue 15): pass speed against reading, and accuracy against serial.

1. Speed: ONE SQ pass over an n x 16 float32 Zarr store (Gaussian blobs, K = 64) on a
   LocalCluster (2 workers x 1 thread), beside a bare ``da.from_zarr(...).sum()`` of the same
   store on the same cluster, alternated ``--repeats`` times in one run (medians reported).
   The pass is ``DaskPasses.run_pass`` (no init, no final objective); the per-round driver
   time (composition) is reported too.
2. Accuracy: the objective of a distributed fit / the serial in-memory fit (same seed) on
   60,000 x 8 blobs, K = 12, for W = n_parallel in ``--workers``, Dask chunks of ``--chunks``
   rows, six optimizers, with the passes each used.

Usage::

    python bench/scale_out.py                       # 4M rows, the grid below
    python bench/scale_out.py --rows 20000000       # the issue's 20M store
    python bench/scale_out.py --skip-speed / --skip-grid

Writes bench/results/scale_out.json (``--overheads-only``: scale_out_overheads.json, the driver's
composition cost per task and the scheduler's cost per task, measured in every run too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import machine, print_table, write_results  # noqa: E402
from bench.out_of_core import blob_centers, generate_store  # noqa: E402

OPTIMIZERS = ["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"]


def speed(client, rows: int, chunk_rows: int, repeats: int, workdir: Path) -> dict:
    import dask.array as da

    from sqflow import StochasticQuantization
    from sqflow.distributed import DaskPasses
    from sqflow.optimizers import OptimizerState

    path = workdir / "store.zarr"
    store_info = generate_store(path, rows, 64, 0, chunk_rows)
    from sqflow.store import open_store

    store = open_store(path)
    D = store.to_dask()
    centers = blob_centers(64, 16, 0) + 0.5
    est = StochasticQuantization(64, init=centers, max_iter=1, tol=0.0, scale=1.0)
    p = est._check_params(16)
    args = est._kernel_args(p, 1.0)
    passes = DaskPasses(client, D)
    rng = np.random.RandomState(0)

    def one_pass():
        state = OptimizerState.start(centers, "sgd")
        order = rng.permutation(len(passes.bounds))
        seeds = rng.randint(2**31 - 1, size=len(passes.bounds))
        t0 = time.perf_counter()
        passes.run_pass(state, args, order, seeds)
        return time.perf_counter() - t0

    def bare():
        t0 = time.perf_counter()
        da.from_zarr(store.embedding).sum().compute()
        return time.perf_counter() - t0

    one_pass()  # compiles the kernel on the workers
    bare()
    t_pass, t_bare = [], []
    for _ in range(repeats):
        t_bare.append(bare())
        t_pass.append(one_pass())
    out = {
        "store": store_info,
        "workers": len(client.nthreads()),
        "W": passes.n_parallel,
        "blocks_per_task": passes.blocks_per_task,
        "pass_s": t_pass,
        "bare_sum_s": t_bare,
        "pass_s_median": float(np.median(t_pass)),
        "bare_sum_s_median": float(np.median(t_bare)),
        "ratio": float(np.median(t_pass) / np.median(t_bare)),
        "rows_per_s_pass": rows / float(np.median(t_pass)),
    }
    shutil.rmtree(path, ignore_errors=True)
    return out


def overheads(client, K: int = 64, d: int = 16) -> dict:
    """Driver cost of composing one round (per task) and the scheduler's cost per task."""
    from sqflow.distributed import TaskResult, combine
    from sqflow.optimizers import OPTIMIZER_CODES, OptimizerState
    from sqflow.store import open_store  # noqa: F401 - same imports as a fit

    est_args = None
    from sqflow import StochasticQuantization

    est = StochasticQuantization(K, init=np.zeros((K, d)), scale=1.0)
    p = est._check_params(d)
    est_args = est._kernel_args(p, 1.0)
    rng = np.random.default_rng(0)
    start = OptimizerState.start(rng.normal(size=(K, d)), "sgd")
    out = {"combine_ms_per_task": {}}
    for W in (2, 8, 32, 128):
        results = []
        for _ in range(W):
            end = start.copy()
            end.centers += rng.normal(scale=0.01, size=(K, d))
            end.count += 10
            keep = np.ones((4, K, d))
            results.append(TaskResult(end, keep, 0.0, 0, 0, []))
        reps = max(3, 200 // W)
        t0 = time.perf_counter()
        for _ in range(reps):
            combine(start, results, [start] * W, est_args)
        out["combine_ms_per_task"][W] = (time.perf_counter() - t0) / reps / W * 1e3
    assert OPTIMIZER_CODES  # the same module the fit uses
    # scheduler + transfer cost of one small task (submit, run a no-op, gather), 400 tasks
    client.gather(client.map(abs, range(50)))
    t0 = time.perf_counter()
    client.gather(client.map(abs, range(1000, 1400)))
    out["scheduler_ms_per_task"] = (time.perf_counter() - t0) / 400 * 1e3
    return out


def grid(client, workers: list[int], chunks: list[int], optimizers: list[str]) -> list[dict]:
    import dask.array as da
    from sklearn.datasets import make_blobs

    from sqflow import StochasticQuantization

    X, _ = make_blobs(60_000, n_features=8, centers=12, random_state=3)
    X = X.astype(np.float32)
    rows = []
    for opt in optimizers:
        serial = StochasticQuantization(12, optimizer=opt, random_state=1).fit(X)
        for c in chunks:
            D = da.from_array(X, chunks=(c, 8))
            for W in workers:
                t0 = time.perf_counter()
                est = StochasticQuantization(12, optimizer=opt, random_state=1, n_parallel=W)
                est.fit(D)
                rows.append(
                    {
                        "optimizer": opt,
                        "chunk_rows": c,
                        "W": W,
                        "objective_ratio": est.objective_ / serial.objective_,
                        "passes": est.n_iter_,
                        "serial_passes": serial.n_iter_,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--chunk-rows", type=int, default=65_536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--chunks", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--overheads-only", action="store_true")
    ap.add_argument("--name", default=None, help="results file name (default scale_out)")
    a = ap.parse_args(argv)

    import warnings

    from distributed import Client, LocalCluster

    warnings.filterwarnings("ignore")
    out = {"benchmark": "scale_out", "machine": machine(), "loadavg_at_start": os.getloadavg()}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        if a.overheads_only:
            a.skip_speed = a.skip_grid = True
        if not a.skip_speed:
            work = Path(tempfile.mkdtemp(prefix="sqbench-"))
            try:
                out["speed"] = speed(client, a.rows, a.chunk_rows, a.repeats, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            s = out["speed"]
            print_table(
                [
                    {
                        "rows": a.rows,
                        "chunk_rows": s["store"]["chunk_rows"],
                        "pass_s": s["pass_s_median"],
                        "bare_sum_s": s["bare_sum_s_median"],
                        "ratio": s["ratio"],
                    }
                ],
                ["rows", "chunk_rows", "pass_s", "bare_sum_s", "ratio"],
            )
        out["overheads"] = overheads(client)
        print(out["overheads"], flush=True)
        if not a.skip_grid:
            out["grid"] = grid(client, a.workers, a.chunks, a.optimizers)
            print_table(
                out["grid"],
                ["optimizer", "chunk_rows", "W", "objective_ratio", "passes", "serial_passes"],
            )
    out["loadavg_at_end"] = os.getloadavg()
    out["args"] = vars(a)
    write_results(a.name or ("scale_out_overheads" if a.overheads_only else "scale_out"), out)


if __name__ == "__main__":
    main()
