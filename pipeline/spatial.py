"""Inside the feature map: where in the image a layer's features live, for a sample and its neighbours.

A map point is a whole image reduced to one vector; here the vector is opened up again. For one layer at one
step and a few samples (the selected one first, then its neighbours), from their full (C, H, W) feature maps:

* `channel_norm`: the L2 norm over channels at every location (where the layer responds strongly);
* `fit_pca3` / `pca_colours`: a 3-component PCA of the feature vectors of *every location of every map of
  the view*, fitted once, so that one colour means one direction of feature space in every image of the view
  (per-image PCAs would colour the same part differently in each image);
* `correspondence`: the cosine similarity of every location's feature vector to one query vector (a clicked
  location of the selected sample): where "the same part" lies in the other images;
* `channel_summary`: the distribution of the activation's channels (the per-channel means, the vector a map
  point is built from, as a histogram) and the top channels by mean magnitude, with their spatial maps.

These are pure numpy functions of arrays. `load_maps` fetches the maps: from the store when the layer is
stored full (``reduce="full"``), else recomputed from each sample's seed and condition through its run's
generator (`pipeline.edit.Editor`: generation is deterministic per sample), and says which. `spatial_view`
assembles everything a page shows. Maps of text-to-image models are at latent resolution; every map covers the
whole image, so `upsample` lays it over the decoded image whatever the two sizes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from store.lru import LRU

log = logging.getLogger(__name__)

__all__ = ["SpatialError", "PCA3", "FeatureMaps", "SpatialView", "channel_norm", "fit_pca3", "pca_colours",
           "location_vector", "correspondence", "channel_summary", "upsample", "colourize", "overlay",
           "location_at", "load_maps", "spatial_view", "UPSAMPLING"]

UPSAMPLING = ("nearest", "bilinear")
MAX_PCA_ROWS = 200_000  # locations the PCA is fitted on (a fixed subset above this)
Progress = Callable[[str], None]


class SpatialError(ValueError):
    """A spatial-view request that cannot be served, with a message meant for the user."""


def _check_map(fmap: np.ndarray, what: str = "feature map") -> np.ndarray:
    fmap = np.asarray(fmap, dtype=np.float32)
    if fmap.ndim != 3 or min(fmap.shape) < 1:
        raise SpatialError(f"a {what} must be (channels, height, width), got shape {fmap.shape}")
    return fmap


# -- the measures (pure numpy) --------------------------------------------------------------------------------

def channel_norm(fmap: np.ndarray) -> np.ndarray:
    """(H, W): the L2 norm of the C channel values at every location."""
    fmap = _check_map(fmap)
    return np.sqrt(np.einsum("chw,chw->hw", fmap, fmap, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class PCA3:
    """A 3-component PCA of feature vectors, with the value range each component is scaled to [0, 1] by."""

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (3, C), rows orthonormal (fewer than 3 real ones are zero rows)
    lo: np.ndarray  # (3,) 1st percentile of each component's scores over the fitted maps
    hi: np.ndarray  # (3,) 99th percentile
    explained: np.ndarray  # (3,) share of variance of each component

    def scores(self, fmap: np.ndarray) -> np.ndarray:
        """(H, W, 3) component scores of every location of a (C, H, W) map."""
        fmap = _check_map(fmap)
        if fmap.shape[0] != len(self.mean):
            raise SpatialError(f"this PCA was fitted on {len(self.mean)} channels, the map has {fmap.shape[0]}")
        flat = fmap.reshape(fmap.shape[0], -1).T - self.mean
        return (flat @ self.components.T).reshape(fmap.shape[1], fmap.shape[2], 3)


def _locations(maps: Sequence[np.ndarray]) -> np.ndarray:
    maps = [_check_map(m) for m in maps]
    if not maps:
        raise SpatialError("no feature maps to fit the colours on")
    channels = {m.shape[0] for m in maps}
    if len(channels) > 1:
        raise SpatialError(f"the maps have different channel counts {sorted(channels)}: they are not one layer")
    return np.concatenate([m.reshape(m.shape[0], -1).T for m in maps])


def fit_pca3(maps: Sequence[np.ndarray], seed: int = 0) -> PCA3:
    """The PCA of every location's feature vector over all `maps` (one layer; sizes may differ), fitted once
    for a view so that colours mean the same across its samples."""
    X = _locations(maps).astype(np.float64)
    if len(X) > MAX_PCA_ROWS:
        X = X[np.random.default_rng(seed).choice(len(X), MAX_PCA_ROWS, replace=False)]
    mean = X.mean(axis=0)
    Xc = X - mean
    _u, s, vt = np.linalg.svd(Xc, full_matrices=False)
    comps = np.zeros((3, X.shape[1]))
    k = min(3, len(vt))
    comps[:k] = vt[:k]
    for i in range(k):  # a deterministic sign: the largest loading positive
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    var = s ** 2
    explained = np.zeros(3)
    if var.sum() > 0:
        explained[:k] = var[:k] / var.sum()
    scores = Xc @ comps.T
    lo, hi = np.percentile(scores, 1, axis=0), np.percentile(scores, 99, axis=0)
    return PCA3(mean=mean.astype(np.float32), components=comps.astype(np.float32), lo=lo.astype(np.float32),
                hi=hi.astype(np.float32), explained=explained.astype(np.float32))


def pca_colours(fmap: np.ndarray, pca: PCA3) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1]: the map's three PCA scores, each scaled by the view's own range (so one colour is
    one direction of feature space in every image the PCA was fitted on)."""
    scores = pca.scores(fmap)
    span = np.where(pca.hi > pca.lo, pca.hi - pca.lo, 1.0)
    return np.clip((scores - pca.lo) / span, 0.0, 1.0).astype(np.float32)


