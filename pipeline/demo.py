"""The demo store: the shipped digits model run through the same generate path as real checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_LAYERS = ("encoder_bottleneck", "midblock", "dec.16x16_block0")
DEMO_SAMPLES_PER_CLASS = 150


def demo_layers(adapter) -> list[str]:
    known = adapter.layers()
    return [name for name in DEMO_LAYERS if name in known]


def build_demo_store(root: str | Path, *, samples_per_class: int = DEMO_SAMPLES_PER_CLASS,
                     batch_size: int = 100, progress: bool = True, on_batch=None) -> list[str]:
    """Generate the demo runs into `root` (resumable) and return their run ids.

    Two runs of the same model: the multi-step run (trajectories across the sampling steps, with each
    step's x0 preview image: 16-px PNGs, a few hundred bytes each) and a 1-step run, so the app has
    several runs and steps to switch between.
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
    return run_ids
