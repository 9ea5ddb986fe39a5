"""Choosing the number of clusters K from the data.

:func:`select_n_clusters` fits :class:`sqflow.StochasticQuantization` once per candidate K on a
bounded uniform sample of the data (the fitting rows) and scores each fit on a second, disjoint
sample (the held-out rows, which the centers never saw). The K with the best score wins.

The default criterion is the **Calinski-Harabasz variance ratio** of the held-out rows, grouped
by their nearest SQ center. With n held-out rows, W = sum_i ||x_i - m_k(i)||^2 the spread of the
rows around their group means m_k and B = sum_k n_k ||m_k - m||^2 the spread of the group means
around the overall mean m::

    CH(K) = (B / (K - 1)) / (W / (n - K))

W / n is the k-means objective F_2 of the held-out rows, so CH is the elbow of F_2(K) read with
a penalty: adding a center always lowers W, but it raises CH only when it lowers W by more than
the degrees of freedom it costs. Two other criteria are computed on the same fits and returned
as curves: the mean silhouette coefficient (``"silhouette"``, s = (b - a) / max(a, b) per row)
and minus the Davies-Bouldin index (``"davies_bouldin"``); any of the three can be chosen.

How the default was chosen, honestly: the silhouette was the first choice; on the ten blob sets
of ``bench/select_k.py`` it found 6 of 10 (it prefers a coarse grouping when blobs sit in groups,
and ties between neighbouring K), and one miss came from an SQ fit stuck in a local optimum at
the true K. Calinski-Harabasz (the best of 30 criteria on Gaussian clusters in Milligan and
Cooper's 1985 comparison) and 10 seedings per fit (``init_candidates=10``) were chosen AFTER
looking at those sets, so the bench also reports ten fresh sets drawn with other seeds.
Known limits: CH is undefined for K = 1 (the range starts at 2) and assumes compact, roughly
spherical groups; two groups closer than about 3 standard deviations are read as one.

Cost is bounded and independent of the number of rows: ``len(k_range) * n_init`` SQ fits on at
most ``sample_size`` rows, plus the scores of ``eval_size`` rows (the silhouette, the costliest,
is O(eval_size**2 * d)). Chunked inputs (zarr, dask, h5py) are sampled block by block without
being loaded whole.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.utils import check_random_state

from .chunks import block_bounds, block_rows, is_chunked, sample_picks, uniform_sample

__all__ = ["KSelection", "select_n_clusters"]

CRITERION = "calinski_harabasz"
SELECTION_INIT_CANDIDATES = 10
CRITERIA = ("calinski_harabasz", "silhouette", "davies_bouldin")


@dataclass(frozen=True)
class KSelection:
    """What :func:`select_n_clusters` chose and why.

    Attributes
    ----------
    n_clusters : int
        The chosen K (the first K of ``k_values`` with the highest ``scores``).
    k_values : list of int
        The candidate K, ascending.
    scores : list of float
        The chosen criterion on the held-out sample at each K, higher = better (the
        criterion's curve; plot it against ``k_values``).
    objectives : list of float
        The SQ objective F_r (mean ``min_k ||x - y_k||**rank`` in data units) of each K's fit on
        the held-out sample; for reading, not used in the choice.
    criterion : str
        The criterion that chose: "calinski_harabasz", "silhouette" or "davies_bouldin".
    curves : dict of str to list of float
        All three criteria at each K, higher = better: Calinski-Harabasz ratio (>= 0), mean
        silhouette (in [-1, 1]) and minus the Davies-Bouldin index (<= 0).
    n_fit, n_eval : int
        Rows in the fitting sample and in the held-out scoring sample.
    """

    n_clusters: int
    k_values: list[int]
    scores: list[float]
    objectives: list[float]
    criterion: str = CRITERION
    curves: dict[str, list[float]] = field(default_factory=dict)
    n_fit: int = 0
    n_eval: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for a run record or a report)."""
        return {
            "n_clusters": self.n_clusters,
            "criterion": self.criterion,
            "curves": {k: list(v) for k, v in self.curves.items()},
            "k_values": list(self.k_values),
            "scores": list(self.scores),
            "objectives": list(self.objectives),
            "n_fit": self.n_fit,
            "n_eval": self.n_eval,
            "params": dict(self.params),
        }


def _check_k_range(k_range: Any) -> list[int]:
    try:
        lo, hi = k_range
    except (TypeError, ValueError):
        raise ValueError(
            f"k_range={k_range!r} is not valid; give (k_min, k_max) with 2 <= k_min <= k_max"
        ) from None
    ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (lo, hi))
    if not ok or not 2 <= lo <= hi:
        raise ValueError(
            f"k_range={k_range!r} is not valid; give integers (k_min, k_max) with "
            "2 <= k_min <= k_max (the silhouette is undefined for K = 1)"
        )
    return list(range(int(lo), int(hi) + 1))


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= 1")
    return int(value)


