"""Aligned maps: one 2-D map per denoising step of a layer, or per layer at a step, laid out jointly so that a
point moves between frames only where its activation's neighbourhood changed.

Independent UMAP fits of consecutive steps (or layers) land in unrelated rotations and arrangements, so an
animation between them shows the layout's randomness, not a change of activation. Here the frames are fitted
together by AlignedUMAP (umap-learn's algorithm, the identity relation between consecutive frames: sample i
of one frame is sample i of the next): each frame keeps its own fuzzy graph, and a regularisation term
(``alignment_regularisation``) pulls a sample's positions in frames within ``alignment_window_size`` of each
other together. The stages are umap-learn's own functions (kNN graph, fuzzy simplicial set, spectral start
(one, of the last frame, shared by all), the neighbourhood similarities that weight the alignment); the
epoch is ours (`_aligned_kernel`, the same objective on plain arrays: umap-learn's works on numba typed lists,
about 0.4 s an epoch at 4 x 3,000 points on 2 cores) and so is the loop, which reports progress and stops on
``cancel`` between epochs (``umap.AlignedUMAP.fit`` runs them in one uninterruptible call, and fits and
discards a full UMAP layout per frame first).

Frames hold the same samples in the same order: those every frame recorded (a sample of a 1-step run has no
other step; it is left out of a step alignment, and the result says how many were).

``aligned_steps(store, model, layer)``: every recorded step (or the given ones) of one layer.
``aligned_layers(store, model, step=None)``: every recorded layer in forward order (or the given ones) at one
step (None: the last step all of them recorded).

Cached in memory and in the store (`store.derived` kind ``aligned``) under a key of the data version of every
layer read, the model, the layer(s), the step(s), the feature, the filter and every alignment parameter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.features import FeatureError, FeatureSpec, filter_description, filter_id, load_features
from pipeline.knn import compute_knn, prepare_numba
from pipeline.neighbors import METRICS
from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = ["AlignedParams", "AlignedMaps", "AlignedError", "Cancelled", "aligned_steps", "aligned_layers",
           "aligned_key", "fit_aligned", "frame_displacement", "clear_cache"]

KIND = "aligned"
KEY_VERSION = 1
MIN_SAMPLES = 5
Progress = Callable[[float, str], None]


class AlignedError(ValueError):
    """An aligned-map request that cannot be served, with a message meant for the user."""


class Cancelled(AlignedError):
    """The request's `cancel` event was set before it finished; nothing was saved."""


