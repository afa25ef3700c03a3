"""What the Inside page reads and draws: its URL state, the background job that fetches the feature maps of
the selected sample and its neighbours (`pipeline.spatial.spatial_view`: read from the store, or recomputed
from the seeds), and the images it composes from them (maps laid over the samples' images).

The measures are `pipeline.spatial`'s; this module only scales, colours and places them over the images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from app import data, state, url
from pipeline import spatial

URL_LOADED = "ins.url_loaded"
URL_VALUES = "ins.url"
LOCATION = "ins.location"  # (row, col) clicked on the selected sample's map, or None
DEFAULT_K = 4
MAX_K = 8
DISPLAY = 176  # pixels per image on the page


@dataclass(frozen=True)
class InsideSettings:
    model: str
    sample_id: str
    layer: str
    step: int
    k: int = DEFAULT_K
    opacity: float = 0.6
    upsampling: str = "nearest"


# ------------------------------------------------------------------------------------------------- URL

def parse_params(q: dict) -> dict:
    """The page's query parameters; malformed values are left out (the URL is user input)."""
    out = {**url.pick(q, ("sel", "layer"), url.parse_str), **url.pick(q, ("step", "k"), url.parse_int)}
    if q.get("at"):
        try:
            r, c = (int(v) for v in str(q["at"]).split(","))
            out["at"] = (r, c)
        except ValueError:
            pass
    return out


def load_url_once() -> dict:
    return url.load_once(URL_LOADED, URL_VALUES, parse_params)


def to_params(s: InsideSettings, location) -> dict[str, str]:
    params = {"sel": s.sample_id, "layer": s.layer, "step": str(s.step)}
    if s.k != DEFAULT_K:
        params["k"] = str(s.k)
    if location is not None:
        params["at"] = f"{location[0]},{location[1]}"
    return state.with_store(params)


def sync_url(s: InsideSettings, location) -> None:
    url.sync(to_params(s, location))


# ------------------------------------------------------------------------------------------------- data

def model_of(path: str, status: data.StoreStatus, sample_id: str) -> str | None:
    for model in status.models:
        if sample_id in set(data.model_samples(path, model)["sample_id"]):
            return model
    return None


def _generators():
    try:
        return data.generator_cache()  # the app's shared GeneratorCache (Edit uses the same generators)
    except Exception:  # noqa: BLE001 - pipeline.spatial keeps its own then
        return None


def neighbours_job(path: str, s: InsideSettings) -> data.Job:
    key = ("inside-nn", data.resolve(path), data.version(path, s.model, s.layer), s.model, s.layer, s.step,
           s.sample_id, s.k)

    def work(job: data.Job):
        job.report(0.2, "nearest samples in activation space")
        return spatial.nearest_samples(data.open_store(path), s.model, s.layer, s.step, s.sample_id, s.k)

    return data.start_job(key, work)


def view_job(path: str, s: InsideSettings, ids: list[str]) -> data.Job:
    """`pipeline.spatial.spatial_view` of the selected sample and its neighbours, as a background job (a map
    not stored full is recomputed through the run's generator: seconds on a CPU)."""
    key = ("inside-view", data.resolve(path), data.version(path, s.model, s.layer), s.layer, s.step, tuple(ids))

    def work(job: data.Job):
        job.report(0.05, "reading the feature maps")

        def say(message: str) -> None:
            job.report(0.5 if "recomput" in message else None, message)

        return spatial.spatial_view(data.open_store(path), ids, s.layer, s.step, generators=_generators(),
                                    progress=say)

    return data.start_job(key, work)


def image_of(path: str, model: str, sample_id: str) -> np.ndarray:
    from PIL import Image

    png = data.image(path, model, sample_id)
    if png is None:
        return np.full((32, 32, 3), 235, np.uint8)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ---------------------------------------------------------------------------------------------- drawing

def big(image: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """The image scaled to the display size, pixels kept sharp."""
    return spatial.upsample(image.astype(np.float32) / 255.0, (size, size), "nearest")


def laid_over(image: np.ndarray, colours: np.ndarray, s: InsideSettings, size: int = DISPLAY) -> np.ndarray:
    return spatial.overlay(np.clip(np.round(big(image, size) * 255), 0, 255).astype(np.uint8), colours,
                           s.opacity, s.upsampling)


def norm_image(image, norm, lo_hi, s: InsideSettings) -> np.ndarray:
    return laid_over(image, spatial.colourize(norm, *lo_hi), s)


def mark(picture: np.ndarray, location, map_hw) -> np.ndarray:
    """A white square around the clicked map cell."""
    if location is None:
        return picture
    out = picture.copy()
    H, W = out.shape[:2]
    h, w = map_hw
    r, c = location
    y0, y1 = int(r * H / h), max(int((r + 1) * H / h) - 1, int(r * H / h))
    x0, x1 = int(c * W / w), max(int((c + 1) * W / w) - 1, int(c * W / w))
    for y in (y0, y1):
        out[y, x0:x1 + 1] = (255, 255, 255)
    for x in (x0, x1):
        out[y0:y1 + 1, x] = (255, 255, 255)
    return out


def click_figure(picture: np.ndarray, map_hw, location) -> go.Figure:
    """The selected sample's picture with one clickable (invisible) marker per map cell: a click is a location."""
    H, W = picture.shape[:2]
    h, w = map_hw
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xs = (cols.ravel() + 0.5) * W / w
    ys = (rows.ravel() + 0.5) * H / h
    fig = go.Figure(go.Image(z=mark(picture, location, map_hw), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", customdata=np.column_stack([rows.ravel(), cols.ravel()]),
                             marker={"size": max(6, min(40, int(0.9 * W / w))), "symbol": "square",
                                     "color": "rgba(255,255,255,0.01)"},
                             hovertemplate="row %{customdata[0]}, column %{customdata[1]}<extra></extra>",
                             showlegend=False))
    fig.update_layout(width=W + 10, height=H + 10, margin={"l": 5, "r": 5, "t": 5, "b": 5},
                      xaxis={"visible": False, "range": [0, W]},
                      yaxis={"visible": False, "range": [H, 0], "scaleanchor": "x"})
    return fig


def clicked_location(event) -> tuple[int, int] | None:
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(cd, dict):  # a typed array comes back as {"0": row, "1": col}
            cd = [cd.get("0", cd.get(0)), cd.get("1", cd.get(1))]
        if isinstance(cd, list | tuple) and len(cd) >= 2 and None not in cd[:2]:
            return int(cd[0]), int(cd[1])
    return None


def histogram_figure(summary: dict) -> go.Figure:
    edges, counts = summary["edges"], summary["counts"]
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker={"color": "#4e79a7"},
                           hovertemplate="mean %{x:.3g}: %{y} channels<extra></extra>"))
    fig.update_layout(height=240, margin={"l": 10, "r": 10, "t": 30, "b": 10}, bargap=0.05,
                      title={"text": "Channel means of the selected activation", "font": {"size": 13}, "x": 0.01},
                      xaxis={"title": "channel mean"}, yaxis={"title": "channels"}, plot_bgcolor="white")
    return fig
