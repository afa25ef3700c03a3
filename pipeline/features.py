"""The matrix a projection sees: one row per sample, built from a (model, layer, step) of the store.

``step=ALL_STEPS`` (``"all"``) builds one matrix over every recorded step of the layer instead: its rows are
(sample, step) *points*, named ``f"{sample_id}@{step}"`` (`point_id`; `split_point_id` inverts it), the
steps stacked in order (all samples at the first step, then all at the next...). Sample ids end in
digits and never contain ``@``, so the last ``@`` always separates the step. Standardisation and PCA are fitted
on all points together, so that every step lives in one space and a sample can be followed across steps.

Choices (``FeatureSpec``):

* ``kind="mean"``: the C channel means over space. Invariant to *where* in the image a channel fires, small
  (C values) and always available: a stored ``pool4``/``full`` vector is averaged over its recorded
  ``shape`` (C, h, w); a stored ``mean`` vector already is one.
* ``kind="full"``: the stored vector flattened (the whole map, or its 4x4 pooling): spatial layout counts.
* ``pca=k``: randomized PCA to k dimensions of either, fitted on exactly the selected samples (cached, also on
  disk: it is the slow step for large maps).
* ``standardize=True``: z-score every column first, so that channels with large activations do not dominate.

The default (``kind="auto"``, resolved by ``default_spec`` from the stored vector's size) keeps UMAP's input
small enough for a fit in seconds while losing as little as possible:

* a stored map of at most ``FULL_MAX_DIM`` (1024) values is used whole (``full``): nothing is thrown away;
* a larger one is reduced to its channel means (``mean``), and stored means are used as they are;
* and if that is still wider than ``PCA_ABOVE`` (256) dimensions, PCA to ``DEFAULT_PCA`` (50) follows
  (nearest-neighbour search degrades and slows down in many dimensions; 50 components keep most variance).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from store.derived import digest
from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = [
    "FeatureSpec",
    "FeatureError",
    "FEATURE_KINDS",
    "default_spec",
    "to_features",
    "build_features",
    "features_key",
    "filter_description",
    "ALL_STEPS",
    "point_id",
    "split_point_id",
    "parse_step",
    "step_token",
    "default_step",
]

FEATURE_KINDS = ("auto", "mean", "full")
FULL_MAX_DIM = 1024
PCA_ABOVE = 256
DEFAULT_PCA = 50
MAX_PCA = 1024
ALL_STEPS = "all"


class FeatureError(ValueError):
    """Bad feature parameters or an empty selection (a ValueError, so callers may show the message as is)."""


@dataclass(frozen=True)
class FeatureSpec:
    """How to turn stored activation vectors into the rows UMAP sees (see the module docstring)."""

    kind: str = "auto"
    pca: int | None = None
    standardize: bool = False

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise FeatureError(f"unknown feature kind {self.kind!r}; valid: {list(FEATURE_KINDS)}")
        if self.pca is not None:
            if isinstance(self.pca, bool) or not isinstance(self.pca, int | np.integer):
                raise FeatureError(f"pca must be an integer number of components or None, got {self.pca!r}")
            if not 2 <= int(self.pca) <= MAX_PCA:
                raise FeatureError(f"pca must be between 2 and {MAX_PCA} components, got {self.pca}")
            object.__setattr__(self, "pca", int(self.pca))
        if not isinstance(self.standardize, bool | np.bool_):
            raise FeatureError(f"standardize must be True or False, got {self.standardize!r}")
        object.__setattr__(self, "standardize", bool(self.standardize))

    @property
    def id(self) -> str:
        """Short readable name, safe in file names: ``mean``, ``full+std``, ``full+pca50``, ``auto``."""
        parts = [self.kind]
        if self.standardize:
            parts.append("std")
        if self.pca is not None:
            parts.append(f"pca{self.pca}")
        return "+".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, value: FeatureSpec | Mapping | str | None) -> FeatureSpec:
        """A spec from a spec, a dict, None (auto) or a string: ``mean``, ``full``, ``auto``, ``pca`` (the
        full map, PCA to 50), or an ``id`` such as ``mean+std+pca20``."""
        if value is None:
            return cls()
        if isinstance(value, FeatureSpec):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"kind", "pca", "standardize"}
            if unknown:
                raise FeatureError(f"unknown feature fields {sorted(unknown)}; valid: kind, pca, standardize")
            return cls(**value)
        if not isinstance(value, str) or not value.strip():
            raise FeatureError(f"feature must be a FeatureSpec, a dict or a name, got {value!r}")
        text = value.strip().lower()
        if text == "pca":
            return cls(kind="full", pca=DEFAULT_PCA)
        kind, *mods = text.split("+")
        pca, std = None, False
        for m in mods:
            if m == "std":
                std = True
            elif m.startswith("pca") and m[3:].isdigit():
                pca = int(m[3:])
            else:
                raise FeatureError(f"unknown feature modifier {m!r} in {value!r}; use +std and/or +pca<k>")
        if kind not in FEATURE_KINDS:
            raise FeatureError(f"unknown feature {value!r}; valid: {list(FEATURE_KINDS)} or 'pca', "
                               "optionally with +std and +pca<k> (e.g. 'mean+std+pca20')")
        return cls(kind=kind, pca=pca, standardize=std)


def default_spec(shape: tuple) -> FeatureSpec:
    """The documented default for a stored vector of `shape` ((C,) for means, (C, h, w) for maps)."""
    shape = tuple(int(s) for s in shape)
    stored = int(np.prod(shape)) if shape else 0
    if len(shape) <= 1 or stored > FULL_MAX_DIM:  # stored means are means; big maps become means
        kind, dim = "mean", shape[0] if shape else 0
    else:
        kind, dim = "full", stored
    return FeatureSpec(kind=kind, pca=DEFAULT_PCA if dim > PCA_ABOVE else None)


def resolve_spec(spec: FeatureSpec, shape: tuple) -> FeatureSpec:
    """`spec` with ``kind="auto"`` replaced by the layer's default (its own pca/standardize win if set)."""
    if spec.kind != "auto":
        return spec
    base = default_spec(shape)
    return FeatureSpec(kind=base.kind, pca=spec.pca if spec.pca is not None else base.pca,
                       standardize=spec.standardize)


