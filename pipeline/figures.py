"""Figures of a map that work on plain arrays: the interactive plotly map (a standalone HTML file, or a block
of a larger page, with hover thumbnails) and a static PNG with legend and title drawn with Pillow.

Both the app's "Map (HTML)" download (`app.exports`) and the report (`pipeline.report`) draw through here;
nothing here knows the app's views. A categorical colouring is (codes per point, names, colours); a numeric
one is a value per point.
"""

from __future__ import annotations

import base64
import colorsys
import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["PALETTE", "MISSING_COLOR", "MAX_HTML_THUMBS", "palette", "hover_text", "map_figure", "hover_script",
           "map_html", "map_block", "map_png", "PNG_SIZE", "LEGEND_WIDTH"]

# Tableau-like palette: distinguishable in light and dark themes; the one palette of the app's maps too.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
)
MISSING_COLOR = "#9aa0a6"
MAX_HTML_THUMBS = 5000  # hover thumbnails are inlined in the HTML: ~0.2-3 kB each
PNG_SIZE = (1400, 900)  # width, height of `map_png`
LEGEND_WIDTH = 330  # the legend's column at the right of `map_png`
CONFIG = {"scrollZoom": True, "displaylogo": False}


def palette(n: int) -> list[str]:
    """``n`` colours: the fixed palette first, then evenly spread hues (golden angle) for large label sets."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    out = list(PALETTE)
    for i in range(n - len(PALETTE)):
        h = (i * 0.618033988749895) % 1.0
        light = 0.45 + 0.12 * ((i // 7) % 3) / 2
        r, g, b = colorsys.hls_to_rgb(h, light, 0.62)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return out


def hover_text(frame: pd.DataFrame) -> np.ndarray:
    """Each sample's hover line: its label, seed, run and index (columns of the samples table)."""
    return (frame["label"].astype(str) + "<br>seed " + frame["seed"].astype(str) + " · "
            + frame["run_id"].astype(str) + " #" + frame["index"].astype(str)).to_numpy()


def map_figure(x, y, hover, title: str, *, codes=None, names: Sequence[str] = (), colors: Sequence[str] = (),
               values=None, value_title: str = "") -> go.Figure:
    """The map as a plotly figure: one trace per category (``codes`` index ``names`` and ``colors``; an empty
    category has no trace), or one trace coloured by ``values`` on viridis. Each point's `customdata` is its
    row in the inputs, which the hover thumbnails use."""
    x, y, hover = np.asarray(x), np.asarray(y), np.asarray(hover)
    fig = go.Figure()
    if values is not None:
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", text=hover, hoverinfo="text", name=value_title,
                                   customdata=np.arange(len(x)),
                                   marker=dict(size=5, color=list(values), colorscale="Viridis",
                                               showscale=True, colorbar=dict(title=value_title))))
    else:
        codes = pd.Series(np.asarray(codes))
        for code, (name, color) in enumerate(zip(names, colors, strict=True)):
            rows = codes.index[codes == code].to_numpy()
            if len(rows) == 0:
                continue
            fig.add_trace(go.Scattergl(x=x[rows], y=y[rows], mode="markers", text=hover[rows], hoverinfo="text",
                                       customdata=rows, name=str(name), marker=dict(size=5, color=color)))
    fig.update_layout(
        title=title, xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"),
        template="plotly_white", legend=dict(itemsizing="constant"), hovermode="closest", dragmode="pan",
    )
    return fig


def hover_script(thumbs: Sequence[bytes | None]) -> str:
    """The script that shows, beside a hovered point, the WebP thumbnail of its row (`customdata`)."""
    encoded = [base64.b64encode(t).decode() if t else None for t in thumbs]
    return _HOVER_THUMBS.replace("THUMBS_JSON", json.dumps(encoded))


def map_html(fig: go.Figure, thumbs: Sequence[bytes | None] | None = None) -> bytes:
    """A standalone interactive HTML file (plotly.js inlined, so it opens offline); with ``thumbs`` (one per
    row of the figure's inputs), hovering a point shows its thumbnail."""
    script = hover_script(thumbs) if thumbs is not None else None
    return fig.to_html(include_plotlyjs=True, full_html=True, post_script=script, config=CONFIG).encode()


