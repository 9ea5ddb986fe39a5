"""Numba's thread pool must not change the process's OpenMP thread count.

The engine's parallel loops (:mod:`sqflow.distances`) run on numba's OpenMP threading layer. The
first parallel call of a process starts numba's pool, and starting it sets the OpenMP thread
count of the calling thread to numba's (all logical cores) in the libgomp that PyTorch shares.
Measured: after ``torch.set_num_threads(1)``, one ``sq_distances`` call left torch with 2 threads
on this 2-core machine. Training then sums in another order than in a fresh process, so the same
seed gave another encoder (embeddings 6e-4 apart on MNIST, different pseudo-labels) depending on
whether SQ had run in the process before (self-training runs SQ between epochs; a nightly
clusters before an in-process retrain). On a 16-core machine with hyper-threads, torch's 16
threads would silently become 32.

:func:`launch_numba_pool` starts the pool once per process and puts every OpenMP library's
thread count back to what it was, so the caller's setting (``torch.set_num_threads``,
``OMP_NUM_THREADS``) holds. Numba's own loops are not limited by it: they run on the pool's
threads (``NUMBA_NUM_THREADS``).
"""

from __future__ import annotations

import threading

__all__ = ["launch_numba_pool"]

_lock = threading.Lock()
_launched = False


def _openmp_threads() -> dict[str, int]:
    from threadpoolctl import ThreadpoolController

    return {
        c.filepath: c.num_threads
        for c in ThreadpoolController().lib_controllers
        if c.user_api == "openmp"
    }


def launch_numba_pool() -> None:
    """Start numba's parallel pool (once per process), leaving OpenMP thread counts as found."""
    global _launched
    if _launched:
        return
    with _lock:
        if _launched:
            return
        from numba.np.ufunc.parallel import _launch_threads
        from threadpoolctl import ThreadpoolController

        before = _openmp_threads()
        _launch_threads()
        for c in ThreadpoolController().lib_controllers:
            if c.user_api == "openmp" and c.filepath in before:
                if c.num_threads != before[c.filepath]:
                    c.set_num_threads(before[c.filepath])
        _launched = True
