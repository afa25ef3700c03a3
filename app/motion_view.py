"""What the Motion page reads and remembers: its URL state, the background jobs of its aligned maps
(`pipeline.aligned`) and of the consecutive-layer CKA (`pipeline.compare`), and the figures it draws.

The animation is one plotly figure with a frame per step (or layer): the browser plays it, interpolating every
point's position between frames (plotly transitions), so nothing reruns in Python while it plays. The
selected sample and its neighbours are their own traces, present in every frame, so they stay highlighted
as they move. The small multiples below it are the map component's (`small_multiples`), drawn from files
written here (`multiples_files`): hovering a sample in one frame rings it in all of them, in the browser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import compare_view, data, state, url
from pipeline.figures import PALETTE

SEP = url.SEP  # list separator in the URL
MODES = ("steps", "layers")
SPEEDS = {"slow": 1600, "normal": 800, "fast": 350}  # ms per frame
DEFAULT_K = 8
COLUMNS = 4  # small multiples per row
URL_LOADED = "mot.url_loaded"
URL_VALUES = "mot.url"
OTHER = "#c8c8c8"  # the labels after the palette's (one grey: a legend of that many is not read by colour)


@dataclass(frozen=True)
class MotionSettings:
    """Everything that defines the page's view; all of it round-trips through the URL."""

    model: str
    runs: tuple[str, ...]
    mode: str  # "steps" | "layers"
    layer: str  # the layer animated over its steps
    step: int  # the step whose layers are animated
    layers: tuple[str, ...]  # the layer sequence (network order)
    k: int = DEFAULT_K
    speed: str = "normal"


# ------------------------------------------------------------------------------------------------- URL

def load_url_once() -> dict:
    return url.load_once(URL_LOADED, URL_VALUES, parse_params)


def parse_params(q: dict) -> dict:
    """The page's query parameters; malformed values are left out (the URL is user input)."""
    return {**url.pick(q, ("model", "layer", "sel"), url.parse_str),
            **url.pick(q, ("mode",), url.parse_choice, MODES), **url.pick(q, ("speed",), url.parse_choice, SPEEDS),
            **url.pick(q, ("runs", "layers"), url.parse_list, SEP), **url.pick(q, ("step", "k"), url.parse_int)}


def to_params(s: MotionSettings, all_layers: list[str], selected: str | None) -> dict[str, str]:
    params = {"model": s.model, "mode": s.mode}
    if s.mode == "steps":
        params["layer"] = s.layer
    else:
        params["step"] = str(s.step)
        if list(s.layers) != list(all_layers):
            params["layers"] = SEP.join(s.layers)
    if s.runs:
        params["runs"] = SEP.join(s.runs)
    if s.k != DEFAULT_K:
        params["k"] = str(s.k)
    if s.speed != "normal":
        params["speed"] = s.speed
    if selected:
        params["sel"] = selected  # Explore's selection parameter: a link opens the same sample there
    return state.with_store(params)


def sync_url(s: MotionSettings, all_layers: list[str], selected: str | None) -> None:
    url.sync(to_params(s, all_layers, selected))


# ------------------------------------------------------------------------------------------------- jobs

def aligned_job(path: str, s: MotionSettings, refit: int = 0) -> data.Job:
    """The aligned maps of the view (`pipeline.aligned`), as a background job with progress and cancel."""
    from pipeline import aligned

    runs = list(s.runs) or None
    if s.mode == "steps":
        key = ("motion-steps", data.resolve(path), data.layer_versions(path, s.model, [s.layer], s.runs), s.model, s.layer,
               s.runs, refit)

        def work(job: data.Job):
            return aligned.aligned_steps(data.open_store(path), s.model, s.layer, run_ids=runs,
                                         progress=job.report, cancel=job.cancel, refit=bool(refit))
    else:
        key = ("motion-layers", data.resolve(path), data.layer_versions(path, s.model, s.layers, s.runs), s.model,
               s.layers, s.step, s.runs, refit)

        def work(job: data.Job):
            return aligned.aligned_layers(data.open_store(path), s.model, list(s.layers), s.step, run_ids=runs,
                                          progress=job.report, cancel=job.cancel, refit=bool(refit))

    return data.start_job(key, work)


