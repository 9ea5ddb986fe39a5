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
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    k,
    g,
    coef,
    rho,
    cap,
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
    old,
    S,
    keep,
):
    """One optimizer step of center k with generalized gradient g (length n_features).

    ``g = coef * (y_k - z)`` for the sample z (or, for a batch, the won samples' mean).
    Safeguard: the step is shortened to length ``cap`` when it is longer (``cap`` = the
    distance from y_k to the sample(s) that pull it), so no step overshoots its sample; a
    shortened step returns 1, an untouched one 0.

    ``keep`` (when it has rows) is the product, per center and coordinate, of the steps' 2 x 2
    matrices acting on ``(y_k, m_k)`` with the sample and the adaptive denominators held
    fixed (``keep[0..3]`` = rows (11, 12, 21, 22)): the linear part of the task's map, which
    the distributed combination uses to compose tasks as the serial run would
    (``sqflow.distributed.combine``). ``S`` is scratch (4, n_features).
    """
    d = centers.shape[1]
    count[k] += 1
    for j in range(d):
        old[j] = centers[k, j]
    if opt == SGD or opt == MOMENTUM:
        a = rho * coef
        for j in range(d):
            if opt == MOMENTUM:
                # y^{t+1} = y^t + gamma (y^t - y^{t-1}) - rho g ; m holds y^t - y^{t-1}
                centers[k, j] = old[j] + gamma * m[k, j] - rho * g[j]
                S[0, j], S[1, j], S[2, j], S[3, j] = 1.0 - a, gamma, -a, gamma
            else:
                centers[k, j] = old[j] - rho * g[j]
                S[0, j], S[1, j], S[2, j], S[3, j] = 1.0 - a, 0.0, 0.0, 1.0
    elif opt == NAG:
        # y~^t = y^t - rho g ; y^{t+1} = y~^t + gamma (y~^t - y~^{t-1}) ; m holds y~^{t-1}
        a = rho * coef
        for j in range(d):
            look = old[j] - rho * g[j]
            centers[k, j] = look + gamma * (look - m[k, j])
            m[k, j] = look
            S[0, j], S[1, j], S[2, j], S[3, j] = (1.0 + gamma) * (1.0 - a), -gamma, 1.0 - a, 0.0
    elif opt == ADAGRAD or opt == RMSPROP:
        for j in range(d):
            if opt == ADAGRAD:
                v[k, j] += g[j] * g[j]
            else:
                v[k, j] = decay * v[k, j] + (1.0 - decay) * g[j] * g[j]
            a = rho / math.sqrt(v[k, j] + eps)
            centers[k, j] = old[j] - a * g[j]
            S[0, j], S[1, j], S[2, j], S[3, j] = 1.0 - a * coef, 0.0, 0.0, 1.0
    else:  # ADAM, bias-corrected with this center's own update count
        tk = count[k]
        c1 = 1.0 - beta1**tk
        c2 = 1.0 - beta2**tk
        b = (1.0 - beta1) * coef
        for j in range(d):
            m[k, j] = beta1 * m[k, j] + (1.0 - beta1) * g[j]
            v[k, j] = beta2 * v[k, j] + (1.0 - beta2) * g[j] * g[j]
            mhat = m[k, j] / c1
            vhat = v[k, j] / c2
            denom = math.sqrt(vhat) + eps
            centers[k, j] = old[j] - rho * mhat / denom
            alpha = rho / (c1 * denom)
            S[0, j], S[1, j], S[2, j], S[3, j] = 1.0 - alpha * b, -alpha * beta1, b, beta1
    clipped = 0
    shrink = 1.0
    step2 = 0.0
    for j in range(d):
        diff = centers[k, j] - old[j]
        step2 += diff * diff
    if step2 > cap * cap:
        # never step past the sample: shorten the step to the sample's distance
        shrink = cap / math.sqrt(step2)
        for j in range(d):
            centers[k, j] = old[j] + shrink * (centers[k, j] - old[j])
        clipped = 1
    if project:
        for j in range(d):
            centers[k, j] = min(max(centers[k, j], lo[j]), hi[j])
    if opt == MOMENTUM:
        for j in range(d):
            m[k, j] = centers[k, j] - old[j]
    if keep.shape[0] > 0:
        for j in range(d):
            s11 = 1.0 - shrink + shrink * S[0, j]
            s12 = shrink * S[1, j]
            s21, s22 = S[2, j], S[3, j]
            if opt == MOMENTUM:  # m is the (shortened) step itself
                s21, s22 = s11 - 1.0, s12
            k11, k12, k21, k22 = keep[0, k, j], keep[1, k, j], keep[2, k, j], keep[3, k, j]
            keep[0, k, j] = s11 * k11 + s12 * k21
            keep[1, k, j] = s11 * k12 + s12 * k22
            keep[2, k, j] = s21 * k11 + s22 * k21
            keep[3, k, j] = s21 * k12 + s22 * k22
    return clipped


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
    keep,
    w,
    rho_min,
    sphere,
    rows,
):
    """Run SQ steps over the rows of ``X`` in order, updating centers and state in place.

    Parameters are positional for numba; see :class:`sqflow.StochasticQuantization`.
    ``batch_size == 1`` is Algorithm 1 exactly. ``batch_size > 1`` assigns every sample of a
    batch against the centers at the batch start and gives each center that won samples one
    step along the mean of their generalized gradients; batches never span two calls.
    Safeguard: every step is shortened to at most the distance between the center and its
    sample (for a batch: the mean distance of the samples the center won). Algorithm 1 is
    unchanged while ``rho_t * r * ||z - y||**(r-2) <= 1`` (no step overshoots its sample) and
    a step that would overshoot cannot make the centers diverge. ``keep`` is
    ``(4, n_clusters, n_features)``, the identity per center and coordinate (rows 11, 12, 21,
    22) to record the linear part of the run's map on ``(y_k, m_k)`` for the distributed
    combination (see ``_apply_update``), or ``(0, 0, 0)`` to skip it.

    ``w`` (length n, >= 0) weights the rows: a row of weight w moves its center by w times the
    step of an unweighted row (the safeguard still caps it at the sample's distance) and adds
    w times its loss; a row of weight 0 is skipped as if removed (no step, no tick of the
    schedule's clock; in a batch it still occupies its slot). Length 0:
    every row weighs 1. ``rho_min`` (>= 0) is a floor on the step size (forgetting: the step
    never decays below it). ``sphere``: rows are read normalised to unit length and every
    updated center is projected back onto the unit sphere (spherical SQ, ``metric="cosine"``;
    replaces the bounding box).

    ``rows`` (int64, a permutation of ``range(n)``) is the order in which the rows are taken:
    step ``i`` uses row ``rows[i]`` of ``X`` (and its weight ``w[rows[i]]``), exactly as if
    ``X`` and ``w`` had been gathered in that order first, without the copy. Length 0: in
    order.

    Returns
    -------
    t_end : int64
        ``t_start`` + number of samples processed (the schedule's clock; rows of weight 0 are
        not counted).
    loss_sum : float64
        Sum over processed samples of ``min_k ||z - y_k||**r`` measured before each step, in
        working units (multiply by ``scale**r`` for data units): a cheap running estimate of F.
    n_steps : int64
        Number of steps (batches) taken.
    n_clipped : int64
        Steps the safeguard shortened (a learning rate too large for this rank and data).
    """
    n = X.shape[0]
    K, d = centers.shape
    z = np.empty(d)
    g = np.empty(d)
    old = np.empty(d)
    S = np.empty((4, d))
    dist2 = np.empty(K)
    track = keep.shape[0] > 0
    weighted = w.shape[0] > 0
    # with an order, each step asks for the row AHEAD steps later: a row read only in its
    # step waits for memory behind the previous step (measured: about 2x the kernel's time on
    # a 65,536-row block without the hint, the same time as pre-gathered rows with it)
    reorder = rows.shape[0] > 0
    wi = 1.0
    # transposed copy of the centers: the distance loop then vectorises over K; with few
    # features one center at a time over the rows is cheaper (bench/kernel.py)
    cT = np.ascontiguousarray(centers.T)
    rowwise = d < 8
    loss_sum = 0.0
    n_clipped = 0
    if batch_size == 1:
        # Algorithm 1: the hot loop, kept free of the mini-batch bookkeeping
        skipped = 0  # rows of weight 0: as if removed (no step, no tick of the clock)
        for i in range(n):
            row = i
            if reorder:
                row = rows[i]
                if i + AHEAD < n:
                    ahead = rows[i + AHEAD]
                    _prefetch(X, ahead, 0)
                    _prefetch(X, ahead, d - 1)
            if weighted:
                wi = w[row]
                if wi == 0.0:
                    skipped += 1
                    continue
            _load_sample(X, row, inv_scale, z, lo, hi, project, sphere)
            if rowwise:
                best, best_d2 = _nearest_row(z, centers)
            else:
                best, best_d2 = _nearest_center(z, cT, dist2)
            dist = math.sqrt(best_d2)
            loss_sum += wi * _dist_pow(dist, best_d2, r)
            coef = _grad_coef(dist, r) * wi
            rho = max(_rho(t_start + i - skipped, rho0, sched, t0, power), rho_min)
            if opt == SGD:
                # the paper's rule, fused into one loop (the most common path); the step moves
                # the center by step * dist toward z, so the safeguard is step <= 1
                step = rho * coef
                if step > 1.0:
                    step = 1.0
                    n_clipped += 1
                for j in range(d):
                    c = centers[best, j] - step * (centers[best, j] - z[j])
                    if project:
                        c = min(max(c, lo[j]), hi[j])
                    centers[best, j] = c
                    cT[j, best] = c
                    if track:
                        keep[0, best, j] *= 1.0 - step
                count[best] += 1
                if sphere:
                    _to_sphere(centers, cT, best)
            else:
                for j in range(d):
                    g[j] = coef * (centers[best, j] - z[j])
                n_clipped += _apply_update(
                    best,
                    g,
                    coef,
                    rho,
                    dist,
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
                    old,
                    S,
                    keep,
                )
                for j in range(d):
                    cT[j, best] = centers[best, j]
                if sphere:
                    _to_sphere(centers, cT, best)
                    if opt == MOMENTUM:  # the displacement is where the center actually went
                        for j in range(d):
                            m[best, j] = centers[best, j] - old[j]
        return t_start + n - skipped, loss_sum, n - skipped, n_clipped

    gsum = np.zeros((K, d))
    gcnt = np.zeros(K, dtype=np.int64)
    csum = np.zeros(K)  # sum of the gradient coefficients of the samples each center won
    dsum = np.zeros(K)  # sum of their distances (the safeguard's cap is the mean)
    wsum = np.zeros(K)  # sum of their weights
    t = t_start
    n_steps = 0
    i = 0
    while i < n:
        stop = min(i + batch_size, n)
        used = stop - i  # rows of weight > 0 in the batch: they alone tick the clock
        for ii in range(i, stop):
            row = ii
            if reorder:  # as in the loop above; a shared inline helper measured ~8 % slower
                row = rows[ii]
                if ii + AHEAD < n:
                    ahead = rows[ii + AHEAD]
                    _prefetch(X, ahead, 0)
                    _prefetch(X, ahead, d - 1)
            if weighted:
                wi = w[row]
                if wi == 0.0:
                    used -= 1
                    continue
            _load_sample(X, row, inv_scale, z, lo, hi, project, sphere)
            if rowwise:
                best, best_d2 = _nearest_row(z, centers)
            else:
                best, best_d2 = _nearest_center(z, cT, dist2)
            dist = math.sqrt(best_d2)
            loss_sum += wi * _dist_pow(dist, best_d2, r)
            coef = _grad_coef(dist, r) * wi
            gcnt[best] += 1
            csum[best] += coef
            dsum[best] += wi * dist
            wsum[best] += wi
            for j in range(d):
                gsum[best, j] += coef * (centers[best, j] - z[j])
        rho = max(_rho(t, rho0, sched, t0, power), rho_min)
        for k in range(K):
            if gcnt[k] > 0:
                # the mean over the rows won, each counted w times (w = 1: the plain mean)
                inv = 1.0 / gcnt[k]
                for j in range(d):
                    g[j] = gsum[k, j] * inv
                    gsum[k, j] = 0.0
                gcnt[k] = 0
                n_clipped += _apply_update(
                    k,
                    g,
                    csum[k] * inv,
                    rho,
                    dsum[k] / wsum[k],
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
                    old,
                    S,
                    keep,
                )
                csum[k] = 0.0
                dsum[k] = 0.0
                wsum[k] = 0.0
                for j in range(d):
                    cT[j, k] = centers[k, j]
                if sphere:
                    _to_sphere(centers, cT, k)
                    if opt == MOMENTUM:
                        for j in range(d):
                            m[k, j] = centers[k, j] - old[j]
        t += used
        if used > 0:
            n_steps += 1
        i = stop
    return t, loss_sum, n_steps, n_clipped


