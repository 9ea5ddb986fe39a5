"""Why the manifold teacher clusters learned features, not pixels (issue 13; README).

10,000 seeded MNIST training rows, no labels used for anything but scoring: the teacher's
labels (``keep=1``, every row) from raw pixels for three seeds, and from the CNN's features
after 5 epochs of NT-Xent (one encoder) for three seeds; clustering accuracy (Hungarian) and NMI
against the true TRAINING labels. Writes ``bench/results/teacher_inputs.json``.

    python bench/teacher_inputs.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from sqflow.datasets import load_mnist
    from sqflow.embedding import preprocess, train_encoder
    from sqflow.embedding.teacher import manifold_pseudo_labels
    from sqflow.paper import clustering_scores

    torch.set_num_threads(2)
    x, y = load_mnist("train")
    idx = np.random.default_rng(0).permutation(len(x))[:10_000]
    x, y = x[idx], y[idx]
    unl = np.full(len(y), -1)
    rows = []

    def score(feats: np.ndarray, inputs: str, seed: int) -> None:
        t = time.perf_counter()
        pl, _ = manifold_pseudo_labels(feats, unl, keep=1.0, n_clusters=10, seed=seed)
        s = clustering_scores(pl, y, 10)
        rows.append(
            {
                "inputs": inputs,
                "seed": seed,
                "clustering_accuracy": s["clustering_accuracy"],
                "nmi": s["nmi"],
                "seconds": time.perf_counter() - t,
            }
        )
        print(rows[-1], flush=True)

    pixels = x.reshape(len(x), -1).astype(np.float32) / 255
    for seed in range(3):
        score(pixels, "raw pixels", seed)
    enc = train_encoder(
        x,
        unl,
        epochs=5,
        batch_size=256,
        seed=0,
        patience=10_000,
        progress=False,
        selfsup_space="hidden",
        pseudo_labels={"start_epoch": 1000, "n_clusters": 10},
    )  # start_epoch beyond the epochs: NT-Xent on the projection head only
    net = enc.network.eval()
    xt = preprocess(x, enc.preprocessing)
    with torch.no_grad():
        f = torch.cat([net.features(xt[i : i + 2048]).flatten(1) for i in range(0, len(xt), 2048)])
        feats = torch.nn.functional.normalize(f, dim=1).numpy()
    for seed in range(3):
        score(feats, "CNN features after 5 NT-Xent epochs", seed)
    out = Path("bench/results/teacher_inputs.json")
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "n": len(y),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": "2-core CPU, 2 torch threads",
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
