"""Compiled kernels of Stochastic Quantization (numba).

``sq_steps`` runs Algorithm 1 of PAPER.md (``batch_size=1``) or its mini-batch form over the
rows of one chunk; ``assign`` finds the nearest center of every row. Both work on one chunk at a
time: a chunk is the unit of work for streaming and for distributed passes.

Numerics:
* the data are read as ``z = x * inv_scale`` (a scalar rescaling: the minimisers of F are
  unchanged, F scales by ``scale**r``), so learning rates are in units of the data's spread and
  r > 2 does not explode on unscaled data;
* the generalized gradient of ||z - y||^r is ``r ||z - y||^(r-2) (y - z)``; at zero distance it is
  set to zero (for r < 2 the factor is infinite there, for r >= 2 the gradient is zero anyway);
* centers and optimizer state are float64 whatever the input dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_FASTMATH = {"reassoc", "contract"}  # lets the distance loops vectorise; keeps inf/nan semantics

SGD, MOMENTUM, NAG, ADAGRAD, RMSPROP, ADAM = 0, 1, 2, 3, 4, 5
ROBBINS_MONRO, CONSTANT = 0, 1


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rho(t, rho0, sched, t0, power):
    if sched == CONSTANT:
        return rho0
    base = 1.0 + t / t0
    if power == 1.0:
        return rho0 / base
    return rho0 / base**power


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _grad_coef(dist, r):
    """r * dist**(r-2), with the zero-distance convention (0 when dist == 0)."""
    if dist == 0.0:
        return 0.0
    if r == 2.0:
        return 2.0
    if r == 3.0:
        return 3.0 * dist
    if r == 1.0:
        return 1.0 / dist
    return r * dist ** (r - 2.0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _dist_pow(dist, dist2, r):
    if r == 2.0:
        return dist2
    if r == 3.0:
        return dist2 * dist
    if r == 1.0:
        return dist
    return dist**r


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _apply_update(
    k, g, rho, centers, m, v, count, lo, hi, opt, gamma, beta1, beta2, decay, eps, project
):
    """One optimizer step of center k with generalized gradient g (length n_features)."""
    d = centers.shape[1]
    count[k] += 1
    if opt == SGD:
        for j in range(d):
            centers[k, j] -= rho * g[j]
    elif opt == MOMENTUM:
        # y^{t+1} = y^t + gamma (y^t - y^{t-1}) - rho g ; m holds y^t - y^{t-1}
        for j in range(d):
            old = centers[k, j]
            new = old + gamma * m[k, j] - rho * g[j]
            if project:
                new = min(max(new, lo[j]), hi[j])
            m[k, j] = new - old
            centers[k, j] = new
        return
    elif opt == NAG:
        # y~^t = y^t - rho g ; y^{t+1} = y~^t + gamma (y~^t - y~^{t-1}) ; m holds y~^{t-1}
        for j in range(d):
            look = centers[k, j] - rho * g[j]
            centers[k, j] = look + gamma * (look - m[k, j])
            m[k, j] = look
    elif opt == ADAGRAD:
        for j in range(d):
            v[k, j] += g[j] * g[j]
            centers[k, j] -= rho / math.sqrt(v[k, j] + eps) * g[j]
    elif opt == RMSPROP:
        for j in range(d):
            v[k, j] = decay * v[k, j] + (1.0 - decay) * g[j] * g[j]
            centers[k, j] -= rho / math.sqrt(v[k, j] + eps) * g[j]
    else:  # ADAM, bias-corrected with this center's own update count
        tk = count[k]
        c1 = 1.0 - beta1**tk
        c2 = 1.0 - beta2**tk
        for j in range(d):
            m[k, j] = beta1 * m[k, j] + (1.0 - beta1) * g[j]
            v[k, j] = beta2 * v[k, j] + (1.0 - beta2) * g[j] * g[j]
            mhat = m[k, j] / c1
            vhat = v[k, j] / c2
            centers[k, j] -= rho * mhat / (math.sqrt(vhat) + eps)
    if project:
        for j in range(d):
            centers[k, j] = min(max(centers[k, j], lo[j]), hi[j])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)
def sq_steps(
    X,
    centers,
    m,
    v,
    count,
    lo,
    hi,
    t_start,
    opt,
    rho0,
    sched,
    t0,
    power,
    r,
    gamma,
    beta1,
    beta2,
    decay,
    eps,
    inv_scale,
    batch_size,
    project,
):
    """Run SQ steps over the rows of ``X`` in order, updating centers and state in place.

    Parameters are positional for numba; see :class:`sqflow.StochasticQuantization`.
    ``batch_size == 1`` is Algorithm 1 exactly. ``batch_size > 1`` assigns every sample of a
    batch against the centers at the batch start and gives each center that won samples one
    step along the mean of their generalized gradients; batches never span two calls.

    Returns
    -------
    t_end : int64
        ``t_start`` + number of samples processed (the schedule's clock).
    loss_sum : float64
        Sum over processed samples of ``min_k ||z - y_k||**r`` measured before each step, in
        working units (multiply by ``scale**r`` for data units): a cheap running estimate of F.
    n_steps : int64
        Number of steps (batches) taken.
    """
    n = X.shape[0]
    K, d = centers.shape
    z = np.empty(d)
    g = np.empty(d)
    dist2 = np.empty(K)
    # transposed copy of the centers: the distance loop then vectorises over K
    cT = np.ascontiguousarray(centers.T)
    loss_sum = 0.0
    if batch_size == 1:
        # Algorithm 1: the hot loop, kept free of the mini-batch bookkeeping
        for i in range(n):
            _load_sample(X, i, inv_scale, z, lo, hi, project)
            best, best_d2 = _nearest_center(z, cT, dist2)
            dist = math.sqrt(best_d2)
            loss_sum += _dist_pow(dist, best_d2, r)
            coef = _grad_coef(dist, r)
            rho = _rho(t_start + i, rho0, sched, t0, power)
            if opt == SGD:
                # the paper's rule, fused into one loop (the most common path)
                step = rho * coef
                for j in range(d):
                    c = centers[best, j] - step * (centers[best, j] - z[j])
                    if project:
                        c = min(max(c, lo[j]), hi[j])
                    centers[best, j] = c
                    cT[j, best] = c
                count[best] += 1
            else:
                for j in range(d):
                    g[j] = coef * (centers[best, j] - z[j])
                _apply_update(
                    best,
                    g,
                    rho,
                    centers,
                    m,
                    v,
                    count,
                    lo,
                    hi,
                    opt,
                    gamma,
                    beta1,
                    beta2,
                    decay,
                    eps,
                    project,
                )
                for j in range(d):
                    cT[j, best] = centers[best, j]
        return t_start + n, loss_sum, n

    gsum = np.zeros((K, d))
    gcnt = np.zeros(K, dtype=np.int64)
    t = t_start
    n_steps = 0
    i = 0
    while i < n:
        stop = min(i + batch_size, n)
        for ii in range(i, stop):
            _load_sample(X, ii, inv_scale, z, lo, hi, project)
            best, best_d2 = _nearest_center(z, cT, dist2)
            dist = math.sqrt(best_d2)
            loss_sum += _dist_pow(dist, best_d2, r)
            coef = _grad_coef(dist, r)
            gcnt[best] += 1
            for j in range(d):
                gsum[best, j] += coef * (centers[best, j] - z[j])
        rho = _rho(t, rho0, sched, t0, power)
        for k in range(K):
            if gcnt[k] > 0:
                inv = 1.0 / gcnt[k]
                for j in range(d):
                    g[j] = gsum[k, j] * inv
                    gsum[k, j] = 0.0
                gcnt[k] = 0
                _apply_update(
                    k,
                    g,
                    rho,
                    centers,
                    m,
                    v,
                    count,
                    lo,
                    hi,
                    opt,
                    gamma,
                    beta1,
                    beta2,
                    decay,
                    eps,
                    project,
                )
                for j in range(d):
                    cT[j, k] = centers[k, j]
        t += stop - i
        n_steps += 1
        i = stop
    return t, loss_sum, n_steps


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _load_sample(X, row, inv_scale, z, lo, hi, project):
    """z = X[row] * inv_scale; grows the bounding box of seen data when projecting."""
    for j in range(z.shape[0]):
        zj = X[row, j] * inv_scale
        z[j] = zj
        if project:
            lo[j] = min(lo[j], zj)
            hi[j] = max(hi[j], zj)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _nearest_center(z, cT, dist2):
    """Index and squared distance of the center (columns of cT) nearest to z; ties -> lowest k."""
    d, K = cT.shape
    for k in range(K):
        dist2[k] = 0.0
    for j in range(d):
        zj = z[j]
        for k in range(K):
            diff = zj - cT[j, k]
            dist2[k] += diff * diff
    best = 0
    best_d2 = dist2[0]
    for k in range(1, K):
        if dist2[k] < best_d2:
            best_d2 = dist2[k]
            best = k
    return best, best_d2


@njit(cache=True, nogil=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def assign(X, centers, labels_out, dist2_out):
    """Nearest center of every row of X (data units): labels and squared distances, in place."""
    n = X.shape[0]
    K, d = centers.shape
    for i in prange(n):
        best = 0
        best_d2 = np.inf
        for k in range(K):
            s = 0.0
            for j in range(d):
                diff = X[i, j] - centers[k, j]
                s += diff * diff
            if s < best_d2:
                best_d2 = s
                best = k
        labels_out[i] = best
        dist2_out[i] = best_d2


def nearest(block, centers) -> tuple[np.ndarray, np.ndarray]:
    """(index int64, squared distance float64) of the nearest center for every row of a block.

    Kept for callers not yet moved; the one implementation is :func:`sqflow.distances.nearest`."""
    from .distances import nearest as _nearest  # distances imports this module

    return _nearest(block, centers)
