"""Downloads of the Explore page: the selection as CSV/Parquet, its images as ZIP, the map as HTML.

Each function builds its file only when the user clicks (Streamlit calls ``data`` callables lazily).
What is exported is an `ExportSet`: the selected sample with its neighbours (each with its role, rank and
distance, and the space the distances were measured in), a lasso/box selection, or the whole view.
The PNG of the map is drawn by the browser (plotly.js ``downloadImage``), not here; `map_title` is its title.
The map's figure and HTML are drawn by `pipeline.figures` (the report draws its map there too).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import views
from pipeline import figures
from store import schema

MAX_ZIP_IMAGES = 5000
MAX_HTML_THUMBS = figures.MAX_HTML_THUMBS  # hover thumbnails are inlined in the HTML: ~0.2-3 kB each
ROLES = ("selected", "kNN", "manual", "lasso", "view")
# the export's own columns, after sample_id: what each row is in the export and how far from the selected one
EXPORT_COLUMNS = ("role", "rank", "distance", "neighbour_space", "distance_metric")


@dataclass(frozen=True)
class ExportSet:
    """What an export holds, in order: point ids, each one's role (``ROLES``) and, for a neighbourhood, its
    rank (0: the selected sample, then 1, 2, ... by distance) and distance from the selected sample, measured
    in ``space`` ("activation" or "map") under ``metric``."""

    ids: tuple[str, ...]
    roles: tuple[str, ...]
    ranks: tuple[int | None, ...] = ()
    distances: tuple[float | None, ...] = ()
    space: str | None = None
    metric: str | None = None

    def __post_init__(self):
        n = len(self.ids)
        if len(self.roles) != n or (self.ranks and len(self.ranks) != n) or (
                self.distances and len(self.distances) != n):
            raise ValueError("an export set needs one role (and rank and distance, if any) per id")

    def __len__(self) -> int:
        return len(self.ids)

    def only(self, ids) -> ExportSet:
        """The rows of these ids (the first row of each), in this set's order."""
        keep, seen = set(ids), set()
        rows = [i for i, s in enumerate(self.ids) if s in keep and not (s in seen or seen.add(s))]
        pick = lambda values: tuple(values[i] for i in rows) if values else ()  # noqa: E731
        return ExportSet(pick(self.ids), pick(self.roles), pick(self.ranks), pick(self.distances), self.space,
                         self.metric)


def plain_set(ids, role: str) -> ExportSet:
    """A set without a selected sample: a lasso/box selection ("lasso") or the whole view ("view")."""
    ids = tuple(str(s) for s in ids)
    return ExportSet(ids, (role,) * len(ids))


def neighbourhood_set(selected: str, knn, knn_distances, manual, manual_distances, *, space: str,
                      metric: str) -> ExportSet:
    """The selected sample (rank 0), then its kNN and manual neighbours ranked by distance (ties: kNN first,
    in the panel's order). In map space the distance is Euclidean on the 2-D map whatever ``metric`` says."""
    rows = [(s, "kNN", float(d)) for s, d in zip(knn, knn_distances, strict=True)]
    rows += [(s, "manual", float(d)) for s, d in zip(manual, manual_distances, strict=True)]
    rows.sort(key=lambda r: r[2])  # stable: equal distances keep kNN before manual
    return ExportSet(
        ids=(selected, *(s for s, _, _ in rows)), roles=("selected", *(r for _, r, _ in rows)),
        ranks=tuple(range(len(rows) + 1)), distances=(0.0, *(d for _, _, d in rows)), space=space,
        metric="euclidean" if space == "map" else metric)


def _as_set(chosen) -> ExportSet:
    return chosen if isinstance(chosen, ExportSet) else plain_set(chosen, "view")


