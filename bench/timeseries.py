"""Time series: SQ on the 1-D encoder's embedding against 1-NN-DTW and k-means, on UCR/UEA data.

Data: the four classification datasets that the ``aeon`` wheel ships (``aeon/datasets/data``),
read offline with ``aeon.datasets.load_classification``; train/test split as shipped:

* JapaneseVowels: speech (12 LPC cepstrum channels, 7-29 steps, unequal), 9 speakers,
  270 train / 370 test;
* BasicMotions: accelerometer + gyroscope (6 channels, 100 steps), 4 activities, 40 / 40;
* ItalyPowerDemand: electricity demand (1 channel, 24 steps), 2 seasons, 67 / 1029;
* GunPoint: hand motion (1 channel, 150 steps), 2 classes, 50 / 150.

Per dataset, everything is fitted on the TRAIN split only (the test split chooses nothing: the
settings below were fixed for all four datasets before the first run and are the same for all):

* ``sq_labels``: ``train_encoder`` (1-D CNN, supervised triplet loss with signal augmentation,
  latent_dim 8, at most 300 epochs, val_fraction 0.2; under ``train_encoder``'s
  ``min_val_per_class`` rule (added after the first run) none of the four sets has 10
  validation series per class, so no labeled series is held out and all 300 epochs run),
  then ``StochasticQuantization(K = classes, init="labels")`` on the train embeddings; each
  test series takes the class of its nearest center (weighted F1, accuracy);
* ``sq_label_free``: ``train_encoder`` with all labels -1 (NT-Xent on two signal views of every
  train series), SQ with k-means++ seeding (K = classes); test series assigned to the nearest
  center, scored with the Hungarian clustering accuracy and NMI; ``--label-free-variants``
  adds ``sq_label_free_<variant>`` (self-training, milder views: see ``label_free_kwargs``);
* ``dtw_1nn``: aeon ``KNeighborsTimeSeriesClassifier(distance="dtw")`` (full window, 1 neighbour)
  on the series as shipped (JapaneseVowels unequal-length), the UCR archive's standard baseline;
* ``kmeans_raw``: scikit-learn ``KMeans(K, n_init=10)`` on the raw series (resampled to the
  train split's most common length, standardised per channel with train statistics,
  flattened): label-free (Hungarian accuracy, NMI) and labeled (clusters named by the majority
  train label, then nearest-center classification of the test series).

``--seeds`` repeats the encoder + SQ parts with other seeds (mean and each seed recorded).
Unequal lengths (JapaneseVowels) are resampled to the train split's most common length, as the
time-series source does.

    PYTHONPATH=. python bench/timeseries.py [--datasets GunPoint ...] [--seeds 0 1 2]
        [--parts labels label_free] [--label-free-variants ntxent pseudo_hidden ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from bench._report import machine, print_table, write_results

DATASETS = ("JapaneseVowels", "BasicMotions", "ItalyPowerDemand", "GunPoint")
LATENT_DIM = 8
EPOCHS = 300
PATIENCE = 30
VAL_FRACTION = 0.2


def load(name: str):
    """(train series list of (T, C), y_train int, test list, y_test int, class names)."""
    from aeon.datasets import load_classification

    x_tr, y_tr = load_classification(name, split="train")
    x_te, y_te = load_classification(name, split="test")
    names = sorted(set(y_tr))
    code = {c: i for i, c in enumerate(names)}

    def series(xs):
        return [np.asarray(s, dtype=np.float64).T for s in xs]  # aeon: (C, T) per series

    return (
        series(x_tr),
        np.array([code[c] for c in y_tr]),
        series(x_te),
        np.array([code[c] for c in y_te]),
        names,
        (x_tr, y_tr, x_te, y_te),
    )


def stack(series: list[np.ndarray], length: int) -> np.ndarray:
    from sqflow.resample import resample_series

    return np.stack([resample_series(s, length) for s in series]).astype(np.float32)


LABEL_FREE_VARIANTS = (
    "ntxent",
    "pseudo_hidden",
    "pseudo_latent",
    "ntxent_mild",
    "pseudo_hidden_mild",
)


def label_free_kwargs(variant: str, k: int) -> dict:
    """``train_encoder`` arguments of a label-free variant (K = the number of classes).

    ``ntxent``: NT-Xent on the latent, signal views of :mod:`sqflow.embedding.augment_1d`
    (the first run's setting). ``pseudo_*``: self-training from epoch 5, half of each cluster
    kept, NT-Xent on the projected hidden layer or on the latent. ``*_mild``: the views take
    the milder ranges of ``augment`` (jitter 0.03, scaling 0.1, shift 5 %, crop 10 %) instead of
    the view defaults (0.1, 0.2, 10 %, 20 %): per-channel scaling of 0.2 may erase what tells
    the classes apart (speaker-specific cepstral levels).
    """
    from sqflow.embedding.augment_1d import SIGNAL_AUGMENT_DEFAULT

    pseudo = {"pseudo_labels": {"start_epoch": 5, "keep": 0.5, "n_clusters": k}}
    table = {
        "ntxent": {},
        "pseudo_hidden": {**pseudo, "selfsup_space": "hidden"},
        "pseudo_latent": {**pseudo, "selfsup_space": "latent"},
        "ntxent_mild": {"views": dict(SIGNAL_AUGMENT_DEFAULT)},
        "pseudo_hidden_mild": {
            **pseudo,
            "selfsup_space": "hidden",
            "views": dict(SIGNAL_AUGMENT_DEFAULT),
        },
    }
    return table[variant]


def run_dataset(
    name: str,
    seeds: list[int],
    progress: bool,
    val_fraction: float = VAL_FRACTION,
    parts: tuple[str, ...] = ("labels", "label_free"),
    variants: tuple[str, ...] = ("ntxent",),
) -> dict:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from sklearn.cluster import KMeans

    from sqflow import StochasticQuantization
    from sqflow.distances import nearest
    from sqflow.embedding import train_encoder
    from sqflow.paper import _majority_names, _scores, clustering_scores

    s_tr, y_tr, s_te, y_te, names, raw = load(name)
    k = len(names)
    lengths = Counter(len(s) for s in s_tr)
    length = max(lengths, key=lambda n: (lengths[n], n))  # train split only
    x_tr, x_te = stack(s_tr, length), stack(s_te, length)
    row: dict = {
        "dataset": name,
        "n_train": len(s_tr),
        "n_test": len(s_te),
        "channels": int(x_tr.shape[2]),
        "length": int(length),
        "lengths_train": [int(min(lengths)), int(max(lengths))],
        "classes": k,
    }

    t0 = time.perf_counter()
    dtw = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1)
    dtw.fit(raw[0], raw[1])
    pred = np.array([names.index(c) for c in dtw.predict(raw[2])])
    row["dtw_1nn"] = {**_scores(y_te, pred), "seconds": time.perf_counter() - t0}

    # k-means on the raw series, same standardisation as the encoder's input
    mean = x_tr.reshape(-1, x_tr.shape[2]).mean(0)
    std = x_tr.reshape(-1, x_tr.shape[2]).std(0)
    std[std == 0] = 1
    f_tr = ((x_tr - mean) / std).reshape(len(x_tr), -1)
    f_te = ((x_te - mean) / std).reshape(len(x_te), -1)
    km = KMeans(k, n_init=10, random_state=0).fit(f_tr)
    kc = km.cluster_centers_
    km_names = _majority_names(km.labels_, y_tr, kc)
    row["kmeans_raw"] = {
        "labeled": _scores(y_te, km_names[nearest(f_te, kc)[0]]),
        "label_free": clustering_scores(nearest(f_te, kc)[0], y_te, k),
    }

    per_seed = []
    for seed in seeds:
        res = {"seed": seed}
        common = dict(
            latent_dim=LATENT_DIM,
            epochs=EPOCHS,
            batch_size=min(128, len(x_tr)),
            val_fraction=val_fraction,
            patience=PATIENCE,
            seed=seed,
            progress=progress,
        )
        if "labels" in parts:
            t0 = time.perf_counter()
            enc = train_encoder(x_tr, y_tr, augment=True, **common)
            z_tr, z_te = enc.embed(x_tr), enc.embed(x_te)
            sq = StochasticQuantization(k, init="labels", random_state=seed).fit(z_tr, y_tr)
            classes = np.asarray(getattr(sq, "classes_", np.arange(k)))
            centers = np.asarray(sq.cluster_centers_, dtype=np.float64)
            pred = classes[nearest(z_te, centers)[0]]
            knn = y_tr[nearest(z_te, z_tr.astype(np.float64))[0]]
            met = enc.metadata["metrics"]
            res["sq_labels"] = {
                **_scores(y_te, pred),
                "knn1_embedding_accuracy": float(np.mean(knn == y_te)),
                "epochs_run": met["epochs_run"],
                "best_epoch": met["best_epoch"],
                "stop_rule": met["stop_rule"],
                "seconds": time.perf_counter() - t0,
            }
        for variant in variants if "label_free" in parts else ():
            t0 = time.perf_counter()
            enc0 = train_encoder(
                x_tr, np.full(len(x_tr), -1), **common, **label_free_kwargs(variant, k)
            )
            z_tr, z_te = enc0.embed(x_tr), enc0.embed(x_te)
            sq0 = StochasticQuantization(k, init="k-means++", n_init=10, random_state=seed)
            c0 = np.asarray(sq0.fit(z_tr).cluster_centers_, dtype=np.float64)
            key = "sq_label_free" if variant == "ntxent" else f"sq_label_free_{variant}"
            res[key] = {
                **clustering_scores(nearest(z_te, c0)[0], y_te, k),
                "epochs_run": enc0.metadata["metrics"]["epochs_run"],
                "best_epoch": enc0.metadata["metrics"]["best_epoch"],
                "seconds": time.perf_counter() - t0,
            }
        per_seed.append(res)
        print(name, res, flush=True)
    row["seeds"] = per_seed
    lf_keys = ("clustering_accuracy", "nmi", "f1_weighted")
    for part, keys in (
        ("sq_labels", ("f1_weighted", "accuracy", "knn1_embedding_accuracy")),
        *[(p, lf_keys) for p in per_seed[0] if p.startswith("sq_label_free")],
    ):
        if part not in per_seed[0]:
            continue
        row[part] = {key: float(np.mean([r[part][key] for r in per_seed])) for key in keys} | {
            f"{key}_min": float(np.min([r[part][key] for r in per_seed])) for key in keys
        }
    if "sq_labels" in row:
        row["gap_to_dtw_points"] = 100 * (row["sq_labels"]["accuracy"] - row["dtw_1nn"]["accuracy"])
        row["within_2_points_of_dtw"] = bool(row["gap_to_dtw_points"] >= -2.0)
        row["labels_above_kmeans_raw"] = bool(
            row["sq_labels"]["accuracy"] > row["kmeans_raw"]["labeled"]["accuracy"]
        )
    for part in [p for p in row if p.startswith("sq_label_free")]:
        row[f"{part}_above_kmeans_raw"] = bool(
            row[part]["clustering_accuracy"]
            > row["kmeans_raw"]["label_free"]["clustering_accuracy"]
        )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="timeseries")
    ap.add_argument(
        "--no-early-stopping",
        action="store_true",
        help="val_fraction 0: every epoch runs, the weights of the lowest train loss are kept "
        "(a variant added AFTER the first run; see the README)",
    )
    ap.add_argument(
        "--parts", nargs="+", default=["labels", "label_free"], choices=["labels", "label_free"]
    )
    ap.add_argument(
        "--label-free-variants",
        nargs="+",
        default=["ntxent"],
        choices=LABEL_FREE_VARIANTS,
        help="label-free encoder settings to run (see label_free_kwargs; default: ntxent)",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vf = 0.0 if args.no_early_stopping else VAL_FRACTION
    rows = [
        run_dataset(
            n, args.seeds, args.progress, vf, tuple(args.parts), tuple(args.label_free_variants)
        )
        for n in args.datasets
    ]
    table = []
    for r in rows:
        line = {"dataset": r["dataset"], "train/test": f"{r['n_train']}/{r['n_test']}"}
        if "sq_labels" in r:
            line |= {
                "SQ F1w (labels)": r["sq_labels"]["f1_weighted"],
                "SQ acc (labels)": r["sq_labels"]["accuracy"],
                "1-NN-DTW acc": r["dtw_1nn"]["accuracy"],
                "gap (points)": r["gap_to_dtw_points"],
                "k-means raw acc": r["kmeans_raw"]["labeled"]["accuracy"],
            }
        for part in [p for p in r if p.startswith("sq_label_free") and "above" not in p]:
            tag = part.removeprefix("sq_label_free").lstrip("_") or "ntxent"
            line[f"label-free ACC {tag}"] = r[part]["clustering_accuracy"]
            line[f"label-free NMI {tag}"] = r[part]["nmi"]
        if "label_free" in args.parts:
            line["k-means raw ACC"] = r["kmeans_raw"]["label_free"]["clustering_accuracy"]
            line["k-means raw NMI"] = r["kmeans_raw"]["label_free"]["nmi"]
        table.append(line)
    md = print_table(table, list(table[0]))
    write_results(
        args.out,
        {
            "machine": machine(),
            "settings": {
                "latent_dim": LATENT_DIM,
                "epochs": EPOCHS,
                "patience": PATIENCE,
                "val_fraction": vf,
                "min_val_per_class": "train_encoder default (10)",
                "parts": args.parts,
                "label_free_variants": args.label_free_variants,
                "seeds": args.seeds,
                "torch_threads": args.threads,
            },
            "rows": rows,
            "table_markdown": md,
            "seconds": time.perf_counter() - t0,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
