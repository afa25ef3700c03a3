"""Downloads of the Explore page: the selection as CSV/Parquet, its images as ZIP, the map as HTML.

Each function builds its file only when the user clicks (Streamlit calls ``data`` callables lazily).
The PNG of the map is drawn by the browser (plotly.js ``downloadImage``), not here.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import views
from store import schema

MAX_ZIP_IMAGES = 5000
MAX_HTML_THUMBS = 5000  # hover thumbnails are inlined in the HTML: ~0.2-3 kB each


def selection_frame(view: views.View, sample_ids: list[str]) -> pd.DataFrame:
    """The metadata of ``sample_ids`` (in that order) with their map coordinates and the view's step.

    The metadata columns are the samples table's plain values (``store.schema.SAMPLE_VOCAB.table``)."""
    rows = view.rows(sample_ids)
    frame = view.frame.iloc[rows]
    out = frame[[c for c in schema.SAMPLE_VOCAB.table if c in frame.columns]].reset_index(drop=True)
    out.insert(1, "layer", view.layer)
    # a view of all steps carries each point's step, sigma and timestep; a one-step view has them once
    for i, k in enumerate(("step", "sigma", "timestep")):
        if k in frame.columns:
            out.insert(2 + i, k, frame[k].to_numpy())
        elif k == "step":
            out.insert(2, k, view.step)
        elif view.step_info.get(k) is not None:
            out[k] = view.step_info[k]
    out["x"] = view.xy[rows, 0]
    out["y"] = view.xy[rows, 1]
    return out


def selection_csv(view: views.View, sample_ids: list[str]) -> bytes:
    return selection_frame(view, sample_ids).to_csv(index=False).encode()


def selection_parquet(view: views.View, sample_ids: list[str]) -> bytes:
    buf = io.BytesIO()
    selection_frame(view, sample_ids).to_parquet(buf, index=False)
    return buf.getvalue()


def images_zip(store, view: views.View, sample_ids: list[str]) -> bytes:
    """Full-size PNGs of the selection plus ``metadata.csv``, whose `image_in_zip` column marks missing images."""
    if len(sample_ids) > MAX_ZIP_IMAGES:
        raise ValueError(f"at most {MAX_ZIP_IMAGES} images per ZIP, got {len(sample_ids)}")
    meta = selection_frame(view, sample_ids)
    ids = meta["sample_id"].tolist()
    pngs = store.images(ids)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for sid, png in zip(ids, pngs, strict=True):
            if png is not None:
                zf.writestr(f"images/{sid}.png", png)
        present = [png is not None for png in pngs]
        zf.writestr("metadata.csv", meta.assign(image_in_zip=present).to_csv(index=False))
    return buf.getvalue()


def map_figure(view: views.View, coloring: views.Coloring) -> go.Figure:
    """The map as a plotly figure with hover text; each point's `customdata` is its row in the view."""
    f = view.frame
    hover = (f["label"].astype(str) + "<br>seed " + f["seed"].astype(str) + " · " + f["run_id"].astype(str)
             + " #" + f["index"].astype(str)).to_numpy()
    x, y = view.xy[:, 0], view.xy[:, 1]
    fig = go.Figure()
    payload = views.color_payload(coloring)
    if payload["kind"] == "numeric":
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", text=hover, hoverinfo="text", name=coloring.title,
                                   customdata=np.arange(len(f)),
                                   marker=dict(size=5, color=payload["values"], colorscale="Viridis",
                                               showscale=True, colorbar=dict(title=coloring.title))))
    else:
        codes = pd.Series(payload["codes"])
        for code, (name, color) in enumerate(zip(payload["names"], payload["colors"], strict=True)):
            rows = codes.index[codes == code].to_numpy()
            if len(rows) == 0:
                continue
            fig.add_trace(go.Scattergl(x=x[rows], y=y[rows], mode="markers", text=hover[rows], hoverinfo="text",
                                       customdata=rows, name=name, marker=dict(size=5, color=color)))
    step = f"step {view.step}"
    if view.step_info.get("sigma") is not None:
        step += f" · σ {float(view.step_info['sigma']):.3g}"
    fig.update_layout(
        title=f"{view.model} · {view.layer} · {step} · {len(view):,} samples · colour: {coloring.title}",
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), template="plotly_white",
        legend=dict(itemsizing="constant"), hovermode="closest", dragmode="pan",
    )
    return fig


def map_html(view: views.View, coloring: views.Coloring, store=None) -> bytes:
    """A standalone interactive HTML file (plotly.js inlined, so it opens offline). With `store`, and at most
    `MAX_HTML_THUMBS` points, hovering a point also shows its thumbnail, inlined as WebP."""
    fig = map_figure(view, coloring)
    script = None
    if store is not None and len(view) <= MAX_HTML_THUMBS:
        thumbs = store.thumbs(view.frame["sample_id"].astype(str).tolist())
        script = _HOVER_THUMBS.replace(
            "THUMBS_JSON", json.dumps([base64.b64encode(t).decode() if t else None for t in thumbs]))
    elif store is not None:
        fig.update_layout(title=fig.layout.title.text + f"<br><sup>hover thumbnails are kept for maps of up to "
                          f"{MAX_HTML_THUMBS:,} points</sup>")
    return fig.to_html(include_plotlyjs=True, full_html=True, post_script=script,
                       config={"scrollZoom": True, "displaylogo": False}).encode()


# Runs after plotly draws the figure ({plot_id} is plotly's placeholder): a thumbnail beside the hovered point.
_HOVER_THUMBS = """
const thumbs = THUMBS_JSON;
const plot = document.getElementById('{plot_id}');
const box = document.createElement('img');
box.id = 'hover-thumb';
box.style.cssText = 'position:fixed;display:none;width:96px;height:96px;object-fit:contain;' +
  'image-rendering:pixelated;background:#fff;border:1px solid #ccc;border-radius:4px;pointer-events:none;z-index:10';
document.body.appendChild(box);
plot.on('plotly_hover', (ev) => {
  const p = ev.points[0], t = thumbs[p.customdata];
  if (!t) { box.style.display = 'none'; return; }
  box.src = 'data:image/webp;base64,' + t;
  const e = ev.event || {}, x = e.clientX || 0, y = e.clientY || 0;
  // left of the point: plotly puts its hover label on the right
  box.style.left = (x > 130 ? x - 112 : x + 16) + 'px';
  box.style.top = Math.max(4, y - 48) + 'px';
  box.style.display = 'block';
});
plot.on('plotly_unhover', () => { box.style.display = 'none'; });
"""
