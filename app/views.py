"""A projected view as the browser needs it: point, colour and per-point text files under app/static/views/.

A ``View`` is one projection (model, layer, step, parameters, filter) joined to its samples' metadata.
A view of every step (``step == "all"``) has one point per (sample, step): its ids are point ids
``<sample_id>@<step>`` (``pipeline.features.point_id``), its frame's ``sample_id`` column holds the plain sample
id and ``step``, ``sigma`` and ``timestep`` columns say which step each point is.
Its files are written once per view key (atomically; a second session finds them in place):

* ``<key>.points.json``: ``ids``, ``x``, ``y`` (what the figure needs, nothing else);
* ``<key>.meta.json``: per-point text for the hover card, columnar and dictionary-coded (fetched by the
  browser after the map is drawn);
* ``<key>.color-<colour key>.json``: one colouring (categorical codes + palette + counts, or numbers).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from app import static_files
from pipeline.features import ALL_STEPS, split_point_id
from pipeline.figures import MISSING_COLOR, palette  # one palette for the app's maps and the report
from pipeline.neighbors import FeatureRef
from store import schema

MAX_CATEGORIES_NAMED = 2000  # beyond this many distinct values a column is not offered as a colouring
STEP_CATEGORIES_MAX = 24  # up to this many steps, colour by step is categorical (a legend that hides steps)
# viridis at 0, 1/4, ..., 1: an ordered scale for steps (dark = first/noisiest, yellow = last)
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def sequential(n: int) -> list[str]:
    """``n`` colours along viridis, first to last (ordered values such as steps)."""
    out = []
    for i in range(n):
        t = (i / (n - 1) if n > 1 else 1.0) * (len(_VIRIDIS) - 1)
        j = min(int(t), len(_VIRIDIS) - 2)
        a, b = np.array(_VIRIDIS[j]), np.array(_VIRIDIS[j + 1])
        r, g, bl = (a + (b - a) * (t - j)).round().astype(int)
        out.append(f"#{r:02x}{g:02x}{bl:02x}")
    return out


@dataclass(frozen=True)
class Coloring:
    """One way to colour the map: ``kind`` 'category' (values are labels) or 'numeric'."""

    key: str  # stable id, used in file names and the URL
    title: str
    kind: str
    values: pd.Series = field(repr=False)  # aligned with the view's rows
    order: tuple | None = None  # category order (default: by first appearance sorted)
    colors: tuple | None = None  # one colour per entry of ``order`` (default: the palette)


@dataclass(frozen=True, eq=False)
class View:
    """One projection joined to its samples. Shared between sessions: never mutate its arrays."""

    key: str
    store_key: str
    projection_key: str
    model: str
    layer: str
    step: int | None
    sample_ids: np.ndarray
    xy: np.ndarray
    frame: pd.DataFrame  # samples metadata, row i is sample_ids[i]
    quality: dict
    source: str
    step_info: dict  # step, sigma, timestep of the projected step (for the hover card)
    position: dict = field(repr=False)  # sample_id -> row
    feature: str = ""  # the feature the projection used, resolved (e.g. "full+pca50" for "auto")
    seconds: float | None = None  # how long the projection took
    features: FeatureRef | None = None  # where its points live in activation space (for neighbours)
    _memo: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def points_file(self) -> str:
        return f"{self.key}.points.json"

    @property
    def meta_file(self) -> str:
        return f"{self.key}.meta.json"

    def color_file(self, coloring: Coloring) -> str:
        return f"{self.key}.color-{coloring.key}.json"

    def rows(self, sample_ids) -> list[int]:
        return [self.position[s] for s in sample_ids if s in self.position]

    @property
    def all_steps(self) -> bool:
        """One point per (sample, step) rather than one per sample."""
        return self.step == ALL_STEPS

    def samples(self) -> list[str]:
        """The distinct sample ids of the view, in order (its point ids when one point is one sample)."""
        if not self.all_steps:
            return self.sample_ids.tolist()
        return pd.unique(self.frame["sample_id"]).tolist()

    def _points_of(self) -> dict:
        """sample id -> its rows ordered by step (all-steps views), computed once."""
        if "points_of" not in self._memo:
            order = np.lexsort((self.frame["step"].to_numpy(), self.frame["sample_id"].to_numpy()))
            ids = self.frame["sample_id"].to_numpy()[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            self._memo["points_of"] = {ids[a]: order[a:b] for a, b in zip(starts, np.r_[starts[1:], len(ids)],
                                                                           strict=True)}
        return self._memo["points_of"]

    def expand(self, ids) -> list[str]:
        """Ids of this view for sample or point ids: a sample id stands for all its points in an all-steps
        view; ids not in the view are dropped."""
        if not self.all_steps:
            return [s for s in ids if s in self.position]
        points = self._points_of()
        out = []
        for s in ids:
            if s in self.position:
                out.append(s)
            elif s in points:
                out.extend(self.sample_ids[points[s]].tolist())
        return out

    def locate(self, some_id: str | None) -> str | None:
        """The id in this view that stands for a sample or point id of another view (None if none): a sample
        becomes its point at the last step; a point becomes its sample when this view has one step."""
        if some_id is None or some_id in self.position:
            return some_id
        if self.all_steps:
            rows = self._points_of().get(some_id)
            return None if rows is None else str(self.sample_ids[rows[-1]])
        sample, step = split_point_id(some_id)
        return sample if step is not None and sample in self.position else None

    def trajectory(self, point: str | None) -> list[str]:
        """The points of ``point``'s sample at every step, in step order ([] outside all-steps views)."""
        if not self.all_steps or point not in self.position:
            return []
        sample = self.frame["sample_id"].iat[self.position[point]]
        return self.sample_ids[self._points_of()[sample]].tolist()

    def counts(self, column: str) -> pd.Series:
        """Samples per value of a metadata column (missing values as "(none)"), largest first; computed once."""
        key = ("counts", column)
        if key not in self._memo:
            col = self.frame[column].astype("object")
            self._memo[key] = col.where(col.notna(), "(none)").value_counts()
        return self._memo[key]