def location_vector(fmap: np.ndarray, row: int, col: int) -> np.ndarray:
    """(C,) the feature vector at (row, col)."""
    fmap = _check_map(fmap)
    _c, h, w = fmap.shape
    if not (0 <= int(row) < h and 0 <= int(col) < w):
        raise SpatialError(f"location ({row}, {col}) is outside the {h}x{w} map")
    return fmap[:, int(row), int(col)].copy()


def correspondence(query: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    """(H, W): the cosine similarity of every location's feature vector to `query` (C,); 0 where a vector is 0."""
    fmap = _check_map(fmap)
    q = np.asarray(query, dtype=np.float64).ravel()
    if len(q) != fmap.shape[0]:
        raise SpatialError(f"the clicked vector has {len(q)} channels, the map {fmap.shape[0]}: not one layer")
    flat = fmap.reshape(fmap.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(flat, axis=0) * np.linalg.norm(q)
    dots = q @ flat
    sim = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return np.clip(sim, -1.0, 1.0).reshape(fmap.shape[1:]).astype(np.float32)


def channel_summary(fmap: np.ndarray, top: int = 6, bins: int = 40) -> dict:
    """The distribution of the activation's channels and its strongest channels.

    ``means`` (C,): each channel's mean over the map (the vector a map point is built from); ``counts`` and
    ``edges``: their histogram; ``top``: the `top` channels by mean absolute activation, strongest first, as
    dicts (channel, magnitude, mean, map: the (H, W) spatial map of that channel)."""
    fmap = _check_map(fmap)
    means = fmap.mean(axis=(1, 2), dtype=np.float64)
    magnitude = np.abs(fmap).mean(axis=(1, 2), dtype=np.float64)
    counts, edges = np.histogram(means, bins=max(1, int(bins)))
    order = np.argsort(-magnitude, kind="stable")[:max(0, int(top))]
    return {"means": means.astype(np.float32), "counts": counts, "edges": edges.astype(np.float32),
            "top": [{"channel": int(c), "magnitude": float(magnitude[c]), "mean": float(means[c]),
                     "map": fmap[c].copy()} for c in order]}


def upsample(grid: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """A (h, w[, k]) grid resized to (H, W[, k]) covering the same image area: ``nearest`` keeps the map's cells
    visible, ``bilinear`` smooths between cell centres."""
    if mode not in UPSAMPLING:
        raise SpatialError(f"unknown upsampling {mode!r}; valid: {list(UPSAMPLING)}")
    g = np.asarray(grid, dtype=np.float32)
    h, w = g.shape[:2]
    H, W = int(size[0]), int(size[1])
    if mode == "nearest":
        rows = np.minimum((np.arange(H) * h) // H, h - 1)
        cols = np.minimum((np.arange(W) * w) // W, w - 1)
        return g[rows][:, cols]
    # cell centres of the target in source coordinates (align_corners=False), clamped at the edges
    y = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    x = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (y - y0), (x - x0)
    if g.ndim == 3:
        fy, fx = fy[:, None, None], fx[None, :, None]
    else:
        fy, fx = fy[:, None], fx[None, :]
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x1] * fx
    bottom = g[y1][:, x0] * (1 - fx) + g[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


# viridis at 9 evenly spaced points (its published anchor values), interpolated linearly
_VIRIDIS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129),
                     (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float32) / 255.0
_DIVERGING = np.array([(59, 76, 192), (141, 176, 254), (221, 221, 221), (244, 154, 123), (180, 4, 38)],
                      dtype=np.float32) / 255.0


def colourize(grid: np.ndarray, lo: float | None = None, hi: float | None = None,
              scheme: str = "viridis") -> np.ndarray:
    """(H, W) values -> (H, W, 3) RGB in [0, 1]: ``viridis`` from `lo` (default: the minimum) to `hi`, or
    ``diverging`` (blue - grey - red) for similarities in [lo, hi] (default [-1, 1])."""
    g = np.asarray(grid, dtype=np.float32)
    table = _VIRIDIS if scheme == "viridis" else _DIVERGING if scheme == "diverging" else None
    if table is None:
        raise SpatialError(f"unknown colour scheme {scheme!r}; valid: viridis, diverging")
    if scheme == "diverging":
        lo, hi = (-1.0 if lo is None else lo), (1.0 if hi is None else hi)
    lo = float(np.nanmin(g)) if lo is None else float(lo)
    hi = float(np.nanmax(g)) if hi is None else float(hi)
    t = np.clip((g - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(g)
    pos = t * (len(table) - 1)
    i0 = np.minimum(np.floor(pos).astype(int), len(table) - 2)
    f = (pos - i0)[..., None]
    return table[i0] * (1 - f) + table[i0 + 1] * f


def overlay(image: np.ndarray, colours: np.ndarray, opacity: float = 0.6, mode: str = "nearest") -> np.ndarray:
    """(H, W, 3) uint8: `colours` ((h, w, 3) in [0, 1], a map's colouring) resized to the image and blended over
    it with `opacity` (0: the image alone, 1: the map alone)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    if not 0.0 <= float(opacity) <= 1.0:
        raise SpatialError(f"opacity must be from 0 to 1, got {opacity!r}")
    big = upsample(np.asarray(colours, dtype=np.float32), img.shape[:2], mode)
    out = img * (1 - float(opacity)) + big * float(opacity)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def location_at(x: float, y: float, image_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the map cell under pixel (x, y) of an image of `image_size` (height, width) that the
    map (height, width) covers."""
    H, W = image_size
    h, w = map_size
    if not (0 <= x < W and 0 <= y < H):
        raise SpatialError(f"pixel ({x:g}, {y:g}) is outside the {W}x{H} image")
    return min(int(y * h / H), h - 1), min(int(x * w / W), w - 1)


# -- fetching the maps ----------------------------------------------------------------------------------------

@dataclass
class FeatureMaps:
    """Full feature maps of some samples at (model, layer, step), in the order asked for."""

    model: str
    layer: str
    step: int
    sample_ids: list[str]
    maps: list[np.ndarray]  # (C, H, W) float32 each
    source: dict[str, str]  # sample id -> "stored" | "recomputed"
    notes: list[str] = field(default_factory=list)  # what was done, in words (recomputation, its generator)

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.maps[self.sample_ids.index(sample_id)]


_RECOMPUTED: LRU[tuple, np.ndarray] = LRU(256, weigh=lambda a: a.nbytes, max_weight=512 << 20)
_GENERATORS = None  # the process's GeneratorCache when the caller passes none (a generator loads once)
_GENERATORS_LOCK = threading.Lock()


def _default_generators():
    global _GENERATORS
    from pipeline.edit import GeneratorCache

    with _GENERATORS_LOCK:
        if _GENERATORS is None:
            _GENERATORS = GeneratorCache()
        return _GENERATORS


def _model_of(store, ids: list[str]) -> tuple[str, dict]:
    frame = store.samples(sample_ids=ids, columns=["sample_id", "model", "run_id"])
    found = dict(zip(frame["sample_id"].astype(str), frame["model"].astype(str), strict=True))
    missing = [s for s in ids if s not in found]
    if missing:
        raise SpatialError(f"unknown sample(s) {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    models = sorted(set(found.values()))
    if len(models) > 1:
        raise SpatialError(f"the samples belong to different models {models}: a view shows one layer of one model")
    return models[0], dict(zip(frame["sample_id"].astype(str), frame["run_id"].astype(str), strict=True))


def load_maps(store, sample_ids: Sequence[str], layer: str, step: int | None = None, *, editor=None,
              generators=None, progress: Progress | None = None, recompute: bool = True) -> FeatureMaps:
    """Full (C, H, W) maps of `sample_ids` at `layer` and `step` (None: the last step; negative counts from it).

    From the store where the layer is stored full; otherwise recomputed from each sample's seed and condition
    by its run's generator (`pipeline.edit.Editor`; `generators` a shared `GeneratorCache`), in one batch per run,
    and remembered in this process. `recompute=False` refuses instead. Raises `SpatialError`."""
    ids = list(dict.fromkeys(str(s) for s in sample_ids))
    if not ids:
        raise SpatialError("no samples given")
    say = progress or (lambda _m: None)
    model, runs = _model_of(store, ids)
    layers = store.layers(model)
    if layer not in layers:
        raise SpatialError(f"unknown layer {layer!r} of model {model!r}; valid: {layers}")
    try:
        acts = store.activations(model, layer, -1 if step is None else int(step), sample_ids=ids)
    except ValueError as e:
        raise SpatialError(str(e)) from None
    if len(acts.layer_shape) < 3:
        raise SpatialError(f"layer {layer!r} is a vector of {acts.layer_shape[0] if acts.layer_shape else 0} "
                           "values (no spatial map): choose a convolutional layer")
    step = int(acts.step)
    maps: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    notes: list[str] = []
    if acts.reduce == "full" and len(acts.shape) == 3:
        for sid, row in zip(np.asarray(acts.sample_ids).astype(str), acts.matrix, strict=True):
            maps[sid] = np.asarray(row, dtype=np.float32).reshape(acts.shape)
            source[sid] = "stored"
    todo = [s for s in ids if s not in maps]
    if todo:
        key = (str(store.root), layer, step)
        cached = {s: _RECOMPUTED.get((*key, s)) for s in todo}
        for s, m in cached.items():
            if m is not None:
                maps[s], source[s] = m, "recomputed"
        todo = [s for s in todo if s not in maps]
    if todo:
        if not recompute:
            raise SpatialError(f"the store keeps {layer!r} as {acts.reduce or 'nothing'}, not the full map, for "
                               f"{len(todo)} sample(s); recomputing is off")
        note = (f"recomputed the full {layer} maps of {len(todo)} sample(s) from their seeds (the store keeps "
                f"{acts.reduce if acts.reduce else 'no activations of this layer for them'})")
        say(note)
        notes.append(note)
        for sid, fmap in _recompute(store, todo, layer, step, editor, generators, say).items():
            maps[sid], source[sid] = fmap, "recomputed"
            _RECOMPUTED.put((str(store.root), layer, step, sid), fmap)
    return FeatureMaps(model=model, layer=layer, step=step, sample_ids=ids, maps=[maps[s] for s in ids],
                       source={s: source[s] for s in ids}, notes=notes)


def _recompute(store, ids, layer, step, editor, generators, say) -> dict[str, np.ndarray]:
    from pipeline.edit import EditError, Editor

    try:
        if editor is None:
            editor = Editor(store.root, generators=generators or _default_generators(), progress=say)
        parents = editor.parents(ids)
        got = editor.sets_activations([([p], p.sample_id) for p in parents], layer, [step])
    except (EditError, ValueError, OSError, RuntimeError) as e:
        raise SpatialError(f"cannot recompute the full maps of {layer!r}: {e}") from None
    out = {}
    for p, by_step in zip(parents, got, strict=True):
        if step not in by_step:
            raise SpatialError(f"the generator of {p.sample_id} did not reach step {step} at {layer!r}")
        out[p.sample_id] = by_step[step].numpy().astype(np.float32).reshape(by_step[step].shape[-3:])
    return out


@dataclass
class SpatialView:
    """Everything the Inside page shows for one layer at one step: maps of the selected sample (first) and its
    neighbours, the view's PCA, each map's channel norm and false colours, and the selected map's summary."""

    maps: FeatureMaps
    pca: PCA3
    norms: list[np.ndarray]  # (H, W) per sample
    colours: list[np.ndarray]  # (H, W, 3) per sample
    norm_range: tuple[float, float]  # one scale for every heatmap of the view
    summary: dict  # channel_summary of the selected sample

    def correspondences(self, row: int, col: int) -> list[np.ndarray]:
        """Cosine-similarity maps of every sample of the view to the selected sample's vector at (row, col)."""
        q = location_vector(self.maps.maps[0], row, col)
        return [correspondence(q, m) for m in self.maps.maps]


def spatial_view(store, sample_ids: Sequence[str], layer: str, step: int | None = None, top: int = 6,
                 **load) -> SpatialView:
    """`load_maps` of the selected sample (first of `sample_ids`) and its neighbours, and what is drawn of them."""
    fm = load_maps(store, sample_ids, layer, step, **load)
    pca = fit_pca3(fm.maps)
    norms = [channel_norm(m) for m in fm.maps]
    lo = float(min(n.min() for n in norms))
    hi = float(max(n.max() for n in norms))
    return SpatialView(maps=fm, pca=pca, norms=norms, colours=[pca_colours(m, pca) for m in fm.maps],
                       norm_range=(lo, hi), summary=channel_summary(fm.maps[0], top=top))


def nearest_samples(store, model: str, layer: str, step: int | None, sample_id: str, k: int = 5,
                    run_ids=None, metric: str = "cosine") -> list[str]:
    """The `k` samples nearest to `sample_id` in the activation space of (layer, step) (the layer's default
    features, `pipeline.features`), nearest first: the neighbours a view shows beside the selected sample."""
    from pipeline.features import load_features
    from pipeline.neighbors import exact_knn

    try:
        f = load_features(store, model, layer, -1 if step is None else int(step), run_ids=run_ids)
    except (ValueError, OSError) as e:
        raise SpatialError(f"no neighbours of {sample_id} at {layer}: {e}") from None
    rows = np.flatnonzero(np.asarray(f.sample_ids).astype(str) == str(sample_id))
    if not len(rows):
        raise SpatialError(f"sample {sample_id} has no activations of {model}/{layer} at step {f.step}")
    want = min(int(k) + 1, len(f.sample_ids))
    idx, _ = exact_knn(f.X[rows[:1]], f.X, want, metric)
    ids = [str(f.sample_ids[i]) for i in idx[0] if str(f.sample_ids[i]) != str(sample_id)]
    return ids[:int(k)]
