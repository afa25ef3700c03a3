"""Compare layers: which layers organise the samples the same way, and where two of them disagree.

Both measures read the feature matrices the maps are projected from (`pipeline.features.load_features`,
``feature="auto"`` by default: the stored map when small, else channel means, PCA to 50 dimensions when
wide), for the same samples in the same order:

* `layer_similarity`: linear CKA (centered kernel alignment) of every pair of layers, in its feature-space
  form on column-centred matrices: ``||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)``. 1 for identical
  representations, invariant to orthogonal transforms and isotropic scaling (so to PCA rotations and
  to layer widths), near 0 for unrelated ones. Above ``max_samples`` a fixed random subset (``seed``) is used.
* `neighbour_agreement`: for every sample, the share of its k nearest neighbours (activation space, cosine by
  default) that the two layers have in common: 1 where both layers see the same neighbourhood, about
  k / (N - 1) by chance.

Results are cached in memory and in the store (`store.derived`, kind ``compare``) under explicit keys built from the
store's data version of each layer, the model, the layers, the step and the parameters; arrays are never
hashed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.features import FeatureError, FeatureSpec, load_features
from pipeline.neighbors import METRICS, exact_knn
from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = ["CompareError", "linear_cka", "cka_matrix", "knn_overlap", "layer_similarity",
           "neighbour_agreement", "clear_cache", "least_similar_pair", "agreement_by_label",
           "most_disagreeing"]

MIN_SAMPLES = 3
MAX_K = 100
Progress = Callable[[float, str], None]  # (fraction 0..1, message), as pipeline.project reports
_VERSION = 1  # bump when a computation changes: old cached artifacts are then never read


class CompareError(ValueError):
    """Bad comparison request (unknown or too few layers, disjoint or missing samples, bad parameters)."""


# -- the measures (pure numpy) -------------------------------------------------------------------------------

def _centred(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise CompareError(f"need a 2-D feature matrix, got shape {X.shape}")
    return X - X.mean(axis=0, keepdims=True)


def _self_norm(Xc: np.ndarray) -> float:
    """||Xᵀ X||_F of a centred matrix, through the smaller of its two Gram matrices (same value)."""
    G = Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T
    return float(np.linalg.norm(G))


def _cross(Xc: np.ndarray, Yc: np.ndarray) -> float:
    return float(np.linalg.norm(Yc.T @ Xc) ** 2)


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two feature matrices whose rows are the same samples in the same order."""
    if len(X) != len(Y):
        raise CompareError(f"the matrices have {len(X)} and {len(Y)} rows: rows must be the same samples")
    return cka_matrix([X, Y])[0, 1]


