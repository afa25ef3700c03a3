"""The selected sample's x0 preview per sampling step, as a compact strip (Explore's selection panel).

Which steps have a preview comes from the sample's `preview_steps` column (already in the view's frame), so
a store without previews costs nothing here; the file paths come from `Store.previews`. Previews are shown
downscaled: an SDXL preview is a 1024-px PNG, and the strip needs a few dozen pixels of it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

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


def step_caption(step: int, steps: pd.DataFrame, current: int | None = None) -> str:
    """`step 2 · σ 0.3` (and `t 499` for DDPM models); `▸` marks the step the map shows."""
    parts = [f"{'▸ ' if current is not None and int(step) == int(current) else ''}step {int(step)}"]
    row = steps[steps["step"] == int(step)] if len(steps) else steps
    if len(row):
        sigma, timestep = row["sigma"].iloc[0], row["timestep"].iloc[0]
        if pd.notna(sigma):
            parts.append(f"σ {float(sigma):.3g}")
        if pd.notna(timestep):
            parts.append(f"t {float(timestep):.0f}")
    return " · ".join(parts)


@st.cache_data(show_spinner=False, max_entries=64)
def _preview_paths(resolved: str, sample_id: str, version: str) -> dict[int, str]:
    return {k: str(p) for k, p in data.open_store(resolved).previews(sample_id).items()}


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail(path: str, mtime_ns: int, side: int) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > side:
            im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def strip_images(path: str, model: str, sample_id: str, listed: Sequence[int]) -> list[tuple[int, bytes]]:
    """(step, PNG bytes) of each listed preview whose file is readable, in step order."""
    if not listed:
        return []
    paths = _preview_paths(data.resolve(path), sample_id, data.version(path, model))
    out = []
    for step, file in sorted(paths.items()):
        try:
            out.append((step, _thumbnail(file, os.stat(file).st_mtime_ns, THUMB_SIDE)))
        except OSError:  # missing or unreadable: `python -m store verify` reports it
            continue
    return out


def preview_strip(path: str, model: str, layer: str, sample_id: str, preview_steps, current_step=None) -> None:
    """Draw the strip under the selected image; nothing when the sample has no previews."""
    listed = listed_steps(preview_steps)
    images = strip_images(path, model, sample_id, listed)
    if not images:
        if listed:
            st.caption("(x0 preview files missing from the store)")
        return
    steps = data.model_steps(path, model, layer)
    st.caption("x0 (denoised) preview at each sampling step")
    with st.container(key="x0_previews"):
        ncols = min(len(images), PER_ROW)  # columns: the strip fits the panel at any width
        for first in range(0, len(images), ncols):
            row = images[first:first + ncols]
            for col, (k, png) in zip(st.columns(ncols, gap="small"), row, strict=False):
                col.image(png, caption=step_caption(k, steps, current_step), width="stretch")
