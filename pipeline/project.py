"""2-D maps of activations with UMAP: cached in the store under explicit keys, and fast to change.

``Projector.project(store, model, layer, step, params)`` returns a `Projection` (sample ids, x/y, quality,
and ``source``: how it was obtained). ``step="all"`` (`ALL_STEPS`) maps every recorded step of the layer in
one UMAP: its points are (sample, step) pairs with ids ``f"{sample_id}@{step}"`` (`pipeline.features.
point_id`), so a sample can be followed across the denoising steps; caching, reuse, placement of appended
samples, neighbours and quality work on those points as on samples. In order of preference:

``cache``
    The key (data version, model, layer, step, feature, UMAP parameters, filter; see `projection_key`) is in
    the store: nothing is recomputed.
``transform``
    Samples were appended since this map was last made (same parameters and filter, older data version, and
    every old sample still there): the old points keep their place and the new ones are placed into the map
    (`place_points`) rather than refitting, until the caller asks for ``refit=True``. More new points than old
    ones (a map of a few points would place poorly) refit instead.
``warm``
    Only ``min_dist`` differs from the latest map of the same data and parameters (this process's, else the
    store's): the fuzzy graph does not depend on ``min_dist``, so the cached kNN graph is reused and the
    layout starts from that map with a fraction of the epochs (``WARM_EPOCH_FRACTION``). The result depends
    on the map it started from; ``warm_from`` in its stored parameters names it.
``fit``
    A UMAP fit on the cached kNN graph when there is one with at least ``n_neighbors`` neighbours (it is
    sliced), else on a fresh one.

The kNN graph of (data version, model, layer, step, feature, metric, seed, filter) is computed once with
``max(n_neighbors, KNN_MIN_K)`` neighbours and kept in memory and in the store, so a fresh process reuses it
too: exactly below 4,096 points (as umap-learn itself does), by NNDescent from there up. Cosine and
correlation neighbours are searched as euclidean ones on normalised (centred) rows (the same order; the
distance is converted), so one compiled NNDescent serves three metrics.

Stored beside the projections (``projections/model=<m>/layer=<l>/``): ``knn/<key>.parquet`` (kNN graphs, with
their sample ids), ``features/<key>.parquet`` (PCA features), ``lineage/`` and ``family/`` (one-row pointers
to the latest map of a lineage and of a min_dist family).

Compilation: the first fit of a fresh process spends 40-50 s in numba (NNDescent alone ~45 s on 2 cores).
`warmup` runs a few seconds of real work that compiles the same code paths (the small-store paths first,
NNDescent last), off the critical path (`start_warmup_thread` at app start), and umap-learn's jitted
functions are written to the persistent numba cache (``NUMBA_CACHE_DIR``, default ``<repo>/.numba_cache``)
so that later processes load them in about a second. NNDescent's main loop takes the distance function as
an argument, which numba cannot cache: every process compiles it once, hence the warm-up.

cuML (``backend="cuml"``, imported only then): exact kNN and the layout on the GPU, the same keys, files and
placement of appended samples; cuML takes no initial map, so a min_dist change refits there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.caches import provenance
from pipeline.features import (
    ALL_STEPS,
    FeatureError,
    Features,
    FeatureSpec,
    filter_description,
    filter_id,
    load_features,
    parse_step,
    step_token,
)
from pipeline.neighbors import exact_knn, metric_rows, to_metric_distance

log = logging.getLogger(__name__)

__all__ = [
    "ProjectionParams",
    "Projection",
    "ProjectionError",
    "Projector",
    "projection_key",
    "compute_knn",
    "place_points",
    "umap_layout",
    "warm_epochs",
    "warmup",
    "start_warmup_thread",
    "default_projector",
    "METRICS",
    "BACKENDS",
    "ALL_STEPS",
]

# Set before numba is first imported (numba reads it then); see _prepare_numba for an already imported numba.
DEFAULT_NUMBA_CACHE = Path(__file__).resolve().parents[1] / ".numba_cache"
os.environ.setdefault("NUMBA_CACHE_DIR", str(DEFAULT_NUMBA_CACHE))

from pipeline.neighbors import METRICS  # noqa: E402, I001  (pipeline.neighbors owns the list of distances)
BACKENDS = ("umap", "cuml")
N_NEIGHBORS_RANGE = (2, 200)  # the app offers 5-100
EXACT_BELOW = 4096  # umap-learn's own switch from exact kNN to NNDescent
KNN_MIN_K = 15  # kNN graphs get at least this many neighbours, so that a smaller n_neighbors reuses them
WARM_EPOCH_FRACTION = 1 / 8  # of umap's default epochs (500 up to 10,000 points, else 200)
WARM_MIN_EPOCHS = 25
TRANSFORM_MAX_NEW = 1.0  # place appended samples while they are at most this share of the existing map
QUALITY_K = 10
QUALITY_SAMPLE = 2000
KEY_VERSION = 1


class ProjectionError(ValueError):
    """A projection request that cannot be served, with a message meant for the user."""


Progress = Callable[[float, str], None]


# -- parameters and keys -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProjectionParams:
    """Everything that decides a projection besides the data. ``feature`` None means the layer's default
    (`pipeline.features.default_spec`). ``seed`` None lets umap run in parallel (not reproducible)."""

    feature: FeatureSpec = field(default_factory=FeatureSpec)
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int | None = 0
    backend: str = "umap"

    def __post_init__(self):
        try:
            object.__setattr__(self, "feature", FeatureSpec.parse(self.feature))
        except FeatureError as e:
            raise ProjectionError(str(e)) from None
        lo, hi = N_NEIGHBORS_RANGE
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, int | np.integer) \
                or not lo <= int(self.n_neighbors) <= hi:
            raise ProjectionError(f"n_neighbors must be an integer from {lo} to {hi}, got {self.n_neighbors!r}")
        object.__setattr__(self, "n_neighbors", int(self.n_neighbors))
        try:
            md = float(self.min_dist)
        except (TypeError, ValueError):
            md = float("nan")
        if not 0.0 <= md <= 1.0:
            raise ProjectionError(f"min_dist must be a number from 0 to 1, got {self.min_dist!r}")
        object.__setattr__(self, "min_dist", round(md, 6))
        if self.metric not in METRICS:
            raise ProjectionError(f"unknown metric {self.metric!r}; valid: {list(METRICS)}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
                raise ProjectionError(f"seed must be a non-negative integer or None, got {self.seed!r}")
            object.__setattr__(self, "seed", int(self.seed))
        if self.backend not in BACKENDS:
            raise ProjectionError(f"unknown backend {self.backend!r}; valid: {list(BACKENDS)}")

    @classmethod
    def coerce(cls, value: ProjectionParams | Mapping | None = None, **overrides) -> ProjectionParams:
        """Params from params, a dict (``feature`` may be a name such as ``mean``/``full``/``pca``; ``pca`` and
        ``standardize`` keys are merged into it) or None (defaults)."""
        if isinstance(value, ProjectionParams):
            return replace(value, **overrides) if overrides else value
        d = dict(value or {})
        d.update(overrides)
        valid = {"feature", "n_neighbors", "min_dist", "metric", "seed", "backend", "pca", "standardize"}
        unknown = set(d) - valid
        if unknown:
            raise ProjectionError(f"unknown projection parameters {sorted(unknown)}; valid: {sorted(valid)}")
        pca, std = d.pop("pca", None), d.pop("standardize", None)
        if pca is not None or std is not None:
            try:
                spec = FeatureSpec.parse(d.get("feature"))
                d["feature"] = FeatureSpec(kind=spec.kind, pca=pca if pca is not None else spec.pca,
                                           standardize=bool(std) if std is not None else spec.standardize)
            except FeatureError as e:
                raise ProjectionError(str(e)) from None
        return cls(**d)

    def to_dict(self) -> dict:
        return {"feature": self.feature.to_dict(), "n_neighbors": self.n_neighbors, "min_dist": self.min_dist,
                "metric": self.metric, "seed": self.seed, "backend": self.backend}

    @classmethod
    def from_dict(cls, d: Mapping) -> ProjectionParams:
        return cls.coerce({k: d[k] for k in ("feature", "n_neighbors", "min_dist", "metric", "seed", "backend")
                           if k in d})


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _payload(data_version, model, layer, step, params: ProjectionParams, filter_id_: str) -> dict:
    return {"what": "projection", "v": KEY_VERSION, "data_version": str(data_version), "model": str(model),
            "layer": str(layer), "step": step_token(step), "filter": str(filter_id_), **params.to_dict()}


def projection_key(data_version: str, model: str, layer: str, step: int | str, params: ProjectionParams,
                   filter_id_: str = "all") -> str:
    """Cache key of a projection: a readable prefix (step or ``sall``, feature, UMAP parameters) and a short
    hash of the canonical JSON of exactly these inputs (model and layer are also the folder of the file)."""
    p = params
    seed = "none" if p.seed is None else p.seed
    prefix = (f"s{step_token(step)}-{p.feature.id}-nn{p.n_neighbors}-md{p.min_dist:g}-{p.metric}-seed{seed}-"
              f"{p.backend}")
    return f"{prefix}-{_digest(_payload(data_version, model, layer, step, params, filter_id_))[:16]}"


def _lineage_id(model, layer, step, params, filter_id_) -> str:
    """The same projection across data versions (what `transform` continues)."""
    payload = _payload("", model, layer, step, params, filter_id_)
    payload.pop("data_version")
    return "l" + _digest(payload)[:20]


def _family_id(data_version, model, layer, step, params, filter_id_) -> str:
    """Projections of the same data that differ only in min_dist (what a warm start continues)."""
    payload = _payload(data_version, model, layer, step, params, filter_id_)
    payload.pop("min_dist")
    return "m" + _digest(payload)[:20]


def _knn_key(data_version, model, layer, step, spec: FeatureSpec, metric, seed, filter_id_) -> str:
    payload = {"what": "knn", "v": KEY_VERSION, "data_version": data_version, "model": model, "layer": layer,
               "step": step_token(step), "feature": spec.to_dict(), "metric": metric, "seed": seed,
               "filter": filter_id_}
    return f"s{step_token(step)}-{spec.id}-{metric}-{_digest(payload)[:16]}"


# -- results -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Projection:
    """A 2-D map: row i of ``xy`` is sample ``sample_ids[i]`` (a point id ``<sample_id>@<step>`` when
    ``step == "all"``)."""

    sample_ids: np.ndarray  # str, (N,)
    xy: np.ndarray  # float32, (N, 2)
    params: ProjectionParams
    key: str
    quality: dict
    source: str  # cache | fit | warm | transform
    model: str = ""
    layer: str = ""
    step: int | str = 0  # the step, or "all"
    data_version: str = ""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)  # everything stored beside the coordinates

    def __len__(self) -> int:
        return len(self.sample_ids)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": self.sample_ids, "x": self.xy[:, 0], "y": self.xy[:, 1]})


class _Report:
    """Progress callback wrapper: maps stage fractions into [lo, hi], never raises."""

    def __init__(self, callback: Progress | None):
        self.callback = callback

    def __call__(self, fraction: float, message: str) -> None:
        if self.callback is None:
            return
        try:
            self.callback(max(0.0, min(1.0, float(fraction))), message)
        except Exception as e:  # a broken progress bar must not break the projection
            log.debug("progress callback failed: %s", e)


# -- numba / umap setup --------------------------------------------------------------------------------------

_numba_lock = threading.Lock()
_numba_ready = False


def _prepare_numba() -> None:
    """Point numba at the persistent cache and let umap-learn's jitted functions use it. Idempotent; imports
    umap (2-3 s) on first use."""
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
        _numba_ready = True


# -- numeric core --------------------------------------------------------------------------------------------

def compute_knn(X: np.ndarray, k: int, metric: str = "euclidean", seed: int | None = 0,
                backend: str = "umap") -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row (itself included, first): (indices int32, distances float32), both
    (N, k). Exact below `EXACT_BELOW` rows, NNDescent (umap-learn's settings) from there up; cuML's exact
    GPU search with backend 'cuml'."""
    n = len(X)
    k = min(int(k), n)
    data, base = metric_rows(X, metric)
    if backend == "cuml":
        idx, dist = _cuml_knn(data, k, base)
    elif n < EXACT_BELOW:
        idx, dist = exact_knn(data, data, k, base)
    else:
        _prepare_numba()
        from umap.umap_ import nearest_neighbors

        rs = np.random.RandomState(seed)
        idx, dist, _index = nearest_neighbors(data, k, base, {}, False, rs, low_memory=True,
                                              use_pynndescent=True, n_jobs=1 if seed is not None else -1)
        del _index  # the search index is large and only umap's own transform needs it
    return np.ascontiguousarray(idx, dtype=np.int32), to_metric_distance(dist, metric)


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