def selection_frame(view: views.View, chosen: ExportSet | list[str]) -> pd.DataFrame:
    """One row per point of ``chosen`` (in its order): its role, rank and distance, its metadata, the view's
    layer and step, and its map coordinates. A bare list of ids is exported as the whole view ("view").

    The metadata columns are the samples table's plain values (``store.schema.SAMPLE_VOCAB.table``) except
    its storage paths (`image_path` names the Parquet part that holds the PNG inside the store, not an image
    a reader of the export could open: the Images (ZIP) export names each image file instead)."""
    chosen = _as_set(chosen)
    rows = view.rows(list(chosen.ids))
    frame = view.frame.iloc[rows]
    keep = [c for c in schema.SAMPLE_VOCAB.table if c in frame.columns and schema.SAMPLE_VOCAB[c].role != "path"]
    out = frame[keep].reset_index(drop=True)
    n = len(out)
    extra = {
        "role": list(chosen.roles),
        "rank": pd.array(list(chosen.ranks) if chosen.ranks else [None] * n, dtype="Int64"),
        "distance": np.array([np.nan if d is None else d for d in chosen.distances] if chosen.distances
                             else [np.nan] * n, dtype=float),
        "neighbour_space": [chosen.space] * n,
        "distance_metric": [chosen.metric] * n,
    }
    for i, name in enumerate(EXPORT_COLUMNS):
        out.insert(1 + i, name, extra[name])
    out.insert(1 + len(EXPORT_COLUMNS), "layer", view.layer)
    # a view of all steps carries each point's step, sigma and timestep; a one-step view has them once
    at = 2 + len(EXPORT_COLUMNS)
    for i, k in enumerate(("step", "sigma", "timestep")):
        if k in frame.columns:
            out.insert(at + i, k, frame[k].to_numpy())
        elif k == "step":
            out.insert(at, k, view.step)
        elif view.step_info.get(k) is not None:
            out[k] = view.step_info[k]
    out["x"] = view.xy[rows, 0]
    out["y"] = view.xy[rows, 1]
    return out


def selection_csv(view: views.View, chosen: ExportSet | list[str]) -> bytes:
    return selection_frame(view, chosen).to_csv(index=False).encode()


def selection_parquet(view: views.View, chosen: ExportSet | list[str]) -> bytes:
    buf = io.BytesIO()
    selection_frame(view, chosen).to_parquet(buf, index=False)
    return buf.getvalue()


def image_name(sample_id: str) -> str:
    """The PNG's path inside the ZIP (sample ids are '<run_id>-<index>'; anything else a file name cannot
    hold is replaced)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(sample_id))
    return f"images/{safe}.png"


def images_zip(store, view: views.View, chosen: ExportSet | list[str]) -> bytes:
    """Full-size PNGs of the selection plus ``metadata.csv`` (the selection export's columns), whose
    `image_file` column names each row's PNG in the ZIP (empty where the store has no image)."""
    chosen = _as_set(chosen)
    if len(chosen) > MAX_ZIP_IMAGES:
        raise ValueError(f"at most {MAX_ZIP_IMAGES} images per ZIP, got {len(chosen)}")
    meta = selection_frame(view, chosen)
    ids = meta["sample_id"].tolist()
    pngs = store.images(ids)
    names = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        written = set()
        for sid, png in zip(ids, pngs, strict=True):
            name = image_name(sid) if png is not None else ""
            if png is not None and name not in written:  # a sample at several steps: one image
                zf.writestr(name, png)
                written.add(name)
            names.append(name)
        zf.writestr("metadata.csv", meta.assign(image_file=names).to_csv(index=False))
    return buf.getvalue()


def map_title(view: views.View, coloring_title: str | None = None) -> str:
    """The title of an exported map: model, layer, step (and sigma), number of points, and the colouring."""
    step = "all steps" if view.all_steps else f"step {view.step}"
    sigma = view.step_info.get("sigma") if not view.all_steps else None
    if sigma is not None and not pd.isna(sigma):
        step += f" · σ {float(sigma):.3g}"
    what = f"{len(view):,} points" if view.all_steps else f"{len(view):,} samples"
    title = f"{view.model} · {view.layer} · {step} · {what}"
    return title + (f" · colour: {coloring_title}" if coloring_title else "")


def map_figure(view: views.View, coloring: views.Coloring) -> go.Figure:
    """The map as a plotly figure with hover text; each point's `customdata` is its row in the view."""
    payload = views.color_payload(coloring)
    x, y, hover, title = view.xy[:, 0], view.xy[:, 1], figures.hover_text(view.frame), map_title(view, coloring.title)
    if payload["kind"] == "numeric":
        return figures.map_figure(x, y, hover, title, values=payload["values"], value_title=coloring.title)
    return figures.map_figure(x, y, hover, title, codes=payload["codes"], names=payload["names"],
                              colors=payload["colors"])


def map_html(view: views.View, coloring: views.Coloring, store=None) -> bytes:
    """A standalone interactive HTML file (plotly.js inlined, so it opens offline). With `store`, and at most
    `MAX_HTML_THUMBS` points, hovering a point also shows its thumbnail, inlined as WebP."""
    fig = map_figure(view, coloring)
    thumbs = None
    if store is not None and len(view) <= MAX_HTML_THUMBS:
        thumbs = store.thumbs(view.frame["sample_id"].astype(str).tolist())
    elif store is not None:
        fig.update_layout(title=fig.layout.title.text + f"<br><sup>hover thumbnails are kept for maps of up to "
                          f"{MAX_HTML_THUMBS:,} points</sup>")
    return figures.map_html(fig, thumbs)
