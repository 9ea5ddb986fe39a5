"""The stop rule of ``train_encoder``: a labeled validation split with fewer than
``min_val_per_class`` rows per class is not held out (all labels train) and the stopping falls
back to the label-free criterion, or to running every epoch; recorded in
``metrics["stop_rule"]``.

Small Gaussian blobs as feature vectors (the MLP encoder), so that these run in seconds;
``min_delta=10`` makes every epoch after the first a "no improvement" epoch, so that any
validation criterion that exists stops training after ``patience`` further epochs.
"""

from __future__ import annotations

import numpy as np
import pytest

from sqflow.embedding import train_encoder

KW = dict(latent_dim=2, epochs=6, batch_size=64, patience=2, min_delta=10.0, progress=False)


def _blobs(per_class: int, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    return rng.normal(size=(len(y), 6)) + 4 * y[:, None], y


def test_tiny_labeled_split_is_not_held_out_and_every_epoch_runs() -> None:
    x, y = _blobs(20)  # val_fraction 0.2 -> 4 validation rows per class, below 10
    enc = train_encoder(x, y, val_fraction=0.2, **KW)
    m, met = enc.metadata, enc.metadata["metrics"]
    assert m["n_train"] == 60 and m["n_val"] == 0  # every label trains
    assert met["stop_rule"] == {
        "min_val_per_class": 10,
        "val_rows_per_class": 4.0,
        "labeled_holdout": False,
        "criterion": "none: every epoch runs, the lowest training loss is kept",
    }
    assert met["epochs_run"] == 6 and met["stop_reason"] == "max_epochs"
    assert met["monitored"] == "train_loss"
    assert m["params"]["min_val_per_class"] == 10

    # 0 restores the plain split: 12 rows held out, early stopping after `patience` epochs
    old = train_encoder(x, y, val_fraction=0.2, min_val_per_class=0, **KW).metadata
    assert old["n_train"] == 48 and old["n_val"] == 12
    assert old["metrics"]["stop_reason"] == "early_stopping"
    assert old["metrics"]["epochs_run"] == 3
    assert old["metrics"]["stop_rule"]["labeled_holdout"] is True
    assert old["metrics"]["stop_rule"]["criterion"] == "held-out labeled triplet loss"
    # the threshold is inclusive: exactly 4 rows per class with min 4 keeps the split
    kept = train_encoder(x, y, val_fraction=0.2, min_val_per_class=4, **KW).metadata
    assert kept["n_val"] == 12 and kept["metrics"]["stop_rule"]["labeled_holdout"] is True


def test_enough_validation_rows_keep_the_labeled_hold_out() -> None:
    x, y = _blobs(60)  # 12 validation rows per class
    met = train_encoder(x, y, val_fraction=0.2, **KW).metadata["metrics"]
    assert met["stop_rule"]["labeled_holdout"] is True
    assert met["stop_rule"]["val_rows_per_class"] == 12.0
    assert met["stop_reason"] == "early_stopping" and met["monitored"] == "val_loss"


def test_few_labels_with_unlabeled_rows_stop_on_the_label_free_criterion() -> None:
    x, y = _blobs(70)
    ys = np.full(len(y), -1)
    for c in range(3):  # 5 labels per class, the rest unlabeled
        ys[np.flatnonzero(y == c)[:5]] = c
    enc = train_encoder(x, ys, val_fraction=0.2, **KW)
    m, met = enc.metadata, enc.metadata["metrics"]
    assert m["mode"] == "semi-supervised"
    assert m["n_train"] == 15 and m["n_val"] == 0 and m["n_val_unlabeled"] == 39
    assert met["stop_rule"]["labeled_holdout"] is False
    assert met["stop_rule"]["criterion"] == "held-out label-free NT-Xent loss"
    assert met["val_loss"] == met["val_selfsup_loss"]
    assert met["stop_reason"] == "early_stopping"  # the label-free criterion still stops


def test_label_free_and_no_validation_are_recorded_and_bad_values_named() -> None:
    x, y = _blobs(20)
    lf = train_encoder(x, np.full(len(y), -1), val_fraction=0.2, **KW).metadata["metrics"]
    assert lf["stop_rule"]["labeled_holdout"] is False
    assert lf["stop_rule"]["criterion"] == "held-out label-free NT-Xent loss"
    none = train_encoder(x, y, val_fraction=0.0, **KW).metadata["metrics"]
    assert none["stop_rule"]["labeled_holdout"] is False and none["epochs_run"] == 6
    with pytest.raises(ValueError, match="min_val_per_class=-1"):
        train_encoder(x, y, min_val_per_class=-1, progress=False)
