"""The selected sample's x0 preview per sampling step, as a compact strip (Explore's selection panel).

Which steps have a preview comes from the sample's `preview_steps` column (already in the view's frame), so
a store without previews costs nothing here; the images come from `Store.previews`. Previews are shown
downscaled: an SDXL preview is a 1024-px PNG, and the strip needs a few dozen pixels of it.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st

from app import data

PER_ROW = 4  # images per row of the strip (DMD2's multi-step generators have 4 steps)
THUMB_SIDE = 160  # downscaled to this (sharp on HiDPI screens); smaller previews stay as they are


def listed_steps(value) -> list[int]:
    """The steps in a `preview_steps` cell (an array, a list, or null), sorted."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return sorted(int(k) for k in value)
    return []


NBSP = "\u00a0"
# The strip's columns wrap (four a row where the panel is wide, two where it is narrow) so that a caption
# always has room for its longest part; each part ("step 2", "σ 0.47") never breaks inside. The two-a-row
# width is fixed by a container query on the strip's own width, not left to flex-grow: a column that
# wrapped alone onto a row grew to the panel's whole width (three small previews, then one four times their
# size, in a 220-px panel at a 1400-px window).
STRIP_CSS = """<style>
.st-key-x0_previews { container-type: inline-size; }
.st-key-x0_previews [data-testid="stHorizontalBlock"] { flex-wrap: wrap; row-gap: 0.25rem; column-gap: 0.5rem; }
.st-key-x0_previews [data-testid="stColumn"] { min-width: 3.5rem; flex: 1 1 0; }
@container (max-width: 15.5rem) {
  .st-key-x0_previews [data-testid="stColumn"] { flex: 0 0 calc(50% - 0.25rem); }
}
.st-key-x0_previews [data-testid="stImageCaption"] { font-size: 0.72rem; line-height: 1.25; }
</style>"""


def step_caption(step: int, steps: pd.DataFrame, current: int | None = None) -> str:
    """`step 2 · σ 0.3` (and `t 499` for DDPM models); `▸` marks the step the map shows. Each part is held
    together by no-break spaces: a narrow caption wraps between parts, never inside a number."""
    parts = [f"{'▸ ' if current is not None and int(step) == int(current) else ''}step {int(step)}"]
    row = steps[steps["step"] == int(step)] if len(steps) else steps
    if len(row):
        sigma, timestep = row["sigma"].iloc[0], row["timestep"].iloc[0]
        if pd.notna(sigma):
            parts.append(f"σ {float(sigma):.3g}")
        if pd.notna(timestep):
            parts.append(f"t {float(timestep):.0f}")
    return " · ".join(p.replace(" ", NBSP) for p in parts)


@st.cache_data(show_spinner=False, max_entries=64)
def strip_images(path: str, sample_id: str, version: str) -> list[tuple[int, bytes]]:
    """(step, downscaled PNG) of each preview the store holds for the sample, in step order. Cached per
    data `version`, so a store that changes (a resumed run) is read again."""
    return [(step, downscale(png, THUMB_SIDE)) for step, png in data.open_store(path).previews(sample_id).items()]


def downscale(png: bytes, side: int) -> bytes:
    """The PNG with its longest side at most `side` pixels (smaller images stay as they are)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        if max(im.size) <= side:
            return png
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def preview_strip(path: str, model: str, layer: str, sample_id: str, preview_steps, current_step=None) -> None:
    """Draw the strip under the selected image; nothing when the sample has no previews."""
    if not listed_steps(preview_steps):
        return
    images = strip_images(data.resolve(path), sample_id, data.version(path, model))
    if not images:
        st.caption("(x0 previews missing from the store)")
        return
    steps = data.model_steps(path, model, layer)
    st.caption("x0 (denoised) preview at each sampling step")
    st.html(STRIP_CSS)
    with st.container(key="x0_previews"):
        ncols = min(len(images), PER_ROW)  # columns: the strip fits the panel at any width
        for first in range(0, len(images), ncols):
            row = images[first:first + ncols]
            for col, (k, png) in zip(st.columns(ncols, gap="small"), row, strict=False):
                col.image(png, caption=step_caption(k, steps, current_step), width="stretch")
