"""What a layer's activation space says about the samples: which classes mix, which clusters it forms, and
which samples are unusual. Everything is measured in activation space (the feature matrix a map is
projected from, `pipeline.features.load_features`), never on the 2-D map.

* **Class separation** (`separation_tables`): per class (the ``label`` of class models, the ``category`` of
  prompt models), kNN purity (the mean share of a sample's k nearest neighbours with its own class; chance is
  about the class's share of the samples) and silhouette (scikit-learn's, on a fixed random subset of at most
  ``silhouette_sample`` rows: it is quadratic); a class-confusion matrix (row a: where the neighbours of class
  a's samples come from, rows summing to 1) and the most-mixed pairs (the symmetrised off-diagonal share).
* **Clusters** (`cluster_labels`, `cluster_table`): HDBSCAN (density; points in no dense region are noise,
  cluster -1) or k-means with a chosen k. HDBSCAN runs on the first ``HDBSCAN_DIMS`` principal components
  when the features are wider (its tree search degrades with dimension: 20 s against 1.7 s at 20,000 rows of
  64 values). Per cluster: size, majority class and its share (purity), top prompt words, medoids (the
  samples nearest to the cluster's centre), spread (mean distance to the centre) and a name: the majority
  class when it holds more than half the cluster (or there are no prompts), else the top prompt words.
* **Outliers** (`outlier_scores`): per sample, the distance to its k-th nearest neighbour and the local
  outlier factor (LOF, as scikit-learn defines it: 1 inside a cluster, well above 1 for an isolated point),
  ranked by LOF.

One exact kNN graph (`knn_graph`, self excluded) serves purity, confusion and both outlier scores: LOF is
computed from it rather than by a second search (scikit-learn's `NearestNeighbors` + `LocalOutlierFactor`
search twice). The store entries (`class_separation`, `clusters`, `outliers`) load the features, compute
once and cache the result in memory (`store.lru.LRU`) and in the store (`store.derived`, kind ``analysis``)
under a key of the layer's data version and every parameter; arrays are never hashed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.clusters import COMMON_WORD_SHARE, prompt_words
from pipeline.features import ALL_STEPS, FeatureError, FeatureSpec, load_features, split_point_id
from pipeline.knn import compute_knn
from pipeline.neighbors import METRICS
from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = ["AnalysisError", "knn_graph", "purity", "confusion", "mixed_pairs", "separation_tables",
           "neighbour_classes", "cell_samples",
           "local_outlier_factor", "outlier_scores", "cluster_labels", "cluster_table", "class_separation",
           "clusters", "outliers", "Separation", "Clusters", "clear_cache", "CLUSTER_METHODS"]

KIND = "analysis"
CLUSTER_METHODS = ("hdbscan", "kmeans")
HDBSCAN_DIMS = 10
MAX_K = 100
MIN_SAMPLES = 3
NOISE = -1
_VERSION = 2  # bump when a computation changes: old cached results are then never read
Progress = Callable[[float, str], None]


class AnalysisError(ValueError):
    """A bad analysis request (unknown model or layer, too few samples, bad parameters)."""


# -- the kNN graph -------------------------------------------------------------------------------------------

def knn_graph(X: np.ndarray, k: int, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest other rows, exactly: (indices int64 (N, k), distances float64 (N, k)), nearest
    first. A row's own entry is dropped (or, when duplicates hide it, its farthest one)."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    k = _check_k(k, n)
    idx, dist = compute_knn(X, k + 1, metric=metric, exact=True)
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    drop &= np.cumsum(drop, axis=1) == 1  # exactly one per row
    keep = ~drop
    return idx[keep].reshape(n, k).astype(np.int64), dist[keep].reshape(n, k).astype(np.float64)


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise AnalysisError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if k >= n:
        raise AnalysisError(f"k={k} needs more than {k} samples; there are {n}")
    return int(k)


# -- class separation (pure) ---------------------------------------------------------------------------------

def _codes(labels) -> tuple[np.ndarray, list[str]]:
    """Integer code per row and the class names, sorted (missing labels are the class "(none)")."""
    named = pd.Series(labels, dtype=object).fillna("(none)").astype(str)
    classes = sorted(named.unique())
    return pd.Categorical(named, categories=classes).codes.astype(np.int64), classes


def purity(idx: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row, the share of its neighbours (`idx`, (N, k)) with its own class code."""
    codes = np.asarray(codes)
    return (codes[idx] == codes[:, None]).mean(axis=1)


