"""Numba's thread pool leaves the process's OpenMP thread count alone (sqflow.openmp_pool):
before, the first SQ call of a process reset torch's thread count to numba's, and the same seed
trained another encoder depending on whether SQ had run in the process before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="needs 2 cores: numba's default would equal torch's 1"
)

_SCRIPT = """
import numpy as np, torch, numba
torch.set_num_threads(1)
from sqflow.distances import sq_distances
sq_distances(np.ones((1000, 3)), np.zeros((4, 3)))
@numba.njit(parallel=True)
def tids(n):
    out = np.zeros(n, dtype=np.int64)
    for i in numba.prange(n):
        out[i] = numba.np.ufunc.parallel._get_thread_id()
    return out
print(torch.get_num_threads(), len(set(tids(200000).tolist())))
"""


def test_first_parallel_call_keeps_torch_threads_and_numba_stays_parallel() -> None:
    # a fresh process: the pool starts once per process
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    torch_threads, numba_threads = int(out[0]), int(out[1])
    assert torch_threads == 1  # was 2 on a 2-core machine before the pool was started this way
    assert numba_threads >= 2  # numba's own loops still use its pool