#: how many steps ahead ``sq_steps`` asks for the row it will take in a given order
AHEAD = 16


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _load_sample(X, row, inv_scale, z, lo, hi, project, sphere):
    """z = X[row] * inv_scale (``sphere``: X[row] / ||X[row]||, a zero row stays zero); grows
    the bounding box of seen data when projecting."""
    if sphere:
        norm2 = 0.0
        for j in range(z.shape[0]):
            norm2 += X[row, j] * X[row, j]
        inv_scale = 1.0 / math.sqrt(norm2) if norm2 > 0.0 else 0.0
    for j in range(z.shape[0]):
        zj = X[row, j] * inv_scale
        z[j] = zj
        if project:
            lo[j] = min(lo[j], zj)
            hi[j] = max(hi[j], zj)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _to_sphere(centers, cT, k):
    """Project center k onto the unit sphere (left alone at the origin, which has no nearest
    point on the sphere; a step never reaches it unless a row is exactly antipodal)."""
    d = centers.shape[1]
    norm2 = 0.0
    for j in range(d):
        norm2 += centers[k, j] * centers[k, j]
    if norm2 > 0.0:
        inv = 1.0 / math.sqrt(norm2)
        for j in range(d):
            centers[k, j] *= inv
            cT[j, k] = centers[k, j]


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Ask the CPU to fetch ``arr[row, col]`` into its caches (llvm.prefetch: a hint, no
    effect on any value)."""
    sig = types.void(arr, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [
            context.cast(builder, args[1], signature.args[1], types.intp),
            context.cast(builder, args[2], signature.args[2], types.intp),
        ]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        args_ = [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)]
        builder.call(fn, args_)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _order_bits(typingctx, x):
    """The bits of a float64 as an int64 with the sign bit cleared. For distances (>= +0.0,
    or inf) integer order is float order, and an integer min reduction vectorises where a
    float one (NaN semantics) does not; a NaN sorts above inf, as if it were farthest."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        raw = builder.bitcast(args[0], llvm_ir.IntType(64))
        return builder.and_(raw, llvm_ir.Constant(llvm_ir.IntType(64), 0x7FFFFFFFFFFFFFFF))

    return sig, codegen


