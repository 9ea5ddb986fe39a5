"""Optimizer rules, their paper defaults and the per-center state they carry.

Every rule keeps its state PER CENTER: center k has its own momentum/first moment ``m[k]``,
its own accumulated squared gradient/second moment ``v[k]`` and its own update count
``count[k]`` (Adam's bias correction uses ``count[k]``, not the global step).
The update formulas live in the compiled kernel (:mod:`sqflow._kernels`); this module names
them and holds the state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: optimizer name -> integer code understood by the compiled kernel.
OPTIMIZER_CODES: dict[str, int] = {
    "sgd": 0,
    "momentum": 1,
    "nag": 2,
    "adagrad": 3,
    "rmsprop": 4,
    "adam": 5,
}

#: The paper's learning rates (PAPER.md section 2), used when ``learning_rate=None``.
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "sgd": 1e-3,
    "momentum": 1e-3,
    "nag": 1e-3,
    "adagrad": 1e-1,
    "rmsprop": 1e-3,
    "adam": 1e-2,
}

#: step-size schedule name -> integer code understood by the compiled kernel.
SCHEDULE_CODES: dict[str, int] = {"robbins-monro": 0, "constant": 1}


def step_size(
    t: float, learning_rate: float, schedule: str, step_offset: float, step_power: float
) -> float:
    """Step size rho_t used for a step taken after ``t`` samples (Python mirror of the kernel).

    ``robbins-monro``: ``rho_t = learning_rate / (1 + t / step_offset) ** step_power`` with
    ``0.5 < step_power <= 1``, so that sum rho_t = inf and sum rho_t**2 < inf.
    ``constant``: ``rho_t = learning_rate`` (leaves a noise floor; no convergence guarantee).
    """
    if schedule == "constant":
        return learning_rate
    return learning_rate / (1.0 + t / step_offset) ** step_power


@dataclass
class OptimizerState:
    """Everything an SQ run carries from one step (or chunk, or ``partial_fit`` call) to the next.

    Centers and state live in the estimator's working coordinates ``z = x / scale``.

    Attributes
    ----------
    centers : ndarray (n_clusters, n_features), float64
    m : ndarray (n_clusters, n_features), float64
        Momentum: last displacement y_k^t - y_k^{t-1}. NAG: previous look-ahead point
        y~_k^{t-1} (starts at the initial center). Adam: first moment. Unused otherwise.
    v : ndarray (n_clusters, n_features), float64
        AdaGrad/RMSProp: G_k. Adam: second moment. Unused otherwise.
    count : ndarray (n_clusters,), int64
        Number of updates applied to each center.
    lo, hi : ndarray (n_features,), float64
        Bounding box of the initial centers and of every sample seen so far (projection set).
    t : int
        Samples processed so far; drives the step-size schedule.
    """

    centers: np.ndarray
    m: np.ndarray
    v: np.ndarray
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    t: int = 0

    @classmethod
    def start(cls, centers: np.ndarray, optimizer: str) -> OptimizerState:
        centers = np.array(centers, dtype=np.float64, order="C", copy=True)
        m = centers.copy() if optimizer == "nag" else np.zeros_like(centers)
        return cls(
            centers=centers,
            m=m,
            v=np.zeros_like(centers),
            count=np.zeros(centers.shape[0], dtype=np.int64),
            lo=centers.min(axis=0),
            hi=centers.max(axis=0),
            t=0,
        )

    def copy(self) -> OptimizerState:
        return OptimizerState(
            self.centers.copy(),
            self.m.copy(),
            self.v.copy(),
            self.count.copy(),
            self.lo.copy(),
            self.hi.copy(),
            self.t,
        )
