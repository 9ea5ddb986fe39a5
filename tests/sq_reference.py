"""Float64 reference of SQ written directly from PAPER.md's formulas, one plain Python step at a time.

Deliberately independent of the kernel: no shared code, state kept per center in dicts.
"""

from __future__ import annotations

import math

import numpy as np


def rho(t, lr, schedule, t0, power):
    return lr if schedule == "constant" else lr / (1.0 + t / t0) ** power


def generalized_gradient(x, y, r):
    """r * ||x - y||^(r-2) * (y - x), zero at zero distance."""
    dist = math.sqrt(sum((xi - yi) ** 2 for xi, yi in zip(x, y)))
    if dist == 0.0:
        return [0.0] * len(x), dist
    coef = r * dist ** (r - 2)
    return [coef * (yi - xi) for xi, yi in zip(x, y)], dist


def nearest(x, centers):
    best, best_d = 0, math.inf
    for k, c in enumerate(centers):
        dk = sum((xi - ci) ** 2 for xi, ci in zip(x, c))
        if dk < best_d:
            best, best_d = k, dk
    return best


class ReferenceSQ:
    """Algorithm 1 (batch_size=1) and its mini-batch form, with every optimizer of PAPER.md."""

    def __init__(
        self,
        centers,
        optimizer,
        lr,
        *,
        r=3.0,
        schedule="robbins-monro",
        t0=1000.0,
        power=1.0,
        gamma=0.9,
        beta1=0.9,
        beta2=0.999,
        decay=0.9,
        eps=1e-8,
        project=False,
        rho_min=0.0,
        sphere=False,
    ):
        self.y = [list(map(float, c)) for c in centers]
        K, d = len(self.y), len(self.y[0])
        self.opt, self.lr, self.r = optimizer, lr, r
        self.schedule, self.t0, self.power = schedule, t0, power
        self.gamma, self.beta1, self.beta2, self.decay, self.eps = gamma, beta1, beta2, decay, eps
        self.project = project
        self.rho_min = rho_min  # forgetting: floor of the step size
        self.sphere = sphere  # spherical SQ: unit rows, centers renormalised after each step
        # per-center state
        self.prev = {k: list(self.y[k]) for k in range(K)}  # y_k^{t-1} (momentum)
        self.look_prev = {k: list(self.y[k]) for k in range(K)}  # y~_k^{t-1} (NAG)
        self.G = {k: [0.0] * d for k in range(K)}
        self.m = {k: [0.0] * d for k in range(K)}
        self.v = {k: [0.0] * d for k in range(K)}
        self.tk = {k: 0 for k in range(K)}
        self.lo = [min(c[j] for c in self.y) for j in range(d)]
        self.hi = [max(c[j] for c in self.y) for j in range(d)]
        self.t = 0
        self.clipped = 0

    def _proj(self, y):
        if not self.project:
            return y
        return [min(max(yj, lo), hi) for yj, lo, hi in zip(y, self.lo, self.hi)]

    def _see(self, x):
        self.lo = [min(a, b) for a, b in zip(self.lo, x)]
        self.hi = [max(a, b) for a, b in zip(self.hi, x)]

    def _update(self, k, g, step, cap):
        y = self.y[k]
        self.tk[k] += 1
        if self.opt == "sgd":
            new = [yj - step * gj for yj, gj in zip(y, g)]
        elif self.opt == "momentum":
            # y^{t+1} = y^t + gamma (y^t - y^{t-1}) - rho g
            new = [
                yj + self.gamma * (yj - pj) - step * gj for yj, pj, gj in zip(y, self.prev[k], g)
            ]
            self.prev[k] = list(y)
        elif self.opt == "nag":
            # y~^t = y^t - rho g ; y^{t+1} = y~^t + gamma (y~^t - y~^{t-1})
            look = [yj - step * gj for yj, gj in zip(y, g)]
            new = [lj + self.gamma * (lj - pj) for lj, pj in zip(look, self.look_prev[k])]
            self.look_prev[k] = look
        elif self.opt == "adagrad":
            self.G[k] = [Gj + gj * gj for Gj, gj in zip(self.G[k], g)]
            new = [yj - step / math.sqrt(Gj + self.eps) * gj for yj, Gj, gj in zip(y, self.G[k], g)]
        elif self.opt == "rmsprop":
            self.G[k] = [
                self.decay * Gj + (1 - self.decay) * gj * gj for Gj, gj in zip(self.G[k], g)
            ]
            new = [yj - step / math.sqrt(Gj + self.eps) * gj for yj, Gj, gj in zip(y, self.G[k], g)]
        elif self.opt == "adam":
            t = self.tk[k]
            self.m[k] = [self.beta1 * mj + (1 - self.beta1) * gj for mj, gj in zip(self.m[k], g)]
            self.v[k] = [
                self.beta2 * vj + (1 - self.beta2) * gj * gj for vj, gj in zip(self.v[k], g)
            ]
            mhat = [mj / (1 - self.beta1**t) for mj in self.m[k]]
            vhat = [vj / (1 - self.beta2**t) for vj in self.v[k]]
            new = [yj - step * mh / (math.sqrt(vh) + self.eps) for yj, mh, vh in zip(y, mhat, vhat)]
        else:
            raise ValueError(self.opt)
        # safeguard: a step never moves a center further than its sample(s) (mean distance)
        length = math.sqrt(sum((nj - yj) ** 2 for nj, yj in zip(new, y)))
        if length > cap:
            new = [yj + cap / length * (nj - yj) for nj, yj in zip(new, y)]
            self.clipped += 1
        new = self._proj(new)
        if self.sphere:
            norm = math.sqrt(sum(v * v for v in new))
            if norm > 0:
                new = [v / norm for v in new]
        self.y[k] = new

    def _rho(self):
        return max(rho(self.t, self.lr, self.schedule, self.t0, self.power), self.rho_min)

    def _read(self, x):
        x = list(map(float, x))
        if self.sphere:
            norm = math.sqrt(sum(v * v for v in x))
            x = [v / norm for v in x] if norm > 0 else x
        return x

    def step(self, x, w=1.0):
        """Algorithm 1: one sample, of weight w (its gradient times w; 0: as if absent)."""
        if w == 0:
            return
        x = self._read(x)
        self._see(x)
        k = nearest(x, self.y)
        g, dist = generalized_gradient(x, self.y[k], self.r)
        self._update(k, [w * gj for gj in g], self._rho(), dist)
        self.t += 1

    def batch_step(self, batch, weights=None):
        """Mini-batch: assign against the batch-start centers, mean gradient per winning center
        (weighted: the sum of w * gradient over the rows won, by their number; the safeguard's
        cap is their weighted mean distance)."""
        weights = [1.0] * len(batch) if weights is None else list(weights)
        sums, counts, dists, wsums = {}, {}, {}, {}
        used = 0
        for x, w in zip(batch, weights):
            if w == 0:
                continue
            used += 1
            x = self._read(x)
            self._see(x)
            k = nearest(x, self.y)
            g, dist = generalized_gradient(x, self.y[k], self.r)
            sums[k] = [a + w * b for a, b in zip(sums.get(k, [0.0] * len(x)), g)]
            counts[k] = counts.get(k, 0) + 1
            dists[k] = dists.get(k, 0.0) + w * dist
            wsums[k] = wsums.get(k, 0.0) + w
        step = self._rho()
        for k in sorted(sums):
            self._update(k, [s / counts[k] for s in sums[k]], step, dists[k] / wsums[k])
        self.t += used

    @property
    def centers(self):
        return np.array(self.y)
