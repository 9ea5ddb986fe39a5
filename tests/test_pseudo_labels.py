"""Self-training: pseudo-labels from confident SQ assignments, and train_encoder wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sqflow.datasets import load_mnist
from sqflow.embedding import train_encoder
from sqflow.embedding.pseudo import assign_pseudo_labels, pseudo_label_ranges
from sqflow.embedding.teacher import manifold_pseudo_labels


def _blobs(n: int = 6000, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, 3)) * 6
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, 3)), y


def test_semi_supervised_pseudo_labels_are_classes_and_keep_the_clearest_share() -> None:
    z, y = _blobs()
    labels = np.full(len(y), -1)
    for c in range(5):  # 4 labels per class; class ids shifted to check the id mapping
        labels[np.flatnonzero(y == c)[:4]] = c + 10
    out = assign_pseudo_labels(z, labels, keep=0.3, seed=0)
    lab = labels >= 0
    np.testing.assert_array_equal(out[lab], labels[lab])  # given labels never change
    got = (out >= 0) & ~lab
    # about 30 % of each class's unlabeled rows (ceil per center), and they are right
    assert abs(got.sum() / (~lab).sum() - 0.3) < 0.02
    assert np.mean(out[got] - 10 == y[got]) > 0.99
    # the kept rows are the confident ones: kept rows sit closer to their class's labeled mean
    means = np.stack([z[labels == c + 10].mean(0) for c in range(5)])
    dist = np.linalg.norm(z - means[y], axis=1)
    assert dist[got].mean() < dist[~lab & ~got].mean()


def test_label_free_pseudo_labels_need_n_clusters_and_match_the_blobs() -> None:
    z, y = _blobs(k=4)
    unl = np.full(len(y), -1)
    with pytest.raises(ValueError, match="n_clusters"):
        assign_pseudo_labels(z, unl, keep=0.5)
    out = assign_pseudo_labels(z, unl, keep=0.5, n_clusters=4, seed=0)
    got = out >= 0
    assert set(np.unique(out[got])) == {0, 1, 2, 3}
    # cluster ids are arbitrary: every kept cluster is pure in one blob
    purity = [np.bincount(y[out == k]).max() / (out == k).sum() for k in range(4)]
    assert min(purity) > 0.97  # measured 0.989 (two blobs touch)


def test_label_free_seed_labels_carry_cluster_ids_over() -> None:
    """Seeded from the previous assignment, the next one keeps each blob's cluster id (a fresh
    k-means++ draw with another seed is free to renumber them); a seed that misses a cluster is
    ignored (k-means++ again)."""
    z, y = _blobs(k=4)
    unl = np.full(len(y), -1)
    first = assign_pseudo_labels(z, unl, keep=0.5, n_clusters=4, seed=0)
    again = assign_pseudo_labels(z + 0.05, unl, keep=0.5, n_clusters=4, seed=7, seed_labels=first)

    def blob_to_id(out):
        return {int(np.bincount(y[out == k]).argmax()): k for k in range(4)}

    assert blob_to_id(again) == blob_to_id(first)
    partial = np.where(first == 3, -1, first)  # cluster 3 has no seed: fall back, still valid
    out = assign_pseudo_labels(z, unl, keep=0.5, n_clusters=4, seed=0, seed_labels=partial)
    np.testing.assert_array_equal(out, first)  # same as the unseeded draw with that seed


def test_clamped_mixture_keeps_labeled_rows_and_reports_where_the_fit_puts_them() -> None:
    from sqflow.embedding.teacher import clamped_mixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal((8, 0), 1, (300, 2))])
    truth = np.repeat([0, 1], 300)
    labeled = np.array([0, 1, 2, 3, 4, 5, 300, 301, 302, 303, 304])
    classes = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])  # row 5, in blob 0, labeled 1
    post, log_density, free, em = clamped_mixture(x, labeled, classes, 2)
    assert em["converged"] and 1 < em["iterations"] < 200
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    np.testing.assert_array_equal(post[labeled].argmax(axis=1), classes)  # clamped
    assert free.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # the fit itself: row 5 in blob 0
    unl = np.setdiff1d(np.arange(600), labeled)
    assert np.mean(post[unl].argmax(axis=1) == truth[unl]) > 0.99
    assert np.isfinite(log_density).all() and log_density.shape == (600,)
    with pytest.raises(ValueError, match=r"without a labeled row: \[2\]"):
        clamped_mixture(x, labeled, classes, 3)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        *_, em = clamped_mixture(x, labeled, classes, 2, max_iter=1)
    assert em == {"iterations": 1, "converged": False}


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"keep": 0}, "keep"),
        ({"start_epoch": 0}, "start_epoch"),
        ({"n_clusters": 1}, "n_clusters"),
        ({"warmup": 2}, "unknown keys"),
        ("yes", "pseudo_labels="),
    ],
)
def test_bad_pseudo_label_settings_are_named(option, match) -> None:
    with pytest.raises(ValueError, match=match):
        pseudo_label_ranges(option)


@pytest.fixture(scope="module")
def mnist_2000():
    torch.set_num_threads(1)
    x, y = load_mnist("train")
    idx = np.random.default_rng(1).permutation(len(x))[:2000]
    return x[idx], y[idx].astype(np.int64)


def _ten_labels_per_class(y: np.ndarray) -> np.ndarray:
    """Labels of the first 10 rows of each class, -1 for the rest (100 labels on MNIST)."""
    ys = np.full(len(y), -1)
    for c in range(10):
        ys[np.flatnonzero(y == c)[:10]] = c
    return ys


def test_train_encoder_self_trains_seeded_and_recorded(mnist_2000) -> None:
    x, y = mnist_2000
    ys = _ten_labels_per_class(y)
    kw = dict(epochs=2, batch_size=250, seed=0, progress=False, device="cpu")
    pl = {"start_epoch": 1, "keep": 0.4}
    a = train_encoder(x, ys, pseudo_labels=pl, **kw)
    m = a.metadata
    assert m["params"]["pseudo_labels"]["source"] == "embedding"
    assert m["params"]["pseudo_labels"]["keep"] == 0.4
    # 0.4 of the 1,710 unlabeled training rows (the rest is validation), after each epoch
    n_unl_train = m["n_train_unlabeled"]
    assert all(abs(n - 0.4 * n_unl_train) <= 10 for n in m["metrics"]["pseudo_labeled"])
    b = train_encoder(x, ys, pseudo_labels=pl, **kw)
    np.testing.assert_array_equal(a.embed(x[:200]), b.embed(x[:200]))  # same seed, same model
    off = train_encoder(x, ys, **kw)
    assert off.metadata["params"]["pseudo_labels"] is None
    assert off.metadata["metrics"]["pseudo_labeled"] == [0, 0]
    assert not np.array_equal(a.embed(x[:200]), off.embed(x[:200]))


def test_a_cap_before_any_pseudo_labeled_epoch_keeps_and_names_the_last_weights(mnist_2000) -> None:
    x, y = mnist_2000
    ys = _ten_labels_per_class(y)
    kw = dict(epochs=3, batch_size=250, seed=0, progress=False, device="cpu")
    # the cap stops training after epoch 1, where the first pseudo-labels are drawn: no epoch
    # trained on them, so none was a candidate for the kept weights
    enc = train_encoder(x, ys, pseudo_labels={"start_epoch": 1}, max_seconds=1e-9, **kw)
    m = enc.metadata["metrics"]
    assert m["stop_reason"] == "max_seconds" and m["epochs_run"] == 1
    assert m["best_epoch"] == 1  # the weights returned are epoch 1's, not "epoch 0"
    # held-out unlabeled rows exist, so the monitored loss is the validation loss, finite
    assert np.isfinite(m["val_loss"][0]) and m["best_monitored"] == m["val_loss"][0]


def test_label_free_self_training_trains_the_triplet_term(mnist_2000) -> None:
    x, _ = mnist_2000
    unl = np.full(len(x), -1)
    kw = dict(epochs=2, batch_size=250, seed=0, progress=False, device="cpu")
    with pytest.raises(ValueError, match="n_clusters"):
        train_encoder(x, unl, pseudo_labels=True, **kw)
    with pytest.raises(ValueError, match="start_epoch=2 must be below epochs=2"):
        train_encoder(x, unl, pseudo_labels={"start_epoch": 2, "n_clusters": 10}, **kw)
    with pytest.raises(ValueError, match="label-free term"):
        train_encoder(x, np.arange(len(x)) % 10, selfsup_weight=0.0, pseudo_labels=True)
    enc = train_encoder(x, unl, pseudo_labels={"start_epoch": 1, "n_clusters": 10}, **kw)
    m = enc.metadata
    assert m["mode"] == "label-free" and m["params"]["triplet_weight"] == 1.0
    trip = m["metrics"]["train_triplet_loss"]
    assert trip[0] is None and trip[1] is not None and trip[1] > 0


def _teacher_blobs(n: int = 3000, seed: int = 0):
    """Five round blobs and one long, thin one in 20-D: the thin one is what k-means would
    cut in two and a full-covariance mixture keeps whole."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 20)) * 8
    y = rng.integers(0, 6, n)
    x = centers[y] + rng.normal(size=(n, 20))
    thin = y == 5
    x[thin] += np.outer(rng.uniform(-12, 12, thin.sum()), np.eye(20)[0])
    return x.astype(np.float32), y


