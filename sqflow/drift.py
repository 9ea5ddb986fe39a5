"""Drift statistics: does a new batch of embeddings look like the reference the encoder and the
centers were fitted on? (numpy/scipy only.)

:func:`detect_drift` computes up to four statistics, each usable alone, and combines them with a
:class:`data_contracts.drift_policy.DriftPolicy` (see that module for the exact rules):

- ``mmd``: RBF-kernel maximum mean discrepancy (biased V-statistic, bandwidth = median pairwise
  distance of the pooled subsample) with a permutation p-value, on at most ``mmd_max_rows`` rows
  of each side;
- ``ks``: per-dimension Kolmogorov-Smirnov, Holm- or Bonferroni-corrected;
- ``distortion``: ``mean_i min_k ||b_i - c_k||^r / mean_j min_k ||a_j - c_k||^r`` (batch over
  reference) under the same centers, with a one-sided permutation p-value;
- ``occupancy``: population stability index of the cluster shares, chi-square p-value.

Inputs may be numpy arrays, Zarr arrays, Dask arrays or anything with ``to_dask()`` (an
``sqflow.store.EmbeddingStore``). They are streamed block by block: every block is checked for
NaN/inf and only a uniform subsample (without replacement) of at most ``max_reference_rows`` /
``max_batch_rows`` rows is kept, so memory stays bounded. The result is deterministic given the
policy's ``seed`` (or the ``seed`` argument).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

from data_contracts.drift_policy import ALL_STATISTICS, DriftPolicy

from .chunks import block_bounds, block_rows, iter_blocks
from .distances import nearest_distance, sq_distances

__all__ = [
    "DriftPolicy",
    "DriftReport",
    "StatisticResult",
    "detect_drift",
    "mmd_test",
    "ks_test",
    "distortion_test",
    "occupancy_test",
    "ALL_STATISTICS",
]

log = logging.getLogger(__name__)

#: Rows read per block when streaming an input (rounded to whole storage chunks).
_BLOCK_ROWS = 65536


# ----------------------------------------------------------------------------- results
@dataclass
class StatisticResult:
    """One statistic's outcome.

    ``value``: the statistic (MMD^2, max KS D, distortion ratio, PSI); ``threshold``: the bound
    it is compared with (alpha for ``mmd``/``ks``; the minimum ratio / PSI for ``distortion`` /
    ``occupancy``, whose p-value must also be <= alpha); ``p_value``: None where not defined;
    ``detail``: per-statistic extras (bandwidth, per-dimension p-values, shares, ...).
    """

    name: str
    value: float
    threshold: float
    p_value: float | None
    drifted: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class DriftReport:
    """Outcome of :func:`detect_drift`.

    ``drifted``: True / False, or None when there was too little data for a decision
    (``status == "insufficient_data"``); ``statistics``: one :class:`StatisticResult` per computed
    statistic; ``reasons``: human-readable sentences behind the decision; ``sizes``: rows in each
    input and rows used by each statistic; ``policy``: the policy as a dict; ``seed``.
    """

    drifted: bool | None
    status: str
    statistics: list[StatisticResult]
    reasons: list[str]
    sizes: dict[str, int]
    policy: dict[str, Any]
    seed: int
    centers_source: str | None = None

    def statistic(self, name: str) -> StatisticResult:
        """The result of statistic ``name`` (KeyError naming the computed ones if absent)."""
        for s in self.statistics:
            if s.name == name:
                return s
        raise KeyError(
            f"statistic {name!r} was not computed; computed: {[s.name for s in self.statistics]}"
        )

    @property
    def flagged(self) -> list[str]:
        """Names of the statistics that flagged drift."""
        return [s.name for s in self.statistics if s.drifted]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (plain Python numbers)."""
        return _plain(asdict(self))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per statistic: statistic, value, threshold, p_value, drifted."""
        return [
            {
                "statistic": s.name,
                "value": float(s.value),
                "threshold": float(s.threshold),
                "p_value": None if s.p_value is None else float(s.p_value),
                "drifted": bool(s.drifted),
            }
            for s in self.statistics
        ]

    def to_markdown(self) -> str:
        """A short Markdown report: decision, reasons, the statistics table, sizes."""
        head = {
            "drift": "DRIFT",
            "no_drift": "no drift",
            "insufficient_data": "insufficient data (no decision)",
        }[self.status]
        lines = [f"**Decision: {head}**", ""]
        lines += [f"- {r}" for r in self.reasons]
        if self.statistics:
            lines += [
                "",
                "| statistic | value | threshold | p-value | drifted |",
                "|---|---:|---:|---:|:---:|",
            ]
            for s in self.statistics:
                p = "-" if s.p_value is None else f"{s.p_value:.4g}"
                lines.append(
                    f"| {s.name} | {s.value:.4g} | {s.threshold:.4g} | {p} | "
                    f"{'yes' if s.drifted else 'no'} |"
                )
        lines += ["", "Sizes: " + ", ".join(f"{k}={v}" for k, v in self.sizes.items())]
        if self.centers_source:
            lines.append(f"Centers: {self.centers_source}.")
        return "\n".join(lines) + "\n"


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


# ----------------------------------------------------------------------------- input reading
def _as_array_like(x: Any, name: str) -> Any:
    if hasattr(x, "to_dask") and not hasattr(x, "shape"):
        x = x.to_dask()
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = np.asarray(x)
    if len(x.shape) != 2:
        raise ValueError(
            f"{name} must be a 2-D float array (n_rows, dim); got shape {tuple(x.shape)}"
        )
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind not in ("f", "i", "u"):
        raise ValueError(
            f"{name} must hold real numbers (float or int); got dtype "
            f"{getattr(x, 'dtype', type(x))}"
        )
    return x


def _stream_sample(
    x: Any, max_rows: int, rng: np.random.Generator, name: str
) -> tuple[np.ndarray, int, np.ndarray]:
    """Read ``x`` block by block (whole storage chunks, about 65,536 rows), check every value is
    finite, keep a uniform subsample of at most ``max_rows`` rows (without replacement, in row
    order). Returns (sample float64, n_rows, the kept row indices)."""
    n = int(x.shape[0])
    keep = np.arange(n) if n <= max_rows else np.sort(rng.choice(n, size=max_rows, replace=False))
    parts = []
    for lo, hi, block in iter_blocks(x, block_bounds(n, block_rows(x, _BLOCK_ROWS)), name=name):
        sel = keep[(keep >= lo) & (keep < hi)] - lo
        if sel.size:
            parts.append(block[sel].astype(np.float64, copy=False))
    d = int(x.shape[1])
    return (np.concatenate(parts) if parts else np.empty((0, d))), n, keep


# ----------------------------------------------------------------------------- statistics
def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    permutations: int = 200,
    rng: np.random.Generator | int = 0,
    bandwidth: float | None = None,
) -> tuple[float, float, float]:
    """RBF-kernel MMD^2 (biased V-statistic) between ``x`` (n, d) and ``y`` (m, d) and its
    permutation p-value ``(1 + #{perm >= observed}) / (1 + permutations)``.

    ``bandwidth`` sigma of ``exp(-||u - v||^2 / (2 sigma^2))``; None: the median pairwise
    distance of (at most 1,000 rows of) the pooled sample. Memory: (n + m)^2 float32.
    Returns (mmd2, p_value, bandwidth)."""
    rng = np.random.default_rng(rng)
    z = np.concatenate([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    N = n + m
    if bandwidth is None:
        sub = z[rng.choice(N, size=min(N, 1000), replace=False)]
        d = np.sqrt(sq_distances(sub, sub)[np.triu_indices(len(sub), 1)])
        bandwidth = float(np.median(d))
        if not bandwidth > 0:
            bandwidth = float(np.mean(d)) if np.mean(d) > 0 else 1.0
    K = np.exp(-sq_distances(z, z) / (2.0 * bandwidth**2)).astype(np.float32)
    a = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]).astype(np.float32)
    observed = float(a @ (K @ a))
    # permuted sign vectors: column p is a[perm_p]
    perms = rng.random((permutations, N)).argsort(axis=1)
    A = a[perms].T  # (N, P)
    null = np.einsum("ip,ip->p", A, K @ A, dtype=np.float64)
    p = (1.0 + float(np.sum(null >= observed - 1e-12 * abs(observed)))) / (1.0 + permutations)
    return max(observed, 0.0), p, bandwidth


def ks_test(
    x: np.ndarray, y: np.ndarray, *, correction: str = "holm"
) -> tuple[float, float, list[float], list[float]]:
    """Two-sample KS per column; returns (max D, smallest corrected p, D per column, corrected
    p per column). ``correction``: "holm" or "bonferroni" over the d columns."""
    d = x.shape[1]
    D, p = np.empty(d), np.empty(d)
    for j in range(d):
        r = _st.ks_2samp(x[:, j], y[:, j])
        D[j], p[j] = r.statistic, r.pvalue
    if correction == "bonferroni":
        adj = np.minimum(1.0, p * d)
    elif correction == "holm":
        order = np.argsort(p)
        stepped = np.maximum.accumulate(p[order] * (d - np.arange(d)))
        adj = np.empty(d)
        adj[order] = np.minimum(1.0, stepped)
    else:
        raise ValueError(f"correction={correction!r}; valid: 'holm' or 'bonferroni'")
    return float(D.max()), float(adj.min()), D.tolist(), adj.tolist()


def distortion_test(
    dist_ref: np.ndarray,
    dist_batch: np.ndarray,
    *,
    rank: float = 3.0,
    permutations: int = 500,
    rng: np.random.Generator | int = 0,
) -> tuple[float, float, float, float]:
    """Distortion ratio ``mean(dist_batch^r) / mean(dist_ref^r)`` from the distances to the
    nearest center, with a one-sided permutation p-value (batch distortion larger).
    Returns (ratio, p_value, reference objective, batch objective)."""
    rng = np.random.default_rng(rng)
    vr, vb = dist_ref**rank, dist_batch**rank
    obj_r, obj_b = float(vr.mean()), float(vb.mean())
    ratio = obj_b / obj_r if obj_r > 0 else (math.inf if obj_b > 0 else 1.0)
    pooled = np.concatenate([vr, vb])
    n, m = len(vr), len(vb)
    total = pooled.sum()
    count = 0
    for lo in range(0, permutations, 50):
        P = min(50, permutations - lo)
        idx = np.stack([rng.choice(n + m, size=m, replace=False) for _ in range(P)])
        sb = pooled[idx].sum(1)
        perm_ratio = (sb / m) / np.maximum((total - sb) / n, 1e-300)
        count += int(np.sum(perm_ratio >= ratio * (1 - 1e-12)))
    return ratio, (1.0 + count) / (1.0 + permutations), obj_r, obj_b


def occupancy_test(
    k_ref: np.ndarray, k_batch: np.ndarray, n_clusters: int, *, epsilon: float = 1e-4
) -> tuple[float, float, list[float], list[float]]:
    """Population stability index of the batch's cluster shares against the reference's, and
    the chi-square p-value of the 2 x K table of counts (clusters empty on both sides dropped).
    Returns (psi, p_value, reference shares, batch shares)."""
    cr = np.bincount(k_ref, minlength=n_clusters).astype(np.float64)
    cb = np.bincount(k_batch, minlength=n_clusters).astype(np.float64)
    sr, sb = cr / cr.sum(), cb / cb.sum()
    er, eb = np.maximum(sr, epsilon), np.maximum(sb, epsilon)
    psi = float(np.sum((eb - er) * np.log(eb / er)))
    used = (cr + cb) > 0
    if used.sum() < 2:
        p = 1.0
    else:
        p = float(_st.chi2_contingency(np.stack([cr[used], cb[used]]), correction=False).pvalue)
    return psi, p, sr.tolist(), sb.tolist()


# ----------------------------------------------------------------------------- detect_drift
def _policy(policy: DriftPolicy | dict[str, Any] | None) -> DriftPolicy:
    if policy is None:
        return DriftPolicy()
    if isinstance(policy, DriftPolicy):
        return policy
    if isinstance(policy, dict):
        return DriftPolicy.model_validate(policy)
    raise TypeError(
        f"policy must be a DriftPolicy, a dict of its fields or None; got {type(policy).__name__}"
    )


def _fit_centers(ref: np.ndarray, k: int, rank: float, seed: int) -> np.ndarray:
    from .estimator import StochasticQuantization

    est = StochasticQuantization(n_clusters=k, rank=rank, random_state=seed, max_iter=10)
    return np.asarray(est.fit(ref).cluster_centers_, dtype=np.float64)


def detect_drift(
    reference: Any,
    batch: Any,
    *,
    centers: Any = None,
    rank: float = 3.0,
    policy: DriftPolicy | dict[str, Any] | None = None,
    seed: int | None = None,
    centers_fit_rows: Any = None,
) -> DriftReport:
    """Compare a batch of embeddings with the reference and decide whether it drifted.

    Parameters
    ----------
    reference, batch : array-like (n, d) and (m, d) of floats
        numpy, Zarr or Dask arrays, or an ``EmbeddingStore`` (``to_dask()``). Streamed block by
        block; every value must be finite; at most ``policy.max_reference_rows`` /
        ``policy.max_batch_rows`` rows (uniform, without replacement) are used.
    centers : array-like (K, d) or None
        The current cluster centers (for ``distortion`` and ``occupancy``). None: SQ with
        ``policy.n_clusters`` centers is fitted on one half of the reference subsample (seeded
        split) and the two center-based tests use the other half (slower; the report says so).
    centers_fit_rows : array-like of int or None
        Row indices of ``reference`` that the given ``centers`` were fitted on. Those rows are
        left out of the reference side of ``distortion`` and ``occupancy``: with centers fitted
        on the very rows they are compared against, the reference distortion is biased low and
        the permutation p-value is not valid (in-sample). None with given centers: the caller
        asserts they were fitted on other data. ``mmd`` and ``ks`` use every sampled row.
    rank : float, default 3.0
        Exponent r of the distortion ``min_k ||z - c_k||^r`` (the SQ objective's r).
    policy : DriftPolicy, dict or None
        Thresholds and combination rule; None = the documented defaults.
    seed : int or None
        Overrides ``policy.seed`` (subsampling and permutations). Same inputs + seed -> same report.

    Returns
    -------
    DriftReport
        ``status`` "drift" / "no_drift" / "insufficient_data" (then ``drifted`` is None and no
        statistic is computed).

    Raises
    ------
    ValueError
        Inputs not 2-D, dimensions that differ, NaN/inf values, bad centers or rank.
    """
    pol = _policy(policy)
    seed = pol.seed if seed is None else int(seed)
    if not (isinstance(rank, int | float) and math.isfinite(rank) and rank >= 1):
        raise ValueError(f"rank={rank!r} must be a finite number >= 1 (the SQ objective's r)")
    ref_a = _as_array_like(reference, "reference")
    bat_a = _as_array_like(batch, "batch")
    d = int(ref_a.shape[1])
    if int(bat_a.shape[1]) != d:
        raise ValueError(
            f"batch has {int(bat_a.shape[1])} columns but reference has {d}: both must be "
            "embeddings of the same encoder version (same dimension)"
        )
    c = None
    if centers is not None:
        c = np.asarray(centers, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != d or len(c) < 1:
            raise ValueError(f"centers must be (K, {d}) like the embeddings; got shape {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("centers hold NaN/inf values; pass the fitted cluster_centers_")

    rng = np.random.default_rng([seed, 1])
    ref, n_ref, ref_rows = _stream_sample(ref_a, pol.max_reference_rows, rng, "reference")
    bat, n_bat, _ = _stream_sample(bat_a, pol.max_batch_rows, rng, "batch")
    sizes = {
        "reference_rows": n_ref,
        "batch_rows": n_bat,
        "reference_used": len(ref),
        "batch_used": len(bat),
    }
    pdict = pol.model_dump(mode="json")
    short = []
    if n_bat < pol.min_batch_rows:
        short.append(
            f"batch has {n_bat} rows; the policy needs at least {pol.min_batch_rows} "
            "for a decision (min_batch_rows)"
        )
    if n_ref < pol.min_reference_rows:
        short.append(
            f"reference has {n_ref} rows; the policy needs at least "
            f"{pol.min_reference_rows} (min_reference_rows)"
        )
    if short:
        return DriftReport(None, "insufficient_data", [], short, sizes, pdict, seed)

    results: list[StatisticResult] = []
    centers_source = None
    if "mmd" in pol.statistics:
        r = np.random.default_rng([seed, 2])
        xs = (
            ref
            if len(ref) <= pol.mmd_max_rows
            else ref[np.sort(r.choice(len(ref), pol.mmd_max_rows, replace=False))]
        )
        ys = (
            bat
            if len(bat) <= pol.mmd_max_rows
            else bat[np.sort(r.choice(len(bat), pol.mmd_max_rows, replace=False))]
        )
        mmd2, p, bw = mmd_test(xs, ys, permutations=pol.mmd_permutations, rng=r)
        sizes["mmd_rows_each"] = min(len(xs), len(ys))
        results.append(
            StatisticResult(
                "mmd",
                mmd2,
                pol.alpha,
                p,
                p <= pol.alpha,
                {
                    "bandwidth": bw,
                    "n_reference": len(xs),
                    "n_batch": len(ys),
                    "permutations": pol.mmd_permutations,
                },
            )
        )
    if "ks" in pol.statistics:
        D, p, Ds, ps = ks_test(ref, bat, correction=pol.ks_correction)
        results.append(
            StatisticResult(
                "ks",
                D,
                pol.alpha,
                p,
                p <= pol.alpha,
                {"D": Ds, "p_adjusted": ps, "correction": pol.ks_correction},
            )
        )
    if "distortion" in pol.statistics or "occupancy" in pol.statistics:
        # the reference side of the center-based tests must not contain the rows the centers
        # were fitted on, else its distortion is biased low (in-sample) and p is not valid
        if c is None:
            half = np.random.default_rng([seed, 4]).permutation(len(ref))
            fit, test = np.sort(half[: len(ref) // 2]), np.sort(half[len(ref) // 2 :])
            c = _fit_centers(ref[fit], pol.n_clusters, float(rank), seed)
            ref_c = ref[test]
            centers_source = (
                f"fitted on half of the reference subsample ({len(fit)} rows; SQ, "
                f"K={pol.n_clusters}, r={rank:g}, seed {seed}); tests use the other "
                f"{len(test)} rows"
            )
        elif centers_fit_rows is not None:
            used = np.isin(ref_rows, np.asarray(centers_fit_rows, dtype=np.int64))
            ref_c = ref[~used]
            centers_source = (
                f"given ({len(c)} centers, fitted on {int(used.sum())} of the sampled "
                f"reference rows; tests use the other {len(ref_c)})"
            )
        else:
            ref_c = ref
            centers_source = f"given ({len(c)} centers)"
        sizes["reference_center_tests"] = len(ref_c)
        if len(ref_c) < 2:
            raise ValueError(
                f"only {len(ref_c)} reference rows are left for the center-based tests after "
                "leaving out the rows the centers were fitted on: fit the centers on a part "
                "of the reference (centers_fit_rows) or give a larger reference"
            )
        k_ref, d_ref = nearest_distance(ref_c, c)
        k_bat, d_bat = nearest_distance(bat, c)
        if "distortion" in pol.statistics:
            ratio, p, obj_r, obj_b = distortion_test(
                d_ref,
                d_bat,
                rank=float(rank),
                permutations=pol.distortion_permutations,
                rng=np.random.default_rng([seed, 3]),
            )
            results.append(
                StatisticResult(
                    "distortion",
                    ratio,
                    pol.distortion_min_ratio,
                    p,
                    ratio >= pol.distortion_min_ratio and p <= pol.alpha,
                    {"objective_reference": obj_r, "objective_batch": obj_b, "rank": float(rank)},
                )
            )
        if "occupancy" in pol.statistics:
            psi, p, sr, sb = occupancy_test(k_ref, k_bat, len(c), epsilon=pol.psi_epsilon)
            results.append(
                StatisticResult(
                    "occupancy",
                    psi,
                    pol.occupancy_min_psi,
                    p,
                    psi >= pol.occupancy_min_psi and p <= pol.alpha,
                    {"reference_shares": sr, "batch_shares": sb},
                )
            )

    flagged = [s for s in results if s.drifted]
    missing_required = [n for n in pol.required if n not in {s.name for s in flagged}]
    drifted = len(flagged) >= pol.min_agreeing and not missing_required
    reasons = [_reason(s) for s in results]
    rule = (
        f"{len(flagged)} of {len(results)} statistics flag drift; the policy needs "
        f"{pol.min_agreeing}" + (f" including {pol.required}" if pol.required else "")
    )
    if missing_required:
        rule += f" (required but not flagged: {missing_required})"
    reasons.insert(0, ("drift: " if drifted else "no drift: ") + rule)
    return DriftReport(
        bool(drifted),
        "drift" if drifted else "no_drift",
        results,
        reasons,
        sizes,
        pdict,
        seed,
        centers_source,
    )


def _reason(s: StatisticResult) -> str:
    verdict = "flags drift" if s.drifted else "no drift"
    if s.name == "mmd":
        return (
            f"mmd: MMD^2 = {s.value:.4g}, permutation p = {s.p_value:.4g} "
            f"(alpha {s.threshold:g}): {verdict}"
        )
    if s.name == "ks":
        worst = int(np.argmin(s.detail["p_adjusted"]))
        return (
            f"ks: largest D = {s.value:.4g}; smallest {s.detail['correction']}-corrected "
            f"p = {s.p_value:.4g} (dimension {worst}, alpha {s.threshold:g}): {verdict}"
        )
    if s.name == "distortion":
        return (
            f"distortion: batch/reference objective ratio = {s.value:.4g} (needs >= "
            f"{s.threshold:g} with p <= alpha), p = {s.p_value:.4g}: {verdict}"
        )
    return (
        f"occupancy: PSI of cluster shares = {s.value:.4g} (needs >= {s.threshold:g} with "
        f"p <= alpha), chi-square p = {s.p_value:.4g}: {verdict}"
    )
