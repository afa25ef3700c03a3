"""Thread pools of the app's server process, configured once, before numpy and scipy load their BLAS.

numpy and scipy ship OpenBLAS built with its own pthreads pool. Called with several threads from inside an
OpenMP parallel region, it prints "OpenBLAS Warning : Detect OpenMP Loop and this application may hang"
(and can oversubscribe the cores or deadlock): the server runs numba's parallel kernels (UMAP, NNDescent;
numba's OpenMP threading layer) and torch (the demo build) in one libgomp, and once torch has loaded that
libgomp globally, OpenBLAS sees every region of it. One BLAS thread per call makes that impossible; numba and
torch keep their own pools, which do the parallel work of a fit and of the demo build.

`configure()` runs when this module is first imported (the entry script imports it before anything that
loads numpy): OpenBLAS reads ``OPENBLAS_NUM_THREADS`` when it loads; a BLAS library already loaded (numpy
imported earlier by whoever started the server) is limited through threadpoolctl.
"""

from __future__ import annotations

import os
import sys

BLAS_THREADS = 1
_ENV = ("OPENBLAS_NUM_THREADS",)


def configure() -> None:
    for name in _ENV:
        os.environ[name] = str(BLAS_THREADS)
    if "numpy" in sys.modules or "scipy" in sys.modules:  # their BLAS read the environment already
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # (scikit-learn, which UMAP needs, brings it)
            return
        threadpool_limits(limits=BLAS_THREADS, user_api="blas")


configure()
