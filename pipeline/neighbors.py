"""Nearest samples of a sample, on the map or in activation space, and how far to believe a map.

In a map of all steps (``step="all"``) the rows are (sample, step) points named ``<sample_id>@<step>``:
their neighbours are other points, which may be other steps of the same sample.

Two spaces, both offered in the app:

* ``map``: euclidean distance between the 2-D points of a projection (what the eye sees; the seed's choice);
* ``activation``: distance in the feature matrix the projection was computed from, under its metric (the
  faithful one: UMAP preserves neighbourhoods only approximately).

A query is answered from an index built once per (projection key, space, metric) and kept in memory: a k-d
tree on the 2-D points, or the (normalised) feature matrix for a brute-force scan, which stays well under
50 ms at 100,000 points for feature widths up to a few hundred.

`map_quality` reports, for a sample of points, scikit-learn's trustworthiness of the map and the share of
each point's k nearest neighbours in activation space that are also among its k nearest on the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from store.lru import LRU

__all__ = [
    "SPACES",
    "NeighborIndex",
    "NeighborError",
    "knn_table",
    "FeatureRef",
    "nearest",
    "distances",
    "map_quality",
    "metric_rows",
    "exact_knn",
    "forget",
]

SPACES = ("map", "activation")
METRICS = ("euclidean", "cosine", "correlation", "manhattan")
MAX_K = 1000  # the app offers 1-20 (the spec: 1-50)
_CHUNK = 2048
_BLOCK = 4096


class NeighborError(ValueError):
    """Bad neighbour request (unknown sample, space or metric, k out of range)."""


# -- metric helpers (also used by pipeline.project) ----------------------------------------------------------

def metric_rows(X: np.ndarray, metric: str) -> tuple[np.ndarray, str]:
    """(rows, base metric) such that nearest neighbours under `base` are those under `metric`: cosine and
    correlation become euclidean on unit (for correlation: centred) rows."""
    if metric not in METRICS:
        raise NeighborError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if metric in ("cosine", "correlation"):
        Y = X - X.mean(axis=1, keepdims=True) if metric == "correlation" else X
        norms = np.linalg.norm(Y, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return np.ascontiguousarray(Y / norms, dtype=np.float32), "euclidean"
    return X, metric


def to_metric_distance(d: np.ndarray, metric: str) -> np.ndarray:
    """Euclidean distances between unit rows -> cosine/correlation distances (1 - cos = |a - b|^2 / 2)."""
    d = np.asarray(d, dtype=np.float32)
    if metric in ("cosine", "correlation"):
        d = np.minimum(d * d / 2.0, 2.0)
    return np.ascontiguousarray(d, dtype=np.float32)


def exact_knn(Q: np.ndarray, R: np.ndarray, k: int, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of R for every row of Q under `metric`: (indices int32, distances float32)."""
    from sklearn.neighbors import NearestNeighbors

    q, base = metric_rows(Q, metric)
    r, _ = metric_rows(R, metric)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=base).fit(r)
    d, i = nn.kneighbors(q, n_neighbors=k)
    return i.astype(np.int32), to_metric_distance(d, metric)


# -- the index -----------------------------------------------------------------------------------------------