def _purity(out: np.ndarray, y: np.ndarray) -> float:
    got = out >= 0
    return sum(np.bincount(y[got & (out == k)]).max() for k in np.unique(out[got])) / got.sum()


def test_manifold_teacher_label_free_is_pure_deterministic_and_keeps_its_share() -> None:
    x, y = _teacher_blobs()
    unl = np.full(len(y), -1)
    with pytest.raises(ValueError, match="n_clusters"):
        manifold_pseudo_labels(x, unl, keep=0.5)
    with pytest.raises(ValueError, match="at least max"):  # 15 neighbours need 16 rows
        manifold_pseudo_labels(x[:15], unl[:15], keep=0.5, n_clusters=6)
    out, info = manifold_pseudo_labels(x, unl, keep=0.6, n_clusters=6, seed=3)
    again, _ = manifold_pseudo_labels(x, unl, keep=0.6, n_clusters=6, seed=3)
    np.testing.assert_array_equal(out, again)  # UMAP seeded: single-threaded, reproducible
    assert set(np.unique(out[out >= 0])) == set(range(6))
    assert _purity(out, y) > 0.99
    # the thin blob is one component, not two
    assert len(np.unique(out[(y == 5) & (out >= 0)])) == 1
    assert abs((out >= 0).mean() - 0.6) < 0.02
    assert info["n_taught"] == len(y) and info["components"] == 6
    assert info["n_pseudo_labeled"] == int((out >= 0).sum())
    assert info["em"]["converged"] and info["em"]["iterations"] >= 1  # sklearn's mixture
    assert info["spread"] == 0 and info["n_spread"] == 0  # "auto" spreads only with labels


