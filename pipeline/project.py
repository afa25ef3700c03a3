"""2-D maps of activations: computed by a projection method, cached in the store under explicit keys, and
fast to change.

``Projector.project(store, model, layer, step, params)`` returns a `Projection` (sample ids, x/y, quality,
and ``source``: how it was obtained). `ProjectionParams` names the method (`pipeline.methods`: ``umap``,
``tsne``, ``pca``) and its own parameters. ``step="all"`` (`ALL_STEPS`) maps every recorded step of the layer
in one map: its points are (sample, step) pairs with ids ``f"{sample_id}@{step}"`` (`pipeline.features.
point_id`), so a sample can be followed across the denoising steps; caching, reuse, placement of appended
samples, neighbours and quality work on those points as on samples. ``Projector.project_runs`` maps several runs
each at its own step (a 1-step student at step 0 beside a teacher at its last step) in one fit (``step`` is
`PER_RUN`; a shared step is the ordinary map). In order of preference:

``cache``
    The key (data version, model, layer, step, feature, method and its parameters, filter; see
    `projection_key`) is in the store: nothing is recomputed.
``transform``
    Samples were appended since this map was last made (same parameters and filter, older data version, and
    every old sample still there): the old points keep their place and the new ones are placed into the map
    by the method's ``transform`` rather than refitting, until the caller asks for ``refit=True``. More new
    points than old ones (a map of a few points would place poorly) refit instead.
``warm``
    Only a method's warm parameters (UMAP: ``min_dist``) differ from the latest map of the same data and
    parameters (this process's, else the store's): the fuzzy graph does not depend on them, so the cached kNN
    graph is reused and the layout starts from that map with a fraction of the epochs. The result depends on
    the map it started from; ``warm_from`` in its stored parameters names it.
``fit``
    A fit on the cached kNN graph when the method uses one and there is one with enough neighbours (it is
    sliced), else on a fresh one (`pipeline.knn`).

The kNN graph of (data version, model, layer, step, feature, metric, seed, filter) is computed once with
``max(needed, KNN_MIN_K)`` neighbours and kept in memory and in the store, so a fresh process and another
method (UMAP and t-SNE share it) reuse it too.

Kept in the store by `store.derived` (which decides where): kind ``projection`` (the maps), ``knn`` (kNN
graphs, with their sample ids), ``features`` (PCA features, written by `pipeline.features`), ``lineage`` and
``family`` (pointers to the latest map of a lineage and of a warm-start family).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

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
from pipeline.knn import EXACT_BELOW, BackendError, compute_knn, cuml_check, is_exact
from pipeline.methods import BACKENDS, Method, MethodError, check_common, get_method
from pipeline.methods.umap import place_points, start_warmup_thread, umap_layout, warm_epochs, warmup
from pipeline.neighbors import METRICS, FeatureRef
from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = [
    "ProjectionParams",
    "Projection",
    "ProjectionError",
    "Projector",
    "projection_key",
    "PER_RUN",
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
    "EXACT_BELOW",
]

KNN_MIN_K = 15  # kNN graphs get at least this many neighbours, so that a smaller n_neighbors reuses them
TRANSFORM_MAX_NEW = 1.0  # place appended samples while they are at most this share of the existing map
QUALITY_K = 10
QUALITY_SAMPLE = 2000
QUALITY_REUSE_MAX_NEW = 16  # placing at most this many samples (an edit's results) keeps the map's quality figures
KEY_VERSION = 2  # 2: the method and its own parameters in the key
PER_RUN = "per-run"  # the step of a joint map whose runs are each at their own step (`Projector.project_runs`)


class ProjectionError(ValueError):
    """A projection request that cannot be served, with a message meant for the user."""


Progress = Callable[[float, str], None]


# -- parameters and keys -------------------------------------------------------------------------------------

class ProjectionParams:
    """Everything that decides a projection besides the data: the feature (None: the layer's default,
    `pipeline.features.default_spec`), the method (`pipeline.methods.METHODS`) with its own parameters
    (``options``, also readable as attributes: ``params.n_neighbors``), the metric, the seed (None lets the
    method run in parallel, not reproducibly) and the backend. Immutable and hashable."""

    __slots__ = ("feature", "method", "options", "metric", "seed", "backend")

    def __init__(self, feature=None, method: str = "umap", metric: str = "euclidean", seed: int | None = 0,
                 backend: str = "umap", **options):
        try:
            cls = get_method(method)
            values = {"feature": FeatureSpec.parse(feature), "method": method,
                      "options": tuple(cls.check(options).items())}
            values["metric"], values["seed"], values["backend"] = check_common(metric, seed, backend, cls)
        except (FeatureError, MethodError) as e:
            raise ProjectionError(str(e)) from None
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError("ProjectionParams is immutable: use .replace(...)")

    def __getattr__(self, name):  # the method's own parameters
        for k, v in object.__getattribute__(self, "options"):
            if k == name:
                return v
        raise AttributeError(f"{self.method} projections have no parameter {name!r}")

    def _astuple(self) -> tuple:
        return (self.feature, self.method, self.options, self.metric, self.seed, self.backend)

    def __eq__(self, other) -> bool:
        return isinstance(other, ProjectionParams) and self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options)
        return (f"ProjectionParams(feature={self.feature.id!r}, method={self.method!r}{opts}, "
                f"metric={self.metric!r}, seed={self.seed!r}, backend={self.backend!r})")

    def replace(self, **changes) -> ProjectionParams:
        """A copy with some fields or method parameters changed; a new method starts from its defaults."""
        d = self.to_dict()
        if "method" in changes and changes["method"] != self.method:
            d = {k: d[k] for k in ("feature", "metric", "seed", "backend")}
        d.update(changes)
        return ProjectionParams.coerce(d)

    def estimator(self) -> Method:
        """A fresh estimator of this method and parameters."""
        return get_method(self.method)(metric=self.metric, seed=self.seed, backend=self.backend,
                                       **dict(self.options))

    @classmethod
    def coerce(cls, value: ProjectionParams | Mapping | None = None, **overrides) -> ProjectionParams:
        """Params from params, a dict (``feature`` may be a name such as ``mean``/``full``/``pca``; ``pca`` and
        ``standardize`` keys are merged into it; a method's own parameters sit beside the others) or None."""
        if isinstance(value, ProjectionParams):
            return value.replace(**overrides) if overrides else value
        d = dict(value or {})
        d.update(overrides)
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
        return {"feature": self.feature.to_dict(), "method": self.method, **dict(self.options),
                "metric": self.metric, "seed": self.seed, "backend": self.backend}

    @classmethod
    def from_dict(cls, d: Mapping) -> ProjectionParams:
        return cls.coerce(dict(d))



def _payload(data_version, model, layer, step, params: ProjectionParams, filter_id_: str) -> dict:
    return {"what": "projection", "v": KEY_VERSION, "data_version": str(data_version), "model": str(model),
            "layer": str(layer), "step": step_token(step), "filter": str(filter_id_), **params.to_dict()}


def projection_key(data_version: str, model: str, layer: str, step: int | str, params: ProjectionParams,
                   filter_id_: str = "all") -> str:
    """Cache key of a projection: a readable prefix (step or ``sall``, feature, the method and its parameters)
    and a short hash of the canonical JSON of exactly these inputs (model and layer are also its place)."""
    prefix = _key_prefix(f"s{step_token(step)}", params)
    return f"{prefix}-{digest(_payload(data_version, model, layer, step, params, filter_id_))[:16]}"


def _key_prefix(step_part: str, p: ProjectionParams) -> str:
    seed = "none" if p.seed is None else p.seed
    return f"{step_part}-{p.feature.id}-{p.estimator().tag()}-{p.metric}-seed{seed}-{p.backend}"


def runs_projection_key(data_version: str, model: str, layer: str, run_steps: Mapping[str, int],
                        params: ProjectionParams) -> str:
    """Cache key of a joint map of runs each at its own step (`Projector.project_runs`): the payload of
    `projection_key` with the step replaced by every run's step (so no map of one step shares it)."""
    runs = {str(r): int(s) for r, s in sorted(run_steps.items())}
    payload = _payload(data_version, model, layer, 0, params, filter_id(filter_description(runs)))
    payload["step"] = {PER_RUN: runs}
    return f"{_key_prefix('sruns', params)}-{digest(payload)[:16]}"


def _lineage_id(model, layer, step, params, filter_id_) -> str:
    """The same projection across data versions (what `transform` continues)."""
    payload = _payload("", model, layer, step, params, filter_id_)
    payload.pop("data_version")
    return "l" + digest(payload)[:20]


def _family_id(data_version, model, layer, step, params, filter_id_) -> str:
    """Projections of the same data that differ only in the method's warm parameters (UMAP: min_dist), which
    a warm start continues."""
    payload = _payload(data_version, model, layer, step, params, filter_id_)
    for name in get_method(params.method).WARM:
        payload.pop(name)
    return "m" + digest(payload)[:20]


def _knn_key(data_version, model, layer, step, spec: FeatureSpec, metric, seed, filter_id_) -> str:
    payload = {"what": "knn", "v": KEY_VERSION, "data_version": data_version, "model": model, "layer": layer,
               "step": step_token(step), "feature": spec.to_dict(), "metric": metric, "seed": seed,
               "filter": filter_id_}
    return f"s{step_token(step)}-{spec.id}-{metric}-{digest(payload)[:16]}"


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

    @property
    def features(self) -> FeatureRef | None:
        """Where its points live in activation space (for `pipeline.neighbors.nearest`)."""
        return FeatureRef.of(self.meta) if self.meta.get("features_key") else None


class Cancelled(ProjectionError):
    """The request was cancelled (its `cancel` event was set) before it finished; nothing was saved."""


class _Report:
    """Progress callback wrapper: clamps fractions, never lets a broken callback break the projection, and
    raises `Cancelled` once the request's `cancel` event is set (checked at every report, so between stages
    and between layout epochs)."""

    def __init__(self, callback: Progress | None, cancel: threading.Event | None = None):
        self.callback, self.cancel = callback, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        if self.callback is None:
            return
        try:
            self.callback(max(0.0, min(1.0, float(fraction))), message)
        except Exception as e:  # a broken progress bar must not break the projection
            log.debug("progress callback failed: %s", e)

    def within(self, lo: float, hi: float) -> Progress:
        """A callback for one stage: its own 0..1 mapped into [lo, hi]."""
        return lambda fraction, message: self(lo + (hi - lo) * max(0.0, min(1.0, fraction)), message)


# -- the projector -------------------------------------------------------------------------------------------

class Projector:
    """Serves projections; one per process (thread-safe). Keeps recent maps and kNN graphs in memory for
    warm starts and graph reuse; everything it computes is also written to the store."""

    def __init__(self, max_projections: int = 32, max_knn: int = 8):
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._projections: LRU[str, Projection] = LRU(max_projections)
        self._knn: LRU[str, tuple] = LRU(max_knn)  # knn key -> (sample_ids, idx, dist)
        self._family: LRU[str, str] = LRU(256)  # family id -> key of its latest map

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    # -- public ----------------------------------------------------------------------------------------------

    def project(self, store, model: str, layer: str, step: int | str | None = None,
                params: ProjectionParams | Mapping | None = None, run_ids: Iterable[str] | None = None,
                sample_ids: Iterable[str] | None = None, progress: Progress | None = None, refit: bool = False,
                force: bool | None = None, cancel: threading.Event | None = None) -> Projection:
        """The map of (model, layer, step) for the samples of `run_ids` (None: all) and `sample_ids` (None:
        all); see the module docstring for how it is obtained. `step`: a step number (negative: from the
        last), None (the last) or ``"all"`` (every step, one point per sample and step). `refit` (alias `force`, as the app calls it)
        recomputes from scratch: no cache, no transform, no warm start. Setting `cancel` stops the work at the
        next stage or epoch with `Cancelled`. Raises `ProjectionError`."""
        t0 = time.perf_counter()
        params = ProjectionParams.coerce(params)
        refit = bool(refit or force)
        report = _Report(progress, cancel)
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
        if not refit and (hit := self._cached(store, model, layer, key, t0)) is not None:
            self._remember(family, hit)
            report(1.0, "cached")
            return hit
        with self._lock_for(key):
            if not refit and (hit := self._cached(store, model, layer, key, t0)) is not None:
                self._remember(family, hit)
                report(1.0, "cached")
                return hit
            return self._compute(store, model, layer, step, params, run_ids, sample_ids, version, filt, key,
                                 family, refit, report, t0)

    def project_runs(self, store, model: str, layer: str, steps: Mapping[str, int | str | None],
                     params: ProjectionParams | Mapping | None = None, progress: Progress | None = None,
                     refit: bool = False, force: bool | None = None,
                     cancel: threading.Event | None = None) -> Projection:
        """One joint map of several runs, each at its own step: `steps` maps run id -> step (a step number,
        a negative one counting from that run's own last step, None or ``"last"``: its last), e.g. a 1-step
        student at step 0 beside an 18-step teacher at step 17. Where every run lands on one step this is
        ``project(step, run_ids=runs)``: the same map, key and cache. Otherwise the points are each run's
        samples at its step (ids: sample ids; ``step`` is `PER_RUN`, ``meta["run_steps"]`` says which), the
        feature's standardisation and PCA and the layout are fitted on their union so positions are
        comparable, and the map is cached under `runs_projection_key`. Such a map is fitted or read from the
        cache (no placement of appended samples, no warm start), and has no activation-space neighbours
        (``features`` is None). Raises `ProjectionError` naming a run that lacks its step."""
        from pipeline.run_pairs import RunPairsError, resolve_run_steps

        t0 = time.perf_counter()
        params = ProjectionParams.coerce(params)
        refit = bool(refit or force)
        report = _Report(progress, cancel)
        self._validate_target(store, model, layer)
        try:
            resolved = resolve_run_steps(store, model, layer, steps)
        except RunPairsError as e:
            raise ProjectionError(str(e)) from None
        if len(set(resolved.values())) == 1:
            return self.project(store, model, layer, next(iter(resolved.values())), params,
                                run_ids=list(resolved), progress=progress, refit=refit, cancel=cancel)
        runs = sorted(resolved)
        version = store.data_version(model, layer, runs)
        key = runs_projection_key(version, model, layer, resolved, params)
        if not refit and (hit := self._cached(store, model, layer, key, t0)) is not None:
            report(1.0, "cached")
            return hit
        with self._lock_for(key):
            if not refit and (hit := self._cached(store, model, layer, key, t0)) is not None:
                report(1.0, "cached")
                return hit
            return self._compute_runs(store, model, layer, resolved, params, version, key, report, t0)

    def _compute_runs(self, store, model, layer, resolved: dict[str, int], params, version, key, report,
                      t0) -> Projection:
        from pipeline.features import resolve_spec, to_features
        from pipeline.neighbors import map_quality

        method = params.estimator()
        ids, blocks, shape, reduce = [], [], None, ""
        for i, run in enumerate(sorted(resolved)):
            report(0.3 * i / len(resolved), f"loading {run} at step {resolved[run]}")
            try:  # the stored vectors as they are: the feature is fitted on all runs together below
                f = load_features(store, model, layer, resolved[run], FeatureSpec(kind="full"), [run])
            except ValueError as e:  # a FeatureError, or the store's own message
                raise ProjectionError(f"run {run!r}: {e}") from None
            if shape is not None and tuple(f.stored_shape) != shape:
                raise ProjectionError(f"run {run!r} stores vectors of shape {tuple(f.stored_shape)} for {layer!r}, "
                                      f"the others {shape}: they cannot share one map")
            shape, reduce = tuple(f.stored_shape), f.reduce
            ids.append(np.asarray(f.sample_ids).astype(str))
            blocks.append(f.X)
        sample_ids = np.concatenate(ids)
        fewest, message = _too_few(method)
        if len(sample_ids) < fewest:
            raise ProjectionError(message(len(sample_ids)))
        spec = resolve_spec(params.feature, shape)
        report(0.3, "features of the runs together")
        X = to_features(np.concatenate(blocks), shape, spec)
        n, knn = len(sample_ids), None
        need = method.knn_k(n)
        method.progress = report.within(0.45, 0.9)
        if need is not None:
            k = min(max(need, KNN_MIN_K), n)
            report(0.35, f"nearest neighbours of {n:,} points (k={k})")
            knn = compute_knn(X, k, params.metric, params.seed, params.backend)
        report(0.45, f"{method.title} layout of {n:,} points")
        xy = method.fit_transform(X, knn)
        report(0.9, "measuring map quality")
        quality = map_quality(X, xy, k=QUALITY_K, sample=QUALITY_SAMPLE, metric=params.metric,
                              knn_indices=None if knn is None else knn[0])
        seconds = time.perf_counter() - t0
        meta = {
            "model": model, "layer": layer, "step": PER_RUN, "run_steps": dict(sorted(resolved.items())),
            "data_version": version, "filter": filter_description(sorted(resolved)), "params": params.to_dict(),
            "feature_resolved": spec.to_dict(), "stored_shape": list(shape), "reduce": reduce, "n": n, "key": key,
            "source": "fit", "quality": quality, "seconds": round(seconds, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": _versions(),
        }
        proj = Projection(sample_ids=sample_ids, xy=np.asarray(xy, np.float32), params=params, key=key,
                          quality=quality, source="fit", model=model, layer=layer, step=PER_RUN,
                          data_version=version, seconds=seconds, meta=meta)
        report(0.97, "saving")
        store.derived.write("projection", model, layer, key, proj.frame(), sources={layer: version},
                            run_ids=sorted(resolved), meta=meta)
        self._projections.put(key, replace(proj, source="cache"))
        report(1.0, f"done (fit, {seconds:.1f} s)")
        return proj

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

    def _cached(self, store, model: str, layer: str, key: str, t0: float) -> Projection | None:
        mem = self._projections.get(key)
        if mem is not None:
            return replace(mem, source="cache", seconds=time.perf_counter() - t0)
        got = store.derived.read("projection", model, layer, key)
        if got is None:
            return None
        table, meta = got
        try:
            proj = _from_stored(key, table.to_pandas(), meta)
        except (KeyError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable projection %s: %s", key, e)
            return None
        self._projections.put(key, proj)
        return replace(proj, seconds=time.perf_counter() - t0)

    def _remember(self, family: str, proj: Projection) -> None:
        self._family.put(family, proj.key)
        self._projections.put(proj.key, replace(proj, source="cache"))

    def _compute(self, store, model, layer, step, params, run_ids, sample_ids, version, filt, key, family,
                 refit, report, t0) -> Projection:
        if params.backend == "cuml":
            try:
                cuml_check()
            except BackendError as e:
                raise ProjectionError(str(e)) from None
        self._validate_target(store, model, layer)
        report(0.0, "loading activations")
        method = params.estimator()
        feats = self._features(store, model, layer, step, params, run_ids, sample_ids, version, _too_few(method))
        n = len(feats.sample_ids)
        need = method.knn_k(n)
        method.progress = report.within(0.45, 0.9)
        fid = filter_id(filt)
        lineage = _lineage_id(model, layer, step, params, fid)
        meta: dict = {}
        xy = knn = None
        source = "fit"
        if not refit:
            placed = self._try_transform(store, model, layer, lineage, key, feats, method, report)
            if placed is not None:
                xy, meta = placed
                source = "transform"
        if xy is None and not refit and method.WARM and params.backend == "umap":
            sibling = self._warm_sibling(store, model, layer, family, key, feats)
            if sibling is not None:
                knn = self._get_knn(store, model, layer, step, feats, params, need, version, run_ids, fid, report)
                report(0.45, f"warm start from {sibling.key}")
                xy = method.fit_transform(feats.X, knn, init=sibling.xy)
                source, meta = "warm", {"warm_from": sibling.key, "n_epochs": getattr(method, "n_epochs_", None)}
        if xy is None:
            if need is not None:
                knn = self._get_knn(store, model, layer, step, feats, params, need, version, run_ids, fid, report)
            report(0.45, f"{method.title} layout of {n:,} points")
            xy = method.fit_transform(feats.X, knn)
        base_quality = meta.pop("base_quality", None)
        if source == "transform" and base_quality is not None and meta["placed"] <= QUALITY_REUSE_MAX_NEW:
            quality = base_quality  # a handful of placed samples (an edit's results) leave the figures as they were
        else:
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
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": _versions(), **meta,
        }
        proj = Projection(sample_ids=feats.sample_ids, xy=xy, params=params, key=key, quality=quality,
                          source=source, model=model, layer=layer, step=step_token(step), data_version=version,
                          seconds=seconds, meta=meta)
        report(0.97, "saving")
        store.derived.write("projection", model, layer, key, proj.frame(), sources={layer: version},
                            run_ids=run_ids, meta=meta)
        _write_pointer(store, model, layer, "lineage", lineage, key)
        _write_pointer(store, model, layer, "family", family, key)
        self._remember(family, proj)
        from pipeline import neighbors

        neighbors.forget(key)  # a refit rewrites the same key
        report(1.0, f"done ({source}, {seconds:.1f} s)")
        return proj

    def _features(self, store, model, layer, step, params, run_ids, sample_ids, version, too_few) -> Features:
        try:
            return load_features(store, model, layer, step, params.feature, run_ids, sample_ids,
                                 data_version=version, min_rows=too_few)
        except FeatureError as e:
            raise ProjectionError(str(e)) from None
        except ValueError as e:  # the store's own messages (e.g. a step not recorded) list the choices
            raise ProjectionError(str(e)) from None

    # -- reuse -----------------------------------------------------------------------------------------------

    def _try_transform(self, store, model, layer, lineage, key, feats, method, report):
        """Place appended samples into this lineage's previous map, if every old sample is still there."""
        pointer = store.derived.target("lineage", model, layer, lineage)
        if pointer is None or pointer == key:
            return None
        base = self._cached(store, model, layer, pointer, time.perf_counter())
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
            xy[is_new] = method.attach(feats.X[old], base.xy).transform(feats.X[is_new])
        return xy, {"base_key": base.key, "placed": n_new, "base_quality": base.quality}

    def _warm_sibling(self, store, model, layer, family, key, feats) -> Projection | None:
        """The latest map of the same data and parameters but other warm parameters (UMAP: min_dist; this
        process's, else the store's)."""
        sib_key = self._family.get(family) or store.derived.target("family", model, layer, family)
        if sib_key is None or sib_key == key:
            return None
        sib = self._cached(store, model, layer, sib_key, time.perf_counter())
        if sib is None or not np.array_equal(sib.sample_ids, feats.sample_ids):
            return None
        return sib

    def _get_knn(self, store, model, layer, step, feats, params, need, version, run_ids, fid, report):
        """(idx, dist) with at least `need` columns: memory, then store, then computed (and saved)."""
        kkey = _knn_key(version, model, layer, step, feats.spec, params.metric, params.seed, fid)
        with self._lock_for("knn:" + kkey):
            got = self._knn.get(kkey)
            if got is None:
                got = _read_knn(store, model, layer, kkey)
                if got is not None:
                    self._knn.put(kkey, got)
            if got is not None and got[1].shape[1] >= need and np.array_equal(got[0], feats.sample_ids):
                report(0.4, f"reusing the kNN graph ({got[1].shape[1]} neighbours)")
                return got[1], got[2]
            n = len(feats.sample_ids)
            k = min(max(need, KNN_MIN_K), n)  # columns include the point itself, as umap counts them
            how = "exact" if is_exact(n, feats.X.shape[1]) else "NNDescent"
            report(0.1, f"nearest neighbours of {n:,} points ({how}, k={k})")
            idx, dist = compute_knn(feats.X, k, params.metric, params.seed, params.backend)
            got = self._knn.put(kkey, (feats.sample_ids, idx, dist))
            _write_knn(store, model, layer, kkey, got, params.metric, {layer: version}, run_ids)
            return idx, dist


def _too_few(method: Method) -> tuple[int, Callable[[int], str]]:
    """(the fewest samples a map of `method` needs, the message for n samples): checked before any feature
    is computed or cached, with a message that says what the user can change."""
    if "n_neighbors" not in method.PARAMS:
        return 4, lambda n: f"a map needs at least 4 samples; this selection has {n}. Widen the filter."
    k, lowest = method.n_neighbors, int(method.PARAMS["n_neighbors"].ui_range[0])

    def message(n: int) -> str:
        if n - 1 >= lowest:
            return (f"n_neighbors={k} needs at least {k + 1} samples; this selection has {n}. Lower n_neighbors "
                    f"to at most {n - 1}, or widen the filter.")
        return (f"this selection has {n} samples, too few for UMAP (it needs n_neighbors + 1 samples, and "
                f"n_neighbors is at least {lowest}): widen the filter, or choose PCA.")

    return k + 1, message


def _versions() -> dict:
    """Versions of the libraries that computed a map (stored beside it)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("umap-learn", "openTSNE", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _from_stored(key: str, frame: pd.DataFrame, meta: dict) -> Projection:
    params = ProjectionParams.from_dict(meta["params"])
    xy = np.column_stack([frame["x"].to_numpy(np.float32), frame["y"].to_numpy(np.float32)])
    # object array of str: converting 50,000 ids to a fixed-width unicode array costs more than the read
    ids = frame["sample_id"].to_numpy(dtype=object)
    return Projection(sample_ids=ids, xy=xy, params=params, key=key,
                      quality=dict(meta.get("quality") or {}), source="cache", model=meta["model"],
                      layer=meta["layer"], step=PER_RUN if meta["step"] == PER_RUN else step_token(meta["step"]),
                      data_version=str(meta.get("data_version", "")),
                      meta=meta)


def _write_pointer(store, model, layer, kind, name, key) -> None:
    """Record `key` as the latest projection of a lineage (what appended samples continue) or of a family
    (what a min_dist change warm-starts from), so that a fresh process finds it too."""
    try:
        store.derived.point(kind, model, layer, name, key)
    except OSError as e:
        log.warning("could not record the latest projection of %s %s: %s", kind, name, e)


def _write_knn(store, model, layer, kkey, got, metric, sources: dict, run_ids) -> None:
    ids, idx, dist = got
    k = idx.shape[1]
    table = pa.table({
        "sample_id": pa.array(list(ids), pa.string()),
        "indices": pa.FixedSizeListArray.from_arrays(pa.array(idx.ravel(), pa.int32()), k),
        "distances": pa.FixedSizeListArray.from_arrays(pa.array(dist.ravel(), pa.float32()), k),
    })
    try:
        store.derived.write("knn", model, layer, kkey, table, sources=sources, run_ids=run_ids,
                            meta={"k": k, "metric": metric})
    except OSError as e:
        log.warning("could not cache the kNN graph %s: %s", kkey, e)


def _read_knn(store, model, layer, kkey):
    got = store.derived.read("knn", model, layer, kkey)
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
