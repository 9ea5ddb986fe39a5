"""The ``sqflow`` command line.

Sub-commands register themselves in ``COMMANDS``; each is a function ``(argv) -> int``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _cluster(argv: list[str]) -> int:
    """Cluster the built-in MNIST pixels (or synthetic blobs) with SQ; print objective and sizes."""
    from sqflow import StochasticQuantization
    from sqflow.optimizers import OPTIMIZER_CODES

    ap = argparse.ArgumentParser(prog="sqflow cluster", description=_cluster.__doc__)
    ap.add_argument("--data", choices=["mnist", "blobs"], default="mnist",
                    help="built-in MNIST training pixels (60,000 x 784) or 100,000 3-D blobs")
    ap.add_argument("--n-clusters", type=int, default=10)
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZER_CODES), default="sgd")
    ap.add_argument("--rank", type=float, default=3.0, help="exponent r of the distance (>= 1)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.data == "mnist":
        from sqflow.datasets import load_mnist

        images, labels = load_mnist("train")
        X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    else:
        from sklearn.datasets import make_blobs

        X, labels = make_blobs(100_000, n_features=3, centers=args.n_clusters, random_state=args.seed)
    print(f"data: {args.data}, {X.shape[0]} rows x {X.shape[1]} features")
    est = StochasticQuantization(
        args.n_clusters, optimizer=args.optimizer, rank=args.rank, batch_size=args.batch_size,
        max_iter=args.max_iter, random_state=args.seed, verbose=1,
    )
    t = time.perf_counter()
    est.fit(X)
    elapsed = time.perf_counter() - t
    print(f"SQ-{args.optimizer} r={args.rank:g}: objective {est.objective_:.6g} "
          f"(mean of min_k ||x - y_k||^r) after {est.n_iter_} passes, {est.n_steps_} steps, {elapsed:.2f} s")
    sizes = np.bincount(est.labels_, minlength=args.n_clusters)
    print("cluster sizes:")
    for k, size in enumerate(sizes):
        line = f"  cluster {k:>3}: {size:>7}"
        if labels is not None:
            members = labels[est.labels_ == k]
            if members.size:
                top = np.bincount(members).argmax()
                line += f"   majority label {top} ({np.mean(members == top):.0%})"
        print(line)
    return 0


COMMANDS = {
    "cluster": _cluster,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sqflow COMMAND [options]\n\ncommands:")
        for name, fn in COMMANDS.items():
            print(f"  {name:<10} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sqflow: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[name](rest)


if __name__ == "__main__":
    raise SystemExit(main())
