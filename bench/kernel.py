"""Throughput of the compiled SQ kernel: sample-steps per second on one core.

One pass of Algorithm 1 (batch_size=1, sgd, r=3) over N=1M float32 rows, at (d=3, K=10) and
(d=16, K=64), through the estimator's own block loop (sequential rows, and shuffled rows:
gather into a contiguous block, then step). Also the other optimizers and the mini-batch path.
Best of ``--repeats`` runs (the machine is shared). Targets: >= 20 M/s and >= 5 M/s.

    python bench/kernel.py [--n 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench._report import machine, print_table, write_results
from sqflow import StochasticQuantization
from sqflow.chunks import block_bounds
from sqflow.distributed import run_block
from sqflow.optimizers import OptimizerState


def one_pass(X, K, optimizer="sgd", batch_size=1, shuffle=False, seed=0) -> float:
    """Seconds for one pass of SQ steps over X (compiled kernel, the estimator's block loop)."""
    est = StochasticQuantization(K, optimizer=optimizer, rank=3.0, batch_size=batch_size, scale=1.0)
    p = est._check_params(X.shape[1])
    state = OptimizerState.start(X[:K].astype(np.float64), optimizer)
    rng = np.random.RandomState(seed)
    bounds = block_bounds(len(X), p["rows_per_block"])
    t = time.perf_counter()
    perm = rng.permutation(len(X)) if shuffle else None
    args = est._kernel_args(p, 1.0)
    for start, stop in bounds:
        block = X[start:stop] if perm is None else np.take(X, perm[start:stop], axis=0)
        state = run_block(block, state, args, state.t, None, start, check=False)[0]
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    cases = [(3, 10, 20e6), (16, 64, 5e6)]
    for d, K, target in cases:
        X = rng.standard_normal((args.n, d)).astype(np.float32)
        one_pass(X[:20_000], K)  # compile outside the timing
        variants = [("sgd", 1, False), ("sgd", 1, True)]
        variants += [(o, 1, False) for o in ("momentum", "nag", "adagrad", "rmsprop", "adam")]
        variants += [("sgd", 256, False)]
        for opt, bs, shuffle in variants:
            one_pass(X[:20_000], K, opt, bs)
            best = min(one_pass(X, K, opt, bs, shuffle) for _ in range(args.repeats))
            rate = args.n / best
            row = {
                "n": args.n,
                "d": d,
                "K": K,
                "optimizer": opt,
                "batch_size": bs,
                "order": "shuffled" if shuffle else "sequential",
                "seconds": round(best, 4),
                "M_samples_per_s": round(rate / 1e6, 2),
            }
            if opt == "sgd" and bs == 1:
                row["target_M_per_s"] = target / 1e6
                row["meets_target"] = bool(rate >= target)
            rows.append(row)
            print(
                f"d={d:>2} K={K:>2} {opt:<8} batch={bs:<3} {row['order']:<10} {row['M_samples_per_s']:>6.2f} M/s"
            )
    print()
    table = print_table(
        rows,
        [
            "d",
            "K",
            "optimizer",
            "batch_size",
            "order",
            "M_samples_per_s",
            "target_M_per_s",
            "meets_target",
        ],
    )
    write_results(
        "kernel",
        {
            "benchmark": "kernel",
            "machine": machine(),
            "repeats": args.repeats,
            "rows": rows,
            "table_markdown": table,
        },
    )


if __name__ == "__main__":
    main()
