"""2-D projection methods as estimators, in the scikit-learn / umap-learn shape, and their registry.

Each method declares its own parameters (`Param`: default, range, the app's slider range, help) and
implements ``fit(X, knn=None)`` (sets ``embedding_``; `knn` is a precomputed kNN graph, itself included in
column 0, when the method fits on one) and ``transform(X_new)`` (places new rows into the fitted map, the
existing points fixed). ``attach(X, xy)`` gives an estimator the fitted state of a map made earlier (read
from the store), so that appended samples are placed in a fresh process too. No I/O inside: the projector
(`pipeline.project`) reads, caches and decides what to reuse.

    umap   UMAP (umap-learn): kNN-graph based, warm start on a min_dist change, our own exact `transform`
    tsne   t-SNE (openTSNE, FFT gradients): kNN-graph based (perplexity), `transform` for new points
    pca    PCA (scikit-learn): the linear baseline that shows what the non-linear maps add

A new method is one module here with a `Method` subclass and one line in `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.neighbors import METRICS

BACKENDS = ("umap", "cuml")  # "umap": this machine's CPU (the name predates other methods); "cuml": RAPIDS


class MethodError(ValueError):
    """Bad method parameters, with a message meant for the user."""


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its type follows `default` (int or float)."""

    default: int | float
    low: int | float
    high: int | float
    help: str
    tag: str  # short name in cache keys and file names, e.g. "nn" -> "nn15"
    ui_range: tuple[float, float] | None = None  # what the app's slider offers (default: low..high)
    ui_step: float | None = None

    def check(self, name: str, value: Any) -> int | float:
        integer = isinstance(self.default, int)
        try:
            if isinstance(value, bool) or (integer and float(value) != int(float(value))):
                raise ValueError
            v = int(value) if integer else round(float(value), 6)
        except (TypeError, ValueError):
            v = None
        if v is None or not self.low <= v <= self.high:
            kind = "an integer" if integer else "a number"
            raise MethodError(f"{name} must be {kind} from {self.low} to {self.high}, got {value!r}")
        return v

    def token(self, value) -> str:
        return f"{self.tag}{value:g}" if isinstance(value, float) else f"{self.tag}{value}"


class Method:
    """A projection method: parameters in the constructor, ``fit``/``transform``/``attach``."""

    name: ClassVar[str]
    title: ClassVar[str]
    PARAMS: ClassVar[dict[str, Param]] = {}
    WARM: ClassVar[tuple[str, ...]] = ()  # parameters whose change alone continues the latest map
    BACKENDS: ClassVar[tuple[str, ...]] = ("umap",)

    def __init__(self, metric: str = "euclidean", seed: int | None = 0, backend: str = "umap", **params):
        self.metric, self.seed, self.backend = metric, seed, backend
        # progress(fraction 0..1, message) during a fit's long loop; it may raise to stop the fit (a cancel)
        self.progress: Callable[[float, str], None] | None = None
        for name, value in self.check(params).items():
            setattr(self, name, value)
        self.embedding_: np.ndarray | None = None

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> dict:
        """The method's parameters validated, defaults filled in (raises `MethodError`)."""
        unknown = sorted(set(params) - set(cls.PARAMS))
        if unknown:
            valid = ", ".join(cls.PARAMS) or "none"
            raise MethodError(f"unknown projection parameters {unknown} for {cls.name}; its parameters: {valid}")
        return {name: p.check(name, params.get(name, p.default)) for name, p in cls.PARAMS.items()}

    @property
    def params(self) -> dict:
        return {name: getattr(self, name) for name in self.PARAMS}

    def knn_k(self, n: int) -> int | None:
        """Columns of the kNN graph its fit uses (itself included) for n rows; None when it uses none."""
        return None

    def fit(self, X: np.ndarray, knn: tuple[np.ndarray, np.ndarray] | None = None,
            init: np.ndarray | None = None) -> Method:
        """Fit the map of X; `init` (an (N, 2) map of the same rows) continues it (methods with `WARM`)."""
        raise NotImplementedError

    def fit_transform(self, X: np.ndarray, knn=None, init=None) -> np.ndarray:
        return self.fit(X, knn, init).embedding_

    def attach(self, X: np.ndarray, xy: np.ndarray) -> Method:
        """Take `xy` as the fitted map of the rows X (a map made earlier), so that `transform` can place new
        rows into it."""
        self._X, self.embedding_ = np.asarray(X, dtype=np.float32), np.asarray(xy, dtype=np.float32)
        return self

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(fraction, message)

    def tag(self) -> str:
        """The readable part of a cache key, e.g. ``nn15-md0.1``."""
        return "-".join([self.name] + [p.token(getattr(self, n)) for n, p in self.PARAMS.items()])


def _registry() -> dict[str, type[Method]]:
    from pipeline.methods.pca import PCA
    from pipeline.methods.tsne import TSNE
    from pipeline.methods.umap import UMAP

    return {m.name: m for m in (UMAP, TSNE, PCA)}


METHODS: dict[str, type[Method]] = _registry()


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MethodError(f"unknown projection method {name!r}; valid: {list(METHODS)}") from None


def check_common(metric: str, seed, backend: str, method: type[Method]) -> tuple[str, int | None, str]:
    """metric, seed and backend of a request, validated for `method`."""
    if metric not in METRICS:
        raise MethodError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise MethodError(f"seed must be a non-negative integer or None, got {seed!r}")
        seed = int(seed)
    if backend not in BACKENDS:
        raise MethodError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    if backend not in method.BACKENDS:
        raise MethodError(f"backend {backend!r} does not run {method.name}; use backend 'umap' (the CPU)")
    return metric, seed, backend