def view_key(projection_key: str, extra: str = "") -> str:
    return hashlib.sha1(f"{projection_key}|{extra}".encode()).hexdigest()[:20]


def make_view(*, store_key: str, projection_key: str, model: str, layer: str, step: int | str | None,
              sample_ids, xy, samples: pd.DataFrame, quality: dict | None, source: str,
              step_info: dict | None = None, extra_key: str = "", feature: str = "",
              seconds: float | None = None, steps: pd.DataFrame | None = None,
              features: FeatureRef | None = None) -> View:
    """Join a projection to its samples' metadata (rows missing from ``samples`` are dropped). For a map of
    every step (``step="all"``, point ids ``<sample_id>@<step>``), ``steps`` (step, sigma, timestep) gives
    each point's sigma and timestep."""
    ids = np.asarray(sample_ids).astype(str)
    xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
    meta = samples.set_index("sample_id", drop=False)
    if step == ALL_STEPS:
        parts = [split_point_id(s) for s in ids.tolist()]
        bare = np.array([sample for sample, _ in parts], dtype=object)
        point_steps = pd.Series([step for _, step in parts], dtype="float64")
    else:
        bare, point_steps = ids, None
    keep = pd.Index(bare).isin(meta.index)  # hashed: np.isin on strings is quadratic
    ids, xy = ids[keep], xy[keep]
    frame = meta.loc[bare[keep]].reset_index(drop=True)
    if point_steps is not None:
        frame["step"] = point_steps[keep].to_numpy().astype("int64")
        first = (steps if steps is not None else pd.DataFrame({"step": []})).drop_duplicates("step")
        for col in ("sigma", "timestep"):
            values = first.set_index("step")[col] if col in first else pd.Series(dtype="float64")
            frame[col] = frame["step"].map(values).astype("float64")
    return View(
        key=view_key(projection_key, extra_key), store_key=store_key, projection_key=projection_key, model=model,
        layer=layer, step=step, sample_ids=ids, xy=xy, frame=frame, quality=dict(quality or {}), source=source,
        step_info=dict(step_info or {}), position={s: i for i, s in enumerate(ids.tolist())}, feature=feature,
        seconds=seconds, features=features,
    )


def _round(values: np.ndarray) -> list[float]:
    span = float(np.nanmax(values) - np.nanmin(values)) if len(values) else 1.0
    digits = max(2, 4 - int(math.floor(math.log10(span))) if span > 0 else 4)
    return np.round(values.astype(np.float64), digits).tolist()


def _coded(series: pd.Series) -> dict:
    """A column as {codes, values}: each distinct value once (labels and prompts repeat a lot)."""
    codes, uniques = pd.factorize(series.astype("object").where(series.notna(), None), use_na_sentinel=True)
    values = [str(v) for v in uniques]
    if (codes < 0).any():
        values.append("")
        codes = np.where(codes < 0, len(values) - 1, codes)
    return {"codes": codes.tolist(), "values": values}