@intrinsic
def _from_order_bits(typingctx, b):
    """The float64 whose bits are ``b`` (the inverse of ``_order_bits`` for values >= +0.0)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _sq_dists(z, cT, dist2):
    """dist2[k] = sum_j (z_j - c_kj)^2 for every center (columns of cT), summed over j in order.

    Vectorised over centers: the features are taken 8 (then 4) at a time, held in registers,
    so each center's partial sum goes through memory once per 8 features instead of once per
    feature (the store/reload per feature bounded the old loop)."""
    d, K = cT.shape
    for k in range(K):
        dist2[k] = 0.0
    j = 0
    while j + 8 <= d:
        z0, z1, z2, z3 = z[j], z[j + 1], z[j + 2], z[j + 3]
        z4, z5, z6, z7 = z[j + 4], z[j + 5], z[j + 6], z[j + 7]
        c0, c1, c2, c3 = cT[j], cT[j + 1], cT[j + 2], cT[j + 3]
        c4, c5, c6, c7 = cT[j + 4], cT[j + 5], cT[j + 6], cT[j + 7]
        for k in range(K):
            s = dist2[k]
            t = z0 - c0[k]
            s += t * t
            t = z1 - c1[k]
            s += t * t
            t = z2 - c2[k]
            s += t * t
            t = z3 - c3[k]
            s += t * t
            t = z4 - c4[k]
            s += t * t
            t = z5 - c5[k]
            s += t * t
            t = z6 - c6[k]
            s += t * t
            t = z7 - c7[k]
            s += t * t
            dist2[k] = s
        j += 8
    if j + 4 <= d:
        z0, z1, z2, z3 = z[j], z[j + 1], z[j + 2], z[j + 3]
        c0, c1, c2, c3 = cT[j], cT[j + 1], cT[j + 2], cT[j + 3]
        for k in range(K):
            s = dist2[k]
            t = z0 - c0[k]
            s += t * t
            t = z1 - c1[k]
            s += t * t
            t = z2 - c2[k]
            s += t * t
            t = z3 - c3[k]
            s += t * t
            dist2[k] = s
        j += 4
    while j < d:
        zj = z[j]
        cj = cT[j]
        for k in range(K):
            t = zj - cj[k]
            dist2[k] += t * t
        j += 1


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _nearest_row(z, centers):
    """``_nearest_center`` for few features: one center at a time over the rows of
    ``centers``. Without ``reassoc`` the sum over features runs in order, as in the loop it
    replaced (fits with d < 8 kept their bits) and as in ``_sq_dists``'s lanes (the same
    choice and bits in ``tests/test_kernels.py``)."""
    K, d = centers.shape
    best = 0
    best_d2 = np.inf
    for k in range(K):
        s = 0.0
        for j in range(d):
            diff = z[j] - centers[k, j]
            s += diff * diff
        if s < best_d2:
            best_d2 = s
            best = k
    return best, best_d2


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _nearest_center(z, cT, dist2):
    """Index and squared distance of the center nearest to z; ties -> lowest k.

    ``cT`` (d, K) holds the centers as columns (for d < 8 the callers use ``_nearest_row``,
    cheapest there, with the same result). The distances are vectorised over centers (``_sq_dists``) and, for K >= 16,
    the argmin is two vectorised integer passes (the minimum's bits, then the first index
    that has them) instead of a compare-and-branch per center."""
    d, K = cT.shape
    _sq_dists(z, cT, dist2)
    if K < 16:
        best = 0
        best_d2 = dist2[0]
        for k in range(1, K):
            if dist2[k] < best_d2:
                best_d2 = dist2[k]
                best = k
        return best, best_d2
    low = _order_bits(dist2[0])
    for k in range(K):
        b = _order_bits(dist2[k])
        low = b if b < low else low
    best = K
    for k in range(K):
        c = k if _order_bits(dist2[k]) == low else K
        best = c if c < best else best
    # the minimum from its bits, not reloaded from dist2[best]: the reload waits on the
    # index (measured 115 vs 83 ns per sample at d = 16, K = 64)
    return best, _from_order_bits(low)


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
