"""Dask-distributed SQ passes: the compiled kernel runs on the workers, several blocks per task.

The rule (``docs/distributed.md`` gives the effective step and the convergence argument):

* a pass visits the row blocks of the Dask array in a (seeded) random order; consecutive blocks
  are grouped into *tasks* of ``blocks_per_task`` blocks and tasks into *rounds* of ``W``
  tasks, ``W`` fixed when ``fit`` starts (``n_parallel``, or the cluster's threads);
* a task runs Algorithm 1 (or the mini-batch rule) over its blocks one after the other, from
  the state it was given, with the schedule clock at the position its rows have in the serial
  order (so every sample gets the serial step rho_t), and records per center the factor
  ``P = prod (1 - a_s)`` by which its steps contracted the center toward the samples;
* the driver composes the tasks' results in serial (task) order, per center, as the serial run
  would apply them: ``y <- P_b * y + (y_b - P_b * y0_b)`` (``y0_b`` the center the task started
  from). To first order in the step this is the sum of the tasks' displacements (what the serial
  run does with the same samples); for sgd with r = 2 it is exact, and it never overshoots
  (``P`` in [0, 1]). Velocities and moments are composed the same way with their own decay
  (momentum/NAG: gamma, RMSProp: its decay, Adam: beta1/beta2); AdaGrad's accumulator is summed;
  update counts add up, the bounding box is the union. Adam is the exception: its normalised
  steps do not contract, so its centers are the update-weighted mean of the tasks' end points,
  and the tasks of one round all run on the round's clock (they are samples of one move);
* pipelining: while the driver composes round ``r``, round ``r + 1`` is already running; it
  started from the state after round ``r - 1`` (staleness: one round, ``W`` tasks; passes of
  fewer than four rounds run synchronously). ``W = 1``
  has no staleness and no composition: the run is the serial run over the same order, bit for
  bit.

Tasks are pure functions of (blocks, state, seeds): a task lost with a killed worker is recomputed
by the scheduler and gives the same numbers, and the driver composes results in task order, not
completion order, so the result does not depend on which worker ran what. When the cluster has
had no worker for ``timeout`` seconds the pass cancels its work and raises ``ClusterLostError``
(a ``TimeoutError``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import _kernels
from .chunks import as_float_rows, check_block_finite
from .distances import nearest
from .optimizers import OPTIMIZER_CODES, OptimizerState

logger = logging.getLogger(__name__)

#: rows a task should hold at least (several small blocks per task keep the scheduler's
#: per-task cost, about a millisecond, small next to the kernel's work)
TASK_ROWS = 65_536


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


class ClusterLostError(TimeoutError):
    """A distributed SQ pass gave up: the cluster had no worker for ``timeout`` seconds, or
    lost the pass's work with its last worker."""


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
    rho_min: float = 0.0  # floor of the step size (forgetting); 0: none
    sphere: bool = False  # spherical SQ (metric="cosine"): unit rows, centers on the sphere


@dataclass
class TaskResult:
    """What a worker task sends back: its end state, the contraction factors, the counters."""

    state: OptimizerState
    keep: np.ndarray  # (4, K, d) the task's linear map on (y, m) per center and coordinate
    loss: float  # loss sum in working units
    steps: int
    clipped: int
    block_losses: list  # loss sum of each block, in task order


#: passes of fewer rounds run them synchronously (no staleness), see ``DaskPasses``
MIN_PIPELINED_ROUNDS = 4


def _averages_end_points(opt: int) -> bool:
    """Whether a round's centers are the update-weighted mean of its tasks' end points instead
    of their composition (Adam: its normalised steps do not contract, see ``combine``). Such a
    round runs synchronously (a stale start would undo a round under averaging) and all its
    tasks run on the round's clock (they are samples of one move, see ``run_pass``)."""
    return opt == OPTIMIZER_CODES["adam"]


_UNWEIGHTED = np.empty(0)
_IN_ORDER = np.empty(0, dtype=np.int64)


def _steps(block, s: OptimizerState, args: KernelArgs, keep: np.ndarray, weights=None, rows=None):
    t, loss, steps, clipped = _kernels.sq_steps(
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
        keep,
        _UNWEIGHTED if weights is None else weights,
        args.rho_min,
        args.sphere,
        _IN_ORDER if rows is None else rows,
    )
    s.t = int(t)
    return float(loss), int(steps), int(clipped)