class NeighborIndex:
    """k-nearest queries over the rows of one matrix: ``space="map"`` (2-D points, euclidean, k-d tree) or
    ``space="activation"`` (feature rows under `metric`, brute force on a prepared copy)."""

    def __init__(self, data: np.ndarray, space: str = "map", metric: str = "euclidean"):
        if space not in SPACES:
            raise NeighborError(f"unknown neighbour space {space!r}; valid: {list(SPACES)}")
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim != 2 or not len(data):
            raise NeighborError(f"need a non-empty 2-D matrix, got shape {data.shape}")
        self.space, self.n = space, len(data)
        self.metric = "euclidean" if space == "map" else metric
        if space == "map":
            from sklearn.neighbors import KDTree

            self._tree = KDTree(data)
            self._rows = data
        else:
            self._rows, self._base = metric_rows(data, metric)
            self._sq = np.einsum("ij,ij->i", self._rows, self._rows) if self._base == "euclidean" else None

    def _check(self, i: int) -> int:
        if not 0 <= int(i) < self.n:
            raise NeighborError(f"sample index {i} out of range 0..{self.n - 1}")
        return int(i)

    def _scan(self, i: int) -> np.ndarray:
        """Distances (or a monotone stand-in for them) from row i to every row."""
        q = self._rows[i]
        if self._base == "manhattan":  # in blocks: the temporaries stay in cache (2x faster at 100,000 rows)
            out = np.empty(self.n, np.float32)
            buf = np.empty((min(self.n, _BLOCK), self._rows.shape[1]), np.float32)
            for s in range(0, self.n, _BLOCK):
                b = buf[:min(self.n, s + _BLOCK) - s]
                np.subtract(self._rows[s:s + len(b)], q, out=b)
                np.abs(b, out=b)
                b.sum(axis=1, out=out[s:s + len(b)])
            return out
        # squared euclidean, up to rounding; einsum, not BLAS: a multithreaded matrix-vector product is several
        # times slower on a busy 2-core machine than this single-threaded loop
        return self._sq - 2.0 * np.einsum("ij,j->i", self._rows, q) + self._sq[i]

    def _exact(self, i: int, others: np.ndarray) -> np.ndarray:
        diff = self._rows[others] - self._rows[i]
        if self.space == "activation" and self._base == "manhattan":
            return np.abs(diff).sum(axis=1).astype(np.float32)
        d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        return to_metric_distance(d, self.metric) if self.space == "activation" else d.astype(np.float32)

    def query(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows to row i, itself excluded: (indices, distances), nearest first."""
        i = self._check(i)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise NeighborError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        k = min(int(k), self.n - 1)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.space == "map":
            _, idx = self._tree.query(self._rows[i:i + 1], k=min(k + 1, self.n))
            cand = idx[0][idx[0] != i][:k]
        else:
            score = self._scan(i)
            score[i] = np.inf
            cand = np.argpartition(score, k - 1)[:k] if k < self.n - 1 else np.flatnonzero(np.isfinite(score))
        dist = self._exact(i, cand)
        order = np.lexsort((cand, dist))  # ties by index: stable answers
        return cand[order].astype(np.int64), dist[order]

    def distances(self, i: int, others: Sequence[int]) -> np.ndarray:
        """Distances from row i to the given rows."""
        i = self._check(i)
        others = np.asarray(others, dtype=np.int64)
        if len(others) and (others.min() < 0 or others.max() >= self.n):
            raise NeighborError(f"row indices out of range 0..{self.n - 1}")
        return self._exact(i, others) if len(others) else np.zeros(0, np.float32)


def knn_table(projection_or_xy, X: np.ndarray | None, sample_index: int | str, k: int, space: str = "map",
              metric: str | None = None, sample_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The k nearest samples of one sample as a DataFrame (sample_id, index, distance, rank from 1).

    `projection_or_xy` is a `pipeline.project.Projection` (its key caches the index, its ids name the rows,
    its metric is the default) or an (N, 2) array (`sample_ids` then name the rows; the index is rebuilt per
    call). `X` holds the feature rows in the same order (needed for ``space="activation"`` only).
    `sample_index` is a row number or a sample id."""
    key = getattr(projection_or_xy, "key", None)
    if key is not None:
        xy, ids = projection_or_xy.xy, projection_or_xy.sample_ids
        metric = metric or projection_or_xy.params.metric
    else:
        xy, ids = np.asarray(projection_or_xy), sample_ids
    metric = metric or "euclidean"
    if space == "activation" and X is None:
        raise NeighborError("activation-space neighbours need the feature matrix X")
    data = xy if space == "map" else X
    if len(data) != len(xy):
        raise NeighborError(f"X has {len(data)} rows but the map has {len(xy)}")
    ids = np.asarray(ids if ids is not None else np.arange(len(xy)).astype(str)).astype(str)
    if isinstance(sample_index, str):
        hits = np.flatnonzero(ids == sample_index)
        if not len(hits):
            raise NeighborError(f"sample {sample_index!r} is not in this projection")
        sample_index = int(hits[0])
    index = _INDICES.get_or_build(("object", key, space, metric), lambda: NeighborIndex(data, space, metric)) \
        if key is not None else NeighborIndex(data, space, metric)
    idx, dist = index.query(sample_index, k)
    return pd.DataFrame({"sample_id": ids[idx], "index": idx, "distance": dist.astype(float),
                         "rank": np.arange(1, len(idx) + 1)})


# -- over a map's rows (what the app calls) -------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureRef:
    """Where a map's rows live in activation space: what `pipeline.features.load_features` rebuilds them from.
    ``key`` is the feature matrix's cache key (data version, model, layer, step, feature, filter); ``run_ids``
    the map's run filter; ``filtered`` whether it was also restricted to given samples (its own rows)."""

    model: str
    layer: str
    step: int | str
    feature: dict  # the resolved FeatureSpec, as a dict
    key: str
    metric: str = "euclidean"
    run_ids: tuple[str, ...] | None = None
    filtered: bool = False

    @classmethod
    def of(cls, meta: dict) -> FeatureRef:
        """From a projection's stored metadata (`pipeline.project.Projection.meta`)."""
        filt = meta.get("filter") or {}
        runs = filt.get("run_ids")
        return cls(model=str(meta["model"]), layer=str(meta["layer"]), step=meta["step"],
                   feature=dict(meta["feature_resolved"]), key=str(meta["features_key"]),
                   metric=str((meta.get("params") or {}).get("metric", "euclidean")),
                   run_ids=None if runs is None else tuple(runs), filtered=filt.get("sample_ids") is not None)


_INDICES: LRU[tuple, NeighborIndex] = LRU(8)


def _rows_of(ids: np.ndarray) -> dict[str, int]:
    return {s: i for i, s in enumerate(ids.tolist())}


def _map_index(map_key: str, xy: np.ndarray) -> NeighborIndex:
    return _INDICES.get_or_build(("map", map_key), lambda: NeighborIndex(xy, "map"))


def _activation_index(store, ref: FeatureRef, map_key: str, ids: np.ndarray, metric: str) -> NeighborIndex:
    """The index over the feature rows of a map's points, in the map's order: from this process's feature
    cache when the map was just computed, else rebuilt from the store (one activation read)."""
    from pipeline.features import ALL_STEPS, FEATURE_CACHE, FeatureSpec, load_features, split_point_id

    def build() -> NeighborIndex:
        feats = FEATURE_CACHE.get(ref.key)
        if feats is None:
            samples = None
            if ref.filtered:  # the map's rows are its filter; an all-steps map names (sample, step) points
                samples = list(dict.fromkeys(split_point_id(s)[0] for s in ids)) if ref.step == ALL_STEPS \
                    else list(ids)
            feats = load_features(store, ref.model, ref.layer, ref.step, FeatureSpec(**ref.feature),
                                  run_ids=ref.run_ids, sample_ids=samples)
        pos = _rows_of(np.asarray(feats.sample_ids))
        rows = [pos.get(s, -1) for s in ids.tolist()]
        if min(rows, default=0) < 0:
            gone = next(s for s, r in zip(ids, rows, strict=True) if r < 0)
            raise NeighborError(f"{rows.count(-1)} samples of the map are gone from the store (e.g. {gone!r}); "
                                "recompute the map")
        return NeighborIndex(feats.X[rows], "activation", metric)

    return _INDICES.get_or_build(("activation", str(getattr(store, "root", id(store))), ref.key, map_key, metric),
                                 build)


def _index(store, ref: FeatureRef | None, map_key: str, ids, xy, space: str, metric: str | None) -> NeighborIndex:
    if space not in SPACES:
        raise NeighborError(f"unknown neighbour space {space!r}; valid: {list(SPACES)}")
    if metric is not None and metric not in METRICS:
        raise NeighborError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    if space == "map":
        return _map_index(map_key, np.asarray(xy, dtype=np.float32))
    if ref is None:
        raise NeighborError("activation-space neighbours need to know the map's features; this map has none")
    return _activation_index(store, ref, map_key, np.asarray(ids).astype(str), metric or ref.metric)


def nearest(store, ref: FeatureRef | None, map_key: str, ids, xy, sample_id: str, k: int,
            space: str = "activation", metric: str | None = None) -> tuple[list[str], list[float]]:
    """The k nearest points of `sample_id` among a map's points (`ids`, coordinates `xy`, cache key
    `map_key`), nearest first: (ids, distances). ``space="map"`` measures on the coordinates given;
    ``"activation"`` in the feature space `ref` names, under `metric` (default: the map's own)."""
    ids = np.asarray(ids).astype(str)
    index = _index(store, ref, map_key, ids, xy, space, metric)
    row = _rows_of(ids).get(str(sample_id))
    if row is None:
        raise NeighborError(f"sample {sample_id!r} is not in this map")
    idx, dist = index.query(row, k)
    return [str(s) for s in ids[idx]], [float(d) for d in dist]


def distances(store, ref: FeatureRef | None, map_key: str, ids, xy, sample_id: str, others: Sequence[str],
              space: str = "activation", metric: str | None = None) -> list[float]:
    """Distances from `sample_id` to each of `others` (NaN for ids not in the map), in the same space and
    metric as `nearest`."""
    ids = np.asarray(ids).astype(str)
    index = _index(store, ref, map_key, ids, xy, space, metric)
    pos = _rows_of(ids)
    if str(sample_id) not in pos:
        raise NeighborError(f"sample {sample_id!r} is not in this map")
    rows = [pos.get(str(s), -1) for s in others]
    d = iter(index.distances(pos[str(sample_id)], [r for r in rows if r >= 0]))
    return [float(next(d)) if r >= 0 else float("nan") for r in rows]


def forget(map_key: str) -> None:
    """Drop the indices of a map (its file was rewritten, e.g. by a refit)."""
    _INDICES.discard_where(lambda k: map_key in k)


# -- map quality ---------------------------------------------------------------------------------------------

def _without_self(rows: np.ndarray, idx: np.ndarray, k: int) -> list[set]:
    """Each row's first k neighbours other than itself (and other than umap's -1 for a cut edge)."""
    return [set(cand[(cand != r) & (cand >= 0)][:k].tolist()) for r, cand in zip(rows, idx, strict=True)]


def map_quality(X: np.ndarray, xy: np.ndarray, k: int = 10, sample: int = 2000, metric: str = "euclidean",
                knn_indices: np.ndarray | None = None, seed: int = 0) -> dict:
    """How far to believe a map, on a random sample of `sample` points:

    * ``trustworthiness``: scikit-learn's, among the sampled points (1 = no false neighbours on the map);
    * ``knn_overlap``: mean share of a point's k nearest in activation space (among all points) that are also
      among its k nearest on the map (1 = the same neighbours).

    `knn_indices` (N, >k) — the projection's own kNN graph — spares the activation-space search."""
    from sklearn.manifold import trustworthiness

    X = np.asarray(X, dtype=np.float32)
    xy = np.asarray(xy, dtype=np.float32)
    n = len(X)
    out = {"trustworthiness": None, "knn_overlap": None, "k": int(k), "sample": 0}
    if n < 4 or len(xy) != n:
        return out
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(int(sample), n), replace=False))
    out["sample"] = len(rows)
    kt = min(int(k), (len(rows) - 1) // 2)
    if kt >= 1:
        out["trustworthiness"] = round(float(trustworthiness(X[rows], xy[rows], n_neighbors=kt, metric=metric)), 4)
    ka = min(int(k), n - 1)
    if knn_indices is not None and knn_indices.shape[1] > ka and len(knn_indices) == n:
        act = _without_self(rows, knn_indices[rows], ka)
    else:
        chunks = [exact_knn(X[rows[s:s + _CHUNK]], X, ka + 1, metric)[0] for s in range(0, len(rows), _CHUNK)]
        act = _without_self(rows, np.concatenate(chunks), ka)
    from sklearn.neighbors import KDTree

    _, m = KDTree(xy).query(xy[rows], k=ka + 1)
    on_map = _without_self(rows, m, ka)
    overlap = np.mean([len(a & b) / ka for a, b in zip(act, on_map, strict=True)])
    out["knn_overlap"] = round(float(overlap), 4)
    out["k"] = ka
    return out