@dataclass(frozen=True)
class AlignedParams:
    """Everything besides the data that decides an aligned layout (all of it is in the cache key)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    alignment_regularisation: float = 0.01  # umap-learn's default: larger ties frames closer together
    alignment_window_size: int = 3  # how many frames on each side a sample's position is tied to
    n_epochs: int = 200
    metric: str = "euclidean"
    seed: int = 0
    feature: FeatureSpec = field(default_factory=FeatureSpec)

    def __post_init__(self):
        def whole(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or not lo <= int(v) <= hi:
                raise AlignedError(f"{name} must be a whole number from {lo} to {hi}, got {v!r}")
            object.__setattr__(self, name, int(v))

        def real(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not lo <= float(v) <= hi:
                raise AlignedError(f"{name} must be a number from {lo} to {hi}, got {v!r}")
            object.__setattr__(self, name, float(v))

        whole("n_neighbors", 2, 200)
        real("min_dist", 0.0, 1.0)
        real("alignment_regularisation", 0.0, 10.0)
        whole("alignment_window_size", 1, 20)
        whole("n_epochs", 10, 2000)
        whole("seed", 0, 2**31 - 1)
        if self.metric not in METRICS:
            raise AlignedError(f"unknown metric {self.metric!r}; valid: {list(METRICS)}")
        try:
            object.__setattr__(self, "feature", FeatureSpec.parse(self.feature))
        except FeatureError as e:
            raise AlignedError(str(e)) from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature"] = self.feature.to_dict()
        return d

    @classmethod
    def coerce(cls, value=None, **overrides) -> AlignedParams:
        if isinstance(value, AlignedParams) and not overrides:
            return value
        d = value.to_dict() if isinstance(value, AlignedParams) else dict(value or {})
        d.update(overrides)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise AlignedError(f"unknown aligned-map parameter(s) {sorted(unknown)}; valid: "
                               f"{sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass(frozen=True)
class AlignedMaps:
    """Frames of one aligned layout: ``xy[f, i]`` is sample ``sample_ids[i]`` in frame ``frames[f]`` (a step
    number when ``axis == "steps"``, a layer name when ``axis == "layers"``)."""

    axis: str  # "steps" | "layers"
    frames: tuple
    sample_ids: np.ndarray  # str (N,)
    xy: np.ndarray  # float32 (F, N, 2)
    params: AlignedParams
    key: str
    source: str  # "cache" | "fit"
    model: str
    layer: str | None  # the layer of a step alignment
    step: int | None  # the step of a layer alignment
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def frame(self, f: int) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": self.sample_ids, "x": self.xy[f, :, 0], "y": self.xy[f, :, 1]})

    def long(self) -> pd.DataFrame:
        """Every frame stacked: (frame, label, sample_id, x, y)."""
        n, f = len(self.sample_ids), len(self.frames)
        return pd.DataFrame({"frame": np.repeat(np.arange(f), n),
                             "label": np.repeat(np.asarray([str(x) for x in self.frames], dtype=object), n),
                             "sample_id": np.tile(self.sample_ids, f),
                             "x": self.xy[:, :, 0].ravel(), "y": self.xy[:, :, 1].ravel()})


# -- the layout (pure numpy/umap) ------------------------------------------------------------------------------

class _Report:
    def __init__(self, callback: Progress | None, cancel: threading.Event | None):
        self.callback, self.cancel = callback, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        if self.callback is not None:
            try:
                self.callback(max(0.0, min(1.0, float(fraction))), message)
            except Exception as e:  # a broken progress bar must not break the layout
                log.debug("progress callback failed: %s", e)


_kernel = None
_kernel_lock = threading.Lock()


def _aligned_kernel():
    """The aligned layout's epoch, compiled once per process (numba, cached on disk).

    One epoch of UMAP's stochastic layout in every frame (attraction along the fuzzy graph's edges as their
    weights schedule them, repulsion from random points), plus the alignment term: a point is pulled toward its
    own position in the frames within the window, by ``lambda * exp(1 - |offset|) * w``, ``w`` the similarity
    of its neighbourhoods in the two frames (umap-learn's ``build_neighborhood_similarities``). Frames live in
    one (F, N, 2) array, edges in padded (F, E) arrays."""
    global _kernel
    with _kernel_lock:
        if _kernel is not None:
            return _kernel
        import numba
        from umap.utils import tau_rand_int

        @numba.njit(inline="always", fastmath=True)
        def clamp(v):
            return 4.0 if v > 4.0 else -4.0 if v < -4.0 else v

        @numba.njit(fastmath=True)
        def pull(xy, weights, relations, f, i, d, window, lam):
            """The alignment gradient of point i of frame f along axis d."""
            total = 0.0
            frames = xy.shape[0]
            for o in range(-window, window + 1):
                g = f + o
                if o == 0 or g < 0 or g >= frames:
                    continue
                other = relations[f, o + window, i]
                if other < 0:
                    continue
                total -= clamp(lam * np.exp(1.0 - abs(o)) * weights[f, o + window, i] * (xy[f, i, d] - xy[g, other, d]))
            return total

        @numba.njit(fastmath=True, cache=True)
        def epoch(xy, heads, tails, n_edges, per_sample, next_sample, per_neg, next_neg, a, b, weights, relations,
                  rng_state, lam, alpha, n):
            frames, points = xy.shape[0], xy.shape[1]
            window = (relations.shape[1] - 1) // 2
            for f in range(frames):
                for e in range(n_edges[f]):
                    if next_sample[f, e] > n:
                        continue
                    i, j = heads[f, e], tails[f, e]
                    dx, dy = xy[f, i, 0] - xy[f, j, 0], xy[f, i, 1] - xy[f, j, 1]
                    d2 = dx * dx + dy * dy
                    g = -2.0 * a * b * d2 ** (b - 1.0) / (a * d2 ** b + 1.0) if d2 > 0.0 else 0.0
                    for d in range(2):
                        diff = xy[f, i, d] - xy[f, j, d]
                        gi = clamp(g * diff) + pull(xy, weights, relations, f, i, d, window, lam)
                        gj = clamp(-g * diff) + pull(xy, weights, relations, f, j, d, window, lam)
                        xy[f, i, d] += clamp(gi) * alpha
                        xy[f, j, d] += clamp(gj) * alpha
                    next_sample[f, e] += per_sample[f, e]
                    k_neg = int((n - next_neg[f, e]) / per_neg[f, e]) if per_neg[f, e] > 0 else 0
                    for _ in range(k_neg):
                        k = tau_rand_int(rng_state) % points
                        if k == i:
                            continue
                        dx, dy = xy[f, i, 0] - xy[f, k, 0], xy[f, i, 1] - xy[f, k, 1]
                        d2 = dx * dx + dy * dy
                        g = 2.0 * b / ((0.001 + d2) * (a * d2 ** b + 1.0)) if d2 > 0.0 else 0.0
                        for d in range(2):
                            gi = clamp(g * (xy[f, i, d] - xy[f, k, d])) if g > 0.0 else 0.0
                            gi += pull(xy, weights, relations, f, i, d, window, lam)
                            xy[f, i, d] += clamp(gi) * alpha
                    next_neg[f, e] += k_neg * per_neg[f, e]

        _kernel = epoch
        return _kernel


def _fill_missing(xy: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        xy = xy.copy()
        xy[bad] = np.nanmean(xy[~bad], axis=0) if (~bad).any() else 0.0
    return xy


def fit_aligned(matrices: Sequence[np.ndarray], params: AlignedParams | None = None,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> np.ndarray:
    """The aligned layout (F, N, 2) of F feature matrices whose rows are the same N samples in the same order
    (the identity relation between consecutive frames). Raises `AlignedError`, `Cancelled`."""
    params = AlignedParams.coerce(params)
    report = _Report(progress, cancel)
    mats = [np.ascontiguousarray(m, dtype=np.float32) for m in matrices]
    if len(mats) < 2:
        raise AlignedError(f"an aligned map needs at least 2 frames, got {len(mats)}")
    n = len(mats[0])
    if any(m.ndim != 2 or len(m) != n for m in mats):
        raise AlignedError(f"every frame must hold the same samples: row counts {[len(m) for m in mats]}")
    if n < MIN_SAMPLES:
        raise AlignedError(f"an aligned map needs at least {MIN_SAMPLES} samples, got {n}")
    k = min(params.n_neighbors, n - 1)
    prepare_numba()
    import numba
    from umap.aligned_umap import build_neighborhood_similarities, expand_relations
    from umap.spectral import spectral_layout
    from umap.umap_ import find_ab_params, fuzzy_simplicial_set, make_epochs_per_sample

    f_count = len(mats)
    rng = np.random.RandomState(params.seed)
    graphs = []
    for i, X in enumerate(mats):
        report(0.3 * i / f_count, f"neighbour graph of frame {i + 1}/{f_count}")
        idx, dist = compute_knn(X, k + 1, params.metric, params.seed)
        graph, _sig, _rho = fuzzy_simplicial_set(X, k + 1, rng, params.metric,
                                                 knn_indices=idx, knn_dists=dist)
        graph = graph.tocsr()
        graph.sum_duplicates()
        graphs.append(graph)
    window = min(params.alignment_window_size, f_count - 1)
    identity = [{i: i for i in range(n)} for _ in range(f_count - 1)]
    relations = expand_relations(identity, window)
    indptr = numba.typed.List.empty_list(numba.types.int32[::1])
    indices = numba.typed.List.empty_list(numba.types.int32[::1])
    edges = []
    for g in graphs:
        indptr.append(g.indptr.astype(np.int32))
        indices.append(g.indices.astype(np.int32))
        coo = g.tocoo()
        edges.append((coo.row.astype(np.int32), coo.col.astype(np.int32),
                      make_epochs_per_sample(coo.data, params.n_epochs).astype(np.float64)))
    report(0.32, "alignment weights")
    weights = np.ascontiguousarray(build_neighborhood_similarities(indptr, indices, relations), dtype=np.float32)

    # one spectral start, of the last frame (the most structured: the final step, the output side), for every
    # frame: the frames then differ only where their own graphs move points (a spectral start per frame,
    # Procrustes-aligned as umap-learn does, costs 2-3 s a frame at 3,000 points and aligns less)
    report(0.35, "spectral start")
    init = spectral_layout(mats[-1], graphs[-1], 2, rng)
    init = np.asarray(init * (10.0 / max(np.abs(init).max(), 1e-12)), dtype=np.float32)
    xy = np.ascontiguousarray(np.repeat(init[None], f_count, axis=0))

    a, b = find_ab_params(1.0, params.min_dist)
    longest = max(len(h) for h, _t, _e in edges)
    heads = np.zeros((f_count, longest), np.int32)
    tails = np.zeros((f_count, longest), np.int32)
    per_sample = np.full((f_count, longest), -1.0)
    n_edges = np.array([len(h) for h, _t, _e in edges], np.int64)
    for f, (h, t, e) in enumerate(edges):
        heads[f, :len(h)], tails[f, :len(t)], per_sample[f, :len(e)] = h, t, e
    next_sample = per_sample.copy()
    per_neg = per_sample / 5.0  # umap's negative_sample_rate
    next_neg = per_neg.copy()
    rng_state = rng.randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1, 3).astype(np.int64)
    report(0.45, "compiling the aligned layout")
    epoch = _aligned_kernel()
    relations = np.ascontiguousarray(relations, dtype=np.int32)
    total = params.n_epochs
    for e in range(total):
        if e % 5 == 0:
            report(0.45 + 0.55 * e / total, f"aligned layout of {f_count} frames x {n:,} points: epoch {e}/{total}")
        epoch(xy, heads, tails, n_edges, per_sample, next_sample, per_neg, next_neg, float(a), float(b), weights,
              relations, rng_state, float(params.alignment_regularisation), 1.0 - e / total, float(e))
    report(1.0, "aligned layout done")
    return np.stack([_fill_missing(frame) for frame in xy])


def frame_displacement(xy: np.ndarray) -> np.ndarray:
    """Per pair of consecutive frames, the mean distance a point moves, each frame first centred and scaled to
    unit RMS radius (so a map that is only larger does not count as moving). (F - 1,) floats."""
    xy = np.asarray(xy, dtype=np.float64)
    c = xy - xy.mean(axis=1, keepdims=True)
    c /= np.sqrt((c ** 2).sum(axis=2).mean(axis=1))[:, None, None]
    return np.linalg.norm(c[1:] - c[:-1], axis=2).mean(axis=1)


# -- from the store ----------------------------------------------------------------------------------------------

_MEMO: LRU[str, AlignedMaps] = LRU(16)


def clear_cache() -> None:
    """Forget this process's aligned maps (the store's stay)."""
    _MEMO.clear()


def aligned_key(axis: str, model: str, layers: Sequence[str], steps: Sequence[int], versions: dict,
                params: AlignedParams, filt: dict) -> str:
    """Cache key: a readable prefix and the hash of every input (data versions, layers, steps, params, filter)."""
    payload = {"what": KIND, "v": KEY_VERSION, "axis": axis, "model": model, "layers": list(layers),
               "steps": [int(s) for s in steps], "versions": versions, "params": params.to_dict(), "filter": filt}
    return (f"{axis}-{len(layers) if axis == 'layers' else len(steps)}f-nn{params.n_neighbors}-"
            f"md{params.min_dist:g}-ar{params.alignment_regularisation:g}-{digest(payload)[:16]}")


def _check_model(store, model) -> list[str]:
    models = store.models()
    if model not in models:
        raise AlignedError(f"unknown model {model!r}; valid: {models}")
    return store.layers(model)


def _runs(run_ids) -> list[str] | None:
    return None if run_ids is None else sorted({str(r) for r in run_ids})


def aligned_steps(store, model: str, layer: str, steps: Iterable[int] | None = None,
                  params: AlignedParams | dict | None = None, run_ids: Iterable[str] | None = None,
                  sample_ids: Iterable[str] | None = None, progress: Progress | None = None,
                  cancel: threading.Event | None = None, refit: bool = False) -> AlignedMaps:
    """Aligned maps of `layer` across `steps` (None: every step the selected runs recorded), one frame per step,
    on the samples recorded at all of them. Raises `AlignedError` (a 1-step selection, unknown layer or step,
    too few samples), `Cancelled`."""
    layers = _check_model(store, model)
    if layer not in layers:
        raise AlignedError(f"unknown layer {layer!r} of model {model!r}; valid: {layers}")
    params = AlignedParams.coerce(params)
    runs = _runs(run_ids)
    ids = None if sample_ids is None else [str(s) for s in sample_ids]
    recorded = _steps_of(store, model, layer, runs)
    if steps is None:
        chosen = _default_frames(store, model, layer, runs, recorded)
    else:
        chosen = []
        for s in steps:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or int(s) not in recorded:
                raise AlignedError(f"step {s!r} is not recorded for {model}/{layer}; valid: {recorded}")
            if int(s) not in chosen:
                chosen.append(int(s))
    if len(chosen) < 2:
        what = "these runs record" if runs is not None else "this layer records"
        raise AlignedError(f"{what} only {len(chosen)} step ({recorded}): a step alignment needs a multi-step "
                           "run (or at least 2 steps); for a 1-step run use the layer alignment or Explore's map")
    version = store.data_version(model, layer, runs)
    filt = filter_description(runs, ids)
    key = aligned_key("steps", model, [layer], chosen, {layer: version}, params, filt)

    def load(report):
        out = []
        for i, s in enumerate(chosen):
            report(0.2 * i / len(chosen), f"features of step {s}")
            out.append(_features(store, model, layer, s, params.feature, runs, ids, version))
        return out

    return _serve(store, "steps", model, layer, None, chosen, key, {layer: version}, runs, params, load,
                  progress, cancel, refit, filt)


def aligned_layers(store, model: str, layers: Sequence[str] | None = None, step: int | None = None,
                   params: AlignedParams | dict | None = None, run_ids: Iterable[str] | None = None,
                   sample_ids: Iterable[str] | None = None, progress: Progress | None = None,
                   cancel: threading.Event | None = None, refit: bool = False) -> AlignedMaps:
    """Aligned maps of `layers` (None: every recorded layer in forward order) at `step` (None: the last step all
    of them recorded; negative counts from it), one frame per layer, on the samples every layer recorded."""
    valid = _check_model(store, model)
    chosen = list(valid) if layers is None else [str(x) for x in ([layers] if isinstance(layers, str) else layers)]
    unknown = [x for x in chosen if x not in valid]
    if unknown:
        raise AlignedError(f"unknown layer(s) {unknown} of model {model!r}; valid: {valid}")
    if len(set(chosen)) != len(chosen):
        raise AlignedError(f"a layer is given more than once: {chosen}")
    if len(chosen) < 2:
        raise AlignedError(f"a layer alignment needs at least 2 layers, got {chosen}; valid: {valid}")
    params = AlignedParams.coerce(params)
    runs = _runs(run_ids)
    ids = None if sample_ids is None else [str(s) for s in sample_ids]
    common = None
    for layer in chosen:
        got = set(_steps_of(store, model, layer, runs))
        common = got if common is None else common & got
    common = sorted(common or ())
    if not common:
        raise AlignedError(f"layers {chosen} of model {model!r} share no recorded step")
    if step is None:
        step = common[-1]
    elif isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise AlignedError(f"step must be a step number, got {step!r}; valid: {common}")
    elif int(step) < 0:
        if -int(step) > len(common):
            raise AlignedError(f"step {step} is out of range; steps all layers recorded: {common}")
        step = common[int(step)]
    elif int(step) not in common:
        raise AlignedError(f"step {step} is not recorded by every layer {chosen}; valid: {common}")
    step = int(step)
    versions = {layer: store.data_version(model, layer, runs) for layer in chosen}
    filt = filter_description(runs, ids)
    key = aligned_key("layers", model, chosen, [step], versions, params, filt)

    def load(report):
        out = []
        for i, layer in enumerate(chosen):
            report(0.2 * i / len(chosen), f"features of {layer}")
            out.append(_features(store, model, layer, step, params.feature, runs, ids, versions[layer]))
        return out

    return _serve(store, "layers", model, None, step, chosen, key, versions, runs, params, load, progress,
                  cancel, refit, filt)


def _steps_of(store, model, layer, runs) -> list[int]:
    frame = store.steps(model, layer) if runs is None else _run_steps(store, model, layer, runs)
    return sorted({int(s) for s in frame["step"]})


def _default_frames(store, model, layer, runs, recorded: list[int]) -> list[int]:
    """The steps a step alignment shows when none are asked for: those every multi-step run records. Frames hold
    only the samples recorded at all of them, so the union of every run's steps can hold none (the demo's
    4-step run records 0-3, its teacher only its last step, 17); a 1-step run never moves and is left out anyway.
    Without multi-step runs, every recorded step (an error further on, with the steps named)."""
    sets = [s for s in _step_sets(store, model, layer, runs).values() if len(s) >= 2]
    if not sets:
        return recorded
    shared = sorted(set.intersection(*sets))
    return shared if len(shared) >= 2 else sorted(max(sets, key=len))


def _step_sets(store, model, layer, runs) -> dict[str, set[int]]:
    """The steps each run (of `runs`, None: all) records at `layer` (`run_pairs.run_steps`)."""
    from pipeline.run_pairs import run_steps

    table = run_steps(store, model, layer, runs)
    return {str(r): {int(x) for x in g["step"]} for r, g in table.groupby("run_id")}


def _run_steps(store, model, layer, runs) -> pd.DataFrame:
    """Steps recorded by the given runs (only the step columns are read)."""
    table = store.runs()
    known = set(table["run_id"]) if len(table) else set()
    missing = [r for r in runs if r not in known]
    if missing:
        raise AlignedError(f"unknown run(s) {missing}")
    return pd.DataFrame({"step": sorted(set().union(*_step_sets(store, model, layer, runs).values()))})


def _features(store, model, layer, step, spec, runs, ids, version):
    try:
        return load_features(store, model, layer, step, spec, run_ids=runs, sample_ids=ids, data_version=version)
    except (FeatureError, ValueError) as e:
        raise AlignedError(f"{model}/{layer} at step {step}: {e}") from None


def _serve(store, axis, model, layer, step, frames, key, versions, runs, params, load, progress, cancel, refit,
           filt) -> AlignedMaps:
    t0 = time.perf_counter()
    report = _Report(progress, cancel)
    place = layer if axis == "steps" else None
    if not refit:
        hit = _MEMO.get(key)
        if hit is None:
            hit = _read(store, model, place, key)
        if hit is not None:
            _MEMO.put(key, hit)
            report(1.0, "from cache")
            return replace(hit, source="cache")
    feats = load(lambda f, m: report(0.1 * f, m))
    common = pd.Index(feats[0].sample_ids)
    for f in feats[1:]:
        common = common[common.isin(f.sample_ids)]
    if len(common) < MIN_SAMPLES:
        raise AlignedError(f"only {len(common)} samples are recorded in every frame ({[str(x) for x in frames]}); "
                           f"an aligned map needs at least {MIN_SAMPLES}")
    mats = [f.X[pd.Index(f.sample_ids).get_indexer(common)] for f in feats]
    dropped = max(len(f.sample_ids) for f in feats) - len(common)
    xy = fit_aligned(mats, params, progress=lambda f, m: report(0.1 + 0.9 * f, m), cancel=cancel)
    seconds = time.perf_counter() - t0
    meta = {"axis": axis, "frames": [int(x) if axis == "steps" else str(x) for x in frames], "model": model,
            "layer": layer, "step": step, "params": params.to_dict(), "filter": filt, "filter_id": filter_id(filt),
            "data_versions": versions, "dropped": int(dropped), "seconds": seconds,
            "features": {str(fr): f.spec.id for fr, f in zip(frames, feats, strict=True)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = AlignedMaps(axis=axis, frames=tuple(meta["frames"]), sample_ids=np.asarray(common, dtype=object),
                      xy=xy.astype(np.float32), params=params, key=key, source="fit", model=model, layer=layer,
                      step=step, seconds=seconds, meta=meta)
    _write(store, model, place, key, out, versions, runs)
    _MEMO.put(key, out)
    return out


def _write(store, model, place, key, maps: AlignedMaps, versions, runs) -> None:
    f, n = maps.xy.shape[:2]
    table = pa.table({"frame": pa.array(np.repeat(np.arange(f, dtype=np.int32), n)),
                      "sample_id": pa.array(list(np.tile(maps.sample_ids, f)), pa.string()),
                      "x": pa.array(maps.xy[:, :, 0].ravel(), pa.float32()),
                      "y": pa.array(maps.xy[:, :, 1].ravel(), pa.float32())})
    try:
        store.derived.write(KIND, model, place, key, table, sources=versions, run_ids=runs, meta=maps.meta)
    except OSError as e:  # a read-only store still works: it recomputes
        log.warning("could not cache aligned maps %s: %s", key, e)


def _read(store, model, place, key) -> AlignedMaps | None:
    got = store.derived.read(KIND, model, place, key)
    if got is None:
        return None
    table, meta = got
    try:
        frames = tuple(meta["frames"])
        f = len(frames)
        frame_col = table.column("frame").to_numpy()
        n = len(frame_col) // f
        if n * f != len(frame_col) or not (frame_col.reshape(f, n) == np.arange(f)[:, None]).all():
            raise ValueError("frames are not stored in order")
        ids = table.column("sample_id").to_numpy(zero_copy_only=False)[:n].astype(object)
        xy = np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1)
        xy = xy.reshape(f, n, 2).astype(np.float32)
        params = AlignedParams.coerce({**meta["params"], "feature": FeatureSpec(**meta["params"]["feature"])})
    except (KeyError, ValueError, TypeError, AlignedError) as e:
        log.warning("ignoring unreadable aligned maps %s: %s", key, e)
        return None
    return AlignedMaps(axis=meta["axis"], frames=frames, sample_ids=ids, xy=xy, params=params, key=key,
                       source="cache", model=model, layer=meta.get("layer"), step=meta.get("step"),
                       seconds=float(meta.get("seconds", 0.0)), meta=meta)
