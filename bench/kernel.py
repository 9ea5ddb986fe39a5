"""Throughput of the compiled SQ kernel: sample-steps per second on one core, beside a naive
compiled reference.

One pass of Algorithm 1 (batch_size=1, sgd, r=3) over N=1M float32 rows, at (d=3, K=10) and
(d=16, K=64), through the estimator's own block loop (sequential rows, and shuffled rows:
gather into a contiguous block, then step, as a fit runs). Beside it, in the same run and the
same block loop, a naive compiled reference of the same steps (``naive_steps``: one center
at a time, features innermost, over row-major centers; the engine's fast-math flags, and a
variant without them). Also the other optimizers and the mini-batch path.

Times are CPU seconds of this thread (``time.thread_time``), best of ``--repeats``: the machine
is shared, and wall time there measures the neighbours. Targets: >= 20 M/s and >= 5 M/s, and
the issue's >= 2x the naive reference at d = 16, K = 64 (shuffled).

    python bench/kernel.py [--n 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit

from bench._report import machine, print_table, write_results
from sqflow import StochasticQuantization
from sqflow._kernels import (
    _FASTMATH,
    _dist_pow,
    _grad_coef,
    _nearest_center,
    _rho,
    _sq_dists,
)
from sqflow.chunks import block_bounds
from sqflow.distributed import run_block
from sqflow.optimizers import OptimizerState


def _naive(X, centers, lo, hi, t_start, lr, sched, t0, power, r, inv_scale, project):
    """Algorithm 1 with sgd, the nearest center found the obvious way: for each row, every
    center's distance (features innermost), keeping the smallest. The step is the engine's
    own (its schedule, gradient and safeguard helpers, so the comparison is the search and
    the loop around it, not ``pow`` calls). Returns the loss sum, like the engine."""
    n, d = X.shape
    K = centers.shape[0]
    z = np.empty(d)
    loss = 0.0
    for i in range(n):
        for j in range(d):
            z[j] = X[i, j] * inv_scale
            if project:
                lo[j] = min(lo[j], z[j])
                hi[j] = max(hi[j], z[j])
        best = 0
        best_d2 = np.inf
        for k in range(K):
            s = 0.0
            for j in range(d):
                diff = z[j] - centers[k, j]
                s += diff * diff
            if s < best_d2:
                best_d2 = s
                best = k
        dist = math.sqrt(best_d2)
        loss += _dist_pow(dist, best_d2, r)
        step = min(_rho(t_start + i, lr, sched, t0, power) * _grad_coef(dist, r), 1.0)
        for j in range(d):
            c = centers[best, j] - step * (centers[best, j] - z[j])
            if project:
                c = min(max(c, lo[j]), hi[j])
            centers[best, j] = c
    return loss


# not cached: numba's cache would not see a change of the engine's helpers inlined here
@njit(nogil=True, error_model="numpy", fastmath=_FASTMATH)
def search_floor(X, centers, nearest):
    """The engine's search alone, rows independent (no step, so no row waits for the last
    one): ``nearest=False`` the squared distances to every center, ``True`` also the argmin.
    What a pass can cost at least with this arithmetic (float64, distances by differences)."""
    n, d = X.shape
    K = centers.shape[0]
    cT = np.ascontiguousarray(centers.T)
    z = np.empty(d)
    dist2 = np.empty(K)
    acc = 0.0
    for i in range(n):
        for j in range(d):
            z[j] = X[i, j]
        if nearest:
            acc += _nearest_center(z, cT, dist2)[1]
        else:
            _sq_dists(z, cT, dist2)
            acc += dist2[i % K]
    return acc


naive_steps = njit(nogil=True, error_model="numpy", fastmath=_FASTMATH)(_naive)
naive_steps_plain = njit(nogil=True, error_model="numpy")(_naive)


def one_pass(X, K, optimizer="sgd", batch_size=1, shuffle=False, seed=0, kernel=None) -> float:
    """CPU seconds for one pass of SQ steps over X through the estimator's block loop: the
    engine's kernel (``kernel=None``) or a naive reference (``naive_steps``...)."""
    est = StochasticQuantization(K, optimizer=optimizer, rank=3.0, batch_size=batch_size, scale=1.0)
    p = est._check_params(X.shape[1])
    state = OptimizerState.start(X[:K].astype(np.float64), optimizer)
    rng = np.random.RandomState(seed)
    bounds = block_bounds(len(X), p["rows_per_block"])
    args = est._kernel_args(p, 1.0)
    t = time.thread_time()
    perm = rng.permutation(len(X)) if shuffle else None
    for start, stop in bounds:
        block = X[start:stop] if perm is None else np.take(X, perm[start:stop], axis=0)
        if kernel is None:
            state = run_block(block, state, args, state.t, None, start, check=False)[0]
        else:
            kernel(
                np.ascontiguousarray(block),
                state.centers,
                state.lo,
                state.hi,
                state.t,
                args.lr,
                args.sched,
                args.t0,
                args.power,
                args.rank,
                args.inv_scale,
                args.project,
            )
            state.t += stop - start
    return time.thread_time() - t