def _prepare(block, seed: int | None):
    """The block as C-contiguous float rows, and the order of its rows: the permutation drawn
    from ``seed`` (None: in order). The rows are not gathered: the kernel takes them in that
    order from the block as it is (``sq_steps``' ``rows``), which gives the same steps as
    gathering them first, without copying the block."""
    block = np.ascontiguousarray(as_float_rows(block))
    if seed is None:
        return block, None
    return block, np.random.RandomState(seed).permutation(block.shape[0]).astype(
        np.int64, copy=False
    )


def _check_after(block, loss: float, start_row: int) -> None:
    """Reject NaN/inf in a block the kernel has just run over unweighted, naming the row.

    Every row of an unweighted block adds ``dist ** r`` (r >= 1) to the loss, and a row with
    a NaN or an infinity has a NaN or infinite distance to every center, so the loss of such
    a block is never finite: the full check (a pass over the block) runs only then, and
    raises on the block as stored, before any result leaves the task. (Finite rows whose loss
    overflows pass the check, as they did before it.)"""
    if not math.isfinite(loss):
        check_block_finite(block, start_row)


def run_block(
    block: np.ndarray,
    state: OptimizerState,
    args: KernelArgs,
    t_start: int,
    seed: int | None,
    start_row: int,
    check: bool = True,
    weights: np.ndarray | None = None,
) -> tuple[OptimizerState, float, int, int]:
    """SQ steps over one block from a copy of ``state`` (the serial path).

    ``seed`` (None = keep row order) permutes the rows inside the block; it is chosen by the
    driver, so the call is a pure function of its arguments (safe to recompute). ``check``
    rejects NaN/inf naming the row (skip it only for data validated already). ``weights``
    (n_rows,) are the rows' sample weights (None: all 1), permuted with the rows.
    Returns (new state, loss sum in working units, steps, steps the safeguard shortened).
    """
    block, rows = _prepare(block, seed)
    if weights is not None:
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        if check:  # rows of weight 0 are skipped: their values never reach the loss
            check_block_finite(block, start_row)
    s = state.copy()
    s.t = int(t_start)
    loss, steps, clipped = _steps(block, s, args, np.empty((0, 0, 0)), weights, rows)
    if check and weights is None:
        _check_after(block, loss, start_row)
    return s, loss, steps, clipped


def run_task(
    blocks: list,
    state: OptimizerState,
    args: KernelArgs,
    t_start: int,
    seeds: list,
    start_rows: list,
    check: bool = True,
) -> TaskResult:
    """Worker task: SQ steps over several blocks in order, recording the contraction factors."""
    s = state.copy()
    s.t = int(t_start)
    keep = np.zeros((4,) + s.centers.shape)
    keep[0] = keep[3] = 1.0  # identity (rows 11, 12, 21, 22) per center and coordinate
    loss_total, steps_total, clipped_total, losses = 0.0, 0, 0, []
    for block, seed, start_row in zip(blocks, seeds, start_rows):
        block, rows = _prepare(block, seed)
        loss, steps, clipped = _steps(block, s, args, keep, rows=rows)
        if check:
            _check_after(block, loss, start_row)
        loss_total += loss
        steps_total += steps
        clipped_total += clipped
        losses.append(loss)
    return TaskResult(s, keep, loss_total, steps_total, clipped_total, losses)


def _decayed(cur, start, end, factor):
    """Compose an exponentially decayed quantity as the serial run would: the task's own part
    ``end - factor * start`` added to the running value decayed by the same factor."""
    return factor * cur + (end - factor * start)