def test_manifold_teacher_gives_identical_rows_one_label() -> None:
    """A stuck camera: copies of one blank row must share one pseudo-label (the triplet loss
    cannot pull identical inputs apart); too few distinct rows are a clear error."""
    x, y = _teacher_blobs(1500)
    x[:600] = x[0]  # 40 % copies of the first row
    out, info = manifold_pseudo_labels(x, np.full(len(y), -1), keep=1.0, n_clusters=6, seed=0)
    assert len(np.unique(out[:600])) == 1 and info["n_distinct"] == 901
    assert _purity(out[600:], y[600:]) > 0.99  # the other rows are taught as before
    few = np.repeat(x[600:614], 50, axis=0)  # 700 rows, 14 distinct: below 15 neighbours + 1
    with pytest.raises(ValueError, match="14 distinct among 700"):
        manifold_pseudo_labels(few, np.full(len(few), -1), keep=0.5, n_clusters=6)


def test_manifold_teacher_with_labels_names_components_by_class() -> None:
    x, y = _teacher_blobs()
    labels = np.full(len(y), -1)
    for c in range(6):  # 5 labels per class; ids shifted to check the id mapping
        labels[np.flatnonzero(y == c)[:5]] = c + 20
    out, info = manifold_pseudo_labels(x, labels, keep=1.0, seed=0)
    lab = labels >= 0
    np.testing.assert_array_equal(out[lab], labels[lab])
    assert (out >= 0).all()  # keep=1: every unlabeled row
    assert np.mean(out[~lab] - 20 == y[~lab]) > 0.99
    assert info["labeled_agreement"] > 0.99
    assert info["em"]["converged"] and info["em"]["iterations"] > 1  # the clamped EM


