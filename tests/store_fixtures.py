"""Synthetic runs for the store tests: a few layers and steps, deterministic values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store import RunWriter

LAYERS = {"enc": (8, 4, 4), "mid": (16, 2, 2)}  # layer -> (C, H, W); stored 'full'
SIGMAS = [80.0, 2.5]
NUM_STEPS = len(SIGMAS)


def manifest(run_id: str = "r1", model: str = "demo", layers=tuple(LAYERS), **extra) -> dict:
    m = dict(run_id=run_id, model=model, family="edm", checkpoint="local:/tmp/ckpt.pkl",
             checkpoint_sha256="ab" * 32, layers=list(layers), reduce={"default": "full"},
             settings={"steps": len(SIGMAS), "batch_size": 4, "resolution": 8}, seed=7, num_samples=10,
             code_version="test", device="cpu")
    m.update(extra)
    return m


def activation_value(run_id: str, layer: str, step: int, index: int) -> np.ndarray:
    """The deterministic activation written for (run, layer, step, index)."""
    shape = LAYERS[layer]
    rng = np.random.default_rng([sum(map(ord, run_id)), sum(map(ord, layer)), step, index])
    return (rng.standard_normal(shape) * 3).astype(np.float32)


def image(index: int, size: int = 8) -> np.ndarray:
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[..., 0] = index % 256
    a[..., 1] = np.arange(size, dtype=np.uint8)[:, None] * 16
    return a


def batch(run_id: str, indices, layers=tuple(LAYERS), steps=NUM_STEPS, with_images=True):
    """(samples, images, activations) for `write_batch`."""
    indices = list(indices)
    samples = [dict(seed=1000 + i, class_id=i % 3, class_name=f"class{i % 3}", category=f"class{i % 3}",
                    label=f"{i % 3}: class{i % 3}", num_steps=steps) for i in indices]
    images = [image(i) for i in indices] if with_images else None
    acts = {
        layer: [dict(step=s, timestep=None, sigma=SIGMAS[s], reduce="full", layer_shape=LAYERS[layer],
                     array=np.stack([activation_value(run_id, layer, s, i) for i in indices]))
                for s in range(steps)]
        for layer in layers
    }
    return samples, images, acts


def write_run(root: Path, run_id: str = "r1", model: str = "demo", n: int = 10, batch_size: int = 4,
              finish: bool = True, **extra) -> RunWriter:
    w = RunWriter(root, manifest(run_id, model, num_samples=n, **extra))
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        w.write_batch(idx, *batch(run_id, idx))
    if finish:
        w.finish("complete")
    return w