def _default_epochs(n: int) -> int:
    return 500 if n <= 10_000 else 200  # umap-learn's own choice


def warm_epochs(n: int) -> int:
    """Epochs of a warm start (min_dist change) for n points."""
    return max(WARM_MIN_EPOCHS, int(_default_epochs(n) * WARM_EPOCH_FRACTION))


# what our own calls make umap say: no search index kept (we place points ourselves), a seed disables
# parallelism, and clustered data gives a disconnected graph (umap lays out its components itself)
_EXPECTED_WARNINGS = (r"precomputed_knn\[2\]", r"n_jobs value .* overridden", r"Graph is not fully connected")


def umap_layout(X: np.ndarray, idx: np.ndarray, dist: np.ndarray, params: ProjectionParams,
                init: np.ndarray | None = None, n_epochs: int | None = None) -> np.ndarray:
    """UMAP layout of X on a precomputed kNN graph (its first n_neighbors columns): spectral start with umap's
    default epochs, or a warm start from `init` (an (N, 2) map) with `n_epochs`."""
    n = params.n_neighbors
    # umap marks disconnected edges in place: hand it copies, never views of the cached graph
    knn_i = np.array(idx[:, :n], dtype=np.int32, order="C")
    knn_d = np.array(dist[:, :n], dtype=np.float32, order="C")
    if params.backend == "cuml":
        return _cuml_layout(X, knn_i, knn_d, params)
    _prepare_numba()
    import umap

    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        model = umap.UMAP(
            n_neighbors=n, min_dist=params.min_dist, metric=params.metric, random_state=params.seed,
            n_jobs=1 if params.seed is not None else -1, low_memory=True, verbose=False,
            init=np.asarray(init, dtype=np.float32) if init is not None else "spectral",
            n_epochs=n_epochs, precomputed_knn=(knn_i, knn_d, None),
        )
        xy = model.fit_transform(np.ascontiguousarray(X, dtype=np.float32))
    return _fill_missing(np.asarray(xy, dtype=np.float32), knn_i)


