"""What the teacher's ``spread`` adds (issue 13; README "Spreading the teacher's labels").

The manifold teacher keeps, per component, the half of its unlabeled rows that lie in the
densest part; ``teacher={"spread": k}`` also labels a row left out when its ``k`` nearest
labeled or kept rows (PCA space) all carry its component's class. On the features the teacher
receives after 5 epochs (10,000 seeded MNIST training rows, 10 or 60 labels per class, as in
``bench/teacher_variants.py``; and with none: label-free, where a component's class is the
one the Hungarian matching of the mixture's labels to the true classes gives it), the shipped
:func:`manifold_pseudo_labels` is called with
``spread`` 0 and 10, and with ``keep`` 1 (the mixture's own label of every row). Scored against
the true labels of the unlabeled TRAINING rows (no test image): the kept share, the rows left
out (the mixture's label of them), and the rows ``spread`` labels among them. Writes
``bench/results/teacher_spread.json``.

    python bench/teacher_spread.py [rows]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import machine, print_table, write_results  # noqa: E402
from bench.teacher_inputs import _teacher_features_after  # noqa: E402
from sqflow.embedding.teacher import manifold_pseudo_labels  # noqa: E402
from sqflow.paper import hungarian_mapping  # noqa: E402


def _acc(got: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float | None:
    return float((got[rows] == y[rows]).mean()) if len(rows) else None


def _named(got: np.ndarray, mapping: np.ndarray | None) -> np.ndarray:
    """Pseudo-labels as classes: label-free, component ids through ``mapping`` (-1 stays)."""
    if mapping is None:
        return got
    return np.where(got >= 0, mapping[np.maximum(got, 0)], -1)


def main() -> None:
    from sqflow.datasets import load_mnist
    from sqflow.openmp_pool import launch_numba_pool

    torch.set_num_threads(2)
    launch_numba_pool()
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    x_all, y_all = load_mnist("train")
    perm = np.random.default_rng(0).permutation(len(x_all))
    x, y = x_all[perm[:n_rows]], y_all[perm[:n_rows]].astype(np.int64)
    rows = []
    for per_class in (0, 10, 60):
        labels = np.full(len(y), -1)
        for c in range(10):
            labels[np.flatnonzero(y == c)[:per_class]] = c
        feats = _teacher_features_after(x, labels, epochs=5)
        unl = labels < 0
        k = {"n_clusters": 10} if per_class == 0 else {}
        off = {"spread": 0}  # explicit: the default is "auto"
        kept, _ = manifold_pseudo_labels(feats, labels, keep=0.5, seed=0, teacher=off, **k)
        spread, info = manifold_pseudo_labels(
            feats, labels, keep=0.5, seed=0, teacher={"spread": 10}, **k
        )
        mixture, _ = manifold_pseudo_labels(feats, labels, keep=1.0, seed=0, teacher=off, **k)
        mapping = None
        if per_class == 0:
            m = mixture >= 0
            mapping = hungarian_mapping(mixture[m], y[m], 10)
            kept, spread, mixture = (_named(a, mapping) for a in (kept, spread, mixture))
        kept_rows = np.flatnonzero(unl & (kept >= 0))
        left_out = np.flatnonzero(unl & (kept < 0))
        added = np.flatnonzero(unl & (kept < 0) & (spread >= 0))
        rows.append(
            {
                "rows": n_rows,
                "labels_per_class": per_class,
                "kept": len(kept_rows),
                "kept_acc": _acc(kept, y, kept_rows),
                "left_out": len(left_out),
                "left_out_mixture_acc": _acc(mixture, y, left_out),
                "spread_labeled": len(added),
                "spread_share_of_left_out": len(added) / len(left_out) if len(left_out) else None,
                "spread_acc": _acc(spread, y, added),
                "all_pseudo_labeled_acc": _acc(spread, y, np.flatnonzero(unl & (spread >= 0))),
                "n_spread_recorded": info["n_spread"],
                "components_named": "hungarian on training rows" if per_class == 0 else "labels",
            }
        )
        print(rows[-1], flush=True)
    print_table(rows, list(rows[0]))
    write_results(
        "teacher_spread", {"benchmark": "teacher_spread", "machine": machine(), "rows": rows}
    )


if __name__ == "__main__":
    main()