def hover_fields(view: View) -> dict:
    """The per-point text of the hover card: title (label or prompt) and a few fields; constants of the view
    (step, sigma, timestep, layer) once in ``common``."""
    f = view.frame
    out_fields = []
    pairs = f[["category", "label"]].dropna().drop_duplicates()
    redundant = all(str(c) in str(lab) for c, lab in pairs.itertuples(index=False))
    if len(pairs) and not redundant:  # a label such as "207: golden retriever" already names its category
        out_fields.append({"name": "category", **_coded(f["category"])})
    out_fields.append({"name": "seed", "values": [str(int(s)) if pd.notna(s) else "" for s in f["seed"]]})
    out_fields.append({"name": "run", **_coded(f["run_id"])})
    out_fields.append({"name": "index", "values": [int(i) for i in f["index"]]})
    common = [["layer", view.layer]]
    info = view.step_info
    if view.all_steps:  # the step of each point, first: it is what an all-steps map is about
        step_fields = [{"name": "step", **_coded(f["step"].astype(str))}]
        for col in ("sigma", "timestep"):
            if f[col].notna().any():
                text = f[col].map(lambda v: "" if pd.isna(v) else f"{float(v):.4g}")
                step_fields.append({"name": col, **_coded(text)})
        out_fields = step_fields + out_fields
    elif info.get("step") is not None:
        common.append(["step", str(info["step"])])
    if info.get("sigma") is not None and not pd.isna(info["sigma"]):
        common.append(["sigma", f"{float(info['sigma']):.4g}"])
    if info.get("timestep") is not None and not pd.isna(info["timestep"]):
        common.append(["timestep", f"{float(info['timestep']):.4g}"])
    title = _coded(f["label"].where(f["label"].notna(), f["sample_id"]))
    return {"title": title, "fields": out_fields, "common": common}


def write_view_files(view: View) -> None:
    """Write the points and per-point text files of a view unless they are already there."""
    folder = static_files.views_dir(view.store_key)
    points = folder / view.points_file
    if not points.exists():
        static_files.write_json(points, {"ids": view.sample_ids.tolist(), "x": _round(view.xy[:, 0]),
                                         "y": _round(view.xy[:, 1])})
        static_files.prune_views(view.store_key)
    meta = folder / view.meta_file
    if not meta.exists():
        static_files.write_json(meta, hover_fields(view))


