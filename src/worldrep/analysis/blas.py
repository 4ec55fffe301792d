"""One BLAS thread for the analysis kernels.

The probes and CKA multiply matrices of a few thousand by a few hundred: one thread does them
in milliseconds, while OpenBLAS's thread pool on a small, busy machine (a laptop running other
work, a shared cluster node, two worker processes on two cores) spins and waits, measured 10-40x
slower here. The limit applies only inside the decorated call.
"""

from __future__ import annotations

import functools

from threadpoolctl import threadpool_limits


def single_blas_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