def cka_matrix(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA of every pair of matrices (same rows), symmetric, ones on the diagonal. A constant matrix
    (no variance) has CKA NaN with every other one."""
    if len({len(m) for m in matrices}) > 1:
        raise CompareError(f"the matrices have different row counts {[len(m) for m in matrices]}")
    centred = [_centred(m) for m in matrices]
    norms = [_self_norm(c) for c in centred]
    n = len(centred)
    out = np.eye(n)
    for i in range(n):
        if norms[i] == 0:
            out[i, i] = np.nan
        for j in range(i + 1, n):
            denom = norms[i] * norms[j]
            out[i, j] = out[j, i] = min(1.0, _cross(centred[i], centred[j]) / denom) if denom > 0 else np.nan
    return out


def _knn_without_self(X: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Indices (N, k) of every row's k nearest other rows (exact)."""
    n = len(X)
    idx, _ = exact_knn(X, X, k + 1, metric=metric)
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True  # a duplicate row may come first: then drop the farthest instead
    drop &= np.cumsum(drop, axis=1) == 1  # exactly one dropped per row
    return idx[~drop].reshape(n, k)


def knn_overlap(X: np.ndarray, Y: np.ndarray, k: int = 10, metric: str = "cosine") -> np.ndarray:
    """Per row, the share of its k nearest neighbours under `metric` that X and Y have in common (0..1)."""
    if len(X) != len(Y):
        raise CompareError(f"the matrices have {len(X)} and {len(Y)} rows: rows must be the same samples")
    a, b = _knn_without_self(X, k, metric), _knn_without_self(Y, k, metric)
    a.sort(axis=1)
    b.sort(axis=1)
    common = np.zeros(len(a), dtype=np.int64)
    for start in range(0, len(a), 8192):  # bounded (chunk, k, k) temporaries
        sa, sb = a[start:start + 8192], b[start:start + 8192]
        common[start:start + len(sa)] = (sa[:, :, None] == sb[:, None, :]).any(axis=2).sum(axis=1)
    return (common / k).astype(np.float64)


# -- from the store ------------------------------------------------------------------------------------------


_MEMO: LRU[str, pd.DataFrame] = LRU(64)  # recent results of this process (small frames)


def clear_cache() -> None:
    """Forget this process's remembered results (the store's cached artifacts stay)."""
    _MEMO.clear()


def _check_layers(store, model: str, layers: Iterable[str], minimum: int) -> list[str]:
    models = store.models()
    if model not in models:
        raise CompareError(f"unknown model {model!r}; valid: {models}")
    if isinstance(layers, str):
        layers = [layers]
    layers = [str(x) for x in layers]
    valid = store.layers(model)
    unknown = [x for x in layers if x not in valid]
    if unknown:
        raise CompareError(f"unknown layer(s) {unknown} of model {model!r}; valid: {valid}")
    dupes = sorted({x for x in layers if layers.count(x) > 1})
    if dupes:
        raise CompareError(f"layer(s) {dupes} given more than once")
    if len(layers) < minimum:
        raise CompareError(f"need at least {minimum} different layers to compare, got {layers}; "
                           f"valid: {valid}")
    return layers


def _resolve_step(store, model: str, layers: list[str], step) -> int:
    """The step to compare: the given one if every layer recorded it, else an error; None = the last common."""
    common = None
    for layer in layers:
        got = {int(s) for s in store.steps(model, layer)["step"]}
        common = got if common is None else common & got
    common = sorted(common or ())
    if not common:
        raise CompareError(f"layers {layers} of model {model!r} share no recorded step")
    if step is None:
        return common[-1]
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or int(step) not in common:
        raise CompareError(f"step {step!r} is not recorded for every layer {layers}; valid: {common}")
    return int(step)


def _aligned(store, model, layers, step, feature, run_ids, sample_ids, versions, report):
    """Feature matrices of `layers`, rows the same samples in the same order, and those sample ids."""
    feats = []
    for i, layer in enumerate(layers):
        report(0.8 * i / len(layers), f"features of {layer}")
        try:
            feats.append(load_features(store, model, layer, step, feature, run_ids=run_ids,
                                       data_version=versions[layer]))
        except FeatureError as exc:
            raise CompareError(f"layer {layer!r}: {exc}") from exc
    ids = pd.Index(feats[0].sample_ids)
    for f in feats[1:]:
        ids = ids[ids.isin(f.sample_ids)]
    if sample_ids is not None:
        wanted = pd.Index(sample_ids).drop_duplicates()
        for layer, f in zip(layers, feats, strict=True):
            missing = wanted[~wanted.isin(f.sample_ids)]
            if len(missing):
                raise CompareError(f"{len(missing)} of the {len(wanted)} given samples have no activations of "
                                   f"layer {layer!r} at step {step} (e.g. {list(missing[:3])}): compare "
                                   "samples that every layer recorded")
        ids = ids[ids.isin(wanted)]
    if len(ids) < MIN_SAMPLES:
        sizes = {layer: len(f.sample_ids) for layer, f in zip(layers, feats, strict=True)}
        raise CompareError(f"the layers share only {len(ids)} samples at step {step} (samples per layer: "
                           f"{sizes}); at least {MIN_SAMPLES} are needed")
    rows = [pd.Index(f.sample_ids).get_indexer(ids) for f in feats]
    return np.asarray(ids, dtype=str), [f.X[r] for f, r in zip(feats, rows, strict=True)], feats


def _no_progress(fraction: float, message: str) -> None:
    pass


def _read_cached(store, model, key) -> pd.DataFrame | None:
    try:
        got = store.derived.read("compare", model, None, key)
    except (OSError, ValueError) as exc:
        log.warning("cannot read cached comparison %s: %s", key, exc)
        return None
    if got is None:
        return None
    table, meta = got
    frame = table.to_pandas()
    frame.attrs.update(meta.get("attrs") or {})
    return frame


def _write_cached(store, model, key, frame: pd.DataFrame, versions: dict, run_ids) -> None:
    table = frame.reset_index() if frame.index.name is not None else frame
    try:
        store.derived.write("compare", model, None, key, pa.Table.from_pandas(table, preserve_index=False),
                            sources=versions, run_ids=run_ids, meta={"attrs": frame.attrs})
    except (OSError, ValueError) as exc:  # a read-only store still works: it recomputes
        log.warning("could not cache comparison %s: %s", key, exc)


def _cached(store, model, what, payload, compute) -> pd.DataFrame:
    key = f"{what}-{digest(payload)[:24]}"
    frame = _MEMO.get(key)
    if frame is None:
        frame = _read_cached(store, model, key)
    if frame is None:
        frame = compute()
        _write_cached(store, model, key, frame, payload["versions"], payload["filter"]["runs"])
    _MEMO.put(key, frame)
    return frame.copy()


def _filter(run_ids, sample_ids) -> tuple[list[str] | None, list[str] | None, dict]:
    runs = None if run_ids is None else sorted({str(r) for r in run_ids})
    ids = None if sample_ids is None else [str(s) for s in sample_ids]
    if ids is not None and not ids:
        raise CompareError("the sample filter is empty: no sample ids were given")
    desc = {"runs": runs, "samples": None if ids is None else
            {"n": len(set(ids)), "sha256": hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()}}
    return runs, ids, desc


def layer_similarity(store, model: str, layers: Sequence[str], step: int | None = None,
                     run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None,
                     max_samples: int = 5000, seed: int = 0, feature: FeatureSpec | str | None = None,
                     progress: Progress | None = None) -> pd.DataFrame:
    """Linear CKA of every pair of `layers` at `step` (None: the last step every layer recorded), computed on
    the samples all layers share (or exactly `sample_ids`, which every layer must have).

    Returns a square DataFrame indexed and labelled by layer, in the given order. ``attrs``: ``n_samples``
    (rows used), ``n_common`` (rows shared), ``step``, ``features`` (resolved feature per layer)."""
    layers = _check_layers(store, model, layers, 2)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int | np.integer) or max_samples < MIN_SAMPLES:
        raise CompareError(f"max_samples must be an integer of at least {MIN_SAMPLES}, got {max_samples!r}")
    step = _resolve_step(store, model, layers, step)
    spec = FeatureSpec.parse(feature)
    runs, ids, desc = _filter(run_ids, sample_ids)
    versions = {layer: store.data_version(model, layer, runs) for layer in layers}
    report = progress or _no_progress
    payload = {"what": "cka", "v": _VERSION, "model": model, "layers": layers, "step": step,
               "versions": versions, "feature": spec.to_dict(), "filter": desc, "max_samples": int(max_samples),
               "seed": int(seed)}

    def compute() -> pd.DataFrame:
        common, mats, feats = _aligned(store, model, layers, step, spec, runs, ids, versions, report)
        rows = np.arange(len(common))
        if len(rows) > max_samples:
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=int(max_samples), replace=False))
        report(0.85, f"CKA of {len(layers)} layers on {len(rows):,} samples")
        matrix = cka_matrix([m[rows] for m in mats])
        frame = pd.DataFrame(matrix, index=pd.Index(layers, name="layer"), columns=list(layers))
        frame.attrs.update(n_samples=int(len(rows)), n_common=int(len(common)), step=int(step),
                           features={layer: f.spec.id for layer, f in zip(layers, feats, strict=True)})
        return frame

    frame = _cached(store, model, "cka", payload, compute)
    report(1.0, "done")
    if "layer" in frame.columns:  # read back from Parquet: the index was stored as a column
        frame = frame.set_index("layer")
    return frame


