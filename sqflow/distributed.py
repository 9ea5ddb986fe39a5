"""Dask-distributed SQ passes: the compiled kernel runs on the workers, one chunk per task.

The rule (``docs/distributed.md`` gives the convergence argument):

* a pass visits the row blocks of the Dask array in a (seeded) random order, grouped into
  *rounds* of ``W`` consecutive blocks, ``W`` fixed when ``fit`` starts (the cluster's threads,
  or ``n_parallel``);
* in a round, every block's task starts from the SAME broadcast state (centers, per-center
  optimizer state, bounding box) and runs Algorithm 1 (or the mini-batch rule) over its block,
  with the schedule clock at the position the block has in the serial order;
* the driver combines the ``W`` results per center, weighting each worker's end point by the
  number of updates it made to that center (a convex combination, so the projection set is
  kept); per-center counts add up, the bounding box is the union, the clock advances by the
  rows of the round. A center moved by one worker only takes that worker's values bit for bit.

With ``W = 1`` a round is one block and the result is the serial run over the same order,
bit for bit. Tasks are pure functions of (block, state, seed): a task lost with a killed worker
is recomputed by the scheduler and gives the same numbers, and the driver combines results in
block order, not completion order, so the result does not depend on which worker ran what.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import _kernels
from .chunks import as_float_rows, check_block_finite
from .optimizers import OptimizerState

logger = logging.getLogger(__name__)


def is_dask_array(X: object) -> bool:
    return type(X).__module__.startswith("dask.array") and hasattr(X, "to_delayed")


def get_client(address: str | None = None):
    """The distributed Client to use: one for ``address``, else the active one, else None."""
    if address:
        from distributed import Client

        return Client(address)
    try:
        from distributed import get_client as _active

        return _active()
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True)
class KernelArgs:
    """Everything but the data and the state that ``sq_steps`` needs (picklable, small)."""

    opt: int
    lr: float
    sched: int
    t0: float
    power: float
    rank: float
    momentum: float
    beta1: float
    beta2: float
    decay: float
    eps: float
    inv_scale: float
    batch_size: int
    project: bool


def run_block(
    block: np.ndarray,
    state: OptimizerState,
    args: KernelArgs,
    t_start: int,
    seed: int | None,
    start_row: int,
    check: bool = True,
) -> tuple[OptimizerState, float, int]:
    """Worker task: SQ steps over one block from a copy of ``state``.

    ``seed`` (None = keep row order) permutes the rows inside the block; it is chosen by the
    driver, so the task is a pure function of its arguments (safe to recompute). ``check``
    rejects NaN/inf naming the row (skip it only for data validated already).
    Returns (new state, loss sum in working units, steps).
    """
    block = as_float_rows(block)
    if check:
        check_block_finite(block, start_row)
    if seed is not None:
        block = block[np.random.RandomState(seed).permutation(block.shape[0])]
    block = np.ascontiguousarray(block)
    s = state.copy()
    s.t = int(t_start)
    t, loss, steps, _ = _kernels.sq_steps(
        block,
        s.centers,
        s.m,
        s.v,
        s.count,
        s.lo,
        s.hi,
        s.t,
        args.opt,
        args.lr,
        args.sched,
        args.t0,
        args.power,
        args.rank,
        args.momentum,
        args.beta1,
        args.beta2,
        args.decay,
        args.eps,
        args.inv_scale,
        args.batch_size,
        args.project,
        np.empty((0, s.centers.shape[1])),
    )
    s.t = int(t)
    return s, float(loss), int(steps)


def combine(start: OptimizerState, results: list[OptimizerState], rows: int) -> OptimizerState:
    """Per-center, update-count-weighted combination of a round's end states (see module doc)."""
    if len(results) == 1:
        out = results[0].copy()
        out.t = start.t + rows
        return out
    out = start.copy()
    n = np.stack([r.count - start.count for r in results])  # (W, K) updates per worker/center
    total = n.sum(axis=0)
    for k in np.flatnonzero(total):
        movers = np.flatnonzero(n[:, k])
        if len(movers) == 1:
            src = results[movers[0]]
            out.centers[k], out.m[k], out.v[k] = src.centers[k], src.m[k], src.v[k]
        else:
            w = n[movers, k] / total[k]
            out.centers[k] = sum(wi * results[i].centers[k] for wi, i in zip(w, movers))
            out.m[k] = sum(wi * results[i].m[k] for wi, i in zip(w, movers))
            out.v[k] = sum(wi * results[i].v[k] for wi, i in zip(w, movers))
    out.count = start.count + total
    out.lo = np.min([r.lo for r in results], axis=0)
    out.hi = np.max([r.hi for r in results], axis=0)
    out.t = start.t + rows
    return out


def _block_loss(block, centers: np.ndarray, rank: float, start_row: int) -> float:
    block = np.asarray(block)
    check_block_finite(block, start_row)
    return float(np.sum(_kernels.nearest(block, centers)[1] ** (rank / 2.0)))


class DaskPasses:
    """Runs SQ passes of one estimator over a Dask array on a distributed Client."""

    def __init__(self, client, X, n_parallel: int | None = None):
        self.client = client
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: X.shape[1]})  # one block per row range
        self.X = X
        self.blocks = X.to_delayed()[:, 0]
        self.bounds = []
        start = 0
        for size in X.chunks[0]:
            self.bounds.append((start, start + int(size)))
            start += int(size)
        if n_parallel is None:
            n_parallel = sum(client.nthreads().values()) or 1
        self.n_parallel = int(n_parallel)

    def run_pass(
        self,
        state: OptimizerState,
        args: KernelArgs,
        order: np.ndarray,
        seeds: np.ndarray | None,
        on_block=None,
    ) -> tuple[OptimizerState, float, int]:
        """One pass in ``order``; returns (state, loss sum in working units, steps)."""
        client, W = self.client, self.n_parallel
        rounds = [order[i : i + W] for i in range(0, len(order), W)]
        # blocks of the next round are read while the current round computes
        pending = client.compute([self.blocks[b] for b in rounds[0]]) if rounds else []
        loss_total, steps_total = 0.0, 0
        for r, members in enumerate(rounds):
            data = pending
            if r + 1 < len(rounds):
                pending = client.compute([self.blocks[b] for b in rounds[r + 1]])
            t = state.t
            futures = []
            for b, fut in zip(members, data):
                start, stop = self.bounds[b]
                seed = None if seeds is None else int(seeds[b])
                futures.append(
                    client.submit(run_block, fut, state, args, t, seed, start, pure=False)
                )
                t += stop - start
            results = client.gather(futures)  # in block order, whatever finished first
            rows = sum(self.bounds[b][1] - self.bounds[b][0] for b in members)
            state = combine(state, [res[0] for res in results], rows)
            for b, res in zip(members, results):
                loss_total += res[1]
                steps_total += res[2]
                if on_block is not None:
                    on_block(b, res[1], self.bounds[b][1] - self.bounds[b][0])
            del data, futures
        return state, loss_total, steps_total

    def objective(self, centers: np.ndarray, rank: float) -> float:
        """Exact mean of min_k ||x - y_k||^rank over the array, block tasks on the cluster."""
        from dask import delayed

        # one read-and-reduce task per block: a block is released as soon as its sum is known
        parts = [
            delayed(_block_loss, pure=True)(blk, centers, rank, self.bounds[i][0])
            for i, blk in enumerate(self.blocks)
        ]
        return float(sum(self.client.gather(self.client.compute(parts)))) / self.X.shape[0]