def map_block(fig: go.Figure, thumbs: Sequence[bytes | None] | None = None, *, div_id: str = "map",
              include_plotlyjs: bool = True) -> str:
    """The map as a block of a larger HTML page (a ``<div>`` and its scripts, plotly.js inlined unless
    `include_plotlyjs` is False: inline it once per page)."""
    script = hover_script(thumbs) if thumbs is not None else None
    return fig.to_html(include_plotlyjs=include_plotlyjs, full_html=False, post_script=script, config=CONFIG,
                       div_id=div_id, default_height="640px")


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


# -- the static PNG ------------------------------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):  # wide coverage (σ, accents) where installed
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def map_png(x, y, codes, names: Sequence[str], colors: Sequence[str], title: str, *, subtitle: str = "",
            legend_title: str = "", size: tuple[int, int] = PNG_SIZE, point_radius: int | None = None) -> bytes:
    """The map as a PNG: the points coloured by category, a title (and subtitle) on top and a legend at the
    right (a swatch, name and count per category, most frequent first when they do not all fit). Points are
    drawn in a fixed shuffled order so that no category is always painted over the others; their radius
    (default) shrinks as their number grows."""
    from PIL import Image, ImageDraw

    width, height = size
    x, y, codes = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(codes, dtype=np.int64)
    if point_radius is None:
        point_radius = 5 if len(x) <= 500 else 3 if len(x) <= 5000 else 2
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    title_font, text_font, small = _font(22), _font(14), _font(13)
    draw.text((20, 14), _fit(draw, title, title_font, width - 40), fill=(20, 20, 20), font=title_font)
    top = 48
    if subtitle:
        draw.text((20, 44), _fit(draw, subtitle, small, width - 40), fill=(90, 90, 90), font=small)
        top = 70

    # the plot area: square units (as the interactive map), centred
    left, right, bottom = 20, width - LEGEND_WIDTH - 20, height - 20
    draw.rectangle([left, top, right, bottom], outline=(225, 225, 225))
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        pad = point_radius + 6
        x0, x1, y0, y1 = x[ok].min(), x[ok].max(), y[ok].min(), y[ok].max()
        span = max(x1 - x0, y1 - y0, 1e-12)
        scale = min((right - left - 2 * pad) / max(x1 - x0, span * 1e-3),
                    (bottom - top - 2 * pad) / max(y1 - y0, span * 1e-3))
        cx, cy = (left + right) / 2, (top + bottom) / 2
        px = cx + (x - (x0 + x1) / 2) * scale
        py = cy - (y - (y0 + y1) / 2) * scale  # y up, as on the map
        rgb = [_rgb(c) for c in colors]
        order = np.random.default_rng(0).permutation(np.flatnonzero(ok))
        r = point_radius
        for i in order:
            draw.ellipse([px[i] - r, py[i] - r, px[i] + r, py[i] + r], fill=rgb[codes[i]])

    # the legend
    lx = width - LEGEND_WIDTH + 4
    ly = top
    if legend_title:
        draw.text((lx, ly), _fit(draw, legend_title, text_font, LEGEND_WIDTH - 24), fill=(20, 20, 20),
                  font=text_font)
        ly += 24
    counts = np.bincount(codes[codes >= 0], minlength=len(names)) if len(codes) else np.zeros(len(names), int)
    present = [c for c in range(len(names)) if counts[c] > 0]
    row = 20
    fits = max((bottom - ly) // row, 1)
    if len(present) > fits:
        present = sorted(present, key=lambda c: (-counts[c], c))[:fits - 1]
    for c in present:
        draw.rectangle([lx, ly + 3, lx + 12, ly + 15], fill=_rgb(colors[c]))
        label = _fit(draw, f"{names[c]}  ({counts[c]:,})", text_font, LEGEND_WIDTH - 40)
        draw.text((lx + 20, ly), label, fill=(40, 40, 40), font=text_font)
        ly += row
    hidden = sum(1 for c in range(len(names)) if counts[c] > 0) - len(present)
    if hidden:
        draw.text((lx + 20, ly), f"… and {hidden:,} more", fill=(90, 90, 90), font=text_font)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