def neighbour_agreement(store, model: str, layer_a: str, layer_b: str, step: int | None = None, k: int = 10,
                        run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None,
                        metric: str = "cosine", feature: FeatureSpec | str | None = None,
                        progress: Progress | None = None) -> pd.DataFrame:
    """Per sample, the share of its `k` nearest neighbours (in each layer's feature space, under `metric`)
    that `layer_a` and `layer_b` have in common.

    Returns a DataFrame (sample_id, overlap) in store order; ``attrs``: ``mean`` (mean overlap), ``chance``
    (the mean overlap of random neighbourhoods, k / (N - 1)), ``k``, ``metric``, ``step``, ``n_samples``."""
    layers = _check_layers(store, model, [layer_a, layer_b], 2)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise CompareError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    step = _resolve_step(store, model, layers, step)
    spec = FeatureSpec.parse(feature)
    runs, ids, desc = _filter(run_ids, sample_ids)
    pair = sorted(layers)  # symmetric: one cache entry per pair
    versions = {layer: store.data_version(model, layer, runs) for layer in pair}
    report = progress or _no_progress
    payload = {"what": "knn-agreement", "v": _VERSION, "model": model, "layers": pair, "step": step,
               "versions": versions, "feature": spec.to_dict(), "filter": desc, "k": int(k), "metric": metric}

    def compute() -> pd.DataFrame:
        common, (xa, xb), _ = _aligned(store, model, pair, step, spec, runs, ids, versions, report)
        if int(k) >= len(common):
            raise CompareError(f"k={k} needs more than {k} samples; the layers share {len(common)}")
        report(0.85, f"{k} nearest neighbours of {len(common):,} samples in both layers")
        overlap = knn_overlap(xa, xb, int(k), metric)
        frame = pd.DataFrame({"sample_id": common, "overlap": overlap})
        frame.attrs.update(mean=float(overlap.mean()), chance=float(k / (len(common) - 1)), k=int(k),
                           metric=metric, step=int(step), n_samples=int(len(common)))
        return frame

    frame = _cached(store, model, "knn-agreement", payload, compute)
    report(1.0, "done")
    return frame


