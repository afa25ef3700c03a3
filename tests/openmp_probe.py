"""BLAS called inside a numba OpenMP region: what made OpenBLAS print "Detect OpenMP Loop" in the app server.

Used by the threads tests in a subprocess and by the browser test server (`serve.py --openmp-probe`)."""

from __future__ import annotations


def blas_in_openmp_region() -> float:
    """Run np.dot in each thread of a parallel numba kernel; returns the sum of the products."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True)
    def products(a):
        out = np.zeros(8)
        for i in prange(8):
            out[i] = np.dot(a, a)[0, 0]
        return out

    return float(products(np.ones((400, 400))).sum())