def cka_job(path: str, s: MotionSettings) -> data.Job:
    """CKA of the layer sequence (Compare layers' job), for its consecutive pairs."""
    return compare_view.cka_job(path, s.model, s.layers, s.step, s.runs)


def consecutive(cka: pd.DataFrame, layers) -> pd.DataFrame:
    """(pair, to, cka): the CKA of each layer with the next one in the sequence."""
    layers = list(layers)
    rows = [(f"{a} → {b}", b, float(cka.loc[a, b])) for a, b in zip(layers[:-1], layers[1:], strict=True)]
    return pd.DataFrame(rows, columns=["pair", "to", "cka"])


def neighbours(path: str, s: MotionSettings, maps, sample_id: str | None) -> list[str]:
    """The selected sample's nearest samples in activation space at the last frame (the final step, or the last
    layer), among the map's samples; highlighted in every frame."""
    if not sample_id or sample_id not in set(maps.sample_ids):
        return []
    from pipeline.spatial import SpatialError, nearest_samples

    layer = s.layer if s.mode == "steps" else maps.frames[-1]
    step = maps.frames[-1] if s.mode == "steps" else s.step
    try:
        near = nearest_samples(data.open_store(path), s.model, layer, step, sample_id, s.k + 20,
                               run_ids=list(s.runs) or None)
    except SpatialError:
        return []
    inside = set(maps.sample_ids)
    return [x for x in near if x in inside][:s.k]


# -------------------------------------------------------------------------------------------- colouring

def labels_of(path: str, model: str, ids) -> pd.Series:
    """The label each point is coloured by: the class (class models) or the prompt's category (text models)."""
    samples = data.model_samples(path, model)
    col = "category" if "category" in samples and samples["category"].notna().any() else "label"
    if "class_id" in samples and samples["class_id"].notna().any():  # legend in class order, not by name
        samples = samples.sort_values("class_id", kind="stable")
    out = samples.set_index("sample_id")[col].reindex(list(ids)).fillna("(none)").astype(str)
    out.attrs["order"] = list(dict.fromkeys(samples[col].dropna().astype(str)))
    out.attrs["title"] = col
    return out


def colours_for(labels: pd.Series) -> tuple[list[str], dict[str, str]]:
    known = [v for v in labels.attrs.get("order", []) if v in set(labels)]
    order = known + sorted(set(labels) - set(known))
    legend = {v: PALETTE[i] if i < len(PALETTE) else OTHER for i, v in enumerate(order)}
    return [legend[v] for v in labels], legend


# ----------------------------------------------------------------------------------------------- figures

def _range(values: np.ndarray) -> list[float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = 0.05 * (hi - lo or 1.0)
    return [lo - pad, hi + pad]


def _frame_traces(xy, ids, colours, hover, sel_rows, nb_rows, size) -> list[go.Scatter]:
    return [
        go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=ids, hovertext=hover,
                   hovertemplate="%{hovertext}<br>%{customdata}<extra></extra>",
                   marker={"color": colours, "size": size, "opacity": 0.75, "line": {"width": 0}},
                   name="samples", showlegend=False),
        go.Scatter(x=xy[nb_rows, 0], y=xy[nb_rows, 1], mode="markers", customdata=ids[nb_rows],
                   hovertext=hover[nb_rows], hovertemplate="neighbour: %{hovertext}<br>%{customdata}<extra></extra>",
                   marker={"size": size + 7, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "#222"}},
                   name="neighbours", showlegend=bool(len(nb_rows))),
        go.Scatter(x=xy[sel_rows, 0], y=xy[sel_rows, 1], mode="markers", customdata=ids[sel_rows],
                   hovertext=hover[sel_rows], hovertemplate="selected: %{hovertext}<br>%{customdata}<extra></extra>",
                   marker={"size": size + 11, "symbol": "star", "color": "#111", "line": {"width": 1.5,
                                                                                            "color": "white"}},
                   name="selected", showlegend=bool(len(sel_rows))),
    ]