def test_teacher_spread_labels_rows_outside_the_kept_share_only_where_all_agree() -> None:
    from sqflow.embedding.teacher import _spread

    # 1-D features: classes 0 and 1 labeled or kept at 0..0.2 and 10..10.2; three rows left out
    space = np.array([0, 0.1, 0.2, 10, 10.1, 10.2, 0.15, 5.1, 0.05])[:, None]
    out = np.array([0, 0, 0, 1, 1, 1, -1, -1, -1])
    component_class = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1])
    assert _spread(space, out.copy(), component_class, 0) == 0  # off
    got = out.copy()
    assert _spread(space, got, component_class, 3) == 1
    # row 6: three class-0 neighbours and a class-0 component -> 0; row 7: its neighbours
    # disagree; row 8: they agree on 0 but its own component is class 1 -> both stay -1
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 1, 0, -1, -1])

    x, y = _teacher_blobs()
    labels = np.full(len(y), -1)
    for c in range(6):
        labels[np.flatnonzero(y == c)[:5]] = c
    base, info0 = manifold_pseudo_labels(x, labels, keep=0.5, seed=0, teacher={"spread": 0})
    out, info = manifold_pseudo_labels(x, labels, keep=0.5, seed=0)  # "auto": 10 with labels
    explicit, _ = manifold_pseudo_labels(x, labels, keep=0.5, seed=0, teacher={"spread": 10})
    np.testing.assert_array_equal(out, explicit)
    unl = labels < 0
    assert info["spread"] == 10
    assert info0["n_spread"] == 0 and info["n_spread"] > 0.3 * (base[unl] < 0).sum()
    # the kept share is unchanged; spreading only adds rows, with their component's class
    np.testing.assert_array_equal(out[base >= 0], base[base >= 0])
    assert (
        (out[unl] >= 0).sum()
        == info["n_pseudo_labeled"]
        == info0["n_pseudo_labeled"] + info["n_spread"]
    )
    assert _purity(out, y) > 0.99


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"source": "graph"}, "source"),
        ({"source": "manifold", "teacher": {"pca": 1}}, "pca"),
        ({"source": "manifold", "teacher": {"spread": -1}}, "spread"),
        ({"source": "manifold", "teacher": {"spread": "on"}}, "'auto' or an int"),
        ({"source": "manifold", "teacher": {"neighbours": 5}}, "unknown keys"),
        ({"teacher": {"pca": 20}}, "source='manifold'"),
        ({"every": 2}, "source='manifold'"),
        ({"source": "manifold", "every": 0}, "every=0"),
        ({"source": "manifold", "every": True}, "every=True"),
    ],
)
def test_bad_teacher_settings_are_named(option, match) -> None:
    with pytest.raises(ValueError, match=match):
        pseudo_label_ranges(option)


