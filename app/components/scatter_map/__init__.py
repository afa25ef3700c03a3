"""The Explore map as a Streamlit components v2 element around the plotly.js that the plotly package ships,
and the same map as small multiples (one panel per frame of an aligned layout, linked hover and selection:
the Motion page).

The figure data does not travel with the element: the browser fetches the view's point file, its colour
file and (after drawing) its per-point text from the app's static folder, and the thumbnails one by one on
hover. What Python sends on each rerun is small: file URLs, the selection and the highlights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

_HERE = Path(__file__).parent
_HTML = """
<div class="dmv-wrap" data-testid="dmv-map">
  <div class="dmv-plot"></div>
  <svg class="dmv-rings" xmlns="http://www.w3.org/2000/svg"><defs><clipPath id="dmv-clip"><rect/></clipPath></defs><g clip-path="url(#dmv-clip)"></g></svg>
  <div class="dmv-legend" hidden></div>
  <div class="dmv-tip" hidden><img alt="preview"><div class="dmv-tip-text"></div></div>
  <div class="dmv-status">Loading map…</div>
</div>
"""

# Not isolated in a shadow root: plotly.js injects its modebar and drag styles into the document head.
_component = st.components.v2.component(
    "dmd2viz.scatter_map",
    html=_HTML,
    css=(_HERE / "map.css").read_text(encoding="utf-8"),
    js=(_HERE / "map.js").read_text(encoding="utf-8"),
    isolate_styles=False,
)
# The same code drawing one panel per frame (map.js's MultiplesView, chosen by ``data.kind``).
_multiples = st.components.v2.component(
    "dmd2viz.small_multiples",
    html=_HTML.replace('data-testid="dmv-map"', 'data-testid="dmv-multiples"'),
    css=(_HERE / "map.css").read_text(encoding="utf-8"),
    js=(_HERE / "map.js").read_text(encoding="utf-8"),
    isolate_styles=False,
)


@dataclass(frozen=True)
class MapEvent:
    """What the user did on the map during the run that produced this event (or nothing)."""

    clicked: str | None = None
    selected: list[str] | None = None  # lasso/box selection; [] when cleared


def scatter_map(
    *,
    plotly_url: str,
    points_url: str,
    color_url: str,
    meta_url: str,
    thumb_base: str,
    revision: str,
    selected: str | None = None,
    knn: list[str] | None = None,
    manual: list[str] | None = None,
    trajectory: dict | None = None,
    links: list[dict] | None = None,
    edited: list[str] | None = None,
    highlight: list[str] | None = None,
    height: int = 620,
    point_size: float = 5.0,
    filename: str = "map",
    title: str | None = None,
    png_nonce: int = 0,
    key: str = "explore_map",
    on_click=None,
    on_select=None,
    busy: bool = False,
) -> MapEvent:
    """Draw the map and return the click or lasso selection that triggered this run, if any.

    ``revision`` is plotly's uirevision: keep it fixed for one projection so zoom and pan survive reruns.
    ``trajectory``: ``{"ids": [...], "labels": [...]}``, points joined by a line in this order with a small
    label at each (the selected sample across the steps of an all-steps map), drawn in the SVG layer.
    ``links``: ``[{"kind", "ids", "labels"}]``, the edits' links to their parents, drawn like the trajectory in
    the SVG layer: ``interpolate``/``steer`` a path through the results in order, ``regenerate``/``patch`` a
    dashed line from parent to result, ``set`` a dotted spoke to a member of a patch's set. ``edited``: the
    edit results to mark.
    ``png_nonce``: increase it to make the browser download the map as PNG (drawn client-side), with ``title``
    (followed by the colouring's title) above it and the legend beside it.
    ``on_click``/``on_select`` are callbacks run before the script, like any widget's ``on_change``.
    ``busy``: the map is the previous one while a new one computes: drawn dimmed, still usable.
    """
    data: dict[str, Any] = {
        "plotly_url": plotly_url,
        "points_url": points_url,
        "color_url": color_url,
        "meta_url": meta_url,
        "thumb_base": thumb_base,
        "thumb_ext": ".webp",
        "revision": revision,
        "selected": selected,
        "knn": list(knn or []),
        "manual": list(manual or []),
        "trajectory": {"ids": list(trajectory["ids"]), "labels": [str(v) for v in trajectory["labels"]]}
        if trajectory else None,
        "links": [{"kind": str(link["kind"]), "ids": [str(i) for i in link["ids"]],
                   "labels": [str(v) for v in link.get("labels") or [""] * len(link["ids"])]}
                  for link in links or []],
        "edited": [str(i) for i in edited or []],
        "highlight": list(highlight) if highlight is not None else None,
        "height": int(height),
        "point_size": float(point_size),
        "filename": filename,
        "title": title,
        "png_nonce": int(png_nonce),
        "busy": bool(busy),
    }
    return _mount(_component, key, data, height, on_click, on_select)


def _mount(component, key: str, data: dict, height: int, on_click, on_select) -> MapEvent:
    """Draw `component` with `data`; its click and lasso/box selection come back as a `MapEvent`."""
    result = component(key=key, data=data, height=int(height) + 2, on_click_change=on_click or _noop,
                       on_select_change=on_select or _noop)
    return _event(result)


def _event(result) -> MapEvent:
    click = result.get("click") if hasattr(result, "get") else getattr(result, "click", None)
    select = result.get("select") if hasattr(result, "get") else getattr(result, "select", None)
    return MapEvent(
        clicked=click.get("id") if isinstance(click, dict) else None,
        selected=list(select.get("ids") or []) if isinstance(select, dict) else None,
    )


def small_multiples(
    *,
    plotly_url: str,
    points_url: str,
    color_url: str,
    meta_url: str,
    thumb_base: str,
    revision: str,
    frame_title: str,
    frame_prefix: str = "",
    selected: str | None = None,
    knn: list[str] | None = None,
    highlight: list[str] | None = None,
    columns: int = 4,
    height: int = 520,
    point_size: float = 3.5,
    filename: str = "frames",
    key: str = "small_multiples",
    on_click=None,
    on_select=None,
) -> MapEvent:
    """One map panel per frame of an aligned layout, side by side, with linked hover and selection.

    ``points_url``: ``{"ids": [...], "frames": [...], "x": [[...] per frame], "y": [[...] per frame]}``, the
    same samples in the same order in every frame; colours and per-sample text as for ``scatter_map``.
    Hovering a sample in one panel rings it in every panel and shows its preview (browser only, no rerun);
    ``frame_title`` names the hovered panel's frame in the preview ("step", "layer") and ``frame_prefix``
    goes before each panel's title. A click or a lasso/box in any panel comes back like the map's; the
    ``selected`` sample and its ``knn`` are ringed in every panel, ``highlight`` is drawn over the rest.
    """
    data: dict[str, Any] = {
        "kind": "multiples",
        "plotly_url": plotly_url,
        "points_url": points_url,
        "color_url": color_url,
        "meta_url": meta_url,
        "thumb_base": thumb_base,
        "thumb_ext": ".webp",
        "revision": revision,
        "frame_title": frame_title,
        "frame_prefix": frame_prefix,
        "selected": selected,
        "knn": [str(i) for i in knn or []],
        "highlight": [str(i) for i in highlight] if highlight is not None else None,
        "columns": int(columns),
        "height": int(height),
        "point_size": float(point_size),
        "filename": filename,
    }
    return _mount(_multiples, key, data, height, on_click, on_select)


def _noop() -> None:
    """Trigger values need a registered callback to be reported; the return value carries them."""