def animated_figure(maps, colours: list[str], legend: dict[str, str], hover, selected: str | None,
                    near: list[str], speed: str = "normal", height: int = 600, title: str = "") -> go.Figure:
    """One frame per step (or layer), played in the browser with interpolated positions."""
    ids = np.asarray(maps.sample_ids, dtype=object)
    hover = np.asarray(hover, dtype=object)
    row = {sid: i for i, sid in enumerate(ids)}
    sel_rows = np.array([row[selected]] if selected in row else [], dtype=int)
    nb_rows = np.array([row[x] for x in near if x in row], dtype=int)
    size = 5 if len(ids) > 2000 else 7
    names = [_frame_name(maps, f) for f in range(len(maps.frames))]
    ms = SPEEDS.get(speed, SPEEDS["normal"])
    fig = go.Figure(data=_frame_traces(maps.xy[0], ids, colours, hover, sel_rows, nb_rows, size))
    for label, colour in legend.items():  # legend entries only (not animated)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker={"color": colour, "size": 9},
                                 name=label, showlegend=True, hoverinfo="skip"))
    fig.frames = [go.Frame(name=names[f], traces=[0, 1, 2],
                           data=_frame_traces(maps.xy[f], ids, colours, hover, sel_rows, nb_rows, size))
                  for f in range(len(maps.frames))]
    play = {"frame": {"duration": ms, "redraw": False}, "fromcurrent": True, "mode": "immediate",
            "transition": {"duration": int(ms * 0.85), "easing": "cubic-in-out"}}
    pause = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate", "transition": {"duration": 0}}
    fig.update_layout(
        height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        title={"text": title, "x": 0.01} if title else None,
        xaxis={"range": _range(maps.xy[:, :, 0]), "showticklabels": False, "zeroline": False, "showgrid": False},
        yaxis={"range": _range(maps.xy[:, :, 1]), "showticklabels": False, "zeroline": False, "showgrid": False,
               "scaleanchor": "x"},
        plot_bgcolor="white", hovermode="closest", uirevision=maps.key, dragmode="pan",
        legend={"itemsizing": "constant", "font": {"size": 11}, "x": 1.01, "y": 0.9},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0.0, "y": -0.02, "xanchor": "left",
                      "yanchor": "top", "pad": {"t": 8, "r": 8}, "showactive": False,
                      "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, play]},
                                  {"label": "❚❚ Pause", "method": "animate", "args": [[None], pause]}]}],
        sliders=[{"active": 0, "x": 0.2, "len": 0.8, "y": -0.02, "yanchor": "top", "pad": {"t": 8},
                  "currentvalue": {"prefix": "step " if maps.axis == "steps" else "layer ", "font": {"size": 14},
                                   "xanchor": "right"},
                  "transition": {"duration": int(ms * 0.6), "easing": "cubic-in-out"},
                  "steps": [{"label": n, "method": "animate",
                             "args": [[n], {"frame": {"duration": 0, "redraw": False}, "mode": "immediate",
                                            "transition": {"duration": int(ms * 0.6), "easing": "cubic-in-out"}}]}
                            for n in names]}],
    )
    return fig


def _frame_name(maps, f: int) -> str:
    return str(maps.frames[f])