def confusion(idx: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) matrix: row a holds where the neighbours of class a's samples come from, each row summing to 1
    (a class without samples: a row of zeros)."""
    codes = np.asarray(codes)
    pairs = codes[:, None] * n_classes + codes[idx]
    counts = np.bincount(pairs.ravel(), minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.where(totals > 0, totals, 1)


def mixed_pairs(matrix: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The most-mixed pairs of classes of a confusion matrix (rows and columns named by class): for every
    pair, ``mixing`` = the mean of the two off-diagonal shares (a→b and b→a), highest first, pairs that never
    mix left out. Returns (class_a, class_b, mixing, a_to_b, b_to_a)."""
    m = matrix.to_numpy(dtype=float)
    names = [str(c) for c in matrix.index]
    i, j = np.triu_indices(len(m), k=1)
    frame = pd.DataFrame({"class_a": [names[a] for a in i], "class_b": [names[b] for b in j],
                          "mixing": (m[i, j] + m[j, i]) / 2, "a_to_b": m[i, j], "b_to_a": m[j, i]})
    frame = frame[frame["mixing"] > 0]
    return frame.sort_values(["mixing", "class_a", "class_b"], ascending=[False, True, True],
                             kind="stable").head(max(int(top), 0)).reset_index(drop=True)


def _silhouette_by_class(X, codes, n_classes, metric, sample, seed) -> np.ndarray:
    """Mean silhouette per class code on a fixed random subset of at most `sample` rows (NaN where a class
    has no row in it, or when fewer than two classes are present)."""
    from sklearn.metrics import silhouette_samples

    out = np.full(n_classes, np.nan)
    rows = np.arange(len(X))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=int(sample), replace=False))
    present = np.unique(codes[rows])
    if not 2 <= len(present) <= len(rows) - 1:
        return out
    s = silhouette_samples(np.asarray(X, dtype=np.float32)[rows], codes[rows], metric=metric)
    sums = np.bincount(codes[rows], weights=s, minlength=n_classes)
    counts = np.bincount(codes[rows], minlength=n_classes)
    out[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return out


def separation_tables(X: np.ndarray, labels, idx: np.ndarray, metric: str = "euclidean",
                      silhouette_sample: int = 2000, seed: int = 0, top_pairs: int = 10
                      ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per class, confusion matrix, most-mixed pairs) of the rows of X labelled `labels`, from their kNN
    graph `idx` (`knn_graph`). Per class: class, samples, purity (mean kNN purity), chance (the purity of
    random neighbours: (n - 1) / (N - 1)), silhouette; least pure first. The confusion matrix is indexed and
    labelled by class, in sorted order."""
    codes, classes = _codes(labels)
    n, c = len(codes), len(classes)
    per_row = purity(idx, codes)
    counts = np.bincount(codes, minlength=c)
    table = pd.DataFrame({
        "class": classes, "samples": counts,
        "purity": np.bincount(codes, weights=per_row, minlength=c) / np.maximum(counts, 1),
        "chance": (counts - 1) / max(n - 1, 1),
        "silhouette": _silhouette_by_class(X, codes, c, metric, silhouette_sample, seed)})
    table = table.sort_values(["purity", "class"], kind="stable").reset_index(drop=True)
    matrix = pd.DataFrame(confusion(idx, codes, c), index=pd.Index(classes, name="class"), columns=classes)
    return table, matrix, mixed_pairs(matrix, top_pairs)


def neighbour_classes(idx: np.ndarray, labels, sample_ids) -> pd.DataFrame:
    """Where each sample's neighbours come from, sample by sample (the confusion matrix before averaging):
    one row per (sample, class of some of its neighbours): sample_id, class, neighbour_class, count (of its
    k neighbours in that class). Row order: the samples' order, then neighbour class."""
    codes, classes = _codes(labels)
    n, c = len(codes), len(classes)
    counts = np.zeros((n, c), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), idx.shape[1]), codes[idx].ravel()), 1)
    row, col = np.nonzero(counts)
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({"sample_id": np.asarray(sample_ids).astype(str)[row], "class": names[codes[row]],
                         "neighbour_class": names[col], "count": counts[row, col]})