def _draw_samples(
    X: Any, n_fit: int, n_eval: int, rng: np.random.RandomState, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint uniform samples of rows of X (float64): fitting rows, held-out rows."""
    n = X.shape[0]
    if is_chunked(X):
        bounds = block_bounds(n, block_rows(X, chunk_size))
        rows = uniform_sample(X, n_fit + n_eval, rng, bounds)
    else:
        rows = np.asarray(X)[sample_picks(n, n_fit + n_eval, rng)]
    rows = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError("X holds NaN or infinite values; select_n_clusters needs finite rows")
    order = rng.permutation(rows.shape[0])  # the sample is sorted by row: mix before splitting
    return rows[order[:n_fit]], rows[order[n_fit:]]


def select_n_clusters(
    X: Any,
    k_range: tuple[int, int] = (2, 30),
    *,
    sample_size: int = 10_000,
    eval_size: int = 3_000,
    n_init: int = 1,
    random_state: int | np.random.RandomState | None = None,
    criterion: str = CRITERION,
    **sq_params: Any,
) -> KSelection:
    """Pick the number of clusters K of X by a held-out criterion of SQ fits (module docstring).

    Parameters
    ----------
    X : array-like (n_samples, n_features)
        Numpy array or chunked array-like (zarr, dask, h5py; sampled block by block).
    k_range : (int, int), default=(2, 30)
        Smallest and largest K tried (inclusive), 2 <= k_min <= k_max.
    sample_size : int, default=10000
        Rows (at most) the SQ fits see. Bounds the cost on large data.
    eval_size : int, default=3000
        Held-out rows (at most, disjoint from the fitting rows) the criteria are computed on.
        With fewer than ``sample_size + eval_size`` rows, the rows are split in that ratio.
    n_init : int, default=1
        SQ starts per K (``StochasticQuantization.n_init``); the lowest objective is kept.
    random_state : int, RandomState or None, default=None
        Seeds the samples and every fit (a RandomState is copied, not advanced). Same seed and
        data -> same result.
    criterion : {"calinski_harabasz", "silhouette", "davies_bouldin"}, default="calinski_harabasz"
        The score whose maximum picks K (all three are returned in ``curves``).
    **sq_params
        Further ``StochasticQuantization`` parameters (``rank``, ``optimizer``, ``max_iter``,
        ``chunk_size``, ...). ``init_candidates`` defaults to 10 here (seedings are cheap next to
        the fits, and one fit stuck in a local optimum at the true K is what costs a miss).
        ``n_clusters`` and ``random_state`` are set here.

    Returns
    -------
    KSelection
        The chosen K and the criterion's curve.
    """
    from .estimator import StochasticQuantization

    k_values = _check_k_range(k_range)
    sample_size = _positive_int("sample_size", sample_size)
    eval_size = _positive_int("eval_size", eval_size)
    n_init = _positive_int("n_init", n_init)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not valid; use one of {list(CRITERIA)}")
    for reserved in ("n_clusters", "random_state"):
        if reserved in sq_params:
            raise ValueError(
                f"{reserved} cannot be passed to select_n_clusters through **sq_params; "
                "it is set per candidate K / by random_state"
            )
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}")
    n = int(X.shape[0])
    if n < sample_size + eval_size:
        n_fit = int(round(n * sample_size / (sample_size + eval_size)))
        n_eval = n - n_fit
    else:
        n_fit, n_eval = sample_size, eval_size
    k_max = k_values[-1]
    if n_fit < k_max or n_eval <= k_max:
        raise ValueError(
            f"X has {n} rows: too few for k_range={k_range!r} (the fitting sample gets {n_fit} "
            f"rows and the held-out sample {n_eval}; both must exceed k_max={k_max})"
        )

    rng = check_random_state(random_state)
    if isinstance(random_state, np.random.RandomState):
        rng = np.random.RandomState()
        rng.set_state(random_state.get_state())  # copy: a caller's RandomState is not advanced
    fit_rows, eval_rows = _draw_samples(
        X, n_fit, n_eval, rng, int(sq_params.get("chunk_size", 65536))
    )
    seed = int(rng.randint(np.iinfo(np.int32).max))

    sq_params = {"init_candidates": SELECTION_INIT_CANDIDATES, **sq_params}
    scores, objectives = [], []
    curves: dict[str, list[float]] = {
        "silhouette": [],
        "calinski_harabasz": [],
        "davies_bouldin": [],
    }
    for k in k_values:
        # the same seed for every K: the curve differs by K, not by the luck of the draw
        est = StochasticQuantization(n_clusters=k, n_init=n_init, random_state=seed, **sq_params)
        est.fit(fit_rows)
        labels = est.predict(eval_rows)
        if np.unique(labels).size < 2:
            curves["silhouette"].append(-1.0)
            curves["calinski_harabasz"].append(0.0)
            curves["davies_bouldin"].append(float("-inf"))
        else:
            curves["silhouette"].append(float(silhouette_score(eval_rows, labels)))
            curves["calinski_harabasz"].append(float(calinski_harabasz_score(eval_rows, labels)))
            curves["davies_bouldin"].append(-float(davies_bouldin_score(eval_rows, labels)))
        scores.append(curves[criterion][-1])
        objectives.append(-float(est.score(eval_rows)))
    best = int(np.argmax(scores))
    return KSelection(
        n_clusters=k_values[best],
        k_values=k_values,
        scores=scores,
        objectives=objectives,
        criterion=criterion,
        curves=curves,
        n_fit=n_fit,
        n_eval=n_eval,
        params={
            "k_range": [k_values[0], k_values[-1]],
            "sample_size": sample_size,
            "eval_size": eval_size,
            "n_init": n_init,
            **{k: v for k, v in sq_params.items() if isinstance(v, (int, float, str, bool))},
        },
    )