def channel_means(matrix: np.ndarray, shape: tuple) -> np.ndarray:
    """Channel means of flattened (N, C*h*w) vectors stored with `shape` (C, h, w); (N, C) as is."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 1:
        return matrix
    if int(np.prod(shape)) != matrix.shape[1]:
        raise FeatureError(f"stored vectors have {matrix.shape[1]} values but their shape {shape} says "
                           f"{int(np.prod(shape))}")
    return matrix.reshape(matrix.shape[0], shape[0], -1).mean(axis=2, dtype=np.float64).astype(np.float32)


def standardize(X: np.ndarray) -> np.ndarray:
    """Z-score columns; constant columns become 0 (not NaN)."""
    X = np.asarray(X, dtype=np.float32)
    mu = X.mean(axis=0, dtype=np.float64)
    sd = X.std(axis=0, dtype=np.float64)
    sd[sd == 0] = 1.0
    return ((X - mu) / sd).astype(np.float32)


def pca(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """PCA scores (N, min(k, N, D)) by scikit-learn's randomized solver (exact when k covers the data)."""
    from sklearn.decomposition import PCA

    n, d = X.shape
    k_eff = min(int(k), n, d)
    solver = "randomized" if k_eff < min(n, d) else "full"
    model = PCA(n_components=k_eff, svd_solver=solver, random_state=seed)
    return np.ascontiguousarray(model.fit_transform(X), dtype=np.float32)


def to_features(matrix: np.ndarray, shape: tuple, spec: FeatureSpec, seed: int = 0) -> np.ndarray:
    """The pure-numpy core of `build_features`: stored (N, D) vectors -> the (N, d) feature matrix."""
    spec = resolve_spec(spec, shape)
    X = channel_means(matrix, shape) if spec.kind == "mean" else np.asarray(matrix, dtype=np.float32)
    if spec.standardize:
        X = standardize(X)
    if spec.pca is not None and len(X):
        X = pca(X, spec.pca, seed=seed)
    return np.ascontiguousarray(X, dtype=np.float32)


# -- steps ---------------------------------------------------------------------------------------------------

def point_id(sample_id: str, step: int) -> str:
    """The id of one (sample, step) point of an all-steps matrix: ``f"{sample_id}@{step}"``."""
    return f"{sample_id}@{int(step)}"


def split_point_id(value: str) -> tuple[str, int | None]:
    """(sample_id, step) of a point id; (value, None) for a plain sample id."""
    head, sep, tail = str(value).rpartition("@")
    if sep and head and tail.isdigit():
        return head, int(tail)
    return str(value), None


def parse_step(step) -> int | str | None:
    """A step as the projection functions take it: an int (negative counts from the last step), ``"all"``
    (every step, see the module docstring) or None (the last step). Accepts numeric strings."""
    if step is None or isinstance(step, int | np.integer) and not isinstance(step, bool):
        return None if step is None else int(step)
    if isinstance(step, str):
        text = step.strip().lower()
        if text == ALL_STEPS:
            return ALL_STEPS
        if text.lstrip("-").isdigit():
            return int(text)
    raise FeatureError(f"step must be a step number, {ALL_STEPS!r} (every step) or None (the last), "
                       f"got {step!r}")