def place_points(X_ref: np.ndarray, xy_ref: np.ndarray, X_new: np.ndarray, params: ProjectionParams,
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
    _prepare_numba()
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


# -- cuML (optional, imported lazily) ------------------------------------------------------------------------

def _cuml_check() -> None:
    try:
        import cuml  # noqa: F401
    except ImportError:
        raise ProjectionError("backend 'cuml' needs RAPIDS cuML (e.g. pip install cuml-cu12) and a CUDA GPU; "
                              "it is not installed here. Use backend 'umap'.") from None
    try:
        import cupy

        devices = int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        devices = 0
    if devices < 1:
        raise ProjectionError("backend 'cuml' needs a CUDA device and none was found. Use backend 'umap'.")


def _cuml_knn(data: np.ndarray, k: int, base: str) -> tuple[np.ndarray, np.ndarray]:
    _cuml_check()
    from cuml.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric=base, output_type="numpy").fit(data)
    d, i = nn.kneighbors(data)
    return np.asarray(i, dtype=np.int32), np.asarray(d, dtype=np.float32)


def _cuml_layout(X, knn_i, knn_d, params: ProjectionParams) -> np.ndarray:
    """A cuML fit on our kNN graph. cuML takes no initial map, so a min_dist change refits (fast on a GPU)."""
    _cuml_check()
    from cuml.manifold import UMAP

    model = UMAP(n_neighbors=params.n_neighbors, min_dist=params.min_dist, metric=params.metric,
                 random_state=params.seed, precomputed_knn=(knn_i, knn_d), output_type="numpy")
    xy = model.fit_transform(np.ascontiguousarray(X, dtype=np.float32))
    return _fill_missing(np.asarray(xy, dtype=np.float32), knn_i)


