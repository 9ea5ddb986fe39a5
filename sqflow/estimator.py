"""StochasticQuantization: clustering by stochastic (sub)gradient descent on the quantization error.

F(y) = E_i [ min_k ||x_i - y_k||^r ] is minimised one sample (``batch_size=1``, Algorithm 1 of
the paper) or one mini-batch at a time, with plain SGD or an adaptive rule whose state is kept
per center. See ``docs/PAPER.md`` and the class docstring for the formulas and defaults.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import warnings

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from .chunks import (
    as_float_rows,
    block_bounds,
    block_rows,
    check_block_finite,
    is_chunked,
    iter_blocks,
    row_block,
    sample_picks,
    uniform_sample,
)
from .distances import check_objective_finite, nearest, sq_distances
from .distributed import DaskPasses, KernelArgs, get_client, is_dask_array, run_block
from .optimizers import (
    DEFAULT_LEARNING_RATES,
    OPTIMIZER_CODES,
    SCHEDULE_CODES,
    OptimizerState,
)
from .seeding import class_means, kmeans_plusplus, random_rows

logger = logging.getLogger(__name__)


class PassBudgetWarning(ConvergenceWarning):
    """``fit`` ran its ``max_iter`` passes without meeting ``tol``. A ConvergenceWarning of
    its own class so that a caller for whom the pass budget is the plan (a warm-started
    nightly) can silence exactly this one, not the others (steps too large, worse than the
    seeding)."""


_INITS = ("k-means++", "random", "labels")
_METRICS = ("euclidean", "cosine")
#: share of shortened steps in the last pass above which a fit warns that it may not converge
_CLIP_WARN = 1e-3
#: a fit that stops (tol) while its objective estimate fell by more than this many times
#: ``tol`` per pass over the 3 passes before warns that the stop was the estimate's noise
#: (a heuristic; measured on blobs at r = 6: momentum/NAG stop 4-5 % above the KMeans
#: objective at pass 6-7 on a noisy rise while falling 0.9-2.7 % per pass; sgd and adam stop
#: within 1 % of it while falling 0.16-0.34 % per pass)
_STILL_FALLING = 50.0


def _unit_rows(block: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length (float64); a zero row stays zero."""
    block = np.asarray(block, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    return block / np.where(norms > 0, norms, 1.0)[:, None]


def _predict_block(block, centers, cosine=False):
    return nearest(_unit_rows(block) if cosine else block, centers)[0]


def _atomic(method):
    """Leave the estimator exactly as it was when ``method`` raises (nothing half-fitted)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        before = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper


class StochasticQuantization(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator
):
    """Stochastic Quantization (SQ) clustering (Kozyriev & Norkin, 2025).

    Minimises ``F(y) = mean_i min_k ||x_i - y_k||**rank`` by stochastic generalized-gradient
    steps. For a sample x with nearest center k*, the gradient is zero for every center but k*::

        g = rank * ||x - y_k*||**(rank - 2) * (y_k* - x)      (0 at zero distance)

    Parameters
    ----------
    n_clusters : int or "auto", default=8
        Number of centers K (>= 1). "auto": K is chosen from the data over ``k_range`` by
        :func:`sqflow.model_selection.select_n_clusters` (held-out Calinski-Harabasz ratio of
        SQ fits on a bounded sample; see that module), before the fit; the choice is in
        ``n_clusters_`` and the curve in ``k_selection_``. ``partial_fit`` chooses on its first
        chunk. The choice ignores ``sample_weight``.
    k_range : (int, int), default=(2, 30)
        Smallest and largest K tried by ``n_clusters="auto"`` (inclusive, 2 <= k_min <= k_max);
        unused for an integer ``n_clusters``.
    metric : {"euclidean", "cosine"}, default="euclidean"
        "cosine" runs spherical SQ: every row is read scaled to unit length and every updated
        center is projected back onto the unit sphere (instead of the bounding box, so
        ``projection`` and ``scale`` are ignored: the working unit is the sphere's radius).
        On unit rows ``||x - y||**2 = 2 (1 - cos(x, y))``, so the nearest center is the most
        cosine-similar one; ``predict`` assigns by cosine similarity, ``transform`` returns
        cosine distances ``1 - cos`` and the objective is ``mean min_k ||x/|x| - y_k||**rank``.
        Convergence: the projection onto the sphere is not onto a convex set, so the
        convex-projection argument of the paper does not apply; SQ on the sphere is projected
        stochastic gradient on a smooth manifold and reaches a stationary point of F on the
        sphere under the same step conditions (no global statement). Zero rows are rejected.
    forgetting : float or None, default=None
        Half-life in samples for streams (Spark StreamingKMeans' ``halfLife``): the step size
        never falls below ``rho_min = (1 - 0.5 ** (1 / forgetting)) / rank``. With rank 2 and
        sgd a center then moves by at least the fraction ``1 - 0.5 ** (1 / forgetting)`` of
        its distance to each sample it wins, so the weight of a sample in the center halves
        every ``forgetting`` later samples of that center (other ranks: exactly at unit working
        distance). It applies to ``fit`` and ``partial_fit``. With a floor the Robbins-Monro
        condition sum rho_t**2 < inf fails: the centers no longer converge to a minimiser of
        F but track a drifting optimum, with a noise floor (a spread of order
        ``sqrt(rho_min)`` around it) that is the price of following the drift. None: no floor.
    optimizer : {"sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"}, default="sgd"
        Update rule; state (velocity, G, Adam moments, update counts) is kept per center and
        Adam is bias-corrected with each center's own update count.
    learning_rate : float or None, default=None
        Initial step rho_0 (> 0), in units of the data's spread (see ``scale``). None takes the
        paper's value: 0.001 for sgd, momentum, nag, rmsprop; 0.1 for adagrad; 0.01 for adam.
        Safeguard: a step never moves a center further than the distance to the sample that
        pulls it (batches: the mean distance of the samples it won). For sgd that is
        ``rho_t * rank * ||z - y||**(rank - 2) <= 1``, where Algorithm 1 is stable, so it is
        left exact there; too large a rate for the rank shows as a ``ConvergenceWarning``
        naming the cure (more than 0.1 % of the last pass's steps shortened, or a fit ending
        worse than its seeding), never as non-finite centers.
    rank : float, default=3.0
        The exponent r >= 1 of the distance (the paper uses 3; 2 gives the k-means objective).
    batch_size : int, default=1
        1 runs Algorithm 1 exactly (one sample per step). B > 1 assigns the B samples of a
        batch to the centers as they stand at the batch start and moves every center that won
        samples by one step along the MEAN of their generalized gradients. A batch never spans
        two chunks (see ``chunk_size``).
    init : {"k-means++", "random", "labels"} or ndarray (n_clusters, n_features), \
default="k-means++"
        "k-means++": greedy k-means++ with squared distances on a bounded sample
        (``init_size``). "random": distinct random rows of that sample. "labels": ``fit(X, y)``
        with y = class id in [0, n_clusters) or -1 for unlabeled; center c starts at the mean of
        the labeled points of class c, so center index = class (classes without labels are
        seeded by k-means++, with a warning). An array is used as given (data units).
    n_init : int, default=1
        Independent starts; the run with the lowest final objective is kept.
    init_candidates : int, default=3
        For "k-means++" and "random": seedings drawn on the initialisation sample per start;
        the one with the lowest objective on that sample starts SQ (as MiniBatchKMeans'
        ``n_init``). Cheap next to a pass, and the seeding's sample objective predicts the
        basin SQ ends in (``bench/sq_vs_kmeans.py``). 1 = a single seeding.
    max_iter : int, default=20
        Maximum number of passes over the data in ``fit``.
    tol : float, default=1e-4
        Stop when the relative improvement of the pass's objective estimate over the previous
        pass is below ``tol`` (0 disables early stopping).
    schedule : {"robbins-monro", "constant"}, default="robbins-monro"
        Step sizes. "robbins-monro": ``rho_t = learning_rate / (1 + t / step_offset) **
        step_power`` with t = samples processed before the step; with 0.5 < step_power <= 1
        it satisfies sum rho_t = inf, sum rho_t**2 < inf, the conditions of the convergence
        theorem. "constant": ``rho_t = learning_rate`` (leaves a noise floor).
    step_offset : float or None, default=None
        t0 of the schedule, in samples. None: ``1000 * n_clusters``, so the step starts to
        decay once each center has had about a thousand updates; from then on rho_t is about
        ``learning_rate * 1000 / (updates of the center)``.
    step_power : float, default=1.0
        a of the schedule, in (0.5, 1].
    momentum : float, default=0.9
        gamma of "momentum" and "nag", in [0, 1).
    beta1, beta2 : float, default=0.9, 0.999
        Adam's moment decay rates, in [0, 1).
    rmsprop_decay : float, default=0.9
        RMSProp's decay of G, in [0, 1).
    epsilon : float, default=1e-8
        The eps of AdaGrad, RMSProp and Adam (> 0).
    projection : {"bbox", None}, default="bbox"
        "bbox" projects every updated center onto the bounding box of the initial centers and of
        all samples seen so far (a convex set holding the optimum); None disables it.
    scale : "auto", float or None, default="auto"
        SQ runs on ``z = x / scale`` and maps the centers back. A scalar rescaling leaves the
        minimisers unchanged (F is multiplied by ``scale**rank``) but makes learning rates
        independent of the data's units, which keeps r > 2 from exploding on unscaled data.
        "auto": the RMS distance of the initialisation sample (in ``partial_fit``: of the first
        chunk) to its nearest initial center, so that learning rates are relative to the
        initial quantization error. None: 1.
    init_size : int or None, default=None
        Rows in the bounded initialisation sample; None: ``max(10000, 100 * n_clusters)``.
    chunk_size : int, default=65536
        Rows per block of work (rounded down to a multiple of ``batch_size``). For chunked
        inputs (zarr/dask/h5py) blocks are whole storage chunks of about this many rows.
    shuffle : bool, default=True
        Visit the data in a new random order every pass: a global permutation for in-memory
        arrays; random block order and a permutation inside each block for chunked inputs.
        False visits rows in order (then ``partial_fit`` over the same rows in the same order
        gives the same centers as one ``fit`` pass, see ``partial_fit``).
    random_state : int, RandomState or None, default=None
        Seed of the initialisation and of the sample order. Same seed -> bit-identical centers.
        A RandomState instance is copied at the start of ``fit``, so refits repeat.
    verbose : int, default=0
        > 0 shows a progress bar over the blocks of each pass and logs each pass.
    dask_address : str or None, default=None
        Scheduler address for Dask-array inputs (``tcp://host:8786``). None uses the active
        ``distributed.Client`` if there is one; with neither, Dask arrays are streamed block by
        block in this process (dask's local scheduler reads each block). See
        ``docs/distributed.md`` for how worker results are combined.
    n_parallel : int or None, default=None
        Blocks run concurrently per round on a Dask cluster (see ``sqflow.distributed``);
        None: the cluster's total threads when ``fit`` starts. 1 reproduces the serial run.
    dask_timeout : float, default=60.0
        Seconds a distributed fit waits while the Dask cluster has no worker at all (every
        worker died or left) before it cancels its work and raises ``TimeoutError``. Workers
        that die and come back (a nanny restart) within this time change nothing.

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters_, n_features), float64
        (``metric="cosine"``: unit vectors)
    n_clusters_ : int
        The number of centers used: ``n_clusters``, or the K chosen by ``n_clusters="auto"``.
    k_selection_ : dict or None
        ``n_clusters="auto"``: the selection's ``KSelection.as_dict()`` (chosen K, candidate
        K, the criterion's curve, the SQ objective per K, the sample sizes); None otherwise.
    labels_ : ndarray (n_samples,), int64
        Nearest center of each training row (in-memory ``fit`` only; chunked inputs are not
        materialised: call ``predict``).
    objective_ : float
        Exact mean of ``min_k ||x - y_k||**rank`` over the training data at the final centers
        (after ``partial_fit``: over its last chunk); with ``sample_weight`` the weighted mean
        ``sum_i w_i min_k ||x_i - y_k||**rank / sum_i w_i``.
    n_iter_ : int
        Passes run by ``fit``.
    n_steps_ : int
        Optimizer steps taken (samples when ``batch_size=1``, batches otherwise).
    loss_curve_ : list of float
        Cheap objective estimates, one per block processed: the mean of ``min_k ||x - y_k||**r``
        over the block's samples, each measured just before its own step.
    scale_ : float
        The scale used (see ``scale``).
    n_features_in_ : int
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        k_range=(2, 30),
        metric="euclidean",
        forgetting=None,
        optimizer="sgd",
        learning_rate=None,
        rank=3.0,
        batch_size=1,
        init="k-means++",
        n_init=1,
        init_candidates=3,
        max_iter=20,
        tol=1e-4,
        schedule="robbins-monro",
        step_offset=None,
        step_power=1.0,
        momentum=0.9,
        beta1=0.9,
        beta2=0.999,
        rmsprop_decay=0.9,
        epsilon=1e-8,
        projection="bbox",
        scale="auto",
        init_size=None,
        chunk_size=65536,
        shuffle=True,
        random_state=None,
        verbose=0,
        dask_address=None,
        n_parallel=None,
        dask_timeout=60.0,
    ):
        self.n_clusters = n_clusters
        self.k_range = k_range
        self.metric = metric
        self.forgetting = forgetting
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.rank = rank
        self.batch_size = batch_size
        self.init = init
        self.n_init = n_init
        self.init_candidates = init_candidates
        self.max_iter = max_iter
        self.tol = tol
        self.schedule = schedule
        self.step_offset = step_offset
        self.step_power = step_power
        self.momentum = momentum
        self.beta1 = beta1
        self.beta2 = beta2
        self.rmsprop_decay = rmsprop_decay
        self.epsilon = epsilon
        self.projection = projection
        self.scale = scale
        self.init_size = init_size
        self.chunk_size = chunk_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.verbose = verbose
        self.dask_address = dask_address
        self.n_parallel = n_parallel
        self.dask_timeout = dask_timeout

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform``'s output (for ``get_feature_names_out``)."""
        return self.cluster_centers_.shape[0]

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_features: int, K: int | None = None) -> dict:
        """Validate every parameter in one place; return the resolved values (self untouched).

        ``K`` is the resolved number of centers (needed for ``n_clusters="auto"``; None takes
        ``n_clusters``, and 2 stands in while only validating before the selection)."""

        def need(cond: bool, name: str, valid: str) -> None:
            if not cond:
                raise ValueError(
                    f"{type(self).__name__}: parameter {name}={getattr(self, name)!r} is invalid; "
                    f"valid: {valid}"
                )

        def is_int(v) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_real(v) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        need(
            (is_int(self.n_clusters) and self.n_clusters >= 1)
            or (isinstance(self.n_clusters, str) and self.n_clusters == "auto"),
            "n_clusters",
            "an int >= 1 or 'auto'",
        )
        if K is None:
            K = self.n_clusters if is_int(self.n_clusters) else 2
        need(self.metric in _METRICS, "metric", f"one of {list(_METRICS)}")
        need(
            self.forgetting is None or (is_real(self.forgetting) and self.forgetting > 0),
            "forgetting",
            "None or a half-life > 0 (samples)",
        )
        need(self.optimizer in OPTIMIZER_CODES, "optimizer", f"one of {sorted(OPTIMIZER_CODES)}")
        need(
            self.learning_rate is None or (is_real(self.learning_rate) and self.learning_rate > 0),
            "learning_rate",
            "None (the paper's default for the optimizer) or a float > 0",
        )
        need(is_real(self.rank) and self.rank >= 1, "rank", "a float >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an int >= 1")
        need(is_int(self.n_init) and self.n_init >= 1, "n_init", "an int >= 1")
        need(
            is_int(self.init_candidates) and self.init_candidates >= 1,
            "init_candidates",
            "an int >= 1",
        )
        need(is_int(self.max_iter) and self.max_iter >= 1, "max_iter", "an int >= 1")
        need(is_real(self.tol) and self.tol >= 0, "tol", "a float >= 0")
        need(self.schedule in SCHEDULE_CODES, "schedule", f"one of {sorted(SCHEDULE_CODES)}")
        need(
            self.step_offset is None or (is_real(self.step_offset) and self.step_offset > 0),
            "step_offset",
            "None or a float > 0 (samples)",
        )
        need(
            is_real(self.step_power) and 0.5 < self.step_power <= 1.0,
            "step_power",
            "a float in (0.5, 1] (Robbins-Monro conditions)",
        )
        for name in ("momentum", "beta1", "beta2", "rmsprop_decay"):
            v = getattr(self, name)
            need(is_real(v) and 0 <= v < 1, name, "a float in [0, 1)")
        need(is_real(self.epsilon) and self.epsilon > 0, "epsilon", "a float > 0")
        need(self.projection in ("bbox", None), "projection", "'bbox' or None")
        need(
            self.scale is None
            or (isinstance(self.scale, str) and self.scale == "auto")
            or (is_real(self.scale) and self.scale > 0),
            "scale",
            "'auto', None or a float > 0",
        )
        need(
            self.init_size is None or (is_int(self.init_size) and self.init_size >= 1),
            "init_size",
            "None or an int >= 1",
        )
        need(is_int(self.chunk_size) and self.chunk_size >= 1, "chunk_size", "an int >= 1")
        need(isinstance(self.verbose, numbers.Integral), "verbose", "an int")
        need(
            self.dask_address is None or isinstance(self.dask_address, str),
            "dask_address",
            "None or a scheduler address string such as 'tcp://127.0.0.1:8786'",
        )
        need(
            self.n_parallel is None or (is_int(self.n_parallel) and self.n_parallel >= 1),
            "n_parallel",
            "None or an int >= 1",
        )
        need(
            is_real(self.dask_timeout) and self.dask_timeout > 0,
            "dask_timeout",
            "a float > 0 (seconds)",
        )

        if isinstance(self.init, str):
            need(
                self.init in _INITS,
                "init",
                f"one of {list(_INITS)} or an array (n_clusters, n_features)",
            )
            init_array = None
        else:
            init_array = np.asarray(self.init, dtype=np.float64)
            if self.n_clusters == "auto":
                raise ValueError(
                    f"{type(self).__name__}: an init array fixes K; it cannot be combined with "
                    "n_clusters='auto' (give an int n_clusters, or init='k-means++')"
                )
            if init_array.shape != (K, n_features):
                raise ValueError(
                    f"{type(self).__name__}: init array has shape {init_array.shape}; valid: "
                    f"(n_clusters, n_features) = ({K}, {n_features})"
                )
            if not np.isfinite(init_array).all():
                raise ValueError(f"{type(self).__name__}: init array contains NaN or infinity")

        lr = (
            DEFAULT_LEARNING_RATES[self.optimizer]
            if self.learning_rate is None
            else float(self.learning_rate)
        )
        t0 = 1000.0 * K if self.step_offset is None else float(self.step_offset)
        cosine = self.metric == "cosine"
        if cosine and init_array is not None:
            init_array = _unit_rows(init_array)
        rows = max(self.batch_size, self.chunk_size - self.chunk_size % self.batch_size)
        return {
            "lr": lr,
            "t0": t0,
            "opt": OPTIMIZER_CODES[self.optimizer],
            "sched": SCHEDULE_CODES[self.schedule],
            "init_array": init_array,
            "init_size": self.init_size or max(10_000, 100 * K),
            "rows_per_block": rows,
            "project": self.projection == "bbox" and not cosine,
            "K": K,
            "cosine": cosine,
            "rho_min": 0.0
            if self.forgetting is None
            else (1.0 - 0.5 ** (1.0 / float(self.forgetting))) / float(self.rank),
        }

    def _check_X(self, X, *, reset: bool):
        """Validated in-memory array, or the chunked array-like itself (checked per block)."""
        if is_chunked(X):
            if len(X.shape) != 2:
                raise ValueError(
                    f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}"
                )
            if X.shape[0] < 1 or X.shape[1] < 1:
                raise ValueError(
                    f"X is empty (shape {tuple(X.shape)}); need at least one sample and one feature"
                )
            if not np.issubdtype(np.dtype(X.dtype), np.number):
                raise ValueError(f"X must hold numbers; got dtype {X.dtype}")
            if reset:
                self.n_features_in_ = int(X.shape[1])
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            return X
        X = validate_data(
            self,
            X,
            dtype=[np.float64, np.float32],
            order="C",
            reset=reset,
            accept_sparse=False,
        )
        if self.metric == "cosine":
            zero = ~np.any(X != 0, axis=1)
            if zero.any():
                raise ValueError(
                    f"metric='cosine' needs rows with a direction; X has {int(zero.sum())} "
                    f"all-zero row(s) (first at row {int(np.flatnonzero(zero)[0])})"
                )
        return X

    def _check_weights(self, sample_weight, X) -> np.ndarray | None:
        """Validated sample weights (float64, (n_samples,), >= 0, not all 0), or None."""
        if sample_weight is None:
            return None
        if is_dask_array(X):
            raise ValueError(
                "sample_weight is not supported with a Dask array X (the distributed pass does "
                "not carry per-row weights yet): pass the data as a numpy or zarr array, or fit "
                "without weights"
            )
        if is_chunked(X):
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != (X.shape[0],):
                raise ValueError(
                    f"sample_weight.shape == {w.shape}, expected ({X.shape[0]},) (one per row)"
                )
            if (w < 0).any():
                raise ValueError("Negative values in data passed to sample_weight")
        else:
            w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if not np.all(np.isfinite(w)):
            raise ValueError("sample_weight holds NaN or infinite values; use finite weights >= 0")
        if not (w > 0).any():
            raise ValueError("sample_weight are all zero; at least one weight must be > 0")
        # all 1: the unweighted fit exactly (the weighted seeding draws its random numbers
        # differently, so it would give another, equally valid, start)
        return None if np.all(w == 1.0) else w

    def _resolve_k(self, X, rng) -> tuple[int, dict | None]:
        """The number of centers: ``n_clusters``, or the K chosen on X for "auto"."""
        if not (isinstance(self.n_clusters, str) and self.n_clusters == "auto"):
            return self.n_clusters, None
        from .model_selection import select_n_clusters

        selection = select_n_clusters(
            X,
            self.k_range,
            random_state=int(rng.randint(np.iinfo(np.int32).max)),
            rank=self.rank,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            metric=self.metric,
            chunk_size=self.chunk_size,
        )
        return selection.n_clusters, selection.as_dict()

    def _check_y(self, y, n_samples: int, K: int) -> np.ndarray:
        if y is None:
            raise ValueError(
                "init='labels' needs fit(X, y) with y = class id in [0, n_clusters) or -1 "
                "for unlabeled rows; got y=None"
            )
        y = column_or_1d(np.asarray(y))
        if y.shape[0] != n_samples:
            raise ValueError(f"y has {y.shape[0]} entries but X has {n_samples} rows")
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0):
            raise ValueError("y must hold integer class ids (or -1 for unlabeled)")
        y = y.astype(np.int64)
        bad = (y < -1) | (y >= K)
        if bad.any():
            raise ValueError(
                f"y has labels outside [-1, n_clusters) = [-1, {K}): "
                f"{np.unique(y[bad])[:10].tolist()} (first at row {int(np.flatnonzero(bad)[0])})"
            )
        if not (y >= 0).any():
            raise ValueError("init='labels' needs at least one labeled row (y >= 0); all are -1")
        return y

    # ------------------------------------------------------------------ fitting
    @_atomic
    def fit(self, X, y=None, sample_weight=None, callback=None):
        """Fit the centers by up to ``max_iter`` passes of SQ over X.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Numpy array (float32 kept, others cast to float64) or a chunked array-like (zarr,
            dask, h5py) streamed block by block.
        y : array-like (n_samples,) of int, optional
            Class id or -1 (unlabeled); used only by ``init="labels"``.
        sample_weight : array-like (n_samples,) of float >= 0, optional
            Row weights (numpy, zarr or h5py X; Dask arrays are refused). A row of
            weight w moves its center by w times the step of an unweighted row (the safeguard
            still stops it at the sample), so in expectation over the visiting order a pass
            moves the centers as a pass over the data with that row repeated w times would,
            to first order in the step: SQ then descends the weighted objective
            ``F_w(y) = sum_i w_i min_k ||x_i - y_k||**r / sum_i w_i``. The seeding draws rows
            in proportion to their weight, the scale, ``objective_`` and the stopping rule
            weight them; a row of weight 0 is skipped as if removed (no step, no tick of the
            step schedule's clock, which counts rows of weight > 0). Convergence: the weighted step ``w_i rho_t`` keeps the Robbins-Monro
            conditions (weights are bounded: sum (w rho_t)**2 <= max(w)**2 sum rho_t**2), so the
            argument carries over to F_w; large weights make the early steps larger (more
            often shortened by the safeguard). Exact equality with the repeated data is not
            claimed: the visiting order differs (see docs/PAPER.md, deviations).
        callback : callable, optional
            Called after every pass as ``callback(info)`` with a dict: ``start`` (index of the
            start, 0..n_init-1), ``pass`` (1-based), ``centers`` (data units, a copy),
            ``objective_estimate`` (the pass's mean loss), ``n_steps``. Use it to checkpoint.

        Returns
        -------
        self
        """
        rng = self._rng()
        X = self._check_X(X, reset=True)
        n, d = X.shape
        sw = self._check_weights(sample_weight, X)
        self._check_params(d)  # fail fast, before a K selection
        K, selection = self._resolve_k(X, rng)
        p = self._check_params(d, K)
        chunked = is_chunked(X)
        bounds = self._bounds(X, p)
        dask_passes, client = None, None
        if is_dask_array(X):
            client = get_client(self.dask_address)
            if client is not None:
                if p["cosine"]:
                    raise ValueError(
                        "metric='cosine' is not supported on a Dask cluster yet (the "
                        "composition of the workers' moves does not keep centers on the "
                        "sphere); fit a numpy or zarr array, or use metric='euclidean'"
                    )
                dask_passes = DaskPasses(client, X, self.n_parallel, timeout=self.dask_timeout)
        sample, class_sums, sample_w = self._init_data(X, y, p, bounds, rng, "", dask_passes, sw=sw)
        check_objective_finite(sample, float(self.rank), n_rows=n)  # before compiled code

        best = None
        seeds = rng.randint(np.iinfo(np.int32).max, size=self.n_init)
        for run, seed in enumerate(seeds):
            run_rng = np.random.RandomState(seed)
            centers0 = self._initial_centers(sample, p, run_rng, class_sums, sample_w)
            scale = self._resolve_scale(sample, centers0, sample_w)
            state = OptimizerState.start(centers0 / scale, self.optimizer)
            state, curve, n_passes, n_steps, clipped, stop_fall = self._passes(
                X, chunked, bounds, state, p, scale, run_rng, run, callback, dask_passes, sw
            )
            centers = state.centers * scale
            self._check_converged(centers, clipped[0], clipped[1], (sample, centers0, sample_w), p)
            self._warn_if_still_falling(stop_fall, n_passes, p)
            if dask_passes is not None:
                objective, assigned = dask_passes.objective(centers, float(self.rank)), None
            else:
                objective, assigned = self._objective(
                    X, centers, chunked, bounds, keep_labels=not chunked, sw=sw
                )
            if self.verbose:
                logger.info(
                    "SQ start %d/%d: objective %.6g after %d passes",
                    run + 1,
                    self.n_init,
                    objective,
                    n_passes,
                )
            if best is None or objective < best[0]:
                best = (objective, centers, assigned, state, curve, n_passes, n_steps, scale)

        objective, centers, assigned, state, curve, n_passes, n_steps, scale = best
        self.n_clusters_ = int(K)
        self.k_selection_ = selection
        self.cluster_centers_ = centers
        if assigned is not None:
            self.labels_ = assigned
        elif hasattr(self, "labels_"):
            del self.labels_
        self.objective_ = float(objective)
        self.loss_curve_ = curve
        self.n_iter_ = n_passes
        self.n_steps_ = n_steps
        self.scale_ = scale
        self._sq_state = state
        return self

    @_atomic
    def partial_fit(self, X, y=None, sample_weight=None):
        """Run SQ steps over the rows of X in order (one chunk of a stream).

        The first call initialises the centers from this chunk (``init`` as in ``fit``; an
        array init is the way to reproduce ``fit``) and, with ``scale="auto"``, the scale from
        this chunk. Later calls continue the same run: centers, optimizer state, bounding box and
        the step schedule's clock carry over. Feeding the rows of X in chunks, in order, gives
        the same centers as one ``fit(X)`` pass with ``shuffle=False``, ``max_iter=1``, the same
        array ``init`` and a fixed ``scale`` (for ``batch_size > 1``: when the chunks are
        multiples of ``batch_size``). ``sample_weight`` (in-memory X) weights the rows as in
        ``fit``. With ``forgetting`` the step never decays below the half-life's rate, so the
        centers keep following a drifting stream.

        Returns
        -------
        self
        """
        first = not hasattr(self, "_sq_state")
        X = self._check_X(X, reset=first)
        chunked = is_chunked(X)
        n, d = X.shape
        sw = self._check_weights(sample_weight, X)
        if first:
            rng = self._rng()
            self._check_params(d)  # fail fast, before a K selection
            K, selection = self._resolve_k(X, rng)
        else:
            K, selection = self.n_clusters_, self.k_selection_
        p = self._check_params(d, K)
        bounds = self._bounds(X, p)
        if first:
            sample, class_sums, sample_w = self._init_data(
                X,
                y,
                p,
                bounds,
                rng,
                " in the first partial_fit call (it initialises the centers)",
                sw=sw,
            )
            centers0 = self._initial_centers(sample, p, rng, class_sums, sample_w)
            scale = self._resolve_scale(sample, centers0, sample_w)
            state = OptimizerState.start(centers0 / scale, self.optimizer)
            curve: list[float] = []
            n_steps = 0
        else:
            scale = self.scale_
            state = self._sq_state.copy()
            curve = list(self.loss_curve_)
            n_steps = self.n_steps_

        args = self._kernel_args(p, scale)
        unit = scale ** float(self.rank)
        call_steps, call_clipped = 0, 0
        for start, stop in bounds:
            block = row_block(X, start, stop) if chunked else X[start:stop]
            wb = None if sw is None else sw[start:stop]
            state, loss, steps, clipped = run_block(
                block, state, args, state.t, None, start, check=chunked, weights=wb
            )
            rows = stop - start if wb is None else float(wb.sum())
            curve.append(loss * unit / rows if rows > 0 else float("nan"))
            n_steps += steps
            call_steps += steps
            call_clipped += clipped
        centers = state.centers * scale
        self._check_converged(centers, call_clipped, call_steps, None, p)
        objective, assigned = self._objective(X, centers, chunked, bounds, keep_labels=True, sw=sw)

        self.n_clusters_ = int(K)
        self.k_selection_ = selection
        self.cluster_centers_ = centers
        self.labels_ = assigned
        self.objective_ = float(objective)
        self.loss_curve_ = curve
        self.n_steps_ = n_steps
        if first:
            self.n_iter_ = 0
        self.scale_ = scale
        self._sq_state = state
        return self

    # ------------------------------------------------------------------ internals
    def _rng(self) -> np.random.RandomState:
        """The run's generator; a passed RandomState is copied so that refits repeat."""
        rs = self.random_state
        return check_random_state(
            copy.deepcopy(rs) if isinstance(rs, np.random.RandomState) else rs
        )

    def _init_data(self, X, y, p, bounds, rng, where: str, dask_passes=None, sw=None):
        """Bounded initialisation sample (its weights, None without ``sw``) and, for
        ``init="labels"``, per-class sums/counts.

        With ``dask_passes`` (Dask input on a cluster) the sample is gathered on the workers, so
        only the sampled rows travel to the driver instead of every block that holds one.
        With weights the sample is drawn from the rows of weight > 0 and keeps their weights
        (the seeding and the scale weight them)."""
        n, K = X.shape[0], p["K"]
        n_usable = n if sw is None else int(np.count_nonzero(sw))
        if n_usable < K:
            kind = "n_samples" if sw is None else "rows with sample_weight > 0"
            raise ValueError(
                f"{kind}={n_usable} should be >= n_clusters={K}{where}: SQ needs at "
                "least one sample per center"
            )
        chunked = is_chunked(X)
        labels = (
            self._check_y(y, n, K)
            if (isinstance(self.init, str) and self.init == "labels")
            else None
        )
        size = min(n, p["init_size"])
        sample_w = None
        if dask_passes is not None:
            picks = sample_picks(n, size, rng)
            sample = as_float_rows(dask_passes.compute(X[picks]))
            check_block_finite(sample, 0, rows=picks)
        elif chunked and sw is None:
            sample = uniform_sample(X, size, rng, bounds)
        elif chunked:
            rows = np.flatnonzero(sw > 0)
            if size < rows.size:
                rows = np.sort(rng.choice(rows, size=size, replace=False))
            sample, sample_w = uniform_sample(X, size, rng, bounds, picks=rows), sw[rows]
        elif sw is not None:
            rows = np.flatnonzero(sw > 0)
            if size < rows.size:
                rows = np.sort(rng.choice(rows, size=size, replace=False))
            sample, sample_w = X[rows], sw[rows]
        else:
            sample = X if size >= n else X[np.sort(rng.choice(n, size=size, replace=False))]
        if p["cosine"]:
            sample = _unit_rows(sample)
        class_sums = (
            self._class_sums(X, labels, bounds, chunked, p, sw) if labels is not None else None
        )
        return sample, class_sums, sample_w

    def _resolve_scale(self, sample: np.ndarray, centers0: np.ndarray, sample_w=None) -> float:
        """ "auto": RMS distance of the init sample to its nearest initial center.

        In those units a typical sample sits about 1 from its center, so the paper's learning
        rates mean the same thing on any data: a step moves a center by about ``rank *
        learning_rate`` of the current quantization error, whatever the units of X.
        """
        if self.scale is None or self.metric == "cosine":
            return 1.0
        if self.scale != "auto":
            return float(self.scale)
        # the compiled assignment: no (n, K) distance matrix for a large init sample
        s = math.sqrt(float(np.average(nearest(sample, centers0)[1], weights=sample_w)))
        return s if s > 0 and math.isfinite(s) else 1.0

    def _class_sums(self, X, labels, bounds, chunked, p, sw=None) -> tuple[np.ndarray, np.ndarray]:
        """Per-class (weighted) sums and counts of the labeled rows (cosine: of unit rows)."""
        K, d = p["K"], X.shape[1]
        sums = np.zeros((K, d))
        lab_all = labels >= 0
        if sw is None:
            counts = np.bincount(labels[lab_all], minlength=K).astype(np.int64)
        else:
            counts = np.bincount(labels[lab_all], weights=sw[lab_all], minlength=K)
        blocks = iter_blocks(X, bounds) if chunked else [(0, X.shape[0], X)]
        for start, stop, block in blocks:
            lab = labels[start:stop]
            keep = lab >= 0
            rows = block[keep].astype(np.float64)
            if p["cosine"]:
                rows = _unit_rows(rows)
            if sw is not None:
                rows = rows * sw[start:stop][keep, None]
            np.add.at(sums, lab[keep], rows)
        return sums, counts

    def _initial_centers(self, sample, p, rng, class_sums, sample_w=None) -> np.ndarray:
        centers = self._seed_centers(sample, p, rng, class_sums, sample_w)
        # spherical SQ starts on the sphere (class means of unit rows lie inside it)
        return _unit_rows(centers) if p["cosine"] else centers

    def _seed_centers(self, sample, p, rng, class_sums, sample_w) -> np.ndarray:
        if p["init_array"] is not None:
            return p["init_array"].copy()
        if self.init == "labels":
            return class_means(class_sums[0], class_sums[1], sample, rng)
        K = p["K"]
        best, best_obj = None, np.inf
        for _ in range(self.init_candidates):
            if self.init == "random":
                centers = random_rows(sample, K, rng, sample_weight=sample_w)
            else:
                centers = kmeans_plusplus(sample, K, rng, sample_weight=sample_w)
            if self.init_candidates == 1:
                return centers
            # the SQ objective (rank r) of the seeding on the sample
            d_r = nearest(sample, centers)[1] ** (self.rank / 2.0)
            obj = float(np.average(d_r, weights=sample_w))
            if obj < best_obj:
                best, best_obj = centers, obj
        return best

    def _bounds(self, X, p) -> list[tuple[int, int]]:
        """Row ranges of the blocks of work: Dask's own chunks, whole storage chunks, or
        ``chunk_size`` rows (a multiple of ``batch_size``) for in-memory arrays."""
        n = X.shape[0]
        if is_dask_array(X):
            edges = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)
            return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        if is_chunked(X):
            return block_bounds(n, block_rows(X, p["rows_per_block"]))
        return block_bounds(n, p["rows_per_block"])

    def _kernel_args(self, p: dict, scale: float) -> KernelArgs:
        return KernelArgs(
            opt=p["opt"],
            lr=p["lr"],
            sched=p["sched"],
            t0=p["t0"],
            power=float(self.step_power),
            rank=float(self.rank),
            momentum=float(self.momentum),
            beta1=float(self.beta1),
            beta2=float(self.beta2),
            decay=float(self.rmsprop_decay),
            eps=float(self.epsilon),
            inv_scale=1.0 / scale,
            batch_size=int(self.batch_size),
            project=p["project"],
            rho_min=p["rho_min"],
            sphere=p["cosine"],
        )

    def _passes(
        self,
        X,
        chunked,
        bounds,
        state,
        p,
        scale,
        rng,
        run,
        callback=None,
        dask_passes=None,
        sw=None,
    ):
        """Up to ``max_iter`` passes; returns (state, loss curve, passes run, steps)."""
        args = self._kernel_args(p, scale)
        unit = scale ** float(self.rank)  # working units -> data units of the loss
        curve: list[float] = []
        prev = None
        estimates: list[float] = []  # the passes' objective estimates
        stop_fall = None  # mean relative fall per pass over the 3 passes before a tol stop
        n_steps = 0
        n = X.shape[0]
        denom = n if sw is None else float(np.sum(sw))  # of the pass's mean loss
        progress = None
        if self.verbose:
            from tqdm.auto import tqdm

            progress = tqdm(
                total=self.max_iter * len(bounds), desc=f"SQ start {run + 1}", unit="block"
            )

        def on_block(b, loss, rows):
            curve.append(loss * unit / rows if rows > 0 else float("nan"))
            if progress is not None:
                progress.update(1)

        it = 0
        try:
            for it in range(1, self.max_iter + 1):
                total = 0.0
                pass_steps, pass_clipped = 0, 0
                if not chunked:
                    # gathering the permuted rows into a contiguous block keeps the kernel's
                    # reads sequential (measured: ~2x faster than indexing rows in the loop)
                    perm = rng.permutation(n) if self.shuffle else None
                    for b, (start, stop) in enumerate(bounds):
                        block = (
                            X[start:stop] if perm is None else np.take(X, perm[start:stop], axis=0)
                        )
                        wb = None
                        if sw is not None:
                            wb = sw[start:stop] if perm is None else sw[perm[start:stop]]
                        state, loss, steps, clipped = run_block(
                            block, state, args, state.t, None, start, check=False, weights=wb
                        )  # validated by _check_X
                        total += loss
                        n_steps += steps
                        pass_steps += steps
                        pass_clipped += clipped
                        on_block(b, loss, stop - start if wb is None else float(wb.sum()))
                else:
                    # random block order, and a seeded permutation inside each block: the same
                    # sample order whether the blocks run here or on a Dask cluster
                    order = rng.permutation(len(bounds)) if self.shuffle else np.arange(len(bounds))
                    seeds = (
                        rng.randint(np.iinfo(np.int32).max, size=len(bounds))
                        if self.shuffle
                        else None
                    )
                    if dask_passes is not None:
                        state, loss, steps = dask_passes.run_pass(
                            state, args, order, seeds, on_block
                        )
                        total += loss
                        n_steps += steps
                        pass_steps += steps
                        pass_clipped += dask_passes.clipped
                    else:
                        for b in order:
                            start, stop = bounds[b]
                            seed = None if seeds is None else int(seeds[b])
                            wb = None if sw is None else sw[start:stop]
                            state, loss, steps, clipped = run_block(
                                row_block(X, start, stop),
                                state,
                                args,
                                state.t,
                                seed,
                                start,
                                weights=wb,
                            )
                            total += loss
                            n_steps += steps
                            pass_steps += steps
                            pass_clipped += clipped
                            on_block(b, loss, stop - start if wb is None else float(wb.sum()))
                estimate = total * unit / denom
                if self.verbose:
                    logger.info("SQ pass %d: objective estimate %.6g", it, estimate)
                if callback is not None:
                    callback(
                        {
                            "start": run,
                            "pass": it,
                            "centers": state.centers * scale,
                            "objective_estimate": estimate,
                            "n_steps": n_steps,
                        }
                    )
                estimates.append(estimate)
                if prev is not None and (prev - estimate) < self.tol * abs(prev):
                    if len(estimates) >= 4 and estimates[-4] != 0:
                        stop_fall = (estimates[-4] - estimate) / abs(estimates[-4]) / 3
                    break
                prev = estimate
            else:
                if self.tol > 0 and self.max_iter > 1:
                    warnings.warn(
                        f"SQ did not converge in max_iter={self.max_iter} passes (the last "
                        f"pass improved the objective estimate by more than tol={self.tol:g}); "
                        "raise max_iter, or raise learning_rate if the objective falls slowly",
                        PassBudgetWarning,
                        stacklevel=3,
                    )
        finally:
            if progress is not None:
                progress.close()
        return state, curve, it, n_steps, (pass_clipped, pass_steps), stop_fall

    def _warn_if_still_falling(self, stop_fall: float | None, it: int, p: dict) -> None:
        """Warn when the tol rule stopped a fit whose estimate was still falling clearly
        (``stop_fall``: mean relative fall per pass over the 3 passes before the stop). A pass
        estimate is measured while the centers move; with momentum or NAG at high rank it is
        noisy enough that a rise stops a descent that is not over."""
        if stop_fall is None or self.tol <= 0 or stop_fall <= _STILL_FALLING * self.tol:
            return
        lr = p["lr"]
        warnings.warn(
            f"SQ stopped after pass {it} because its objective estimate did not improve by "
            f"tol={self.tol:g} on the previous pass, but over the 3 passes before it fell by "
            f"{stop_fall:.2%} per pass: the stop is likely the estimate's noise and the centers "
            f"may not have converged (optimizer={self.optimizer!r}, rank={float(self.rank):g}); "
            f"lower learning_rate (now {lr:g}; try {lr / 10:g}), or use optimizer='sgd' or "
            "'adagrad', whose estimates fall steadily",
            ConvergenceWarning,
            stacklevel=3,
        )

    def _check_converged(self, centers, clipped, steps, seeding, p) -> None:
        """Never hand back non-finite centers; warn (naming the cure) when the steps were too
        large for Algorithm 1: the safeguard shortened many of them, or the fit ended worse
        than its seeding on the initialisation sample."""
        lr, r = p["lr"], float(self.rank)
        cure = (
            f"lower learning_rate (now {lr:g}; try {lr / 10:g}), or use optimizer='adagrad' "
            "whose steps adapt to the gradient's size"
        )
        if not np.all(np.isfinite(centers)):
            raise FloatingPointError(
                f"SQ diverged: non-finite centers with learning_rate={lr:g}, rank={r:g}, "
                f"optimizer={self.optimizer!r}; {cure}"
            )
        if steps and clipped > _CLIP_WARN * steps:
            warnings.warn(
                f"learning_rate={lr:g} is too large for rank={r:g} and optimizer="
                f"{self.optimizer!r}: the step safeguard shortened {clipped} of {steps} steps in "
                f"the last pass (each would have overshot its sample), so the centers may not "
                f"have converged; {cure}",
                ConvergenceWarning,
                stacklevel=3,
            )
            return
        if seeding is not None:
            sample, centers0, sample_w = seeding
            before = float(np.average(nearest(sample, centers0)[1] ** (r / 2.0), weights=sample_w))
            after = float(np.average(nearest(sample, centers)[1] ** (r / 2.0), weights=sample_w))
            if after > before * (1.0 + 1e-6):
                warnings.warn(
                    f"SQ ended with a higher objective than its seeding on the initialisation "
                    f"sample ({after:.6g} > {before:.6g}; optimizer={self.optimizer!r}, "
                    f"rank={r:g}): the steps were too large; {cure}",
                    ConvergenceWarning,
                    stacklevel=3,
                )

    def _objective(self, X, centers, chunked, bounds, keep_labels, sw=None):
        """Exact (weighted) mean of min_k ||x - y_k||^r (and the labels if asked) in one pass
        (cosine: of the unit rows)."""
        r = float(self.rank)
        total = 0.0
        labels = np.empty(X.shape[0], dtype=np.int64) if keep_labels else None
        blocks = iter_blocks(X, bounds) if chunked else [(0, X.shape[0], X)]
        for start, stop, block in blocks:
            lab, d2 = nearest(self._metric_rows(block), centers)
            d_r = d2 ** (r / 2.0)
            total += float(np.sum(d_r) if sw is None else np.dot(sw[start:stop], d_r))
            if labels is not None:
                labels[start:stop] = lab
        return total / (X.shape[0] if sw is None else float(np.sum(sw))), labels

    def _metric_rows(self, block):
        """The rows as the metric sees them: unit rows for "cosine", else unchanged."""
        return _unit_rows(block) if self.metric == "cosine" else block

    def _stream(self, X):
        """Validated blocks of X for prediction: (start, stop, block)."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        if is_chunked(X):
            bounds = block_bounds(X.shape[0], block_rows(X, self.chunk_size))
            return X, iter_blocks(X, bounds)
        return X, [(0, X.shape[0], X)]

    # ------------------------------------------------------------------ inference
    def predict(self, X):
        """Index of the nearest center for every row of X: ndarray (n_samples,), int64.

        A Dask array gives a lazy Dask array (one task per block); write it with
        ``sqflow.assign.assign_store`` or ``dask.array.to_zarr`` without loading the data.
        """
        if is_dask_array(X):
            check_is_fitted(self)
            self._check_X(X, reset=False)
            if len(X.chunks[1]) != 1:
                X = X.rechunk({1: X.shape[1]})
            return X.map_blocks(
                _predict_block,
                self.cluster_centers_,
                self.metric == "cosine",
                dtype=np.int64,
                drop_axis=1,
            )
        X, blocks = self._stream(X)
        out = np.empty(X.shape[0], dtype=np.int64)
        for start, stop, block in blocks:
            out[start:stop] = nearest(self._metric_rows(block), self.cluster_centers_)[0]
        return out

    def transform(self, X):
        """Distance of every row to every center: ndarray (n_samples, n_clusters_).

        Euclidean distance; ``metric="cosine"``: cosine distance ``1 - cos(x, y_k)`` in [0, 2].
        """
        X, blocks = self._stream(X)
        out = np.empty((X.shape[0], self.cluster_centers_.shape[0]), dtype=np.float64)
        for start, stop, block in blocks:
            # from differences, not |x|^2 - 2x.c + |c|^2: exact far from the origin too
            d2 = sq_distances(self._metric_rows(block), self.cluster_centers_)
            # unit rows and centers: ||x - y||^2 = 2 (1 - cos)
            out[start:stop] = d2 / 2.0 if self.metric == "cosine" else np.sqrt(d2)
        return out

    def score(self, X, y=None, sample_weight=None):
        """Minus the objective on X: ``-mean_i min_k ||x_i - y_k||**rank`` (higher is better);
        with ``sample_weight`` the weighted mean (cosine: of the unit rows)."""
        X, blocks = self._stream(X)
        sw = self._check_weights(sample_weight, X)
        total = 0.0
        for start, stop, block in blocks:
            d2 = nearest(self._metric_rows(block), self.cluster_centers_)[1]
            d_r = d2 ** (float(self.rank) / 2.0)
            total += float(np.sum(d_r) if sw is None else np.dot(sw[start:stop], d_r))
        return -total / (X.shape[0] if sw is None else float(np.sum(sw)))

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the cluster of every training row (streamed for chunked inputs)."""
        self.fit(X, y, sample_weight=sample_weight)
        if hasattr(self, "labels_"):
            return self.labels_
        return self.predict(X)
