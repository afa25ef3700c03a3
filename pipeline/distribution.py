"""How one run's samples are distributed against another's in a layer's activation space: does a 1-step student
cover the teacher's (or the real data's) distribution, where does it collapse, per class and overall.

Metrics of a set B (evaluated) against a reference set A, both rows of one feature space:

* **precision, recall** (Kynkäänniemi et al. 2019) on k-NN manifolds: each sample's ball reaches its k-th
  nearest neighbour within its own set (itself excluded). Precision: the share of B inside some ball of A
  (B is realistic); recall: the share of A inside some ball of B (B covers A).
* **density, coverage** (Naeem et al. 2020): density = (1 / kM) Σ_b #{a : b in ball(a)} (about 1 when B is
  distributed like A, above 1 when B crowds A's dense regions); coverage = the share of A whose ball holds
  at least one b (robust to outliers of B).
* **fd**: the Fréchet distance of the two Gaussians fitted to the features, FID's formula
  |μa − μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½, computed in the symmetric eigen form (stable for
  singular covariances). With more dimensions than samples in a set, the last trace is computed without any
  d × d matrix: it is the sum of the singular values of Ca Cbᵀ / √((na − 1)(nb − 1)) (C: the centred rows),
  the same number, exact for any rank.
* **diversity_a, diversity_b**: intra-class diversity, the mean pairwise distance of a set's samples of one
  class; on the ``all`` row, the mean of that over the classes with two or more samples.

All distances are euclidean, computed in blocks of rows by matrix products (float32, on rows centred by the
pair's joint mean to limit rounding): the k-th neighbour radii within each set and one pass over the cross
distances give all four manifold metrics. No search index is built, nothing per sample in Python.

From the store (`compare_runs`): the features of each run at its step come through `pipeline.features`
(stored vectors, channel means for kind ``mean``); standardisation and PCA (the layer's default, or the
``feature`` asked for) are fitted on the two runs of a pair together, so both live in one space. Classes
are the ``label`` of class models and the ``category`` of prompt models. The table of each pair is cached in
the store (`store.derived`, kind ``distribution``) under its data version and every parameter.

Steps: ``step="last"`` (the default) compares each run at its own last recorded step: the samples each run
ends on (an 18-step teacher at step 17, a 4-step student at step 3, a 1-step run at step 0, real images at
the step they were encoded as). An integer K ≥ 0 compares step K of both runs (an error names a run that
did not record it); a negative one counts from each run's own last step (-1 is ``last``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = ["DistributionError", "knn_radii", "manifold_metrics", "frechet_distance", "mean_pairwise_distance",
           "distribution_table", "compare_runs", "class_column", "clear_cache", "COLUMNS", "METRICS", "ALL", "DEFAULT_K",
           "KIND"]

KIND = "distribution"
DEFAULT_K = 5
MAX_K = 100
ALL = "all"  # the class of the overall row
METRICS = ("precision", "recall", "density", "coverage", "fd", "diversity_a", "diversity_b")
COLUMNS = ["run_a", "run_b", "class", *METRICS, "n_a", "n_b", "step_a", "step_b"]
_VERSION = 1  # bump when a computation changes: old cached tables are then never read
_BLOCK = 1024  # rows per block of a distance matrix: 1,024 x 10,000 float32 = 40 MB
Progress = Callable[[float, str], None]


class DistributionError(ValueError):
    """A bad comparison request (unknown run, layer or step, runs of other models, too few samples)."""


# -- distances (pure) ----------------------------------------------------------------------------------------

def _centred(*sets: np.ndarray) -> list[np.ndarray]:
    """The sets as float32 rows minus their joint mean: distances are unchanged, rounding in |x|² + |y|² - 2xy
    much smaller."""
    mats = [np.asarray(s, dtype=np.float64) for s in sets]
    for m in mats:
        if m.ndim != 2:
            raise DistributionError(f"features must be a 2-D matrix, got shape {m.shape}")
    if len({m.shape[1] for m in mats}) > 1:
        raise DistributionError(f"the sets have different widths: {[m.shape[1] for m in mats]}")
    rows = sum(len(m) for m in mats)
    mean = sum(m.sum(axis=0) for m in mats) / max(rows, 1)
    return [np.ascontiguousarray(m - mean, dtype=np.float32) for m in mats]


def _sq(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X)


def _sq_dist(Q: np.ndarray, qq: np.ndarray, R: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Squared euclidean distances (len(Q), len(R)), clipped at 0."""
    d2 = Q @ R.T
    d2 *= -2.0
    d2 += qq[:, None]
    d2 += rr[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _check_k(k, n: int | None = None, what: str = "the set") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise DistributionError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if n is not None and n <= k:
        raise DistributionError(f"{what} has {n} sample(s): k={k} needs more than {k}")
    return int(k)


def _kth_sq(X: np.ndarray, xx: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of every row to its k-th nearest other row (itself excluded by position)."""
    n = len(X)
    out = np.empty(n, np.float32)
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        d2 = _sq_dist(X[s:e], xx[s:e], X, xx)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf
        out[s:e] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return out


def knn_radii(X: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Distance of every row of X to its k-th nearest other row (float64, (N,)): the radius of its ball."""
    (Xc,) = _centred(X)
    k = _check_k(k, len(Xc))
    return np.sqrt(_kth_sq(Xc, _sq(Xc), k).astype(np.float64))


def manifold_metrics(A: np.ndarray, B: np.ndarray, k: int = DEFAULT_K) -> dict[str, float]:
    """Precision, recall, density and coverage of B against the reference A (see the module docstring)."""
    A, B = _centred(A, B)
    k = _check_k(k, len(A), "the reference set")
    _check_k(k, len(B), "the evaluated set")
    aa, bb = _sq(A), _sq(B)
    ra2, rb2 = _kth_sq(A, aa, k), _kth_sq(B, bb, k)
    inside = np.zeros(len(B), np.int64)  # per b: the balls of A that hold it
    nearest = np.full(len(A), np.inf, np.float32)  # per a: squared distance to its nearest b
    reach = np.full(len(A), np.inf, np.float32)  # per a: min over b of d²(a, b) - r_b²; <= 0: inside a ball of B
    for s in range(0, len(B), _BLOCK):
        e = min(len(B), s + _BLOCK)
        d2 = _sq_dist(B[s:e], bb[s:e], A, aa)
        inside[s:e] = np.count_nonzero(d2 <= ra2[None, :], axis=1)
        np.minimum(nearest, d2.min(axis=0), out=nearest)
        d2 -= rb2[s:e, None]
        np.minimum(reach, d2.min(axis=0), out=reach)
    return {"precision": float(np.mean(inside > 0)), "recall": float(np.mean(reach <= 0)),
            "density": float(inside.sum() / (k * len(B))), "coverage": float(np.mean(nearest <= ra2))}


def mean_pairwise_distance(X: np.ndarray) -> float:
    """The mean euclidean distance over the pairs of distinct rows of X (NaN below two rows)."""
    (X,) = _centred(X)
    n = len(X)
    if n < 2:
        return float("nan")
    xx = _sq(X)
    total = 0.0
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        d2 = _sq_dist(X[s:e], xx[s:e], X, xx)
        d2[np.arange(e - s), np.arange(s, e)] = 0.0
        total += float(np.sqrt(d2).sum(dtype=np.float64))
    return total / (n * (n - 1))


def frechet_distance(A: np.ndarray, B: np.ndarray) -> float:
    """FID's formula on the rows of A and B (covariances with n - 1; see the module docstring)."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise DistributionError(f"need two matrices of one width, got shapes {A.shape} and {B.shape}")
    if len(A) < 2 or len(B) < 2:
        raise DistributionError(f"the Fréchet distance needs two or more samples per set, got {len(A)} and {len(B)}")
    mu = A.mean(axis=0) - B.mean(axis=0)
    Ca, Cb = A - A.mean(axis=0), B - B.mean(axis=0)
    na, nb = len(A) - 1, len(B) - 1
    trace_a, trace_b = float(np.einsum("ij,ij->", Ca, Ca)) / na, float(np.einsum("ij,ij->", Cb, Cb)) / nb
    if A.shape[1] > min(len(A), len(B)):
        # the nonzero eigenvalues of Σa Σb are the squared singular values of Ca Cbᵀ / √(na nb)
        cross = float(np.linalg.svd(Ca @ Cb.T / np.sqrt(na * nb), compute_uv=False).sum())
    else:
        w, V = np.linalg.eigh(Ca.T @ Ca / na)
        root = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
        middle = root @ (Cb.T @ Cb / nb) @ root
        cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    return max(float(mu @ mu) + trace_a + trace_b - 2.0 * cross, 0.0)


# -- one pair of sets, overall and per class (pure) ----------------------------------------------------------

def _natural(text: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t]


def _names(labels, n: int) -> np.ndarray:
    if labels is None:
        return np.full(n, "(none)", dtype=object)
    named = pd.Series(list(labels), dtype=object)
    if len(named) != n:
        raise DistributionError(f"{len(named)} labels for {n} rows")
    return named.where(named.notna(), "(none)").astype(str).to_numpy(dtype=object)


def _row(A, B, k: int, div_a: float, div_b: float) -> dict:
    row = dict.fromkeys(("precision", "recall", "density", "coverage", "fd"), np.nan)
    if len(A) > k and len(B) > k:
        row.update(manifold_metrics(A, B, k))
    if len(A) >= 2 and len(B) >= 2:
        row["fd"] = frechet_distance(A, B)
    return {**row, "diversity_a": div_a, "diversity_b": div_b, "n_a": len(A), "n_b": len(B)}


def distribution_table(A: np.ndarray, B: np.ndarray, labels_a=None, labels_b=None, k: int = DEFAULT_K,
                       per_class: bool = True, progress: Progress | None = None) -> pd.DataFrame:
    """The metrics of B against A: the ``all`` row first, then (with `per_class` and labels) one row per
    class of either set in natural order. Columns: class, precision, recall, density, coverage, fd,
    diversity_a, diversity_b, n_a, n_b. A class with k or fewer samples in a set has no manifold metrics
    (NaN), one with fewer than two no fd or diversity. Raises `DistributionError` when a whole set has k or
    fewer samples."""
    A, B = np.asarray(A), np.asarray(B)
    k = _check_k(k, len(A), "the reference set (A)")
    _check_k(k, len(B), "the evaluated set (B)")
    report = progress or (lambda fraction, message: None)
    la, lb = _names(labels_a, len(A)), _names(labels_b, len(B))
    classes = sorted(set(la) | set(lb), key=_natural)
    div_a, div_b = {}, {}
    for c in classes:
        div_a[c] = mean_pairwise_distance(A[la == c])
        div_b[c] = mean_pairwise_distance(B[lb == c])
    mean_of = lambda d: float(np.nanmean(list(d.values()))) if any(np.isfinite(list(d.values()))) else np.nan  # noqa: E731
    report(0.05, f"{len(A):,} against {len(B):,} samples")
    rows = [{"class": ALL, **_row(A, B, k, mean_of(div_a), mean_of(div_b))}]
    if per_class and (labels_a is not None or labels_b is not None):
        for i, c in enumerate(classes):
            if i % 10 == 0:
                report(0.5 + 0.5 * i / len(classes), f"class {i + 1:,} of {len(classes):,}")
            rows.append({"class": c, **_row(A[la == c], B[lb == c], k, div_a[c], div_b[c])})
    return pd.DataFrame(rows, columns=["class", *METRICS, "n_a", "n_b"])


# -- from the store ------------------------------------------------------------------------------------------

_MEMO: LRU[str, pd.DataFrame] = LRU(32)


def clear_cache() -> None:
    """Forget this process's remembered tables (the store's cached ones stay)."""
    _MEMO.clear()


def _run_list(runs) -> list[str]:
    if isinstance(runs, str):
        runs = runs.split(",")
    if runs is None or not isinstance(runs, Iterable):
        raise DistributionError(f"runs must be a list of run ids, got {runs!r}")
    out = [str(r).strip() for r in runs if str(r).strip()]
    dupes = sorted({r for r in out if out.count(r) > 1})
    if dupes:
        raise DistributionError(f"run(s) {dupes} given more than once")
    if len(out) < 2:
        raise DistributionError(f"need two or more runs to compare, got {out}")
    return out


LAST = "last"  # the step request "each run's own last step"


def step_request(step, error: type[ValueError] = ValueError) -> int:
    """A per-run step request as an int: -1 for "last" / None, K otherwise (negative: from each run's own last
    step); `error` for anything else (shared by compare_runs and pipeline.run_pairs)."""
    if step is None or (isinstance(step, str) and step.strip().lower() == LAST):
        return -1
    if isinstance(step, str) and step.strip().lstrip("-").isdigit():
        return int(step.strip())
    if isinstance(step, int | np.integer) and not isinstance(step, bool):
        return int(step)
    raise error(f"step must be a step number or {LAST!r} (each run's own last step), got {step!r}")


def _check(store, model: str, layer: str, runs: list[str]) -> None:
    models = store.models()
    if model not in models:
        raise DistributionError(f"unknown model {model!r}; valid: {models}" if models
                                else "the store holds no model yet")
    table = store.runs()
    model_of = dict(zip(table["run_id"].astype(str), table["model"].astype(str), strict=True))
    mine = sorted(r for r, m in model_of.items() if m == model)
    for r in runs:
        if r not in model_of:
            raise DistributionError(f"unknown run {r!r}; runs of model {model!r}: {mine}")
        if model_of[r] != model:
            raise DistributionError(f"run {r!r} is of model {model_of[r]!r}, not {model!r}: compare runs of one "
                                    f"model; runs of {model!r}: {mine}")
    layers = store.layers(model)
    if layer not in layers:
        raise DistributionError(f"unknown layer {layer!r} of model {model!r}; valid: {layers}")


class _Run:
    """One run's raw features at its step, and its classes."""

    def __init__(self, store, model, layer, run, step, spec):
        from pipeline.features import FeatureError, FeatureSpec, load_features

        try:
            f = load_features(store, model, layer, step, FeatureSpec(kind="full"), run_ids=[run])
        except ValueError as exc:  # a FeatureError, or the store's "step not recorded"
            text = str(exc)
            if isinstance(exc, FeatureError) and text.startswith("no samples match"):
                text = f"it has no samples with activations of {layer!r}"
            raise DistributionError(f"run {run!r}: {text}") from None
        self.run, self.step, self.shape = run, int(f.step), tuple(f.stored_shape)
        self.ids, self.raw = np.asarray(f.sample_ids).astype(str), f.X
        meta = store.samples(model=model, run_ids=[run], columns=["sample_id", "label", "category", "prompt"])
        self.meta = meta.drop_duplicates("sample_id").set_index("sample_id").reindex(self.ids)
        self.spec = spec

    def features(self, resolved) -> np.ndarray:
        from pipeline.features import channel_means

        return channel_means(self.raw, self.shape) if resolved.kind == "mean" else np.asarray(self.raw, np.float32)


def _joint(a: _Run, b: _Run, spec) -> tuple[np.ndarray, np.ndarray, str]:
    """The two runs' features in one space (standardisation and PCA fitted on both), and the spec used."""
    from pipeline.features import pca, resolve_spec, standardize

    if a.shape != b.shape:
        raise DistributionError(f"runs {a.run!r} and {b.run!r} store vectors of different shapes ({a.shape} and "
                                f"{b.shape}) for this layer: they cannot share one space")
    resolved = resolve_spec(spec, a.shape)
    X = np.concatenate([a.features(resolved), b.features(resolved)])
    if resolved.standardize:
        X = standardize(X)
    if resolved.pca is not None:
        X = pca(X, resolved.pca)
    return X[:len(a.ids)], X[len(a.ids):], resolved.id


def class_column(samples: pd.DataFrame) -> str:
    """The samples column that names a sample's class in these metrics: the prompt's ``category`` for prompt
    models, the class ``label`` otherwise."""
    return "category" if "prompt" in samples and samples["prompt"].notna().any() else "label"


def _classes(a: _Run, b: _Run) -> tuple[np.ndarray, np.ndarray]:
    by = class_column(pd.concat([a.meta[["prompt"]], b.meta[["prompt"]]]))
    return a.meta[by].to_numpy(dtype=object), b.meta[by].to_numpy(dtype=object)


def compare_runs(store, model: str, layer: str, runs: Sequence[str] | str, step: int | str | None = "last",
                 k: int = DEFAULT_K, per_class: bool = True, feature=None,
                 progress: Progress | None = None) -> pd.DataFrame:
    """The metrics between runs of one model on `layer`: each run after the first against the first (the
    reference A: precision is the share of the other run inside its manifold, recall the share of it the
    other run covers). One row per (pair, class or ``all``), columns `COLUMNS` (run_a, run_b, class, the
    metrics, n_a, n_b and the step each run was measured at). `step`: ``"last"`` (each run's own last
    step, the default), an integer K (step K of both runs) or a negative integer (from each run's own last
    step). `feature`: as `pipeline.features.FeatureSpec.parse` (None: the layer's default). Cached in the
    store per pair. Raises `DistributionError` with a one-line message."""
    from pipeline.features import FeatureError, FeatureSpec

    runs = _run_list(runs)
    _check(store, model, layer, runs)
    k = _check_k(k)
    request = step_request(step, DistributionError)
    try:
        spec = FeatureSpec.parse(feature)
    except FeatureError as exc:
        raise DistributionError(str(exc)) from None
    report = progress or (lambda fraction, message: None)
    loaded: dict[str, _Run] = {}

    def run_of(r: str) -> _Run:
        if r not in loaded:
            loaded[r] = _Run(store, model, layer, r, request, spec)
            if len(loaded[r].ids) <= k:
                raise DistributionError(f"run {r!r} has {len(loaded[r].ids)} sample(s) at step {loaded[r].step} of "
                                        f"{layer!r}: k={k} needs more than {k}")
        return loaded[r]

    ref, tables = runs[0], []
    pairs = [(ref, other) for other in runs[1:]]
    for i, (a, b) in enumerate(pairs):
        lo, hi = i / len(pairs), (i + 1) / len(pairs)
        say = lambda f, m, lo=lo, hi=hi, a=a, b=b: report(lo + (hi - lo) * f, f"{b} against {a}: {m}")  # noqa: E731
        version = store.data_version(model, layer, [a, b])
        key = "pair-" + digest({"v": _VERSION, "model": model, "layer": layer, "runs": [a, b], "step": request,
                                "version": version, "feature": spec.to_dict(), "k": k,
                                "per_class": bool(per_class)})[:24]
        table = _MEMO.get(key)
        if table is None:
            got = _read(store, model, layer, key)
            if got is None:
                say(0.0, "features")
                ra, rb = run_of(a), run_of(b)
                if request >= 0:
                    for r in (ra, rb):
                        if r.step != request:  # defensive: the store resolves steps per run
                            raise DistributionError(f"run {r.run!r} did not record step {request} of {layer!r}")
                A, B, used = _joint(ra, rb, spec)
                la, lb = _classes(ra, rb)
                got = distribution_table(A, B, la, lb, k, per_class,
                                         progress=lambda f, m, say=say: say(0.1 + 0.9 * f, m))
                got.insert(0, "run_b", b)
                got.insert(0, "run_a", a)
                got["step_a"], got["step_b"] = ra.step, rb.step
                _write(store, model, layer, key, got, version, [a, b], {"feature": used, "k": k})
            table = _MEMO.put(key, got[COLUMNS])
        tables.append(table)
    report(1.0, "done")
    return pd.concat(tables, ignore_index=True).copy()


def _read(store, model, layer, key) -> pd.DataFrame | None:
    try:
        got = store.derived.read(KIND, model, layer, key)
    except (OSError, ValueError) as exc:
        log.warning("cannot read cached distribution metrics %s: %s", key, exc)
        return None
    if got is None or set(COLUMNS) - set(got[0].column_names):
        return None
    return got[0].to_pandas()


def _write(store, model, layer, key, table: pd.DataFrame, version: str, runs: list[str], meta: dict) -> None:
    try:
        store.derived.write(KIND, model, layer, key, table, sources={layer: version}, run_ids=runs, meta=meta)
    except (OSError, ValueError) as exc:  # a read-only store still works: it recomputes
        log.warning("could not cache distribution metrics %s: %s", key, exc)