# -- reading the results (pure pandas: no store, no app) -----------------------------------------------------

def least_similar_pair(cka: pd.DataFrame) -> tuple[str, str]:
    """The pair of different layers with the lowest CKA in a `layer_similarity` matrix (the most interesting
    to look at first), as (row layer, column layer) with the row first in the matrix's order. NaN entries are
    skipped; among equal values the first in row order wins."""
    m = cka.to_numpy(dtype=float).copy()
    m[np.tril_indices_from(m)] = np.inf
    m[~np.isfinite(m)] = np.inf
    i, j = np.unravel_index(int(np.argmin(m)), m.shape)
    names = list(cka.index)
    return names[i], names[j]


def _labels_of(agreement: pd.DataFrame, labels: pd.Series) -> np.ndarray:
    """The label of every row of ``agreement`` (NaN where ``labels``, indexed by sample_id, has none)."""
    return labels.reindex(agreement["sample_id"]).to_numpy()


def agreement_by_label(agreement: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """Mean neighbour agreement and sample count per label, least agreeing first (ties: by label).

    ``agreement``: a `neighbour_agreement` frame (sample_id, overlap); ``labels``: each sample's label (class
    or prompt), indexed by sample_id. Samples without a label count under ``"(none)"``. Returns (label, mean,
    samples), labels as strings."""
    named = pd.Series(_labels_of(agreement, labels)).fillna("(none)").astype(str).to_numpy()
    grouped = agreement.assign(label=named).groupby("label", sort=False)["overlap"]
    out = pd.DataFrame({"mean": grouped.mean(), "samples": grouped.size()}).reset_index()
    return out.sort_values(["mean", "label"], kind="stable").reset_index(drop=True)


def most_disagreeing(agreement: pd.DataFrame, labels: pd.Series, n: int) -> pd.DataFrame:
    """The ``n`` samples whose neighbourhoods differ most between the two layers of a `neighbour_agreement`
    frame: lowest overlap first; among equal overlaps one sample per label in turn (many samples often tie at
    0, and a run of one class would hide the others), then the frame's (store) order.

    ``labels``: each sample's label, indexed by sample_id (a sample without one forms its own group of
    unlabelled samples). Returns (sample_id, label, overlap); label is NaN where there is none."""
    frame = pd.DataFrame({"sample_id": agreement["sample_id"].to_numpy(),
                          "label": _labels_of(agreement, labels),
                          "overlap": agreement["overlap"].to_numpy(),
                          "order": np.arange(len(agreement))})
    frame["turn"] = frame.groupby(["overlap", "label"], dropna=False).cumcount()
    worst = frame.sort_values(["overlap", "turn", "order"], kind="stable").head(max(int(n), 0))
    return worst[["sample_id", "label", "overlap"]].reset_index(drop=True)