def multiples_files(path: str, s: MotionSettings, maps, labels: pd.Series, legend: dict[str, str]) -> dict[str, str]:
    """Write the files the small multiples (`app.components.scatter_map.small_multiples`) draw from: every
    frame's positions, the colours and the hover text (Explore's card: `app.views.hover_fields`), and start
    exporting the thumbnails. Written once per layout (and store version); returns the component's URLs."""
    from app import static_files, views

    resolved = data.resolve(path)
    skey = static_files.store_key(resolved)
    folder = static_files.views_dir(skey)
    ids = [str(x) for x in maps.sample_ids]
    tag = f"motion-{maps.key}"
    meta_tag = hashlib.sha1(f"{maps.key}|{data.version(path, s.model)}".encode()).hexdigest()[:16]
    points_file, meta_file, color_file = f"{tag}.points.json", f"{tag}.meta-{meta_tag}.json", \
        f"{tag}.color-{meta_tag}.json"
    if not (folder / points_file).exists():
        static_files.write_json(folder / points_file, multiples_points(maps))
        static_files.prune_views(skey)
    if not (folder / color_file).exists():
        static_files.write_json(folder / color_file, multiples_colours(labels, legend))
    if not (folder / meta_file).exists():
        samples = data.model_samples(path, s.model).drop_duplicates("sample_id").set_index("sample_id")
        samples = samples.reindex(ids).rename_axis("sample_id").reset_index()
        samples["sample_id"] = ids
        view = views.make_view(store_key=skey, projection_key=maps.key, model=s.model,
                               layer=s.layer if s.mode == "steps" else "", step=None, sample_ids=ids,
                               xy=maps.xy[0], samples=samples, quality=None, source=maps.source)
        meta = views.hover_fields(view)
        # the frame (step or layer) is named per panel by the component; what is common to every panel here
        meta["common"] = [["layer", s.layer]] if s.mode == "steps" else [["step", str(s.step)]]
        static_files.write_json(folder / meta_file, meta)
    data.thumb_export(resolved).request_once(tag, ids)
    return {"plotly_url": static_files.plotly_js_url(), "points_url": static_files.view_url(skey, points_file),
            "color_url": static_files.view_url(skey, color_file), "meta_url": static_files.view_url(skey, meta_file),
            "thumb_base": static_files.thumb_base_url(skey)}


def multiples_points(maps) -> dict:
    """Every frame's positions, the same samples in the same order in each (rounded: a few pixels' worth)."""
    span = float(np.nanmax(maps.xy) - np.nanmin(maps.xy)) if maps.xy.size else 1.0
    digits = max(2, 4 - int(np.floor(np.log10(span)))) if span > 0 else 4
    return {"ids": [str(x) for x in maps.sample_ids], "frames": [str(f) for f in maps.frames],
            "x": np.round(maps.xy[:, :, 0].astype(np.float64), digits).tolist(),
            "y": np.round(maps.xy[:, :, 1].astype(np.float64), digits).tolist()}


def multiples_colours(labels: pd.Series, legend: dict[str, str]) -> dict:
    """The page's colouring (`colours_for`: label -> colour, in the legend's order) as the map component's
    category colour file (`views.color_payload`)."""
    from app import views

    coloring = views.Coloring("motion", labels.attrs.get("title", "label"), "category", labels, order=tuple(legend),
                              colors=tuple(legend.values()))
    return views.color_payload(coloring)


def multiples_height(frames: int, columns: int = COLUMNS, height_each: int = 300) -> int:
    return int(np.ceil(frames / min(columns, max(frames, 1)))) * height_each + 30


def cka_figure(frame: pd.DataFrame, height: int = 600) -> go.Figure:
    """Consecutive-layer CKA as a line down the layer sequence (beside the depth animation)."""
    fig = go.Figure(go.Scatter(x=frame["cka"], y=[f"→ {b}" for b in frame["to"]], customdata=frame["pair"],
                               mode="lines+markers+text",
                               text=[f"{v:.2f}" for v in frame["cka"]], textposition="middle right",
                               line={"color": "#4e79a7", "width": 2}, marker={"size": 8},
                               # a value near 1 runs past the plot's right edge in the ~190-px column:
                               # drawn into the margin, not cut ("0.98" read "0.9")
                               cliponaxis=False,
                               hovertemplate="%{customdata}<br>CKA %{x:.3f}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 10, "r": 40, "t": 30, "b": 10},
                      title={"text": "CKA with the layer before", "x": 0.01, "font": {"size": 14}},
                      xaxis={"range": [0, 1.3], "title": "linear CKA", "tickvals": [0, 0.5, 1]},
                      yaxis={"autorange": "reversed", "automargin": True}, plot_bgcolor="white")
    return fig


def clicked(event) -> str | None:
    """The sample id of a plotly selection event's first point (a click), if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        try:
            points = event.selection.points
        except AttributeError:
            return None
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if cd:
            return str(cd)
    return None
