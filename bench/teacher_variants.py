"""Would the manifold teacher label better if it used the labels more? (issue 13; README)

Until stop 15 the teacher used labels only to start each mixture component at its class's
mean. Three ways to use them more, on the same features (2,000 and 10,000 seeded MNIST
training rows, 10 or 60 labels per class, the CNN's features after 5 epochs as the teacher receives them, taken from
its own call): the labeled rows clamped to their class in every EM step (a semi-supervised
mixture, written here), UMAP given the labels (``target_weight`` 0.5 and 0.2, -1 = unlabeled),
and label spreading over a k-NN graph of the UMAP space. Scored against the true labels of the
unlabeled TRAINING rows (no test image): accuracy of all of them, and of the half each
component keeps (``keep`` = 0.5, the shipped ranking), which is what the triplet loss trains
on. Writes ``bench/results/teacher_variants.json``.

    python bench/teacher_variants.py [rows]   # one size given: a smoke test, nothing written

The recorded JSON (commit ab15f79, 2026-12-01 02:53 UTC, nothing else running) was written
before the script used ``bench._report``: the same rows, with ``date`` and a one-line
``machine`` instead of the machine record.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import machine, write_results  # noqa: E402
from bench.teacher_inputs import _teacher_features_after  # noqa: E402
from sqflow.embedding.teacher import clamped_mixture  # noqa: E402


def _clamped(emb, labels, k):
    """The teacher's mixture since stop 15, as (components, log density, max posterior)."""
    lab = np.flatnonzero(labels >= 0)
    post, density, _, _ = clamped_mixture(emb, lab, labels[lab], k)
    return post.argmax(1), density, post.max(1)


def _kept_half(comp, density, conf, unl) -> np.ndarray:
    """The rows the shipped teacher would keep: per component, half of its unlabeled rows,
    clearly assigned (posterior >= 0.95) first, then by mixture density."""
    kept = []
    for c in np.unique(comp):
        m = np.flatnonzero((comp == c) & unl)
        order = np.lexsort((-density[m], ~(conf[m] >= 0.95)))
        kept.append(m[order[: int(np.ceil(0.5 * len(m)))]])
    return np.concatenate(kept)


def _seeded_mixture(emb, labels, k):
    from sklearn.mixture import GaussianMixture

    lab = labels >= 0
    means = np.stack([emb[lab & (labels == c)].mean(0) for c in range(k)])
    g = GaussianMixture(k, covariance_type="full", means_init=means, random_state=0).fit(emb)
    p = g.predict_proba(emb)
    return p.argmax(1), g.score_samples(emb), p.max(1)


def _umap(pf, labels=None, target_weight=0.5):
    """The teacher's UMAP (10-D, 15 neighbours, min_dist 0, seeded); given ``labels`` (-1 =
    unlabeled), UMAP's semi-supervised mode with that ``target_weight``."""
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {} if labels is None else {"target_weight": target_weight}
        u = umap.UMAP(n_neighbors=15, n_components=10, min_dist=0.0, random_state=0, **kw)
        return np.asarray(u.fit_transform(pf, y=labels), dtype=np.float64)


def _record(rows, y, labels, variant, comp, density=None, conf=None, seconds=None) -> None:
    lab, unl = labels >= 0, labels < 0
    row = {
        "rows": len(y),
        "labels_per_class": int(np.bincount(labels[lab]).min()),
        "variant": variant,
        "accuracy_unlabeled": float((comp[unl] == y[unl]).mean()),
        "labeled_on_their_class": float((comp[lab] == y[lab]).mean()),
        "seconds_umap": seconds,
    }
    if density is not None:
        kept = _kept_half(comp, density, conf, unl)
        row["accuracy_kept_half"] = float((comp[kept] == y[kept]).mean())
    rows.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    from sqflow.datasets import load_mnist
    from sqflow.openmp_pool import launch_numba_pool

    torch.set_num_threads(2)
    launch_numba_pool()
    x_all, y_all = load_mnist("train")
    sizes = [int(sys.argv[1])] if len(sys.argv) > 1 else [2_000, 10_000]
    perm = np.random.default_rng(0).permutation(len(x_all))
    rows = []
    for n_rows, per_class in [(n, p) for n in sizes for p in (10, 60)]:
        x, y = x_all[perm[:n_rows]], y_all[perm[:n_rows]]
        labels = np.full(len(y), -1)
        for c in range(10):
            labels[np.flatnonzero(y == c)[:per_class]] = c
        feats = _teacher_features_after(x, labels, epochs=5)
        pf = PCA(50, random_state=0).fit_transform(feats)

        t = time.perf_counter()
        emb = _umap(pf)
        s = time.perf_counter() - t
        rec = (rows, y, labels)
        _record(
            *rec,
            "UMAP, mixture seeded at class means (the teacher before stop 15)",
            *_seeded_mixture(emb, labels, 10),
            s,
        )
        _record(
            *rec,
            "UMAP, labeled rows clamped in EM (the teacher since stop 15)",
            *_clamped(emb, labels, 10),
            s,
        )
        spread = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=100)
        _record(*rec, "UMAP, label spreading (10-NN)", spread.fit(emb, labels).transduction_)
        for tw in (0.5, 0.2):
            t = time.perf_counter()
            emb_y = _umap(pf, labels, tw)
            s = time.perf_counter() - t
            name = f"UMAP given the labels (target_weight {tw})"
            _record(*rec, f"{name}, seeded mixture", *_seeded_mixture(emb_y, labels, 10), s)
            _record(*rec, f"{name}, clamped EM", *_clamped(emb_y, labels, 10), s)
    if len(sizes) > 1:  # one size is a smoke test: nothing written
        payload = {"rows": rows, "sizes": sizes, "torch_threads": 2, "machine": machine()}
        write_results("teacher_variants", payload)


if __name__ == "__main__":
    main()
