"""UMAP as a projection method (umap-learn), on the projector's kNN graph.

``fit`` lays out a precomputed kNN graph (its first n_neighbors columns) from a spectral start with umap's
default epochs, or warm-starts from an earlier map of the same rows (``init``: a min_dist change, whose fuzzy
graph is the same) with a fraction of the epochs (`WARM_EPOCH_FRACTION`). ``transform`` is UMAP's own
(`place_points`). cuML (``backend="cuml"``, imported only then) lays the graph out on the GPU; it takes no
initial map, so a min_dist change refits there.

Compilation: the first fit of a fresh process spends 40-50 s in numba (NNDescent alone ~45 s on 2 cores).
`warmup` runs a few seconds of real work that compiles the same code paths (the small-store paths first,
NNDescent last), off the critical path (`start_warmup_thread` at app start). NNDescent's main loop takes the
distance function as an argument, which numba cannot cache: every process compiles it once, hence the warm-up.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings

import numpy as np

from pipeline.knn import EXACT_BELOW, compute_knn, cuml_check, prepare_numba
from pipeline.methods import Method, Param
from pipeline.neighbors import exact_knn

log = logging.getLogger(__name__)

# Epochs of a fresh layout: 200 at every size. umap-learn runs 500 up to 10,000 points (200 above); measured
# on the demo's 1,500-point layer and 10,000 synthetic points, 200 epochs give a trustworthiness within 0.001
# of 500 (0.9894 vs 0.9903, 0.9829 vs 0.9834) in 40% of the time.
FIT_EPOCHS = 200
WARM_EPOCH_FRACTION = 1 / 8  # of a fresh layout's epochs
WARM_MIN_EPOCHS = 25


class UMAP(Method):
    name = "umap"
    title = "UMAP"
    PARAMS = {
        "n_neighbors": Param(15, 2, 200, "size of the neighbourhood each point's structure is read from: "
                             "small values keep local detail, large ones the global shape", "nn", (5, 100)),
        "min_dist": Param(0.1, 0.0, 1.0, "how tightly points may pack: 0 gives dense clumps, 1 an even spread",
                          "md", (0.0, 1.0), 0.01),
    }
    WARM = ("min_dist",)
    BACKENDS = ("umap", "cuml")

    def knn_k(self, n: int) -> int:
        return self.n_neighbors

    def fit(self, X, knn=None, init=None) -> UMAP:
        if knn is None:
            knn = compute_knn(X, min(self.n_neighbors, len(X)), self.metric, self.seed, self.backend)
        epochs = warm_epochs(len(X)) if init is not None else FIT_EPOCHS
        self.embedding_ = umap_layout(X, knn[0], knn[1], self, init=init, n_epochs=epochs, progress=self.progress)
        self.n_epochs_ = epochs
        self._X = np.asarray(X, dtype=np.float32)
        return self

    def transform(self, X_new):
        return place_points(self._X, self.embedding_, X_new, self)

    def tag(self) -> str:  # the key prefix maps had before methods were named: keep it
        return f"nn{self.n_neighbors}-md{self.min_dist:g}"


def _fill_missing(xy: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """umap leaves points that lost every edge at NaN: put them at the mean of their neighbours (or the
    centre), so that every sample is drawn and clickable."""
    bad = ~np.isfinite(xy).all(axis=1)
    if not bad.any():
        return xy
    xy = xy.copy()
    centre = np.nanmean(xy[~bad], axis=0) if (~bad).any() else np.zeros(2, np.float32)
    for i in np.flatnonzero(bad):
        nb = [] if idx is None else [j for j in idx[i] if j >= 0 and j != i and not bad[j]]
        xy[i] = xy[nb].mean(axis=0) if nb else centre
    return xy


def warm_epochs(n: int) -> int:
    """Epochs of a warm start (min_dist change) for n points."""
    return max(WARM_MIN_EPOCHS, int(FIT_EPOCHS * WARM_EPOCH_FRACTION))


_EPOCHS_RE = re.compile(r"(\d+)/(\d+)")  # umap's bar: "Epochs completed:  40% 80/200 [...]"


class _EpochStream:
    """A file for umap-learn's tqdm epoch bar (``tqdm_kwds``): turns each refresh ("… 12/200 …") into a progress
    call, so a layout reports every fraction of a second and can be stopped between epochs (a progress call
    that raises ends the layout; the exception is raised once, later writes are ignored)."""

    def __init__(self, progress, what: str):
        self.progress, self.what, self.failed = progress, what, False

    def write(self, text: str) -> int:
        if self.failed:
            return len(text)
        found = _EPOCHS_RE.search(text.rpartition("\r")[2])
        if found and int(found.group(2)):
            done, total = found.groups()
            try:
                self.progress(int(done) / int(total), f"{self.what}: epoch {done}/{total}")
            except BaseException:
                self.failed = True
                raise
        return len(text)

    def flush(self) -> None:
        pass


# what our own calls make umap say: no search index kept (we place points ourselves), a seed disables
# parallelism, and clustered data gives a disconnected graph (umap lays out its components itself)
_EXPECTED_WARNINGS = (r"precomputed_knn\[2\]", r"n_jobs value .* overridden", r"Graph is not fully connected")


def umap_layout(X: np.ndarray, idx: np.ndarray, dist: np.ndarray, params,
                init: np.ndarray | None = None, n_epochs: int | None = None, progress=None) -> np.ndarray:
    """UMAP layout of X on a precomputed kNN graph (its first n_neighbors columns): spectral start with
    `n_epochs` (None: umap-learn's default), or a warm start from `init` (an (N, 2) map). `progress(fraction,
    message)` is called as the epochs go (and may raise to stop)."""
    n = params.n_neighbors
    # umap marks disconnected edges in place: hand it copies, never views of the cached graph
    knn_i = np.array(idx[:, :n], dtype=np.int32, order="C")
    knn_d = np.array(dist[:, :n], dtype=np.float32, order="C")
    if params.backend == "cuml":
        return _cuml_layout(X, knn_i, knn_d, params)
    prepare_numba()
    import umap

    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        model = umap.UMAP(
            n_neighbors=n, min_dist=params.min_dist, metric=params.metric, random_state=params.seed,
            n_jobs=1 if params.seed is not None else -1, low_memory=True, verbose=False,
            init=np.asarray(init, dtype=np.float32) if init is not None else "spectral",
            n_epochs=n_epochs, precomputed_knn=(knn_i, knn_d, None),
            tqdm_kwds=None if progress is None else {
                "disable": False, "file": _EpochStream(progress, f"UMAP layout of {len(X):,} points"),
                "mininterval": 0.25},
        )
        xy = model.fit_transform(np.ascontiguousarray(X, dtype=np.float32))
    return _fill_missing(np.asarray(xy, dtype=np.float32), knn_i)


def place_points(X_ref: np.ndarray, xy_ref: np.ndarray, X_new: np.ndarray, params,
                 n_epochs: int | None = None) -> np.ndarray:
    """Coordinates for new rows in an existing map, the existing points fixed.

    This is UMAP's ``transform`` (membership strengths of each new point to its k nearest reference points,
    start at their weighted mean, then optimise only the new points against the fixed map) assembled from
    umap-learn's own functions. We cannot call ``UMAP.transform`` itself: it needs the fitted object with its
    NNDescent search index, which is neither kept in memory nor persisted. The new points' neighbours are
    found exactly instead (a brute-force search of m x N distances, cheap for a thousand new points).
    """
    m, n_ref = len(X_new), len(X_ref)
    if m == 0:
        return np.zeros((0, 2), np.float32)
    prepare_numba()
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import (
        compute_membership_strengths,
        find_ab_params,
        init_graph_transform,
        make_epochs_per_sample,
        smooth_knn_dist,
    )

    k = min(params.n_neighbors, n_ref)
    idx, dist = exact_knn(X_new, X_ref, k, params.metric)
    sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=0.0)
    rows, cols, vals, _ = compute_membership_strengths(idx, dist, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m, n_ref)).tocsr()
    graph.eliminate_zeros()
    tail = np.ascontiguousarray(xy_ref, dtype=np.float32)
    head = np.ascontiguousarray(init_graph_transform(graph, tail), dtype=np.float32)
    epochs = n_epochs if n_epochs is not None else (100 if m <= 10_000 else 30)
    graph = graph.tocoo()
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    a, b = find_ab_params(1.0, params.min_dist)
    rng = np.random.RandomState(0 if params.seed is None else params.seed)
    rng_state = rng.randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    out = optimize_layout_euclidean(head, tail.copy(), graph.row, graph.col, epochs, n_ref,
                                    make_epochs_per_sample(graph.data, epochs), a, b, rng_state, 1.0, 0.25, 5,
                                    parallel=False, move_other=False)
    return _fill_missing(np.asarray(out, dtype=np.float32), None)


def _cuml_layout(X, knn_i, knn_d, params) -> np.ndarray:
    """A cuML fit on our kNN graph. cuML takes no initial map, so a min_dist change refits (fast on a GPU)."""
    cuml_check()
    from cuml.manifold import UMAP

    model = UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                 random_state=params.seed, precomputed_knn=(knn_i, knn_d), output_type="numpy")
    xy = model.fit_transform(np.ascontiguousarray(X, dtype=np.float32))
    return _fill_missing(np.asarray(xy, dtype=np.float32), knn_i)



# -- warm-up ----------------------------------------------------------------------------------------------

def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 4
    return (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


WARMUP_STATE: dict = {"state": "not started"}


def _warm_nndescent():
    """NNDescent on a few thousand points: its ~45 s of compilation, which only large stores need."""
    return compute_knn(_clustered(EXACT_BELOW, 16, 1), 11, "euclidean", 0, exact=False)


def warmup(progress=None, nndescent: bool = True) -> dict:
    """Compile the numba code of a real projection with a few seconds of work: the exact (< 4,096 points) kNN
    path, a spectral-start and a warm-start layout, point placement and map quality first (all a small store
    needs), then NNDescent (``nndescent``; ~45 s of compilation on 2 cores). Safe in a background thread
    while real calls run: numba serialises compilation, and a call only waits for code it needs that is
    still compiling. Returns timings (s)."""
    timings: dict = {}
    t = time.perf_counter()
    prepare_numba()
    timings["import"] = time.perf_counter() - t
    params = UMAP(n_neighbors=10, min_dist=0.1)
    small = _clustered(300, 16, 0)

    def step(name, fraction, fn):
        if progress is not None:
            progress(fraction, f"warm-up: {name}")
        t = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t, 3)
        return out

    idx, dist = step("knn_exact", 0.05, lambda: compute_knn(small, 11, "euclidean", 0))
    xy = step("layout", 0.15, lambda: umap_layout(small, idx, dist, params, n_epochs=20))
    step("warm_layout", 0.3, lambda: umap_layout(small, idx, dist, UMAP(n_neighbors=10, min_dist=0.5), init=xy,
                                                  n_epochs=5))
    step("place", 0.35, lambda: place_points(small[:250], xy[:250], small[250:], params, n_epochs=5))
    from pipeline.neighbors import map_quality

    step("quality", 0.4, lambda: map_quality(small, xy, knn_indices=idx))
    if nndescent:
        step("knn_nndescent", 0.45, _warm_nndescent)
    timings["total"] = round(sum(v for v in timings.values()), 3)
    if progress is not None:
        progress(1.0, "warm-up done")
    return timings


_warmup_lock = threading.Lock()
_warmup_thread: threading.Thread | None = None


def start_warmup_thread(busy=None) -> threading.Thread:
    """Run `warmup` once per process in a daemon thread (later calls return the same thread). Its outcome
    is in ``WARMUP_STATE``. `busy()` true holds back NNDescent's long compilation (which only stores of more
    than a few thousand points need) while other work wants the cores, e.g. the first start's demo build."""
    global _warmup_thread
    with _warmup_lock:
        if _warmup_thread is not None:
            return _warmup_thread

        def run():
            WARMUP_STATE.update(state="running", started=time.time())
            try:
                timings = warmup(nndescent=False)
                while busy is not None and busy():
                    time.sleep(1.0)
                t = time.perf_counter()
                _warm_nndescent()
                timings["knn_nndescent"] = round(time.perf_counter() - t, 3)
                WARMUP_STATE.update(state="done", timings=timings)
            except Exception as e:  # the app still works; the first real fit just compiles
                log.warning("projection warm-up failed: %s", e, exc_info=True)
                WARMUP_STATE.update(state="failed", error=f"{type(e).__name__}: {e}")

        _warmup_thread = threading.Thread(target=run, name="umap-warmup", daemon=True)
        _warmup_thread.start()
        return _warmup_thread