def default_step(steps, runs: int | None = None, own: Iterable[int] | None = None) -> int:
    """The step a map opens on: the latest step that at least half of the runs record. `steps`: a
    `Store.steps` frame (a `runs` column: how many runs record each row; `attrs["runs"]`: how many runs there
    are); `runs` overrides that total. Without counts, the last step. 0 for an empty frame.

    Why not simply the last step: maps join runs by step index, so a step that one long run alone records (an
    18-step teacher's step 17) would open on that run alone, while the step most runs share (the demo's step 3:
    the 4-step run, the real digits and the encoded runs) is the comparison. Examples: a 1-step and a 4-step
    run: 3 (each run counts as half); only 1-step runs: 0.

    `own`: the steps one sample's run records (a page about one sample, Inside): that step when the run
    records it, else the run's last step (the teacher's 17 for a teacher sample)."""
    step = _shared_step(steps, runs)
    own = sorted({int(s) for s in own}) if own is not None else []
    return step if not own or step in own else own[-1]


def _shared_step(steps, runs: int | None) -> int:
    if steps is None or not len(steps):
        return 0
    per_step = steps.groupby(steps["step"].astype("int64"))
    if "runs" not in steps:
        return int(max(per_step.groups))
    counts = per_step["runs"].sum()
    total = runs if runs is not None else steps.attrs.get("runs") or int(counts.max())
    shared = counts[2 * counts >= int(total)]
    return int(shared.index.max()) if len(shared) else int(counts.idxmax())


def step_token(step: int | str) -> int | str:
    """The JSON/key form of a resolved step: the int, or ``"all"``."""
    return ALL_STEPS if step == ALL_STEPS else int(step)


# -- keys ----------------------------------------------------------------------------------------------------


def filter_description(run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None) -> dict:
    """Canonical, JSON-able description of a sample filter. A sample-id list is summarised by its count and
    the hash of its sorted ids (the ids themselves are the filter: no array values are hashed)."""
    desc: dict = {"run_ids": None if run_ids is None else sorted({str(r) for r in run_ids})}
    if sample_ids is None:
        desc["sample_ids"] = None
    else:
        ids = sorted({str(s) for s in sample_ids})
        desc["sample_ids"] = {"n": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}
    return desc


def filter_id(desc: dict) -> str:
    """Short id of a filter description: ``all`` when nothing is filtered."""
    if desc.get("run_ids") is None and desc.get("sample_ids") is None:
        return "all"
    return "f" + digest(desc)[:12]


def features_key(data_version: str, model: str, layer: str, step: int | str, spec: FeatureSpec,
                 filt: dict) -> str:
    """Cache key of a feature matrix (file-name safe); `step` is a step number or ``"all"``."""
    payload = {"what": "features", "v": 1, "data_version": data_version, "model": model, "layer": layer,
               "step": step_token(step), "feature": spec.to_dict(), "filter": filt}
    return f"s{step_token(step)}-{spec.id}-{digest(payload)[:16]}"


# -- from the store ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Features:
    """A built feature matrix and where it came from."""

    sample_ids: np.ndarray  # str, (N,): sample ids, or point ids ("<sample_id>@<step>") when step is "all"
    X: np.ndarray  # float32, (N, d)
    spec: FeatureSpec  # resolved (never "auto")
    stored_shape: tuple
    reduce: str
    step: int | str  # the step, or "all"
    key: str


def _feature_bytes(f: Features) -> int:
    return f.X.nbytes


# recent feature matrices of this process, bounded by count and bytes (they can be large)
FEATURE_CACHE: LRU[str, Features] = LRU(6, weigh=_feature_bytes, max_weight=2 << 30)


def _read_pca(store, model, layer, key, sample_ids) -> np.ndarray | None:
    got = store.derived.read("features", model, layer, key)
    if got is None:
        return None
    table, _meta = got
    if table.num_rows != len(sample_ids) or table.column("sample_id").to_pylist() != list(sample_ids):
        return None  # a different sample order or set: recompute rather than join by position
    flat = table.column("vector").combine_chunks()
    width = flat.type.list_size
    return np.asarray(flat.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)


def _write_pca(store, model, layer, key, sample_ids, X, spec, version: str, run_ids) -> None:
    table = pa.table({
        "sample_id": pa.array([str(s) for s in sample_ids], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel(), pa.float32()), X.shape[1]),
    })
    try:
        store.derived.write("features", model, layer, key, table, sources={layer: version}, run_ids=run_ids,
                            meta={"feature": spec.to_dict()})
    except OSError as e:  # a read-only store still works, it just recomputes
        log.warning("could not cache PCA features %s: %s", key, e)