def combine(
    current: OptimizerState,
    results: list[TaskResult],
    starts: list[OptimizerState],
    args: KernelArgs,
) -> OptimizerState:
    """Compose a round's task results onto ``current`` in task order (see the module doc).

    Per center and coordinate, ``u = (y, m)`` goes through each task's affine map as the
    serial run would: ``u <- M_b u + (u_b - M_b u0_b)``, with ``M_b`` the product of the
    task's step matrices (``TaskResult.keep``), ``u0_b`` where the task started and ``u_b``
    where it ended. AdaGrad's accumulator adds up; RMSProp's and Adam's second moments decay
    by ``decay**n`` / ``beta2**n`` over a task's ``n`` updates of the center, as serially.
    Adam is the exception: its normalised steps are not linear in the center, the tasks' end
    points are averaged per center, weighted by their update counts (convex: no overshoot),
    and its first moment is composed with ``beta1**n``.
    ``starts[b]`` is the state task ``b`` started from (``current`` itself without staleness).
    The clock ``t`` is left to the caller. A center moved by a single task that started from
    ``current`` takes that task's values bit for bit (so ``W = 1`` is the serial run).
    """
    if len(results) == 1 and starts[0] is current:
        return results[0].state.copy()
    out = current.copy()
    opt = args.opt
    movers = np.zeros(out.centers.shape[0], dtype=np.int64)
    last = np.full(out.centers.shape[0], -1)
    averaged = _averages_end_points(opt)
    total = np.zeros((out.centers.shape[0], 1))
    moved_sum = np.zeros_like(out.centers)
    for b, (res, st) in enumerate(zip(results, starts)):
        end, (m11, m12, m21, m22) = res.state, res.keep
        n = (end.count - st.count).astype(np.float64)[:, None]  # (K, 1) updates of this task
        moved = n[:, 0] > 0
        movers += moved
        last[moved] = b
        if averaged:
            # Adam's step is normalised by sqrt(v): it does not shrink near the target, so
            # tasks that start from one point each take full steps toward the same target and
            # their sum overshoots up to W times. Its end points are averaged, weighted by
            # updates (convex, and a stale start does not add a move twice).
            total += n
            moved_sum += n * end.centers
            out.m = _decayed(out.m, st.m, end.m, args.beta1**n)
        else:
            y, m = out.centers, out.m
            q_y = end.centers - (m11 * st.centers + m12 * st.m)
            q_m = end.m - (m21 * st.centers + m22 * st.m)
            out.centers = m11 * y + m12 * m + q_y
            out.m = m21 * y + m22 * m + q_m
        if opt == OPTIMIZER_CODES["adagrad"]:
            out.v = out.v + (end.v - st.v)
        elif opt == OPTIMIZER_CODES["rmsprop"]:
            out.v = _decayed(out.v, st.v, end.v, args.decay**n)
        elif opt == OPTIMIZER_CODES["adam"]:
            out.v = _decayed(out.v, st.v, end.v, args.beta2**n)
        out.count = out.count + (end.count - st.count)
        out.lo = np.minimum(out.lo, end.lo)
        out.hi = np.maximum(out.hi, end.hi)
    if averaged:
        out.centers = np.where(total > 0, moved_sum / np.maximum(total, 1.0), out.centers)
    if args.project:
        out.centers = np.clip(out.centers, out.lo, out.hi)
    # exactness where nothing needs composing: a center only one task moved, from `current`
    for k in np.flatnonzero(movers == 1):
        b = int(last[k])
        if starts[b] is current:
            src = results[b].state
            out.centers[k], out.m[k], out.v[k] = src.centers[k], src.m[k], src.v[k]
    return out


def _block_loss(block, centers: np.ndarray, rank: float, start_row: int) -> float:
    block = np.asarray(block)
    check_block_finite(block, start_row)
    return float(np.sum(nearest(block, centers)[1] ** (rank / 2.0)))


def _culled(blocks) -> list:
    """The Delayed blocks of an array, each with only its own part of the graph.

    ``Array.to_delayed`` gives every block the graph of the whole array, which each
    ``Client.compute`` of a block would serialize and send again: a pass cost the driver and
    the scheduler O(blocks) per task, O(blocks ** 2) per pass."""
    from dask.delayed import Delayed
    from dask.optimization import cull

    graphs: dict = {}  # the blocks share one graph: materialised once
    out = []
    for blk in blocks:
        if id(blk.dask) not in graphs:
            graphs[id(blk.dask)] = dict(blk.dask)
        out.append(Delayed(blk.key, cull(graphs[id(blk.dask)], [blk.key])[0]))
    return out


