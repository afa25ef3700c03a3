"""The kNN graph of a feature matrix: what UMAP and t-SNE fit on, and what the projector caches and reuses.

Exact (a brute-force search) while it is cheap: below `EXACT_BELOW` rows (umap-learn's own switch), and up
to `EXACT_WORK` distance terms (rows² × dimensions: 10,000 rows of 64 values, about 1 s on 2 cores, half
NNDescent's time there); NNDescent beyond. cuML's exact GPU search with backend ``cuml``. Cosine and correlation neighbours are searched as euclidean ones on normalised
(centred) rows (the same order; the distance is converted), so one compiled NNDescent serves three metrics.

Compilation: umap-learn's jitted functions are written to the persistent numba cache (``NUMBA_CACHE_DIR``,
default ``<repo>/.numba_cache``) so that later processes load them in about a second (`prepare_numba`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np

from pipeline.neighbors import exact_knn, metric_rows, to_metric_distance

log = logging.getLogger(__name__)

# Set before numba is first imported (numba reads it then); see prepare_numba for an already imported numba.
DEFAULT_NUMBA_CACHE = Path(__file__).resolve().parents[1] / ".numba_cache"
os.environ.setdefault("NUMBA_CACHE_DIR", str(DEFAULT_NUMBA_CACHE))

EXACT_BELOW = 4096  # umap-learn's own switch from exact kNN to NNDescent
EXACT_WORK = 6.5e9  # rows * rows * dims up to which the exact search stays faster than NNDescent


def is_exact(n: int, dims: int) -> bool:
    """Whether `compute_knn` searches n rows of `dims` values exactly (else by NNDescent)."""
    return n < EXACT_BELOW or float(n) * n * max(dims, 1) <= EXACT_WORK


class BackendError(ValueError):
    """A backend that this machine cannot run (cuML without a GPU), with a message meant for the user."""


_numba_lock = threading.Lock()
_numba_ready = False


def prepare_numba() -> None:
    """Point numba at the persistent cache and let umap-learn's jitted functions use it, and start numba's
    thread pool. Idempotent; imports umap (2-3 s) on first use.

    Starting the pool here, with torch's thread count kept: numba's OpenMP layer sets OpenMP's thread count to
    its own (every core) in the thread that starts it, and torch shares that OpenMP runtime, so a sample
    generated after the first map (the demo's extra runs, an edit) would run on another thread count than its
    run did before and differ in the last bit; generation is deterministic per seed only on one count."""
    global _numba_ready
    if _numba_ready:
        return
    with _numba_lock:
        if _numba_ready:
            return
        cache_dir = os.environ.get("NUMBA_CACHE_DIR") or str(DEFAULT_NUMBA_CACHE)
        import numba
        from numba.core.dispatcher import Dispatcher

        if not numba.config.CACHE_DIR:  # numba was imported before this module set the variable
            numba.config.CACHE_DIR = cache_dir
        import umap.distances
        import umap.layouts
        import umap.sparse
        import umap.spectral
        import umap.umap_
        import umap.utils

        # umap-learn compiles without cache=True; most of its functions are cacheable (NNDescent's loop is not)
        for mod in (umap.umap_, umap.layouts, umap.utils, umap.spectral, umap.distances, umap.sparse):
            for obj in list(vars(mod).values()):
                if isinstance(obj, Dispatcher) and type(obj._cache).__name__ == "NullCache":
                    try:
                        obj.enable_caching()
                    except Exception as e:  # not cacheable: compiled per process as before
                        log.debug("numba cache not enabled for %s: %s", getattr(obj, "__name__", obj), e)
        torch = sys.modules.get("torch")  # not imported: nothing generates in this process yet
        threads = torch.get_num_threads() if torch is not None else None
        numba.get_num_threads()  # starts the threading layer now, not in the middle of a fit
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        _numba_ready = True



def compute_knn(X: np.ndarray, k: int, metric: str = "euclidean", seed: int | None = 0,
                backend: str = "umap", exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row (itself included, first): (indices int32, distances float32), both
    (N, k). Exact while `is_exact`, else NNDescent (umap-learn's settings); cuML's exact GPU search with
    backend 'cuml'. `exact` forces one or the other."""
    n = len(X)
    k = min(int(k), n)
    data, base = metric_rows(X, metric)
    if backend == "cuml":
        idx, dist = _cuml_knn(data, k, base)
    elif exact if exact is not None else is_exact(n, data.shape[1]):
        idx, dist = exact_knn(data, data, k, base)
    else:
        prepare_numba()
        from umap.umap_ import nearest_neighbors

        rs = np.random.RandomState(seed)
        idx, dist, _index = nearest_neighbors(data, k, base, {}, False, rs, low_memory=True,
                                              use_pynndescent=True, n_jobs=1 if seed is not None else -1)
        del _index  # the search index is large and only umap's own transform needs it
    return np.ascontiguousarray(idx, dtype=np.int32), to_metric_distance(dist, metric)


def cuml_check() -> None:
    try:
        import cuml  # noqa: F401
    except ImportError:
        raise BackendError("backend 'cuml' needs RAPIDS cuML (e.g. pip install cuml-cu12) and a CUDA GPU; "
                              "it is not installed here. Use backend 'umap'.") from None
    try:
        import cupy

        devices = int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        devices = 0
    if devices < 1:
        raise BackendError("backend 'cuml' needs a CUDA device and none was found. Use backend 'umap'.")


def _cuml_knn(data: np.ndarray, k: int, base: str) -> tuple[np.ndarray, np.ndarray]:
    cuml_check()
    from cuml.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric=base, output_type="numpy").fit(data)
    d, i = nn.kneighbors(data)
    return np.asarray(i, dtype=np.int32), np.asarray(d, dtype=np.float32)


