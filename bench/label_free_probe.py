"""Label-free encoder probe on CPU (issue 13): a quick, reproducible check of the label-free
recipes on a MNIST subset, small enough for this 2-core machine.

    python bench/label_free_probe.py                       # self-training + hidden NT-Xent
    python bench/label_free_probe.py --space latent --no-pseudo   # the previous encoder
    python bench/label_free_probe.py --source manifold --threads 2   # the manifold teacher

Trains ``train_encoder`` on ``--rows`` training images (seeded subset, all labels -1) for
``--epochs`` epochs (batch 256, no early stopping), embeds the subset and 2,000 test images,
fits KMeans (K = 10, 5 inits) on the training embeddings and scores its assignment of the test
images: clustering accuracy (Hungarian) and NMI. Appends one JSON record to
``bench/results/label_free_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", choices=["latent", "hidden"], default="hidden")
    ap.add_argument("--no-pseudo", action="store_true")
    ap.add_argument("--source", choices=["embedding", "manifold"], default="embedding")
    ap.add_argument("--start-epoch", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/label_free_probe.json")
    a = ap.parse_args()
    from sklearn.cluster import KMeans

    from sqflow.datasets import load_mnist
    from sqflow.embedding import train_encoder
    from sqflow.paper import clustering_scores

    torch.set_num_threads(a.threads)
    x, _ = load_mnist("train")
    xt, yt = load_mnist("test")
    x = x[np.random.default_rng(0).permutation(len(x))[: a.rows]]
    pseudo = (
        None
        if a.no_pseudo
        else {"n_clusters": 10, "source": a.source, "start_epoch": a.start_epoch}
    )
    t0 = time.perf_counter()
    enc = train_encoder(
        x,
        np.full(len(x), -1),
        epochs=a.epochs,
        batch_size=256,
        seed=0,
        patience=10_000,  # no early stopping: every epoch runs
        progress=False,
        selfsup_space=a.space,
        pseudo_labels=pseudo,
    )
    z, zt = enc.embed(x), enc.embed(xt[:2000])
    km = KMeans(10, n_init=5, random_state=0).fit(z)
    s = clustering_scores(km.predict(zt), yt[:2000], 10)
    rec = {
        "space": a.space,
        "pseudo_labels": pseudo,
        "rows": a.rows,
        "epochs": a.epochs,
        "teacher": enc.metadata["params"]["pseudo_labels"]
        and enc.metadata["params"]["pseudo_labels"].get("teacher_result"),
        "clustering_accuracy": s["clustering_accuracy"],
        "nmi": s["nmi"],
        "seconds": time.perf_counter() - t0,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": a.threads},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(a.out)
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*runs, rec], indent=1) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