class DaskPasses:
    """Runs SQ passes of one estimator over a Dask array on a distributed Client.

    Parameters
    ----------
    client : distributed.Client
    X : dask.array.Array (n_samples, n_features)
    n_parallel : int or None
        Tasks per round ``W``; None: the cluster's total threads.
    timeout : float, default=60.0
        Seconds the cluster may have no worker before a pass (or the objective) gives up with
        ``TimeoutError``; work in flight is cancelled.
    blocks_per_task : int or None
        Consecutive blocks one task runs serially; None: enough blocks for ``TASK_ROWS`` rows,
        but no more than leaves two rounds of ``W`` tasks per pass.
    staleness : int or None
        Rounds in flight beyond the one being composed (0 = synchronous rounds); None: 1 when
        ``W > 1``, 0 when ``W = 1`` (which keeps ``W = 1`` bit-identical to the serial run), for
        Adam (whose end points are averaged, so a stale start would undo a round) and for
        passes of fewer than :data:`MIN_PIPELINED_ROUNDS` rounds (a stale round would be more
        than a quarter of the pass).
    """

    def __init__(
        self,
        client,
        X,
        n_parallel: int | None = None,
        timeout: float = 60.0,
        blocks_per_task: int | None = None,
        staleness: int | None = None,
    ):
        self.client = client
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: X.shape[1]})  # one block per row range
        self.X = X
        self.blocks = _culled(X.to_delayed()[:, 0])
        self.bounds = []
        start = 0
        for size in X.chunks[0]:
            self.bounds.append((start, start + int(size)))
            start += int(size)
        if n_parallel is None:
            n_parallel = sum(client.nthreads(callback_timeout=timeout).values()) or 1
        self.n_parallel = int(n_parallel)
        self.timeout = float(timeout)
        if blocks_per_task is None:
            # enough rows per task to hide the scheduler's per-task cost, but at least two
            # rounds of W tasks per pass so that the pipeline has a round to overlap
            typical = max(1, int(np.median(X.chunks[0])))
            by_rows = math.ceil(TASK_ROWS / typical)
            blocks_per_task = max(1, min(by_rows, len(self.bounds) // (2 * self.n_parallel)))
        self.blocks_per_task = int(blocks_per_task)
        self.staleness = staleness
        self.clipped = 0  # steps the safeguard shortened in the last pass

    # ---------------------------------------------------------------- fault handling
    def _poll(self) -> float:
        return min(1.0, max(0.05, self.timeout / 10))

    def _has_workers(self) -> bool:
        """Whether the scheduler reports a worker now. The question itself is bounded: a
        scheduler that does not answer within a poll counts as a cluster without workers."""
        try:
            # asks the scheduler (scheduler_info() is cached)
            return bool(self.client.nthreads(callback_timeout=self._poll()))
        except Exception as exc:  # noqa: BLE001 - any failure to answer means: no worker seen
            logger.debug("the Dask scheduler did not say which workers it has: %r", exc)
            return False

    def _watch(self, call, what: str):
        """``call()`` (a blocking Client call) run in a helper thread, watched from here.

        Every blocking call of a pass goes through this watchdog, not just the wait for the
        results: ``Client.gather`` waits again, without a timeout, when the data it fetches
        is lost with its workers (it resets the futures and waits for a recomputation that
        needs a worker), which is how a fit hung after ``scale(0)`` when the workers left
        between the end of the wait and the transfer. Returns what ``call`` returned or
        raises what it raised; raises ``ClusterLostError`` once the cluster has had no worker
        for ``timeout`` seconds (the caller cancels its futures, which ends the helper).
        """
        box: concurrent.futures.Future = concurrent.futures.Future()

        def target():
            try:
                box.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the watching thread
                box.set_exception(exc)

        threading.Thread(target=target, name=f"sqflow-dask-{what}", daemon=True).start()
        gone_since = None
        poll = self._poll()
        while True:
            concurrent.futures.wait([box], timeout=poll)
            if box.done():
                return box.result()
            if self._has_workers():
                gone_since = None
                continue
            now = time.monotonic()
            gone_since = gone_since or now
            if now - gone_since >= self.timeout:
                raise ClusterLostError(
                    f"the Dask cluster has had no worker for {self.timeout:g} s (every worker "
                    f"died or left) while the SQ fit waited for its {what}; the work was "
                    "cancelled. Restart the workers and fit again, or raise the estimator's "
                    "dask_timeout if workers come back slowly."
                )

    def _gather(self, futures):
        """The results of ``futures`` in their order, every wait bounded by ``timeout``.
        The futures are cancelled when this raises (nothing is left running for a failed
        pass, and a helper thread still inside ``Client.gather`` returns)."""
        from concurrent.futures import CancelledError

        try:
            return self._watch(lambda: self.client.gather(futures), "results")
        except BaseException as exc:
            self._cancel(futures)
            if isinstance(exc, CancelledError):
                # only the scheduler cancels these futures: it dropped them with the workers
                # that left (this process cancels them only on its way out)
                raise ClusterLostError(
                    "the Dask scheduler cancelled the SQ pass's work when its workers left; "
                    "restart the workers and fit again (dask_timeout bounds the wait for "
                    "workers that die without leaving)"
                ) from exc
            raise

    def _cancel(self, futures) -> None:
        try:
            self.client.cancel(futures)
        except Exception as exc:  # noqa: BLE001 - a closed client has nothing left to cancel
            logger.debug("cancelling the SQ pass's futures failed: %r", exc)

    def compute(self, collection):
        """``collection`` computed on the cluster, under the same fault handling as a pass."""
        return self._gather(self.client.compute(collection))

    # ---------------------------------------------------------------- passes
    def run_pass(
        self,
        state: OptimizerState,
        args: KernelArgs,
        order: np.ndarray,
        seeds: np.ndarray | None,
        on_block=None,
    ) -> tuple[OptimizerState, float, int]:
        """One pass in ``order``; returns (state, loss sum in working units, steps)."""
        client, W, G = self.client, self.n_parallel, self.blocks_per_task
        tasks = [list(order[i : i + G]) for i in range(0, len(order), G)]
        rounds = [tasks[i : i + W] for i in range(0, len(tasks), W)]
        # the serial clock of every task: fixed by the order, whatever the staleness
        clocks, t = [], state.t
        for task in tasks:
            clocks.append(t)
            t += sum(self.bounds[b][1] - self.bounds[b][0] for b in task)
        t_end = t
        first_task = np.cumsum([0] + [len(r) for r in rounds])
        if W > 1 and _averages_end_points(args.opt):
            # averaged end points are samples of one move: all take the round's first steps.
            # On their serial clocks the later tasks' smaller steps dragged the average back
            # toward the start (Adam, W = 32, 1,000-row chunks: 14 passes where serial takes 9;
            # 7 with this)
            for r in range(len(rounds)):
                clocks[first_task[r] : first_task[r + 1]] = [clocks[first_task[r]]] * len(rounds[r])
        self.clipped = 0

        reads: dict = {}  # round -> the futures of its tasks' blocks, read ahead

        def read(r: int) -> None:
            """Start reading round ``r``'s blocks (one graph per round). Reading does not
            depend on the state, so it is started a round before the round's tasks: workers
            read while the driver composes instead of waiting for it."""
            if r < len(rounds) and r not in reads:
                flat = client.compute([self.blocks[b] for task in rounds[r] for b in task])
                out, i = [], 0
                for task in rounds[r]:
                    out.append(flat[i : i + len(task)])
                    i += len(task)
                reads[r] = out

        def submit(r: int, start: OptimizerState):
            read(r)
            futures = []
            for i, (task, data) in enumerate(zip(rounds[r], reads.pop(r))):
                futures.append(
                    client.submit(
                        run_task,
                        data,
                        start,
                        args,
                        clocks[first_task[r] + i],
                        [None if seeds is None else int(seeds[b]) for b in task],
                        [self.bounds[b][0] for b in task],
                        pure=False,
                    )
                )
            return start, futures

        stale = self.staleness
        if stale is None:
            # averaged end points (Adam, see combine): a stale start would undo a round;
            # with fewer than MIN_PIPELINED_ROUNDS rounds a stale round is a large share of the
            # pass (measured: W = 32 over 60 blocks, 2 rounds: momentum/NAG 9 passes where the
            # serial fit takes 7, RMSProp 8 vs 5; synchronous: 6 and 4)
            synchronous = (
                W == 1 or _averages_end_points(args.opt) or len(rounds) < MIN_PIPELINED_ROUNDS
            )
            stale = 0 if synchronous else 1
        inflight = []
        loss_total, steps_total = 0.0, 0
        try:
            for r in range(min(len(rounds), stale + 1)):
                inflight.append(submit(r, state))
            read(stale + 1)
            for r in range(len(rounds)):
                start, futures = inflight.pop(0)
                results = self._gather(futures)  # in task order, whatever finished first
                state = combine(state, results, [start] * len(results), args)
                if r + stale + 1 < len(rounds):
                    inflight.append(submit(r + stale + 1, state))
                    read(r + stale + 2)
                for task, res in zip(rounds[r], results):
                    loss_total += res.loss
                    steps_total += res.steps
                    self.clipped += res.clipped
                    if on_block is not None:
                        for b, loss in zip(task, res.block_losses):
                            on_block(b, loss, self.bounds[b][1] - self.bounds[b][0])
        except BaseException:
            for _, futures in inflight:
                self._cancel(futures)
            for data in reads.values():
                self._cancel([f for part in data for f in part])
            raise
        state.t = t_end
        return state, loss_total, steps_total

    def objective(self, centers: np.ndarray, rank: float) -> float:
        """Exact mean of min_k ||x - y_k||^rank over the array, block tasks on the cluster."""
        from dask import delayed

        # one read-and-reduce task per block: a block is released as soon as its sum is known
        parts = [
            delayed(_block_loss, pure=True)(blk, centers, rank, self.bounds[i][0])
            for i, blk in enumerate(self.blocks)
        ]
        return float(sum(self._gather(self.client.compute(parts)))) / self.X.shape[0]
