"""Manifold teacher: pseudo-labels from the neighbourhood graph of learned features.

Self-training from the encoder's own 3-D embedding (:mod:`.pseudo`, ``source="embedding"``) can
only find the structure the latent already has; without labels a young 3-D latent has little,
and on MNIST that loop settled at 35-72 % clustering accuracy depending on the seed and even on
the thread count. The teacher (``source="manifold"``) looks at a richer space, once:

1. after ``start_epoch`` epochs of the label-free term (NT-Xent between two random views), the
   training rows are passed through the network's convolutional features (the MLP's last hidden
   layer for feature vectors), L2-normalised and projected on their first ``pca`` principal
   components. Contrastive features are invariant to the views' rotations and shifts, so a
   slanted and an upright "1" are neighbours, which they are not in pixel space;
2. UMAP (McInnes et al. 2018; ``min_dist=0`` so that clusters pack tightly) maps them to
   ``n_components`` dimensions along their k-nearest-neighbour graph;
3. a Gaussian mixture with full covariances is fitted there (as in N2D, McConville et al. 2020:
   an elongated manifold stays one component where k-means cuts it). With labels, component c
   is class c: EM starts from the class means and keeps every labeled row on its class
   (:func:`clamped_mixture`); without, ``gmm_inits`` seeded starts and the highest likelihood
   wins.

Per component the ``keep`` share of its unlabeled rows that are clearly assigned (posterior
>= 0.95) and lie where the mixture density is highest gets the component as pseudo-label;
labeled rows keep theirs. The triplet loss trains on them for the remaining epochs. With
``spread = k`` (``"auto"``, the default: 10 when any row is labeled, off label-free) a row
outside the kept share is also labeled when its ``k`` nearest labeled or kept rows in the PCA
space all carry its component's class (:func:`_spread`; on full MNIST with 100 labels it
raised the test F1 by 0.3-0.5 points on two seeds, README). UMAP runs with a fixed
``random_state`` (single-threaded, so the result does not depend on the thread count): the
teacher is deterministic for a seed.

Measured on MNIST (10,000 training rows, 5 epochs of NT-Xent, 2-core CPU): teacher labels
96.2-96.3 % correct (Hungarian) / NMI 0.91, against 79-84 % for the same steps on raw pixels
(``bench/teacher_inputs.py``).
Cost: UMAP takes about 45 s on 10,000 rows and 75 s on 60,000; at most ``max_rows`` rows (a
seeded subset) are taught, the others are seen through the label-free term only.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any

import numpy as np

__all__ = [
    "TEACHER_DEFAULT",
    "teacher_ranges",
    "teacher_min_rows",
    "teacher_rows",
    "distinct_rows",
    "manifold_pseudo_labels",
]

#: pca: principal components before UMAP; n_neighbors / n_components: UMAP's graph size and
#: output dimension; gmm_inits: label-free starts of the mixture; max_rows: rows taught at most;
#: spread: neighbours that must agree to label a row outside the kept share (0: off; "auto":
#: SPREAD_WITH_LABELS when any row is labeled, off label-free, where it is not measured)
TEACHER_DEFAULT: dict[str, Any] = {
    "pca": 50,
    "n_neighbors": 15,
    "n_components": 10,
    "gmm_inits": 3,
    "max_rows": 70_000,
    "spread": "auto",
}
SPREAD_WITH_LABELS = 10

#: words a setting takes besides its numbers
_WORDS: dict[str, tuple[str, ...]] = {"spread": ("auto",)}
_CONSTRAINTS = {
    "pca": (2, "an int >= 2"),
    "n_neighbors": (2, "an int >= 2"),
    "n_components": (2, "an int >= 2"),
    "gmm_inits": (1, "an int >= 1"),
    "max_rows": (20, "an int >= 20"),
    "spread": (0, "'auto' or an int >= 0 (0: off)"),
}


def teacher_ranges(option: dict[str, Any] | None) -> dict[str, Any]:
    """Validated teacher settings: the defaults updated by ``option``."""
    option = dict(option or {})
    unknown = set(option) - set(TEACHER_DEFAULT)
    if unknown:
        raise ValueError(
            f"teacher has unknown keys {sorted(unknown)}; valid: {sorted(TEACHER_DEFAULT)}"
        )
    r = {**TEACHER_DEFAULT, **option}
    for key, (low, valid) in _CONSTRAINTS.items():
        v = r[key]
        if isinstance(v, str) and v in _WORDS.get(key, ()):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"teacher {key}={v!r} must be {valid}")
        r[key] = int(v)
    return r


def teacher_min_rows(n_clusters: int, teacher: dict[str, Any] | None = None) -> int:
    """Fewest rows the teacher can label into ``n_clusters`` components: UMAP needs more rows
    than neighbours, the mixture at least two per component."""
    cfg = teacher_ranges(teacher)
    return max(cfg["n_neighbors"], 2 * n_clusters) + 1


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``x`` (first axis = rows) by their bytes, in first-seen order:
    ``(first, row_of)``, the index of each distinct row's first occurrence and, per row, the
    number of its distinct row (``x[first][row_of]`` is ``x``). Rows are keyed by a 128-bit
    BLAKE2 digest of their bytes (16 bytes a row held, not the row): linear in the data, where
    ``np.unique(axis=0)`` sorts it (3 s on the 60,000 MNIST images)."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    seen: dict[bytes, int] = {}
    row_of = np.fromiter(
        (seen.setdefault(hashlib.blake2b(r, digest_size=16).digest(), len(seen)) for r in rows),
        dtype=np.int64,
        count=len(rows),
    )
    first = np.full(len(seen), -1, dtype=np.int64)
    first[row_of[::-1]] = np.arange(len(rows) - 1, -1, -1)  # the last write is the first row
    return first, row_of


def clamped_mixture(
    x: np.ndarray,
    labeled: np.ndarray,
    classes: np.ndarray,
    k: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A Gaussian mixture with full covariances, fitted by EM with the labeled rows clamped.

    Component ``c`` is class ``c``: it starts from the rows nearest to class c's labeled mean,
    and in every step the labeled rows of class c keep responsibility 1 for it (a
    semi-supervised mixture). Seeding the means alone, as sklearn's ``means_init`` does, lets
    EM carry a component off to another cluster and contradict the labels: on 2,000 MNIST
    training rows with 60 labels per class the seeded mixture put 11.5 % of the labeled rows
    on another class's component, and the half of each component that the teacher keeps was
    93.6 % right against 96.7 % clamped; on 10,000 rows the two are level (96.5 % of all rows,
    98.7-99.0 % of the kept half; ``bench/teacher_variants.py``).

    Parameters
    ----------
    x:
        ``(N, D)`` float64 points.
    labeled, classes:
        Indices of the labeled rows and their component ids in ``range(k)``; every component
        needs at least one labeled row.
    k:
        Number of components.
    max_iter, tol, reg_covar:
        EM stops when the mean log-likelihood gains less than ``tol`` (sklearn's default), or
        after ``max_iter`` steps; ``reg_covar`` is added to each covariance's diagonal.

    Returns
    -------
    post:
        ``(N, k)`` responsibilities; labeled rows one-hot on their class.
    log_density:
        ``(N,)`` log of the mixture density at each row (sklearn's ``score_samples``).
    free_choice:
        ``(len(labeled),)`` the most likely component of each labeled row under the fitted
        mixture, before its clamp: where the mixture itself would put it.
    em:
        ``{"iterations": int, "converged": bool}``; a fit stopped by ``max_iter`` also warns
        (``ConvergenceWarning``), as sklearn's mixture does.
    """
    from scipy.special import logsumexp
    from sklearn.exceptions import ConvergenceWarning

    n, d = x.shape
    labeled, classes = np.asarray(labeled), np.asarray(classes)
    empty = sorted(set(range(k)) - set(classes.tolist()))
    if len(labeled) != len(classes) or empty:
        raise ValueError(
            f"clamped_mixture needs one class in range({k}) per labeled row and a labeled row "
            f"for every component; got {len(labeled)} rows, {len(classes)} classes, "
            f"components without a labeled row: {empty}"
        )
    means = np.stack([x[labeled[classes == c]].mean(axis=0) for c in range(k)])
    post = np.zeros((n, k))
    # the start: each row on the component whose class mean is nearest
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(axis=-1), axis=1)
    post[np.arange(n), nearest] = 1.0
    prev = -np.inf
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is the record)
        post[labeled] = 0.0
        post[labeled, classes] = 1.0
        nk = post.sum(axis=0) + 10 * np.finfo(float).eps
        mu = post.T @ x / nk[:, None]
        logp = np.empty((n, k))
        for c in range(k):
            dx = x - mu[c]
            cov = (post[:, c, None] * dx).T @ dx / nk[c] + reg_covar * np.eye(d)
            chol = np.linalg.cholesky(cov)
            maha = np.linalg.solve(chol, dx.T)
            logp[:, c] = (
                np.log(nk[c] / n)
                - 0.5 * (maha**2).sum(axis=0)
                - np.log(np.diag(chol)).sum()
                - 0.5 * d * np.log(2 * np.pi)
            )
        log_density = logsumexp(logp, axis=1)
        post = np.exp(logp - log_density[:, None])
        if log_density.mean() - prev < tol:
            converged = True
            break
        prev = log_density.mean()
    if not converged:
        warnings.warn(
            f"clamped_mixture: EM did not converge in max_iter={max_iter} steps (last gain of "
            f"the mean log-likelihood {log_density.mean() - prev:.3g} >= tol={tol}); raise "
            "max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    free_choice = post[labeled].argmax(axis=1)
    post[labeled] = 0.0
    post[labeled, classes] = 1.0
    return post, log_density, free_choice, {"iterations": iterations, "converged": converged}


def teacher_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of the rows taught: all ``n``, or a seeded subset of ``max_rows``."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def manifold_pseudo_labels(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    keep: float,
    n_clusters: int | None = None,
    seed: int = 0,
    teacher: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels plus the teacher's pseudo-labels for the rows taught.

    Parameters
    ----------
    x:
        ``(N, D)`` features of the rows taught (float; see :func:`teacher_rows` for the subset).
    labels:
        ``(N,)`` class ids >= 0, -1 for unlabeled rows, of the same rows.
    keep:
        Share in (0, 1] of each component's unlabeled rows that get a pseudo-label: clearly
        assigned ones (posterior >= 0.95) first, highest mixture density first.
    n_clusters:
        Label-free only (every label -1): the number of mixture components. With labels there
        is one component per class.
    seed:
        Seeds PCA, UMAP and the mixture.
    teacher:
        Overrides of :data:`TEACHER_DEFAULT`.

    Returns
    -------
    labels:
        ``(N,)`` int64: the given labels unchanged, the kept unlabeled rows with their component's
        class (label-free: the component id), -1 for the rest.
    info:
        What the teacher did: rows taught, dimensions, components, mean posterior of the rows
        kept, seconds; with labels also ``labeled_agreement``, the share of labeled rows whose
        most likely component is their class (a training-set figure, not a test score).
    """
    import umap
    from sklearn.decomposition import PCA

    from ..openmp_pool import launch_numba_pool

    launch_numba_pool()  # UMAP's numba loops must not change torch's thread count
    from sklearn.mixture import GaussianMixture

    cfg = teacher_ranges(teacher)
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    feats = np.asarray(x, dtype=np.float32).reshape(len(labels), -1)
    lab = labels >= 0
    if lab.any():
        classes = np.unique(labels[lab])
    elif n_clusters is None:
        raise ValueError(
            "the manifold teacher without any label needs n_clusters (the number of "
            "clusters); pass pseudo_labels={'source': 'manifold', 'n_clusters': K}"
        )
    else:
        classes = np.arange(n_clusters)
    k = len(classes)
    if len(labels) < teacher_min_rows(k, cfg):
        raise ValueError(
            f"the manifold teacher needs at least max(n_neighbors, 2 K) + 1 = "
            f"{teacher_min_rows(k, cfg)} rows; got {len(labels)} (lower teacher "
            "n_neighbors or use pseudo_labels source 'embedding')"
        )
    # identical inputs (blank frames of a stuck camera, repeated log rows) must share a label:
    # UMAP would spread copies of one point over its graph and the mixture could then split
    # them, asking the triplet loss to pull identical rows apart. The manifold is learned on
    # the distinct rows (in first-seen order, so data without copies is taught as before) and
    # every copy takes its row's place; the mixture still weighs each copy.
    first, row_of = distinct_rows(feats)
    n_distinct = len(first)
    if n_distinct < teacher_min_rows(k, cfg):
        raise ValueError(
            f"the manifold teacher needs at least max(n_neighbors, 2 K) + 1 = "
            f"{teacher_min_rows(k, cfg)} distinct rows; got {n_distinct} distinct among "
            f"{len(labels)} (mostly identical inputs: check the source, or use pseudo_labels "
            "source 'embedding')"
        )
    feats = feats[first]
    n_pca = min(cfg["pca"], feats.shape[1], n_distinct - 1)
    if n_pca < feats.shape[1]:
        feats = PCA(n_pca, random_state=seed).fit_transform(feats)
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": wanted, for determinism
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        emb = umap.UMAP(
            n_neighbors=cfg["n_neighbors"],
            n_components=cfg["n_components"],
            min_dist=0.0,
            random_state=seed,
        ).fit_transform(feats)
    emb = np.asarray(emb, dtype=np.float64)[row_of]
    if lab.any():
        y = np.searchsorted(classes, labels[lab])
        post, density, free_choice, em = clamped_mixture(emb, np.flatnonzero(lab), y, k)
    else:
        gmm = GaussianMixture(k, covariance_type="full", n_init=cfg["gmm_inits"], random_state=seed)
        post = gmm.fit(emb).predict_proba(emb)
        density = gmm.score_samples(emb)
        em = {"iterations": int(gmm.n_iter_), "converged": bool(gmm.converged_)}
    comp = post.argmax(axis=1)
    conf = post.max(axis=1)
    # posteriors saturate (nearly every row is 1.0 to machine precision on well-separated
    # clusters), so rank by "clearly assigned" first, then by the mixture density: the core of a
    # component before its outskirts, where the mistakes are
    clear = conf >= 0.95
    out = labels.copy()
    kept_conf = []
    for c in range(k):
        members = np.flatnonzero((comp == c) & ~lab)
        if not len(members):
            continue
        n_keep = int(np.ceil(keep * len(members)))
        best = members[np.lexsort((-density[members], ~clear[members]))[:n_keep]]
        out[best] = classes[c]
        kept_conf.append(conf[best])
    if cfg["spread"] == "auto":
        cfg["spread"] = SPREAD_WITH_LABELS if lab.any() else 0
    n_spread = _spread(feats[row_of], out, classes[comp], cfg["spread"])
    info: dict[str, Any] = {
        "source": "manifold",
        **cfg,
        "n_taught": int(len(labels)),
        "n_distinct": int(n_distinct),
        "n_pseudo_labeled": int(sum(len(c) for c in kept_conf)) + n_spread,
        "n_spread": n_spread,
        "components": int(k),
        "pca_used": int(n_pca),
        "mean_posterior_kept": float(np.concatenate(kept_conf).mean()) if kept_conf else None,
        "seconds": time.perf_counter() - t0,
        "em": em,
    }
    if lab.any():
        # the clamp puts every labeled row on its class; where the fitted mixture itself would
        # put them says how well its components match the classes
        info["labeled_agreement"] = float((free_choice == y).mean())
        info["mixture"] = "labeled rows clamped in EM"
    return out, info


def _spread(space: np.ndarray, out: np.ndarray, component_class: np.ndarray, k: int) -> int:
    """Label, in place, the unlabeled rows outside the kept share whose ``k`` nearest labeled or
    kept rows (in the teacher's PCA space, before UMAP) all carry one class, and that class is
    the row's own component. Returns how many rows it labelled (0 when ``k`` is 0).

    Why: the kept share is the easy core of each component (on MNIST 99 % right), so the
    encoder never gets a label for the harder rows, which is where its test errors are.
    Measured on the teacher's dev inputs (``bench/teacher_spread.py``: 10,000 training rows, 10
    or 60 labels per class, features after 5 epochs; no test image): with ``k = 10`` it labels
    70-71 % of the rows left out, 98.6-99.2 % of them right (the kept share: 98.8-98.9 %); the
    mixture's own labels of the rows left out are 94.0-94.3 % right. Label-free (components
    named by a Hungarian matching on the training rows) alike: 70.7 %, 98.5 % right."""
    if k == 0:
        return 0
    from sklearn.neighbors import NearestNeighbors

    src = np.flatnonzero(out >= 0)
    rest = np.flatnonzero(out < 0)
    if len(src) < k or not len(rest):
        return 0
    nn = NearestNeighbors(n_neighbors=k).fit(space[src])
    _, idx = nn.kneighbors(space[rest])
    votes = out[src][idx]
    take = rest[(votes == votes[:, :1]).all(axis=1) & (votes[:, 0] == component_class[rest])]
    out[take] = component_class[take]
    return int(len(take))
