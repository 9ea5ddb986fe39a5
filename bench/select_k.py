"""K chosen from the data: ``sqflow.model_selection.select_n_clusters`` on blobs and on MNIST.

Blob sets: ten Gaussian-blob sets of 20,000 rows each (sklearn ``make_blobs``, centers uniform
in the box [-10, 10]^d, seed = set index), K from 3 to 30, d from 2 to 50, cluster std from 0.7
to 3.0. The ten (K, d, std) triples below were fixed before the selector was first run on them
and were not changed afterwards. Some sets may hold blobs that overlap (centers are drawn at
random, not kept apart); the table gives the separation of the closest pair of true centers in
units of the std, so a miss can be read against it.

The selector's default criterion and ``init_candidates`` were changed AFTER its first run on
these ten sets (silhouette, 3 seedings: 6 of 10; that run's output is kept unchanged in
``bench/results/select_k_first_run_silhouette.json``). So the same ten (K, d, std) triples are
also drawn again with seeds 100-109 ("fresh" sets, never looked at before the choice) and both
collections are reported.

MNIST: a triplet encoder (``sqflow.embedding.train_encoder``, the paper CNN, latent_dim=3)
trained on 5,000 labeled training images for 5 epochs; K is selected on the embeddings of the
10,000 TEST images, which the encoder never saw. The true K there is 10 (digits).

Selector settings: the defaults of ``select_n_clusters`` (Calinski-Harabasz, k_range=(2, 30),
10,000 fitting rows, 3,000 held-out rows, n_init=1, init_candidates=10, SQ defaults otherwise:
rank 3, sgd), random_state=0.

    python bench/select_k.py [--quick]      # --quick: blob sets only, k_range (2, 12) on MNIST
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.distance import pdist
from sklearn.datasets import make_blobs

from bench._report import machine, print_table, write_results
from sqflow.model_selection import select_n_clusters

# (K, d, cluster std): fixed before the first run (see the module docstring)
BLOB_SETS = [
    (3, 2, 1.0),
    (5, 2, 0.8),
    (8, 5, 1.5),
    (10, 10, 2.0),
    (12, 3, 0.7),
    (15, 20, 2.5),
    (20, 8, 1.0),
    (25, 16, 1.5),
    (30, 32, 2.0),
    (4, 50, 3.0),
]
N_ROWS = 20_000


def blob_rows(seed: int, seed_offset: int) -> list[dict]:
    rows = []
    for i, (k, d, std) in enumerate(BLOB_SETS):
        X, _, centers = make_blobs(
            N_ROWS,
            n_features=d,
            centers=k,
            cluster_std=std,
            random_state=i + seed_offset,
            return_centers=True,
        )
        t0 = time.perf_counter()
        sel = select_n_clusters(X, random_state=seed)
        rows.append(
            {
                "set": f"{'fresh' if seed_offset else 'blob'}-{i}",
                "data_seed": i + seed_offset,
                "true_K": k,
                "d": d,
                "std": std,
                "min_center_gap_std": float(pdist(centers).min() / std),
                "chosen_K": sel.n_clusters,
                "right": sel.n_clusters == k,
                "score_at_true": sel.scores[sel.k_values.index(k)],
                "score_at_chosen": max(sel.scores),
                "seconds": time.perf_counter() - t0,
                "curve": sel.as_dict(),
            }
        )
        r = rows[-1]
        print(
            f"{r['set']}: K={k} d={d} std={std} -> {r['chosen_K']} ({r['seconds']:.1f} s)",
            flush=True,
        )
    return rows


def mnist_row(seed: int, k_range: tuple[int, int]) -> dict:
    import torch

    from sqflow.datasets import load_mnist
    from sqflow.embedding import train_encoder

    torch.set_num_threads(2)
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    idx = np.random.default_rng(0).permutation(len(x))[:5000]
    t0 = time.perf_counter()
    enc = train_encoder(x[idx], y[idx], epochs=5, batch_size=500, seed=0, progress=False)
    train_s = time.perf_counter() - t0
    z = enc.embed(xt)
    t0 = time.perf_counter()
    sel = select_n_clusters(z, k_range=k_range, random_state=seed)
    return {
        "set": "mnist-test-embeddings",
        "true_K": 10,
        "d": int(z.shape[1]),
        "n_rows": int(z.shape[0]),
        "encoder": "paper CNN, latent 3, 5000 train images, 5 epochs",
        "encoder_train_seconds": train_s,
        "chosen_K": sel.n_clusters,
        "right": sel.n_clusters == 10,
        "score_at_true": sel.scores[sel.k_values.index(10)],
        "score_at_chosen": max(sel.scores),
        "seconds": time.perf_counter() - t0,
        "curve": sel.as_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows = blob_rows(args.seed, 0)
    fresh = [] if args.quick else blob_rows(args.seed, 100)
    mnist = mnist_row(args.seed, (2, 12) if args.quick else (2, 30))
    cols = [
        "set",
        "true_K",
        "d",
        "std",
        "min_center_gap_std",
        "chosen_K",
        "right",
        "score_at_true",
        "score_at_chosen",
        "seconds",
    ]
    print_table(rows + fresh + [mnist], cols)
    n_right = sum(r["right"] for r in rows)
    n_fresh = sum(r["right"] for r in fresh)
    print(
        f"blob sets right: {n_right}/{len(rows)}; fresh sets: {n_fresh}/{len(fresh)}; "
        f"MNIST embeddings: K = {mnist['chosen_K']}"
    )
    if not args.quick:
        write_results(
            "select_k",
            {
                "machine": machine(),
                "criterion": "held-out Calinski-Harabasz of SQ fits (sqflow.model_selection)",
                "settings": "select_n_clusters defaults, random_state=seed",
                "seed": args.seed,
                "blob_sets_right": n_right,
                "fresh_sets_right": n_fresh,
                "first_run": "select_k_first_run_silhouette.json (silhouette, 3 seedings)",
                "blob_sets": rows,
                "fresh_sets": fresh,
                "mnist": mnist,
            },
        )


if __name__ == "__main__":
    main()
