"""Why the manifold teacher clusters learned features, not pixels (issue 13; README).

10,000 seeded MNIST training rows, no labels used for anything but scoring: the teacher's
labels (``keep=1``, every row) from raw pixels for three seeds, and from the CNN's features
after 5 epochs of NT-Xent (one encoder, taken from the teacher's own call) for three seeds; clustering accuracy (Hungarian) and NMI
against the true TRAINING labels. Writes ``bench/results/teacher_inputs.json``.

    python bench/teacher_inputs.py

The recorded ``teacher_inputs.json`` came from the first version of this script, which trained
the encoder on 90 % of the rows (10 % held out for its validation) and read the features off
the returned network; ``train_encoder`` has since refused the ``start_epoch`` beyond the epochs
that it used, and this version (all rows, features as the teacher receives them) has not been
re-run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch


class _Captured(Exception):
    """Raised by the spy once it holds the teacher's inputs: training stops there."""


def _teacher_features_after(x: np.ndarray, labels: np.ndarray, epochs: int) -> np.ndarray:
    """The features the manifold teacher is given after ``epochs`` epochs of NT-Xent on the
    projection head (as in a training run with ``start_epoch=epochs``): the teacher's first
    call is intercepted and training stops there."""
    import sqflow.embedding.encoder as encoder_module
    from sqflow.embedding import train_encoder

    got: dict = {}
    real = encoder_module.manifold_pseudo_labels

    def spy(feats, *args, **kwargs):
        got["feats"] = np.array(feats)
        raise _Captured

    encoder_module.manifold_pseudo_labels = spy
    try:
        train_encoder(
            x,
            labels,
            epochs=epochs + 1,
            batch_size=256,
            seed=0,
            patience=10_000,
            progress=False,
            selfsup_space="hidden",
            pseudo_labels={"source": "manifold", "start_epoch": epochs, "n_clusters": 10},
            val_fraction=0.0,  # no held-out rows: the teacher is given every row, in order
        )
    except _Captured:
        pass
    finally:
        encoder_module.manifold_pseudo_labels = real
    assert len(got["feats"]) == len(x)
    return got["feats"]


def main() -> None:
    from sqflow.datasets import load_mnist
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
    feats = _teacher_features_after(x, unl, epochs=5)
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
