"""Synthetic stores for the app tests, the browser tests and the app benchmark.

Written through the real `store.RunWriter`, so the app reads them exactly as it reads a generated store.
Images are small digit tiles (a coloured square with the digit drawn on it), activations are Gaussian
clusters per class, so a projection shows clusters and a hover preview shows a recognisable image.

* ``build_app_store(root)``: two models ("digits": two runs, three steps, two layers; "words": prompts with
  categories, one step) — small enough for AppTest (a few hundred samples).
* ``build_points_store(root, n)``: one model, one run, one step, ``n`` samples (the benchmark's 10k/50k).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PALETTE = ((231, 76, 60), (52, 152, 219), (46, 204, 113), (155, 89, 182), (241, 196, 15),
           (230, 126, 34), (26, 188, 156), (52, 73, 94), (236, 64, 122), (127, 140, 141))
PROMPTS = (
    ("a red sports car on a mountain road", "vehicles"),
    ("a vintage bicycle leaning on a wall", "vehicles"),
    ("a cargo ship in a storm", "vehicles"),
    ("a golden retriever playing in snow", "animals"),
    ("a cat sleeping on a windowsill", "animals"),
    ("an owl at night in a pine forest", "animals"),
    ("a bowl of ramen with chopsticks", "food"),
    ("a stack of blueberry pancakes", "food"),
)
SIGMAS = (14.6, 2.5, 0.3)


def _tile(digit: int, size: int, rng: np.random.Generator) -> np.ndarray:
    color = np.array(PALETTE[digit % 10], dtype=np.int16)
    jitter = rng.integers(-25, 26, size=3)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in np.clip(color + jitter, 0, 255)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(size * 0.8)) if size >= 16 else ImageFont.load_default()
    draw.text((size / 2, size / 2), str(digit % 10), fill=(255, 255, 255), font=font, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


def _clustered(labels: np.ndarray, dim: int, rng: np.random.Generator, spread: float, centers=None):
    n_labels = int(labels.max()) + 1
    if centers is None:
        centers = rng.normal(0, 3.0, size=(n_labels, dim))
    return (centers[labels] + rng.normal(0, spread, size=(len(labels), dim))).astype(np.float32), centers


def _write_class_run(root, model, run_id, layers, n, steps, seed, image_size=32, batch=100, first_step=0):
    """A class run recording `steps` (their sigmas) as steps first_step, first_step + 1, ... (a run that records
    only its last step: first_step > 0)."""
    from store import RunWriter

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    centers = {layer: None for layer in layers}
    manifest = dict(run_id=run_id, model=model, family="synthetic", checkpoint="synthetic",
                    checkpoint_sha256=f"synthetic-{model}", layers=list(layers), seed=seed, num_samples=n,
                    reduce={layer: "mean" for layer in layers},
                    settings={"steps": len(steps), "sigmas": list(steps), "resolution": image_size})
    with RunWriter(root, manifest) as writer:
        for first in range(0, n, batch):
            idx = np.arange(first, min(n, first + batch))
            lab = labels[idx]
            samples = [dict(seed=int(seed * 100000 + i), class_id=int(c), class_name=DIGITS[c],
                            category=DIGITS[c], label=f"{c}: {DIGITS[c]}", num_steps=len(steps))
                       for i, c in zip(idx, lab, strict=True)]
            images = [_tile(int(c), image_size, rng) for c in lab]
            acts = {}
            for li, layer in enumerate(layers):
                dim = 16 + 8 * li
                entries = []
                for s, sigma in enumerate(steps):
                    arr, centers[layer] = _clustered(lab, dim, rng, spread=0.6 + 0.5 * s, centers=centers[layer])
                    entries.append(dict(step=first_step + s, timestep=None, sigma=float(sigma), reduce="mean",
                                        layer_shape=(dim, 4, 4), array=arr))
                acts[layer] = entries
            writer.write_batch(idx, samples, images, acts)
    return run_id


def _write_prompt_run(root, model, run_id, n, seed, image_size=32):
    from store import RunWriter

    rng = np.random.default_rng(seed)
    pidx = np.arange(n) % len(PROMPTS)
    cats = sorted({c for _, c in PROMPTS})
    manifest = dict(run_id=run_id, model=model, family="synthetic-t2i", checkpoint="synthetic",
                    checkpoint_sha256=f"synthetic-{model}", layers=["mid_block"], seed=seed, num_samples=n,
                    reduce={"mid_block": "mean"}, settings={"steps": 1, "resolution": image_size})
    with RunWriter(root, manifest) as writer:
        samples = [dict(seed=int(seed * 100000 + i), prompt=PROMPTS[p][0], prompt_index=int(p),
                        category=PROMPTS[p][1], label=PROMPTS[p][0], num_steps=1)
                   for i, p in enumerate(pidx)]
        images = [_tile(cats.index(PROMPTS[p][1]) * 3, image_size, rng) for p in pidx]
        arr, _ = _clustered(pidx, 24, rng, spread=0.8)
        acts = {"mid_block": [dict(step=0, timestep=999.0, sigma=14.6, reduce="mean", layer_shape=(24, 4, 4),
                                   array=arr)]}
        writer.write_batch(np.arange(n), samples, images, acts)
        emb = rng.normal(size=(len(PROMPTS), 8)).astype(np.float32)
        writer.write_text_embeddings({"prompt_index": list(range(len(PROMPTS))),
                                      "prompt": [p for p, _ in PROMPTS],
                                      "category": [c for _, c in PROMPTS], "embedding": emb})
    return run_id


def build_app_store(root: str | Path, per_run: int = 120) -> Path:
    """Two models, three runs: the fixture of the app tests (about a second to build)."""
    root = Path(root)
    _write_class_run(root, "digits", "digits-a", ("encoder_bottleneck", "midblock"), per_run, SIGMAS, seed=1)
    _write_class_run(root, "digits", "digits-b", ("encoder_bottleneck", "midblock"), per_run // 2, SIGMAS,
                     seed=2)
    _write_prompt_run(root, "words", "words-a", 48, seed=3)
    return root


def build_points_store(root: str | Path, n: int, image_size: int = 24) -> Path:
    """One model, one run, one step with ``n`` samples: the benchmark store."""
    root = Path(root)
    _write_class_run(root, "points", f"points-{n}", ("midblock",), n, (1.0,), seed=7, image_size=image_size,
                     batch=1000)
    return root


class FakeProjector:
    """A deterministic, instant stand-in for ``pipeline.project.Projector`` in the AppTest tests.

    The 2-D map is the first two principal components of the layer's features (``pipeline.features``, kind
    ``full``; numpy SVD). It follows the projector's calling convention and returns what a real projection
    carries (ids, coordinates, key, quality, source, ``features``), so the app code under test is the same,
    neighbours included (they come from ``pipeline.neighbors``); the real engine is exercised by the
    pipeline's own tests and the browser tests.
    """

    def __init__(self, delay_s: float = 0.0, fail: str | None = None):
        self.calls: list[dict] = []
        self.cancelled: list[dict] = []
        self.delay_s = delay_s
        self.fail = fail

    def project(self, store, model, layer, step, params, run_ids=None, sample_ids=None, progress=None,
                force=False, cancel=None):
        import hashlib
        import time
        from types import SimpleNamespace

        from pipeline.features import load_features
        from pipeline.neighbors import FeatureRef
        from pipeline.project import Cancelled

        self.calls.append(dict(model=model, layer=layer, step=step, params=dict(params), run_ids=run_ids,
                               sample_ids=None if sample_ids is None else list(sample_ids), force=force))
        if progress:
            progress(0.1, "reading activations")
        if self.delay_s:  # a slow fit that stops when cancelled, as the real one does between epochs
            if cancel is not None and cancel.wait(self.delay_s):
                self.cancelled.append(dict(model=model, layer=layer, params=dict(params)))
                raise Cancelled("cancelled")
            time.sleep(0 if cancel is not None else self.delay_s)
        if self.fail:
            raise ValueError(self.fail)
        f = load_features(store, model, layer, step, "full", run_ids, sample_ids)
        x = f.X.astype(np.float64) - f.X.mean(axis=0)
        xy = x @ np.linalg.svd(x, full_matrices=False)[2][:2].T
        key = hashlib.sha1(repr((model, layer, step, sorted(params.items()), run_ids,
                                 None if sample_ids is None else sorted(sample_ids))).encode()).hexdigest()[:16]
        ref = FeatureRef(model=model, layer=layer, step=f.step, feature=f.spec.to_dict(), key=f.key,
                         run_ids=None if run_ids is None else tuple(sorted(run_ids)),
                         filtered=sample_ids is not None)
        if progress:
            progress(1.0, "done")
        return SimpleNamespace(sample_ids=np.asarray(f.sample_ids), xy=xy.astype(np.float32), key=key,
                               quality={"trustworthiness": 0.93, "knn_overlap": 0.41}, source="fit",
                               step=f.step, features=ref)


# ------------------------------------------------------------------------------ pytest fixtures
# Imported by the app test modules (``from tests.app_fixtures import app_env, app_store, ...``).

import pytest  # noqa: E402

ENTRY = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


@pytest.fixture(scope="session")
def app_store(tmp_path_factory) -> Path:
    return build_app_store(tmp_path_factory.mktemp("appstore") / "store")


@contextlib.contextmanager
def app_pointed_at(store, monkeypatch, tmp_path):
    """The app on `store`, static files in a temporary folder, the fake projector (yielded); caches cleared."""
    import streamlit as st

    from app import data, static_files

    monkeypatch.setenv("DMD2VIZ_STORE", str(store))
    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path / "static")
    # wait for a projection job inside the run (the page's 0.4 s would show progress instead of the map
    # whenever a loaded machine makes a stand-in fit slower than that); tests of the progress path lower it
    monkeypatch.setattr(data, "JOB_WAIT_S", 60)
    st.cache_data.clear()
    st.cache_resource.clear()
    fake = FakeProjector()
    data.set_projector(fake)
    try:
        yield fake
    finally:
        data.set_projector(None)
        st.cache_data.clear()
        st.cache_resource.clear()


@pytest.fixture
def app_env(app_store, monkeypatch, tmp_path):
    """The app pointed at the synthetic store, static files in a temporary folder, the fake projector."""
    with app_pointed_at(app_store, monkeypatch, tmp_path) as fake:
        yield fake


def app_test(page: str | None = None, query: dict | None = None, timeout: float = 60):
    """An AppTest of the entry script, run, then switched to ``page`` (e.g. "app_pages/overview.py") and run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(ENTRY, default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def open_page(page: str, query: dict | None = None, timeout: float = 60, query_on_entry: bool = False):
    """A session opened on ``page``'s URL: AppTest runs the default page (Explore) first, which rewrites the
    URL, so the page's query is put back before the switch (the page reads the URL on its own first run).
    ``query_on_entry``: Explore's run gets the query too (the page then finds Explore's map of that view)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(ENTRY, default_timeout=timeout)
    for k, v in (query or {}).items() if query_on_entry else ():
        at.query_params[k] = v
    at.run()
    at.query_params.clear()
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.switch_page(page).run()


def page_text(at, *more) -> str:
    """The page's text: markdown, captions, info, errors and warnings, then the element lists in ``more``."""
    elements = [*at.markdown, *at.caption, *at.info, *at.error, *at.warning]
    for extra in more:
        elements += list(extra)
    return "\n".join(str(m.value) for m in elements)


def record_downloads(monkeypatch) -> dict:
    """What the page hands to its download buttons, by label: {label: (data, file_name)} (AppTest shows a
    download button, not the bytes it serves)."""
    from streamlit.delta_generator import DeltaGenerator

    captured = {}
    original = DeltaGenerator.download_button

    def recording(self, label, data, file_name=None, *args, **kwargs):
        captured[label] = (data, file_name)
        return original(self, label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    return captured


def map_data(at) -> dict:
    """The data the page's one map component was drawn with."""
    import json

    maps = at.get("bidi_component")
    assert len(maps) == 1, "expected exactly one map"
    proto = maps[0].proto
    return json.loads(proto.json if proto.WhichOneof("data") == "json" else proto.mixed.json)


def static_json(url: str) -> dict:
    """A JSON file the page wrote under app/static/ (a map's points, colours or hover text), by its URL."""
    import json

    from app import static_files

    return json.loads((static_files.STATIC_DIR / url.split("/app/static/", 1)[1]).read_text())