def test_train_encoder_with_the_manifold_teacher_learns_label_free(mnist_2000) -> None:
    """Label-free MNIST: NT-Xent for start_epoch epochs, then the teacher labels once and the
    triplet loss trains on its pseudo-labels; the embedding clusters far above chance."""
    from sklearn.cluster import KMeans

    from sqflow.paper import clustering_scores

    x, y = mnist_2000
    kw = dict(epochs=4, batch_size=250, seed=0, progress=False, device="cpu")
    pl = {"source": "manifold", "start_epoch": 2, "n_clusters": 10, "keep": 0.8}
    enc = train_encoder(x, np.full(len(x), -1), selfsup_space="hidden", pseudo_labels=pl, **kw)
    m = enc.metadata
    res = m["params"]["pseudo_labels"]["teacher_result"]
    # the held-out unlabeled rows are taught too: their pseudo-labels validate the triplet term
    assert res["n_taught"] == m["n_train_unlabeled"] + m["n_val_unlabeled"]
    assert res["components"] == 10 and res["validation"] == "pseudo-labeled held-out rows"
    n = m["metrics"]["pseudo_labeled"][1]
    assert m["metrics"]["pseudo_labeled"] == [0, n, n, n]
    assert abs(n - 0.8 * m["n_train_unlabeled"]) <= 20
    val_trip = m["metrics"]["val_triplet_loss"]
    assert np.isnan(val_trip[:2]).all() and not np.isnan(val_trip[2:]).any()
    trip = m["metrics"]["train_triplet_loss"]
    assert trip[:2] == [None, None] and trip[2] > 0  # triplets from the epoch after the teacher
    assert m["metrics"]["best_epoch"] >= 3  # only epochs trained on pseudo-labels
    z = enc.embed(x)
    km = KMeans(10, n_init=3, random_state=0).fit(z)
    # measured 0.588 (2,000 rows, 4 epochs, 1 thread); the same 4 epochs reach 0.329 with
    # NT-Xent alone and 0.347 with the embedding's own pseudo-labels
    assert clustering_scores(km.labels_, y, 10)["clustering_accuracy"] > 0.5


def test_manifold_teacher_with_few_labels_validates_on_taught_rows(mnist_2000) -> None:
    """100 labels (too few for a labeled hold-out): the mixture's components are the classes
    (labeled rows clamped in EM), the taught held-out rows validate the triplet term, and no 1-NN "accuracy" is computed against
    pseudo-labels (it would only measure agreement with the teacher)."""
    x, y = mnist_2000
    ys = _ten_labels_per_class(y)
    kw = dict(epochs=3, batch_size=250, seed=0, progress=False, device="cpu")
    pl = {"source": "manifold", "start_epoch": 2}
    m = train_encoder(x, ys, selfsup_space="hidden", pseudo_labels=pl, **kw).metadata
    assert m["mode"] == "semi-supervised" and m["n_val"] == 0  # stop rule: no labeled hold-out
    res = m["params"]["pseudo_labels"]["teacher_result"]
    assert res["validation"] == "pseudo-labeled held-out rows"
    # share of the 100 labeled rows whose most likely component under the fitted mixture,
    # unclamped, is their class: measured 0.81 here (2,000 rows, features after 2 epochs;
    # chance 0.1); 0.57 when the labels only seeded the means (before stop 15)
    assert res["labeled_agreement"] > 0.7 and res["mixture"] == "labeled rows clamped in EM"
    assert np.isnan(m["metrics"]["val_knn1_accuracy"]).all()
    assert not np.isnan(m["metrics"]["val_triplet_loss"][2])


def test_manifold_teacher_teaches_again_every_n_epochs(mnist_2000) -> None:
    """``every``: the teacher labels after start_epoch and every N epochs after that, never
    after the last epoch (nothing would train on it); each teaching restarts the best-epoch
    search, so the kept weights trained on the latest labels."""
    x, y = mnist_2000
    kw = dict(epochs=5, batch_size=250, seed=0, progress=False, device="cpu")
    pl = {"source": "manifold", "start_epoch": 2, "n_clusters": 10, "every": 1}
    m = train_encoder(x, np.full(len(x), -1), selfsup_space="hidden", pseudo_labels=pl, **kw)
    m = m.metadata
    got = m["params"]["pseudo_labels"]
    assert [t["epoch"] for t in got["teachings"]] == [2, 3, 4]
    assert got["teacher_result"] == got["teachings"][-1]
    assert m["metrics"]["best_epoch"] == 5  # the only epoch trained on the last labels
    # teaching once (every=None) keeps the earlier record: no list
    pl["every"] = None
    once = train_encoder(x[:600], np.full(600, -1), selfsup_space="hidden", pseudo_labels=pl, **kw)
    assert once.metadata["params"]["pseudo_labels"]["teachings"] is None