def _timed(fn, *a) -> float:
    t = time.thread_time()
    fn(*a)
    return time.thread_time() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows, ratios = [], []
    cases = [(3, 10, 20e6), (16, 64, 5e6)]
    for d, K, target in cases:
        X = rng.standard_normal((args.n, d)).astype(np.float32)
        # the engine and the naive references, shuffled and sequential, timed alternately
        pair = {"engine": None, "naive": naive_steps, "naive_no_fastmath": naive_steps_plain}
        for shuffle in (False, True):
            for kernel in pair.values():
                one_pass(X[:20_000], K, kernel=kernel)  # compile outside the timing
            times = {name: [] for name in pair}
            for _ in range(args.repeats):
                for name, kernel in pair.items():
                    times[name].append(one_pass(X, K, shuffle=shuffle, kernel=kernel))
            best = {name: min(ts) for name, ts in times.items()}
            order = "shuffled" if shuffle else "sequential"
            for name in pair:
                rate = args.n / best[name]
                row = {
                    "n": args.n,
                    "d": d,
                    "K": K,
                    "kernel": name,
                    "optimizer": "sgd",
                    "batch_size": 1,
                    "order": order,
                    "cpu_seconds": round(best[name], 4),
                    "M_samples_per_s": round(rate / 1e6, 2),
                    "ns_per_sample": round(best[name] / args.n * 1e9, 1),
                }
                if name == "engine":
                    row["target_M_per_s"] = target / 1e6
                    row["meets_target"] = bool(rate >= target)
                rows.append(row)
                print(f"d={d:>2} K={K:>2} sgd      {order:<10} {name:<18} {rate / 1e6:6.2f} M/s")
            ratios.append(
                {
                    "d": d,
                    "K": K,
                    "order": order,
                    "engine_over_naive": round(best["naive"] / best["engine"], 2),
                    "engine_over_naive_no_fastmath": round(
                        best["naive_no_fastmath"] / best["engine"], 2
                    ),
                }
            )
        # the floor: the search alone, rows independent (sequential rows, float64 like a block)
        Xf = np.ascontiguousarray(X, dtype=np.float64)
        C = Xf[:K].copy()
        for nearest in (False, True):
            search_floor(Xf[:1000], C, nearest)
            best = min(_timed(search_floor, Xf, C, nearest) for _ in range(args.repeats))
            name = "search_floor_nearest" if nearest else "search_floor_distances"
            rows.append(
                {
                    "n": args.n,
                    "d": d,
                    "K": K,
                    "kernel": name,
                    "order": "sequential",
                    "cpu_seconds": round(best, 4),
                    "M_samples_per_s": round(args.n / best / 1e6, 2),
                    "ns_per_sample": round(best / args.n * 1e9, 1),
                }
            )
            print(f"d={d:>2} K={K:>2} {name:<28} {best / args.n * 1e9:6.1f} ns/sample")
        del Xf
        variants = [(o, 1) for o in ("momentum", "nag", "adagrad", "rmsprop", "adam")]
        variants += [("sgd", 256)]
        for opt, bs in variants:
            one_pass(X[:20_000], K, opt, bs)
            best = min(one_pass(X, K, opt, bs) for _ in range(args.repeats))
            rate = args.n / best
            rows.append(
                {
                    "n": args.n,
                    "d": d,
                    "K": K,
                    "kernel": "engine",
                    "optimizer": opt,
                    "batch_size": bs,
                    "order": "sequential",
                    "cpu_seconds": round(best, 4),
                    "M_samples_per_s": round(rate / 1e6, 2),
                }
            )
            print(f"d={d:>2} K={K:>2} {opt:<8} batch={bs:<3} sequential {rate / 1e6:6.2f} M/s")
    print()
    table = print_table(
        rows,
        [
            "d",
            "K",
            "kernel",
            "optimizer",
            "batch_size",
            "order",
            "M_samples_per_s",
            "ns_per_sample",
            "target_M_per_s",
            "meets_target",
        ],
    )
    print()
    ratio_table = print_table(
        ratios, ["d", "K", "order", "engine_over_naive", "engine_over_naive_no_fastmath"]
    )
    write_results(
        "kernel",
        {
            "benchmark": "kernel",
            "machine": machine(),
            "repeats": args.repeats,
            "timer": "time.thread_time (CPU seconds of the timing thread)",
            "rows": rows,
            "ratios": ratios,
            "table_markdown": table,
            "ratio_table_markdown": ratio_table,
        },
    )


if __name__ == "__main__":
    main()