def build_features(store, model: str, layer: str, step: int, spec: FeatureSpec | str | None = None,
                   run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None,
                   data_version: str | None = None, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, X) for one (model, layer, step) and an optional filter; see `load_features`."""
    f = load_features(store, model, layer, step, spec, run_ids, sample_ids, data_version, cache)
    return f.sample_ids, f.X


def load_features(store, model: str, layer: str, step: int, spec: FeatureSpec | str | None = None,
                  run_ids: Iterable[str] | None = None, sample_ids: Iterable[str] | None = None,
                  data_version: str | None = None, cache: bool = True,
                  min_rows: tuple[int, Callable[[int], str]] | None = None) -> Features:
    """The feature matrix of the committed samples of (model, layer, step), rows in the store's order
    (run_id, index); with ``step="all"`` one row per (sample, step) point, steps stacked in order (see the
    module docstring). Cached in memory by an explicit key (data version, model, layer, step, spec, filter);
    PCA results are also cached in the store. Raises `FeatureError` when no sample matches, or when fewer
    rows than ``min_rows[0]`` do (with the message ``min_rows[1](n)``), before anything is computed or cached."""
    spec = FeatureSpec.parse(spec)
    step = parse_step(step)
    step = -1 if step is None else step
    run_ids = None if run_ids is None else [str(r) for r in run_ids]
    sample_ids = None if sample_ids is None else [str(s) for s in sample_ids]
    if sample_ids is not None and not sample_ids:
        raise FeatureError("the sample filter is empty: no sample ids were given")
    filt = filter_description(run_ids, sample_ids)
    version = data_version if data_version is not None else store.data_version(model, layer, run_ids)
    key = features_key(version, model, layer, step, spec, filt)
    if cache and (hit := FEATURE_CACHE.get(key)) is not None:
        _check_rows(len(hit.sample_ids), min_rows)
        return hit

    if step == ALL_STEPS:
        ids, matrix, shape, reduce = _stacked_steps(store, model, layer, run_ids, sample_ids)
    else:
        acts = store.activations(model, layer, step, run_ids=run_ids, sample_ids=sample_ids)
        ids, matrix, shape, reduce = np.asarray(acts.sample_ids).astype(str), acts.matrix, acts.shape, acts.reduce
        step = int(acts.step)
    if len(ids) == 0:
        where = f"model={model!r} layer={layer!r} step={step}"
        if run_ids is not None:
            where += f" runs={run_ids}"
        if sample_ids is not None:
            where += f" and {len(sample_ids)} given sample ids"
        raise FeatureError(f"no samples match the filter ({where})")
    _check_rows(len(ids), min_rows)
    resolved = resolve_spec(spec, shape)
    X = None
    if resolved.pca is not None:
        X = _read_pca(store, model, layer, key, ids)
    if X is None:
        X = to_features(matrix, shape, resolved)
        if resolved.pca is not None:
            _write_pca(store, model, layer, key, ids, X, resolved, version, run_ids)
    f = Features(sample_ids=ids, X=X, spec=resolved, stored_shape=tuple(shape), reduce=reduce, step=step,
                 key=key)
    if cache:
        FEATURE_CACHE.put(f.key, f)
    return f


def _check_rows(n: int, min_rows: tuple[int, Callable[[int], str]] | None) -> None:
    if min_rows is not None and n < min_rows[0]:
        raise FeatureError(min_rows[1](n))


def _stacked_steps(store, model, layer, run_ids, sample_ids) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """(point ids, stacked matrix, stored shape, reduce) over every recorded step: one store read per step."""
    steps = sorted(int(s) for s in store.steps(model, layer)["step"].unique())
    ids, blocks, shape, reduce = [], [], None, ""
    for s in steps:
        try:
            acts = store.activations(model, layer, s, run_ids=run_ids, sample_ids=sample_ids)
        except ValueError as e:  # a step that only other runs recorded (e.g. a 1-step and a 4-step run)
            log.debug("step %s skipped for %s/%s: %s", s, model, layer, e)
            continue
        if not len(acts.sample_ids):
            continue
        if shape is not None and tuple(acts.shape) != shape:
            raise FeatureError(f"{model}/{layer} stores vectors of shape {shape} at one step and "
                               f"{tuple(acts.shape)} at step {s}: they cannot share one map; project one step")
        shape, reduce = tuple(acts.shape), acts.reduce
        ids.append(np.char.add(np.asarray(acts.sample_ids).astype(str), f"@{s}"))
        blocks.append(np.asarray(acts.matrix, dtype=np.float32))
    if not blocks:
        return np.zeros(0, str), np.zeros((0, 0), np.float32), (), ""
    return np.concatenate(ids), np.concatenate(blocks), shape, reduce
