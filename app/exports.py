"""Downloads of the Explore page: the selection as CSV/Parquet, its images as ZIP, the map as HTML.

Each function builds its file only when the user clicks (Streamlit calls ``data`` callables lazily).
The PNG of the map is drawn by the browser (plotly.js ``downloadImage``), not here.
"""

from __future__ import annotations

import io
import zipfile

import pandas as pd
import plotly.graph_objects as go

from app import views

MAX_ZIP_IMAGES = 5000
_EXPORT_COLUMNS = ("sample_id", "model", "run_id", "index", "seed", "class_id", "class_name", "prompt",
                   "prompt_index", "category", "label", "num_steps", "width", "height", "image_path")


def selection_frame(view: views.View, sample_ids: list[str]) -> pd.DataFrame:
    """The metadata of ``sample_ids`` (in that order) with their map coordinates and the view's step."""
    rows = view.rows(sample_ids)
    frame = view.frame.iloc[rows]
    out = frame[[c for c in _EXPORT_COLUMNS if c in frame.columns]].reset_index(drop=True)
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
    """The map as a plotly figure with hover text (for the standalone HTML: no server, no thumbnails)."""
    f = view.frame
    hover = (f["label"].astype(str) + "<br>seed " + f["seed"].astype(str) + " · " + f["run_id"].astype(str)
             + " #" + f["index"].astype(str)).to_numpy()
    x, y = view.xy[:, 0], view.xy[:, 1]
    fig = go.Figure()
    payload = views.color_payload(coloring)
    if payload["kind"] == "numeric":
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", text=hover, hoverinfo="text", name=coloring.title,
                                   marker=dict(size=5, color=payload["values"], colorscale="Viridis",
                                               showscale=True, colorbar=dict(title=coloring.title))))
    else:
        codes = pd.Series(payload["codes"])
        for code, (name, color) in enumerate(zip(payload["names"], payload["colors"], strict=True)):
            rows = codes.index[codes == code].to_numpy()
            if len(rows) == 0:
                continue
            fig.add_trace(go.Scattergl(x=x[rows], y=y[rows], mode="markers", text=hover[rows], hoverinfo="text",
                                       name=name, marker=dict(size=5, color=color)))
    step = f"step {view.step}"
    if view.step_info.get("sigma") is not None:
        step += f" · σ {float(view.step_info['sigma']):.3g}"
    fig.update_layout(
        title=f"{view.model} · {view.layer} · {step} · {len(view):,} samples · colour: {coloring.title}",
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), template="plotly_white",
        legend=dict(itemsizing="constant"), hovermode="closest", dragmode="pan",
    )
    return fig


def map_html(view: views.View, coloring: views.Coloring) -> bytes:
    """A standalone interactive HTML file (plotly.js inlined, so it opens offline)."""
    return map_figure(view, coloring).to_html(include_plotlyjs=True, full_html=True,
                                              config={"scrollZoom": True, "displaylogo": False}).encode()
