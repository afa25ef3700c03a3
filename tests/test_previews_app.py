"""Explore's selection panel shows the selected sample's x0 preview per step (AppTest), and nothing for a
sample without previews; the strip's helpers (captions, downscaling, missing files)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

SIGMAS = (14.6, 2.5, 0.3)
COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))  # one colour per step, so a preview shows its step


def _write_run(root, run_id: str, n: int, previews: bool, size: int = 16) -> None:
    from store import RunWriter

    rng = np.random.default_rng(len(run_id))
    labels = np.arange(n) % 3
    manifest = dict(run_id=run_id, model="pv", family="synthetic", checkpoint="synthetic", layers=["midblock"],
                    seed=1, num_samples=n, reduce={"midblock": "mean"},
                    settings={"steps": len(SIGMAS), "sigmas": list(SIGMAS)})
    with RunWriter(root, manifest) as w:
        idx = np.arange(n)
        samples = [dict(seed=int(i), class_id=int(c), class_name=fx.DIGITS[c], category=fx.DIGITS[c],
                        label=f"{c}: {fx.DIGITS[c]}", num_steps=len(SIGMAS)) for i, c in zip(idx, labels, strict=True)]
        images = [np.full((size, size, 3), 128, np.uint8) for _ in idx]
        acts = {"midblock": [dict(step=s, timestep=None, sigma=sig, reduce="mean", layer_shape=(8, 2, 2),
                                  array=(labels[:, None] * 3 + rng.normal(size=(n, 8))).astype(np.float32))
                             for s, sig in enumerate(SIGMAS)]}
        pv = {k: [np.full((size, size, 3), COLORS[k], np.uint8) for _ in idx] for k in range(3)} if previews else None
        w.write_batch(idx, samples, images, acts, previews=pv)


@pytest.fixture(scope="module")
def preview_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("previews") / "store"
    _write_run(root, "pv-a", 24, previews=True)
    _write_run(root, "pv-b", 12, previews=False)
    return root


@pytest.fixture
def preview_env(preview_store, monkeypatch, tmp_path):
    with fx.app_pointed_at(preview_store, monkeypatch, tmp_path):
        yield preview_store


def _strips(at):
    return [im for im in at.image if any("step" in c for c in im.captions)]


def test_selection_panel_shows_the_x0_strip_with_steps_and_sigmas(preview_env):
    at = app_test(query={"model": "pv", "layer": "midblock", "step": "1", "sel": "pv-a-00000004"})
    assert not at.exception, at.exception
    strips = _strips(at)
    assert [c.replace("\u00a0", " ") for im in strips for c in im.captions] == [
        "step 0 · σ 14.6", "▸ step 1 · σ 2.5", "step 2 · σ 0.3"]
    assert all(len(im.value) == 1 for im in strips)
    assert any("x0 (denoised) preview at each sampling step" in str(c.value) for c in at.caption)


def test_no_strip_for_a_sample_without_previews(preview_env):
    at = app_test(query={"model": "pv", "layer": "midblock", "step": "2", "sel": "pv-b-00000001"})
    assert not at.exception, at.exception
    assert _strips(at) == []
    assert not any("x0" in str(c.value) for c in at.caption)
    # the selected image itself is still there: one full image (the others are the neighbours' thumbnails)
    full = [im for im in at.image if not any(url.startswith("/app/static/thumbs/") for url in im.value)]
    assert len(full) == 1 and len(full[0].value) == 1
    assert not any("image missing" in str(c.value) for c in at.caption)


def test_strip_images_are_the_previews_downscaled(preview_store):
    from app import previews

    path = str(preview_store)
    got = previews.strip_images(path, "pv-a-00000002", "v1")
    assert [k for k, _ in got] == [0, 1, 2]
    for k, png in got:
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert pixels.shape == (16, 16, 3) and tuple(pixels[0, 0]) == COLORS[k]
    assert previews.strip_images(path, "pv-b-00000002", "v1") == []

    buf = io.BytesIO()
    Image.new("RGB", (1024, 512), (1, 2, 3)).save(buf, format="PNG")
    thumb = Image.open(io.BytesIO(previews.downscale(buf.getvalue(), previews.THUMB_SIDE)))
    assert thumb.size == (previews.THUMB_SIDE, previews.THUMB_SIDE // 2)
    small = got[0][1]
    assert previews.downscale(small, previews.THUMB_SIDE) is small  # already small: passed through
    assert previews.listed_steps(np.array([2, 0], np.int16)) == [0, 2]
    assert previews.listed_steps(None) == [] and previews.listed_steps(float("nan")) == []
    steps = pd.DataFrame({"step": [0, 1], "timestep": [999.0, 499.0], "sigma": [14.61, 1.61]})
    assert previews.step_caption(1, steps, current=1).replace("\u00a0", " ") == "▸ step 1 · σ 1.61 · t 499"
    assert previews.step_caption(5, steps) == "step\u00a05"  # a no-break space: never split