def color_payload(coloring: Coloring) -> dict:
    values = coloring.values
    if coloring.kind == "numeric":
        nums = pd.to_numeric(values, errors="coerce").astype("float64")
        finite = nums[np.isfinite(nums)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        return {"kind": "numeric", "title": coloring.title, "min": lo, "max": hi,
                "values": [None if not np.isfinite(v) else round(float(v), 6) for v in nums]}
    labels = values.astype("object").where(values.notna(), "(none)").astype(str)
    order = list(coloring.order) if coloring.order else sorted(pd.unique(labels), key=_natural)
    order += [v for v in pd.unique(labels) if v not in set(order)]
    code_of = {v: i for i, v in enumerate(order)}
    codes = labels.map(code_of).to_numpy()
    counts = np.bincount(codes, minlength=len(order)).tolist()
    colors = list(coloring.colors) if coloring.colors and len(coloring.colors) == len(order) else palette(len(order))
    if "(none)" in code_of:
        colors[code_of["(none)"]] = MISSING_COLOR
    return {"kind": "category", "title": coloring.title, "codes": codes.tolist(), "names": order,
            "colors": colors, "counts": counts, "ordered": coloring.order is not None}


def write_color_file(view: View, coloring: Coloring) -> str:
    path = static_files.views_dir(view.store_key) / view.color_file(coloring)
    if not path.exists():
        static_files.write_json(path, color_payload(coloring))
    return view.color_file(coloring)


def _natural(text: str):
    """Sort "2: two" before "10: ten"."""
    head = text.split(":", 1)[0].strip()
    return (0, int(head), text) if head.isdigit() else (1, 0, text)


# URL key of the colouring by a samples column: its name, but "run" for run_id (links keep working).
_COLUMN_KEYS = {"run_id": "run"}


def _column_colorings() -> dict[str, tuple[str, str]]:
    """key -> (samples column, "category" | "numeric") of every column store/schema.py says can colour the map."""
    return {_COLUMN_KEYS.get(name, name): (name, kind) for name, kind in schema.SAMPLE_VOCAB.colors.items()}


def coloring_keys(frame: pd.DataFrame, all_steps: bool = False, clusters: bool = False) -> list[str]:
    """The colourings offered for the samples of ``frame``, in menu order.

    The label always; the step on a map of every step (when ``frame`` has several, or has no step column);
    prompt clusters where ``clusters``; and each samples column that store/schema.py marks as a colour whose
    values vary, where a category has at most ``MAX_CATEGORIES_NAMED`` values and does not repeat the label.
    """
    keys = ["label"]
    if all_steps and ("step" not in frame.columns or frame["step"].nunique() > 1):
        keys.append("step")
    names, groups, numbers = [], [], []
    for key, (name, kind) in _column_colorings().items():
        if key == "label" or name not in frame.columns:
            continue
        col = frame[name]
        distinct = col.nunique()
        if distinct < 2 or kind == "category" and (distinct > MAX_CATEGORIES_NAMED or col.equals(frame["label"])):
            continue
        if kind == "numeric":
            numbers.append(key)
        else:
            (names if schema.SAMPLE_VOCAB[name].role == "label" else groups).append(key)
    return keys + names + (["cluster"] if clusters else []) + groups + numbers


def colorings(view: View, clusters: tuple[pd.Series, str] | None = None) -> dict[str, Coloring]:
    """The colourings this view offers (``coloring_keys``), by key: class label, step, category, prompt
    cluster, run, numbers.

    ``clusters``: (cluster label per sample_id, clustering key) from ``pipeline.clusters``.
    """
    keys = coloring_keys(view.frame, all_steps=view.all_steps, clusters=clusters is not None)
    return {key: coloring(view, key, clusters) for key in keys}


def coloring(view: View, key: str, clusters: tuple[pd.Series, str] | None = None) -> Coloring | None:
    """The colouring ``key`` of this view, also where its column holds one value here (the sidebar offers
    what the model's samples vary in: colour by run at a step that one run has shows that run, one colour,
    named in the legend); None where the view has nothing to colour by under that key."""
    f = view.frame
    if key == "label":
        has_classes = f["class_id"].notna().any()
        order = tuple(f.drop_duplicates("label").sort_values("class_id")["label"].astype(str)) \
            if has_classes else None
        return Coloring("label", "class" if has_classes else "prompt", "category", f["label"], order)
    if key == "step":
        return step_coloring(f) if "step" in f.columns else None
    if key == "cluster":
        if clusters is None:
            return None
        labels, clustering = clusters
        aligned = labels.reindex(view.sample_ids).reset_index(drop=True)
        order = tuple(sorted(pd.unique(aligned.dropna()), key=_natural))
        short = hashlib.sha1(clustering.encode()).hexdigest()[:12]
        return Coloring(f"cluster-{short}", "prompt cluster", "category", aligned, order)
    column = _column_colorings().get(key)
    if column is None or column[0] not in f.columns:
        return None
    name, kind = column
    # the legend's title is the menu's ("run kind", "index in run"), not the column's name ("run_kind")
    return Coloring(key, coloring_title(key), kind, f[name])


def step_coloring(frame: pd.DataFrame) -> Coloring:
    """Colour by step: ordered categories "step k (σ …)" on a sequential scale, or numbers beyond
    ``STEP_CATEGORIES_MAX`` steps."""
    steps = sorted(int(s) for s in frame["step"].unique())
    if len(steps) > STEP_CATEGORIES_MAX:
        return Coloring("step", "step", "numeric", frame["step"])
    sigma = frame.drop_duplicates("step").set_index("step")["sigma"] if "sigma" in frame else pd.Series()
    names = {s: f"step {s}" + (f" (σ {float(sigma[s]):.3g})" if s in sigma and pd.notna(sigma[s]) else "")
             for s in steps}
    return Coloring("step", "step", "category", frame["step"].map(names), tuple(names[s] for s in steps),
                    tuple(sequential(len(steps))))


_SPECIAL_TITLES = {"label": "class label / prompt", "step": "step", "cluster": "prompt meaning (clusters)"}


def coloring_title(key: str) -> str:
    """How the colour menu names a colouring: the samples column's title from store/schema.py."""
    if key in _SPECIAL_TITLES:
        return _SPECIAL_TITLES[key]
    column = _column_colorings().get(key)
    return schema.SAMPLE_VOCAB[column[0]].title if column else key


COLORING_TITLES = {key: coloring_title(key) for key in (*_SPECIAL_TITLES, *_column_colorings())}