def cell_samples(neighbours: pd.DataFrame, class_a: str, class_b: str) -> list[str]:
    """The samples behind a cell (a, b) of the confusion matrix: those of class a with at least one neighbour
    of class b, most such neighbours first (then in order). For a == b: class a's samples with a neighbour of
    their own class."""
    hit = neighbours[(neighbours["class"] == str(class_a)) & (neighbours["neighbour_class"] == str(class_b))]
    return hit.sort_values("count", ascending=False, kind="stable")["sample_id"].tolist()


# -- outliers (pure) -----------------------------------------------------------------------------------------

def local_outlier_factor(idx: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """LOF of every row from its kNN graph (self excluded, nearest first), as scikit-learn computes it:
    reach(i, j) = max(k-distance(j), d(i, j)); lrd(i) = 1 / (mean reach(i, ·) + 1e-10);
    LOF(i) = mean lrd(neighbours) / lrd(i)."""
    kdist = dist[:, -1]
    reach = np.maximum(dist, kdist[idx])
    lrd = 1.0 / (reach.mean(axis=1) + 1e-10)
    return lrd[idx].mean(axis=1) / lrd


def outlier_scores(idx: np.ndarray, dist: np.ndarray) -> pd.DataFrame:
    """Per row: kdist (distance to the k-th neighbour), lof, and rank (1 = most unusual: highest LOF, then
    farthest k-th neighbour, then row order)."""
    lof = local_outlier_factor(idx, dist)
    kdist = dist[:, -1]
    order = np.lexsort((np.arange(len(lof)), -kdist, -lof))
    rank = np.empty(len(lof), dtype=np.int64)
    rank[order] = np.arange(1, len(lof) + 1)
    return pd.DataFrame({"kdist": kdist, "lof": lof, "rank": rank})


# -- clusters (pure) -----------------------------------------------------------------------------------------

def cluster_labels(X: np.ndarray, method: str = "hdbscan", n_clusters: int = 8,
                   min_cluster_size: int | None = None, seed: int = 0) -> np.ndarray:
    """A cluster per row (-1: HDBSCAN's noise), renumbered by size: 0 the largest, ties by first row."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        size = _min_cluster_size(min_cluster_size, n)
        Y = X
        if X.shape[1] > HDBSCAN_DIMS and n > HDBSCAN_DIMS:
            from sklearn.decomposition import PCA

            Y = PCA(HDBSCAN_DIMS, random_state=seed).fit_transform(X)
        raw = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(Y)
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) \
                or not 1 <= n_clusters <= min(MAX_K, n):
            raise AnalysisError(f"n_clusters must be an integer from 1 to {min(MAX_K, n)}, got {n_clusters!r}")
        raw = KMeans(n_clusters=int(n_clusters), n_init=4, random_state=seed).fit_predict(X)
    else:
        raise AnalysisError(f"unknown clustering {method!r}; valid: {list(CLUSTER_METHODS)}")
    return _by_size(np.asarray(raw, dtype=np.int64))


def _min_cluster_size(value, n: int) -> int:
    if value is None:
        return max(5, n // 100)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 2:
        raise AnalysisError(f"min_cluster_size must be an integer of at least 2, got {value!r}")
    return int(value)


def _by_size(raw: np.ndarray) -> np.ndarray:
    found = [c for c in pd.unique(raw) if c != NOISE]  # in order of first row
    sizes = {c: int((raw == c).sum()) for c in found}
    order = sorted(found, key=lambda c: -sizes[c])  # stable: ties keep first-row order
    remap = {c: i for i, c in enumerate(order)}
    remap[NOISE] = NOISE
    return np.array([remap[c] for c in raw], dtype=np.int64)


def _common_words(words: list[list[str]]) -> set[str]:
    """Words in at least COMMON_WORD_SHARE of the prompts: they name no cluster."""
    df = Counter(w for ws in words for w in ws)
    return {w for w, c in df.items() if len(words) >= 5 and c / len(words) >= COMMON_WORD_SHARE}


def cluster_table(X: np.ndarray, assign: np.ndarray, sample_ids, labels, prompts=None, n_medoids: int = 3,
                  n_words: int = 3, metric: str = "euclidean") -> pd.DataFrame:
    """One row per cluster (noise, -1, last): cluster, name, size, majority, purity (the majority's share),
    words (top prompt words, empty without prompts), medoids (the `n_medoids` sample ids nearest to the
    cluster's centre, nearest first), spread (mean distance to the centre). Distances are euclidean, on
    unit rows for cosine and correlation."""
    from pipeline.neighbors import metric_rows

    Z, _ = metric_rows(np.asarray(X, dtype=np.float32), metric if metric != "manhattan" else "euclidean")
    ids = np.asarray(sample_ids).astype(str)
    named = pd.Series(labels, dtype=object).fillna("(none)").astype(str).to_numpy()
    has_prompts = prompts is not None and pd.Series(prompts).notna().any()
    words = [prompt_words(p) if isinstance(p, str) else [] for p in prompts] if has_prompts else None
    common = _common_words(words) if words else set()
    rows = []
    for c in [*sorted(set(assign.tolist()) - {NOISE}), *([NOISE] if (assign == NOISE).any() else [])]:
        members = np.flatnonzero(assign == c)
        majority, count = Counter(named[members].tolist()).most_common(1)[0]
        share = count / len(members)
        d = np.linalg.norm(Z[members] - Z[members].mean(axis=0), axis=1)
        top = []
        if words:
            counts = Counter(w for i in members for w in words[i] if w not in common)
            top = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]]
        if c == NOISE:
            name = "noise"
        elif share > 0.5 or not top:
            name = majority
        else:
            name = ", ".join(top)
        rows.append(dict(cluster=int(c), name=name, size=len(members), majority=majority, purity=share,
                         words=top, medoids=ids[members[np.argsort(d, kind="stable")[:n_medoids]]].tolist(),
                         spread=float(d.mean())))
    return pd.DataFrame(rows, columns=["cluster", "name", "size", "majority", "purity", "words", "medoids",
                                       "spread"])


# -- from the store ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Separation:
    """`class_separation`'s result: per class, the confusion matrix (indexed by class) and the most-mixed
    pairs; ``by`` names the column the classes come from, ``k``, ``n_samples`` and ``step`` what was measured;
    ``neighbours`` where each sample's neighbours come from (`neighbour_classes`; `cell` picks a cell's samples)."""

    table: pd.DataFrame
    confusion: pd.DataFrame
    pairs: pd.DataFrame
    by: str
    k: int
    n_samples: int
    step: int | str  # the step measured (a negative request resolved), or "all"
    neighbours: pd.DataFrame | None = None

    def cell(self, class_a: str, class_b: str) -> list[str]:
        """The samples of class a whose neighbours include class b (`cell_samples`)."""
        return [] if self.neighbours is None else cell_samples(self.neighbours, class_a, class_b)


@dataclass(frozen=True)
class Clusters:
    """`clusters`' result: one row per cluster (`cluster_table`) and every sample's cluster
    (``assignments``: sample_id, cluster)."""

    table: pd.DataFrame
    assignments: pd.DataFrame
    method: str
    n_samples: int


_MEMO: LRU[str, object] = LRU(32)  # recent results of this process
_GRAPHS: LRU[str, tuple] = LRU(4)  # recent kNN graphs: purity, confusion and outliers share one


def clear_cache() -> None:
    """Forget this process's remembered results and kNN graphs (the store's cached results stay)."""
    _MEMO.clear()
    _GRAPHS.clear()



def _no_progress(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class _Request:
    store: object
    model: str
    layer: str
    step: int | str
    spec: FeatureSpec
    runs: list[str] | None
    ids: list[str] | None
    version: str
    payload: dict  # what identifies the data: every key of a result starts from it


def _request(store, model, layer, step, feature, run_ids, sample_ids) -> _Request:
    from pipeline.compare import CompareError, _check_layers
    from pipeline.features import filter_description, parse_step

    try:
        _check_layers(store, model, [layer], 1)  # the same messages as a comparison's
    except CompareError as exc:
        raise AnalysisError(str(exc)) from None
    try:
        spec = FeatureSpec.parse(feature)
        step = parse_step(step)
    except FeatureError as exc:
        raise AnalysisError(str(exc)) from exc
    step = -1 if step is None else step  # negative: from the last step of the selected runs (the store resolves it)
    runs = None if run_ids is None else sorted({str(r) for r in run_ids})
    ids = None if sample_ids is None else [str(s) for s in sample_ids]
    if ids is not None and not ids:
        raise AnalysisError("the sample filter is empty: no sample ids were given")
    version = store.data_version(model, layer, runs)
    payload = {"v": _VERSION, "model": model, "layer": layer, "step": step, "version": version,
               "feature": spec.to_dict(), "filter": filter_description(runs, ids)}
    return _Request(store, model, layer, step, spec, runs, ids, version, payload)


def _features(req: _Request):
    try:
        feats = load_features(req.store, req.model, req.layer, req.step, req.spec, run_ids=req.runs,
                              sample_ids=req.ids, data_version=req.version)
    except ValueError as exc:  # a FeatureError, or the store's "step not recorded"
        raise AnalysisError(str(exc)) from exc
    if len(feats.sample_ids) < MIN_SAMPLES:
        raise AnalysisError(f"only {len(feats.sample_ids)} samples match: at least {MIN_SAMPLES} are needed")
    return feats


def _meta(req: _Request, ids: np.ndarray, by: str) -> pd.DataFrame:
    """Class (column `by`, or "auto": category for prompt models, else label) and prompt of every row."""
    sample_of = [split_point_id(s)[0] for s in ids] if req.step == ALL_STEPS else list(ids)
    frame = req.store.samples(model=req.model, run_ids=req.runs, sample_ids=list(dict.fromkeys(sample_of)),
                              columns=["sample_id", "label", "category", "prompt"])
    frame = frame.drop_duplicates("sample_id").set_index("sample_id").reindex(sample_of)
    if by == "auto":
        by = "category" if frame["prompt"].notna().any() else "label"
    if by not in ("label", "category"):
        raise AnalysisError(f"classes come from 'label', 'category' or 'auto', got {by!r}")
    return pd.DataFrame({"class": frame[by].to_numpy(), "prompt": frame["prompt"].to_numpy()}).assign(by=by)


def _graph(req: _Request, feats, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    key = f"{feats.key}|{k}|{metric}"
    return _GRAPHS.get_or_build(key, lambda: knn_graph(feats.X, k, metric))


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise AnalysisError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    return metric


# cached parts: name -> (table as stored, how to read it back)

def _read(req: _Request, key: str, parts: Iterable[str]) -> tuple[dict, dict] | None:
    tables, meta = {}, {}
    for part in parts:
        try:
            got = req.store.derived.read(KIND, req.model, req.layer, f"{key}.{part}")
        except (OSError, ValueError) as exc:
            log.warning("cannot read cached analysis %s: %s", key, exc)
            return None
        if got is None:
            return None
        tables[part], meta = got[0].to_pandas(), got[1]
    return tables, meta


def _write(req: _Request, key: str, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    try:
        for part, frame in tables.items():
            req.store.derived.write(KIND, req.model, req.layer, f"{key}.{part}",
                                    pa.Table.from_pandas(frame, preserve_index=False),
                                    sources={req.layer: req.version}, run_ids=req.runs, meta=meta)
    except (OSError, ValueError) as exc:  # a read-only store still works: it recomputes
        log.warning("could not cache analysis %s: %s", key, exc)


def _cached(req: _Request, what: str, params: dict, parts: tuple[str, ...], compute, build):
    """The result `what` of `params`: from memory, else from the store, else `compute()` -> (tables, meta),
    written to the store; `build(tables, meta)` makes the remembered object (callers hand out copies)."""
    key = f"{what}-{digest({**req.payload, 'what': what, **params})[:24]}"
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    got = _read(req, key, parts)
    if got is None:
        got = compute()
        _write(req, key, *got)
    return _MEMO.put(key, build(*got))


def class_separation(store, model: str, layer: str, step: int | str | None = None, feature=None,
                     run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None, k: int = 10,
                     metric: str = "euclidean", by: str = "auto", silhouette_sample: int = 2000, seed: int = 0,
                     top_pairs: int = 10, progress: Progress | None = None) -> Separation:
    """How well the classes separate in (model, layer, step)'s activation space (`separation_tables`);
    cached. `by`: ``label``, ``category`` or ``auto`` (category for prompt models, else label)."""
    req = _request(store, model, layer, step, feature, run_ids, sample_ids)
    params = {"k": _check_k(k, MAX_K + 1), "metric": _check_metric(metric), "by": by, "silhouette_sample": int(silhouette_sample),
              "seed": int(seed), "top_pairs": int(top_pairs)}
    report = progress or _no_progress

    def compute():
        feats = _features(req)
        meta = _meta(req, feats.sample_ids, by)
        report(0.3, f"{k} nearest neighbours of {len(feats.sample_ids):,} samples")
        idx, _ = _graph(req, feats, _check_k(k, len(feats.sample_ids)), metric)
        report(0.7, "purity, confusion, silhouette")
        table, matrix, pairs = separation_tables(feats.X, meta["class"], idx, metric, silhouette_sample, seed,
                                                 top_pairs)
        cells = neighbour_classes(idx, meta["class"], feats.sample_ids)
        return ({"table": table, "confusion": matrix.reset_index(), "pairs": pairs, "neighbours": cells},
                {"by": str(meta["by"].iloc[0]), "k": int(k), "n_samples": len(feats.sample_ids),
                 "step": feats.step})

    def build(tables, meta):
        return Separation(tables["table"], tables["confusion"].set_index("class"), tables["pairs"],
                          meta["by"], meta["k"], meta["n_samples"], meta["step"], tables["neighbours"])

    out = _cached(req, "separation", params, ("table", "confusion", "pairs", "neighbours"), compute, build)
    report(1.0, "done")
    return replace(out, table=out.table.copy(), confusion=out.confusion.copy(), pairs=out.pairs.copy(),
                   neighbours=out.neighbours.copy())


def outliers(store, model: str, layer: str, step: int | str | None = None, feature=None,
             run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None, k: int = 10,
             metric: str = "euclidean", progress: Progress | None = None) -> pd.DataFrame:
    """Per sample of (model, layer, step): sample_id, class, kdist, lof, rank (1 = most unusual), sorted by
    rank (`outlier_scores`); cached. The kNN graph is the one `class_separation` uses."""
    req = _request(store, model, layer, step, feature, run_ids, sample_ids)
    params = {"k": _check_k(k, MAX_K + 1), "metric": _check_metric(metric)}
    report = progress or _no_progress

    def compute():
        feats = _features(req)
        report(0.3, f"{k} nearest neighbours of {len(feats.sample_ids):,} samples")
        idx, dist = _graph(req, feats, _check_k(k, len(feats.sample_ids)), metric)
        scores = outlier_scores(idx, dist)
        scores.insert(0, "class", _meta(req, feats.sample_ids, "auto")["class"].to_numpy())
        scores.insert(0, "sample_id", np.asarray(feats.sample_ids).astype(str))
        return {"scores": scores.sort_values("rank").reset_index(drop=True)}, {"k": int(k)}

    out = _cached(req, "outliers", params, ("scores",), compute, lambda tables, meta: tables["scores"])
    report(1.0, "done")
    return out.copy()


def clusters(store, model: str, layer: str, step: int | str | None = None, feature=None,
             run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None,
             method: str = "hdbscan", n_clusters: int = 8, min_cluster_size: int | None = None, seed: int = 0,
             metric: str = "euclidean", n_medoids: int = 3, progress: Progress | None = None) -> Clusters:
    """Clusters of (model, layer, step)'s samples in activation space (`cluster_labels`, `cluster_table`);
    cached. `method`: ``hdbscan`` (`min_cluster_size`, default max(5, N / 100)) or ``kmeans``
    (`n_clusters`)."""
    if method not in CLUSTER_METHODS:
        raise AnalysisError(f"unknown clustering {method!r}; valid: {list(CLUSTER_METHODS)}")
    req = _request(store, model, layer, step, feature, run_ids, sample_ids)
    params = {"method": method, "n_clusters": int(n_clusters) if method == "kmeans" else None,
              "min_cluster_size": min_cluster_size if method == "hdbscan" else None, "seed": int(seed),
              "metric": _check_metric(metric), "n_medoids": int(n_medoids)}
    report = progress or _no_progress

    def compute():
        feats = _features(req)
        report(0.3, f"{method} on {len(feats.sample_ids):,} samples")
        assign = cluster_labels(feats.X, method, n_clusters, min_cluster_size, seed)
        meta = _meta(req, feats.sample_ids, "auto")
        report(0.8, "naming the clusters")
        table = cluster_table(feats.X, assign, feats.sample_ids, meta["class"], meta["prompt"], n_medoids,
                              metric=metric)
        ids = np.asarray(feats.sample_ids).astype(str)
        return ({"table": table, "assignments": pd.DataFrame({"sample_id": ids, "cluster": assign})},
                {"method": method, "n_samples": len(ids)})

    def build(tables, meta):
        table = tables["table"]
        for col in ("words", "medoids"):  # lists come back from Parquet as arrays
            table[col] = [list(v) for v in table[col]]
        return Clusters(table, tables["assignments"], meta["method"], meta["n_samples"])

    out = _cached(req, "clusters", params, ("table", "assignments"), compute, build)
    report(1.0, "done")
    return replace(out, table=out.table.copy(), assignments=out.assignments.copy())
