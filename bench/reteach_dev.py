"""Re-teaching on a dev split of the TRAINING set (issue 13; README): how often the manifold
teacher should label again, chosen without any test image.

``--rows`` seeded MNIST training images (10 labels per class, the rest unlabeled) train the
encoder (batch 256, the teacher after epoch 5, then every ``every`` epochs); 3,000 other
training images are the dev split. KMeans seeded with the labeled class means on the training
embeddings names the clusters by their labeled members; the dev rows' weighted F1 is reported.
Appends one JSON line per run to ``bench/results/reteach_dev.jsonl``.

    python bench/reteach_dev.py none 13 10000 2        # teach once, 13 epochs, 2 threads
    python bench/reteach_dev.py 4 13 10000 2           # every 4 epochs
    python bench/reteach_dev.py 3 14 10000 2 0.8       # every 3, keep 0.8
    python bench/reteach_dev.py 4 13 10000 2 0.5 augment   # every 4, augmented triplet batches
    python bench/reteach_dev.py 4 13 10000 2 0.5 - spread=10   # every 4, teacher spread 10
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import f1_score

    from sqflow.datasets import load_mnist
    from sqflow.embedding import train_encoder

    every = None if sys.argv[1] == "none" else int(sys.argv[1])
    epochs, rows, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    keep = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
    augment = len(sys.argv) > 6 and sys.argv[6] == "augment"
    teacher = {k: int(v) for k, v in (a.split("=") for a in sys.argv[7:])}  # e.g. spread=10
    torch.set_num_threads(threads)
    x, y = load_mnist("train")
    perm = np.random.default_rng(0).permutation(len(x))
    tr, dev = perm[:rows], perm[rows : rows + 3000]
    lab = np.full(rows, -1)
    for c in range(10):
        lab[np.flatnonzero(y[tr] == c)[:10]] = c
    t0 = time.perf_counter()
    pl = {"source": "manifold", "start_epoch": 5, "every": every, "keep": keep}
    if teacher:
        pl["teacher"] = teacher
    enc = train_encoder(
        x[tr], lab, epochs=epochs, batch_size=256, seed=0, selfsup_space="hidden",
        pseudo_labels=pl, progress=False, augment=augment,
    )  # fmt: skip
    z, zd = enc.embed(x[tr]), enc.embed(x[dev])
    km = KMeans(10, init=np.stack([z[lab == c].mean(0) for c in range(10)]), n_init=1).fit(z)
    names = np.array(
        [
            np.bincount(lab[(km.labels_ == k) & (lab >= 0)], minlength=10).argmax()
            if ((km.labels_ == k) & (lab >= 0)).any()
            else k
            for k in range(10)
        ]
    )
    m = enc.metadata
    res = m["params"]["pseudo_labels"]
    teachings = res["teachings"] or [res["teacher_result"]]
    rec = {
        "every": every,
        "keep": keep,
        "augment": augment,
        "teacher": teacher,
        "epochs": epochs,
        "rows": rows,
        "dev_f1": float(f1_score(y[dev], names[km.predict(zd)], average="weighted")),
        "train_acc": float((names[km.labels_] == y[tr]).mean()),
        "teach": [(t["epoch"], t.get("labeled_agreement")) for t in teachings],
        "pseudo_labeled": [t.get("n_pseudo_labeled") for t in teachings],
        # records without it predate stop 15's clamp: the labels only seeded the means
        "mixture": teachings[-1].get("mixture", "seeded means"),
        "best_epoch": m["metrics"]["best_epoch"],
        "seconds": time.perf_counter() - t0,
        "torch_threads": threads,
    }
    print(json.dumps(rec))
    with open(Path("bench/results/reteach_dev.jsonl"), "a") as fh:
        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