# -- the projector -------------------------------------------------------------------------------------------

class _LRU:
    def __init__(self, max_items: int):
        self.max_items = max_items
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key, value) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)


def _relpath(model: str, layer: str, folder: str, name: str) -> str:
    return f"projections/model={model}/layer={layer}/{folder}/{name}.parquet"


class Projector:
    """Serves projections; one per process (thread-safe). Keeps recent maps and kNN graphs in memory for
    warm starts and graph reuse; everything it computes is also written to the store."""

    def __init__(self, max_projections: int = 32, max_knn: int = 8):
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._projections = _LRU(max_projections)  # key -> Projection
        self._knn = _LRU(max_knn)  # knn key -> (sample_ids, idx, dist)
        self._family = _LRU(256)  # family id -> key of its latest map

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    # -- public ----------------------------------------------------------------------------------------------

    def project(self, store, model: str, layer: str, step: int | str | None = None,
                params: ProjectionParams | Mapping | None = None, run_ids: Iterable[str] | None = None,
                sample_ids: Iterable[str] | None = None, progress: Progress | None = None, refit: bool = False,
                force: bool | None = None) -> Projection:
        """The map of (model, layer, step) for the samples of `run_ids` (None: all) and `sample_ids` (None:
        all); see the module docstring for how it is obtained. `step`: a step number (negative: from the
        last), None (the last) or ``"all"`` (every step, one point per sample and step). `refit` (alias `force`, as the app calls it)
        recomputes from scratch: no cache, no transform, no warm start. Raises `ProjectionError`."""
        t0 = time.perf_counter()
        params = ProjectionParams.coerce(params)
        refit = bool(refit or force)
        report = _Report(progress)
        run_ids = None if run_ids is None else sorted({str(r) for r in run_ids})
        if sample_ids is not None:
            sample_ids = [str(s) for s in sample_ids]
            if not sample_ids:
                raise ProjectionError("the sample filter is empty: no samples to project")
        step = self._resolve_step(store, model, layer, step)
        version = store.data_version(model, layer, run_ids)
        filt = filter_description(run_ids, sample_ids)
        fid = filter_id(filt)
        key = projection_key(version, model, layer, step, params, fid)
        family = _family_id(version, model, layer, step, params, fid)
        if not refit and (hit := self._cached(store, key, t0)) is not None:
            self._remember(family, hit)
            report(1.0, "cached")
            return hit
        with self._lock_for(key):
            if not refit and (hit := self._cached(store, key, t0)) is not None:
                self._remember(family, hit)
                report(1.0, "cached")
                return hit
            return self._compute(store, model, layer, step, params, run_ids, sample_ids, version, filt, key,
                                 family, refit, report, t0)

    def cached(self, store, key: str) -> Projection | None:
        """The projection stored under `key`, or None (never computes)."""
        return self._cached(store, key, time.perf_counter())

    # -- steps -----------------------------------------------------------------------------------------------

    def _resolve_step(self, store, model, layer, step) -> int | str:
        try:
            step = parse_step(step)
        except FeatureError as e:
            raise ProjectionError(str(e)) from None
        if step == ALL_STEPS:
            return ALL_STEPS
        if step is not None and step >= 0:
            return step
        steps = store.steps(model, layer) if model in store.models() else pd.DataFrame({"step": []})
        if not len(steps):
            self._validate_target(store, model, layer)
            raise ProjectionError(f"no activations recorded for {model}/{layer}")
        available = sorted(int(s) for s in steps["step"].unique())
        pos = -1 if step is None else int(step)
        if -pos > len(available):
            raise ProjectionError(f"step {step} out of range; steps recorded: {available}")
        return available[pos]

    def _validate_target(self, store, model, layer) -> None:
        models = store.models()
        if model not in models:
            raise ProjectionError(f"unknown model {model!r}; valid: {models}")
        layers = store.layers(model)
        if layer not in layers:
            raise ProjectionError(f"unknown layer {layer!r} for model {model!r}; valid: {layers}")

    def _cached(self, store, key: str, t0: float) -> Projection | None:
        with self._lock:
            mem = self._projections.get(key)
        if mem is not None:
            return replace(mem, source="cache", seconds=time.perf_counter() - t0)
        got = store.read_projection(key)
        if got is None:
            return None
        frame, meta = got
        try:
            proj = _from_stored(key, frame, meta)
        except (KeyError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable projection %s: %s", key, e)
            return None
        with self._lock:
            self._projections.put(key, proj)
        return replace(proj, seconds=time.perf_counter() - t0)

    def _remember(self, family: str, proj: Projection) -> None:
        with self._lock:
            self._family.put(family, proj.key)
            self._projections.put(proj.key, replace(proj, source="cache"))

    def _compute(self, store, model, layer, step, params, run_ids, sample_ids, version, filt, key, family,
                 refit, report, t0) -> Projection:
        if params.backend == "cuml":
            _cuml_check()
        self._validate_target(store, model, layer)
        report(0.0, "loading activations")
        feats = self._features(store, model, layer, step, params, run_ids, sample_ids, version)
        n = len(feats.sample_ids)
        if params.n_neighbors >= n:
            raise ProjectionError(f"n_neighbors={params.n_neighbors} needs more samples than that; this selection "
                                  f"has {n}. Lower n_neighbors (below {n}) or widen the filter.")
        fid = filter_id(filt)
        lineage = _lineage_id(model, layer, step, params, fid)
        meta: dict = {}
        xy = knn = None
        source = "fit"
        if not refit:
            placed = self._try_transform(store, model, layer, lineage, key, feats, params, report)
            if placed is not None:
                xy, meta = placed
                source = "transform"
        if xy is None and not refit and params.backend == "umap":
            sibling = self._warm_sibling(store, model, layer, family, key, feats)
            if sibling is not None:
                knn = self._get_knn(store, model, layer, step, feats, params, version, run_ids, fid, report)
                epochs = warm_epochs(n)
                report(0.45, f"warm start from {sibling.key} ({epochs} epochs)")
                xy = umap_layout(feats.X, knn[0], knn[1], params, init=sibling.xy, n_epochs=epochs)
                source, meta = "warm", {"warm_from": sibling.key, "n_epochs": epochs}
        if xy is None:
            knn = self._get_knn(store, model, layer, step, feats, params, version, run_ids, fid, report)
            report(0.45, f"UMAP layout of {n:,} points")
            xy = umap_layout(feats.X, knn[0], knn[1], params)
        report(0.9, "measuring map quality")
        from pipeline.neighbors import map_quality

        quality = map_quality(feats.X, xy, k=QUALITY_K, sample=QUALITY_SAMPLE, metric=params.metric,
                              knn_indices=None if knn is None else knn[0])
        seconds = time.perf_counter() - t0
        meta = {
            "model": model, "layer": layer, "step": step_token(step), "data_version": version, "filter": filt,
            "params": params.to_dict(), "feature_resolved": feats.spec.to_dict(), "features_key": feats.key,
            "stored_shape": list(feats.stored_shape), "reduce": feats.reduce, "n": n, "key": key,
            "source": source, "quality": quality, "seconds": round(seconds, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "umap_version": _umap_version(),
            **meta,
        }
        proj = Projection(sample_ids=feats.sample_ids, xy=xy, params=params, key=key, quality=quality,
                          source=source, model=model, layer=layer, step=step_token(step), data_version=version,
                          seconds=seconds, meta=meta)
        report(0.97, "saving")
        store.write_projection(key, proj.frame(), meta)
        _write_pointer(store, model, layer, "lineage", lineage, key, version)
        _write_pointer(store, model, layer, "family", family, key, version)
        self._remember(family, proj)
        from pipeline import neighbors

        neighbors.forget(key)  # a refit rewrites the same key
        report(1.0, f"done ({source}, {seconds:.1f} s)")
        return proj

    def _features(self, store, model, layer, step, params, run_ids, sample_ids, version) -> Features:
        try:
            return load_features(store, model, layer, step, params.feature, run_ids, sample_ids,
                                 data_version=version)
        except FeatureError as e:
            raise ProjectionError(str(e)) from None
        except ValueError as e:  # the store's own messages (e.g. a step not recorded) list the choices
            raise ProjectionError(str(e)) from None

    # -- reuse -----------------------------------------------------------------------------------------------

    def _try_transform(self, store, model, layer, lineage, key, feats, params, report):
        """Place appended samples into this lineage's previous map, if every old sample is still there."""
        pointer = _read_pointer(store, model, layer, "lineage", lineage)
        if pointer is None or pointer == key:
            return None
        base = self._cached(store, pointer, time.perf_counter())
        if base is None:
            return None
        pos = {s: i for i, s in enumerate(feats.sample_ids)}
        old = np.array([pos.get(s, -1) for s in base.sample_ids])
        if (old < 0).any():
            return None  # samples went away: the old map no longer describes this data
        is_new = np.ones(len(feats.sample_ids), bool)
        is_new[old] = False
        n_new = int(is_new.sum())
        if n_new > TRANSFORM_MAX_NEW * len(old):
            return None
        report(0.3, f"placing {n_new:,} new samples into the existing map")
        xy = np.empty((len(feats.sample_ids), 2), np.float32)
        xy[old] = base.xy
        if n_new:
            xy[is_new] = place_points(feats.X[old], base.xy, feats.X[is_new], params)
        return xy, {"base_key": base.key, "placed": n_new}

    def _warm_sibling(self, store, model, layer, family, key, feats) -> Projection | None:
        """The latest map of the same data and parameters but another min_dist (this process's, else the
        store's)."""
        with self._lock:
            sib_key = self._family.get(family)
        if sib_key is None:
            sib_key = _read_pointer(store, model, layer, "family", family)
        if sib_key is None or sib_key == key:
            return None
        sib = self._cached(store, sib_key, time.perf_counter())
        if sib is None or not np.array_equal(sib.sample_ids, feats.sample_ids):
            return None
        return sib

    def _get_knn(self, store, model, layer, step, feats, params, version, run_ids, fid, report):
        """(idx, dist) with at least n_neighbors columns: memory, then store, then computed (and saved)."""
        kkey = _knn_key(version, model, layer, step, feats.spec, params.metric, params.seed, fid)
        need = params.n_neighbors
        with self._lock_for("knn:" + kkey):
            with self._lock:
                got = self._knn.get(kkey)
            if got is None:
                got = _read_knn(store, model, layer, kkey)
                if got is not None:
                    with self._lock:
                        self._knn.put(kkey, got)
            if got is not None and got[1].shape[1] >= need and np.array_equal(got[0], feats.sample_ids):
                report(0.4, f"reusing the kNN graph ({got[1].shape[1]} neighbours)")
                return got[1], got[2]
            n = len(feats.sample_ids)
            k = min(max(need, KNN_MIN_K), n)  # columns include the point itself, as umap counts them
            how = "exact" if n < EXACT_BELOW else "NNDescent"
            report(0.1, f"nearest neighbours of {n:,} points ({how}, k={k})")
            idx, dist = compute_knn(feats.X, k, params.metric, params.seed, params.backend)
            got = (feats.sample_ids, idx, dist)
            with self._lock:
                self._knn.put(kkey, got)
            _write_knn(store, model, layer, kkey, got, params.metric, provenance({layer: version}, run_ids))
            return idx, dist


def _umap_version() -> str:
    try:
        from importlib.metadata import version

        return version("umap-learn")
    except Exception:
        return "unknown"


def _from_stored(key: str, frame: pd.DataFrame, meta: dict) -> Projection:
    params = ProjectionParams.from_dict(meta["params"])
    xy = np.column_stack([frame["x"].to_numpy(np.float32), frame["y"].to_numpy(np.float32)])
    # object array of str: converting 50,000 ids to a fixed-width unicode array costs more than the read
    ids = frame["sample_id"].to_numpy(dtype=object)
    return Projection(sample_ids=ids, xy=xy, params=params, key=key,
                      quality=dict(meta.get("quality") or {}), source="cache", model=meta["model"],
                      layer=meta["layer"], step=step_token(meta["step"]), data_version=str(meta.get("data_version", "")),
                      meta=meta)


def _write_pointer(store, model, layer, kind, name, key, version) -> None:
    """Record `key` as the latest projection of a lineage (what appended samples continue) or of a family
    (what a min_dist change warm-starts from), so that a fresh process finds it too."""
    table = pa.table({"key": [key], "data_version": [version]})
    try:
        store.write_artifact(_relpath(model, layer, kind, name), table, {kind: name})
    except OSError as e:
        log.warning("could not record the latest projection of %s %s: %s", kind, name, e)


def _read_pointer(store, model, layer, kind, name) -> str | None:
    got = store.read_artifact(_relpath(model, layer, kind, name))
    if got is None or got[0].num_rows != 1:
        return None
    return str(got[0].column("key")[0].as_py())


def _write_knn(store, model, layer, kkey, got, metric, provenance: dict) -> None:
    ids, idx, dist = got
    k = idx.shape[1]
    table = pa.table({
        "sample_id": pa.array(list(ids), pa.string()),
        "indices": pa.FixedSizeListArray.from_arrays(pa.array(idx.ravel(), pa.int32()), k),
        "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.ravel(), pa.float32()), k),
    })
    try:
        store.write_artifact(_relpath(model, layer, "knn", kkey), table,
                             {"k": k, "metric": metric, "provenance": provenance})
    except OSError as e:
        log.warning("could not cache the kNN graph %s: %s", kkey, e)


def _read_knn(store, model, layer, kkey):
    got = store.read_artifact(_relpath(model, layer, "knn", kkey))
    if got is None:
        return None
    table, meta = got
    try:
        k = int(meta["k"])
        ids = table.column("sample_id").to_numpy(zero_copy_only=False).astype(str)
        idx = table.column("indices").combine_chunks().values.to_numpy().reshape(-1, k).astype(np.int32)
        dist = table.column("distances").combine_chunks().values.to_numpy().reshape(-1, k).astype(np.float32)
    except (KeyError, ValueError, TypeError) as e:
        log.warning("ignoring unreadable kNN graph %s: %s", kkey, e)
        return None
    return ids, idx, dist


_default: Projector | None = None
_default_lock = threading.Lock()


def default_projector() -> Projector:
    """The process-wide Projector (the CLI and helpers share it)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Projector()
        return _default


# -- warm-up -------------------------------------------------------------------------------------------------

def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 4
    return (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


WARMUP_STATE: dict = {"state": "not started"}


def warmup(progress: Progress | None = None, nndescent: bool = True) -> dict:
    """Compile the numba code of a real projection with a few seconds of work: the exact (< 4,096 points) kNN
    path, a spectral-start and a warm-start layout, point placement and map quality first (all a small store
    needs), then NNDescent (``nndescent``; ~45 s of compilation on 2 cores). Safe in a background thread
    while real calls run: numba serialises compilation, and a call only waits for code it needs that is
    still compiling. Returns timings (s)."""
    report = _Report(progress)
    timings: dict = {}
    t = time.perf_counter()
    _prepare_numba()
    timings["import"] = time.perf_counter() - t
    params = ProjectionParams(feature=FeatureSpec(kind="full"), n_neighbors=10, min_dist=0.1)
    small = _clustered(300, 16, 0)

    def step(name, fraction, fn):
        report(fraction, f"warm-up: {name}")
        t = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t, 3)
        return out

    idx, dist = step("knn_exact", 0.05, lambda: compute_knn(small, 11, "euclidean", 0))
    xy = step("layout", 0.15, lambda: umap_layout(small, idx, dist, params, n_epochs=20))
    step("warm_layout", 0.3, lambda: umap_layout(small, idx, dist, replace(params, min_dist=0.5), init=xy,
                                                  n_epochs=5))
    step("place", 0.35, lambda: place_points(small[:250], xy[:250], small[250:], params, n_epochs=5))
    from pipeline.neighbors import map_quality

    step("quality", 0.4, lambda: map_quality(small, xy, knn_indices=idx))
    if nndescent:
        step("knn_nndescent", 0.45, lambda: compute_knn(_clustered(EXACT_BELOW, 16, 1), 11, "euclidean", 0))
    timings["total"] = round(sum(v for v in timings.values()), 3)
    report(1.0, "warm-up done")
    return timings


_warmup_thread: threading.Thread | None = None


def start_warmup_thread() -> threading.Thread:
    """Run `warmup` once per process in a daemon thread (later calls return the same thread). Its outcome
    is in ``WARMUP_STATE``."""
    global _warmup_thread
    with _default_lock:
        if _warmup_thread is not None:
            return _warmup_thread

        def run():
            WARMUP_STATE.update(state="running", started=time.time())
            try:
                WARMUP_STATE.update(state="done", timings=warmup())
            except Exception as e:  # the app still works; the first real fit just compiles
                log.warning("projection warm-up failed: %s", e, exc_info=True)
                WARMUP_STATE.update(state="failed", error=f"{type(e).__name__}: {e}")

        _warmup_thread = threading.Thread(target=run, name="umap-warmup", daemon=True)
        _warmup_thread.start()
        return _warmup_thread
