"""The demo store: the shipped digits model run through the same generate path as real checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEMO_LAYERS = ("encoder_bottleneck", "midblock", "dec.16x16_block0")
DEMO_SAMPLES_PER_CLASS = 150


def demo_layers(adapter) -> list[str]:
    known = adapter.layers()
    return [name for name in DEMO_LAYERS if name in known]


def build_demo_store(root: str | Path, *, samples_per_class: int = DEMO_SAMPLES_PER_CLASS,
                     batch_size: int = 100, progress: bool = True, on_batch=None, maps: bool = True,
                     on_map=None) -> list[str]:
    """Generate the demo runs into `root` (resumable) and return their run ids.

    Two runs of the same model: the multi-step run (trajectories across the sampling steps, with each
    step's x0 preview image: 16-px PNGs, a few hundred bytes each) and a 1-step run, so the app has
    several runs and steps to switch between. With `maps`, the map the app opens on (every demo layer at
    the last step, default parameters) is computed and cached too, so the first map needs no fit;
    `on_map(i, n, layer)` is called before each.
    """
    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate

    run_ids = []
    for steps, name in ((None, "demo-multistep"), (1, "demo-1step")):
        adapter = load_demo(torch.device("cpu"), steps=steps, samples_per_class=samples_per_class,
                            x0_previews=steps is None)
        result = generate(adapter, root, samples_per_class * len(adapter.class_ids), demo_layers(adapter), seed=0,
                          batch_size=batch_size, run_id=name, progress=progress, on_batch=on_batch)
        run_ids.append(result.run_id)
    if maps:
        precompute_default_maps(root, on_map=on_map)
    return run_ids


def precompute_default_maps(root: str | Path, on_map=None) -> list[str]:
    """Cache the map the app opens on for every layer of the demo model: the last step, the app's default
    projection parameters, all runs. Returns their keys. A map that cannot be made (a store too small for
    the default n_neighbors) is left to the app, which says why."""
    from pipeline.project import ProjectionError, ProjectionParams, default_projector
    from store import Store

    store = Store(root)
    layers = store.layers("demo")
    keys = []
    for i, layer in enumerate(layers):
        if on_map is not None:
            on_map(i, len(layers), layer)
        try:
            keys.append(default_projector().project(store, "demo", layer, None, ProjectionParams()).key)
        except ProjectionError as exc:
            log.info("no default map of %s: %s", layer, exc)
    return keys
