"""A small store with clustered activations: the shared input of the feature, projection, neighbour and cache
tests. Sample ``i`` belongs to class ``i % CLASSES``; its vectors are the class centre plus noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store import RunWriter

CLASSES = 4
# layer -> (layer_shape (C, H, W), reduce, stored shape)
LAYERS = {"mid": ((8, 2, 2), "full", (8, 2, 2)), "enc": ((16, 4, 4), "mean", (16,))}
STEPS = 2


def _centres(layer: str) -> np.ndarray:
    shape = LAYERS[layer][2]
    rng = np.random.default_rng(sum(map(ord, layer)))
    return rng.normal(size=(CLASSES, *shape)).astype(np.float32) * 4


def clustered_vector(layer: str, index: int, step: int) -> np.ndarray:
    """Sample `index` belongs to class index % CLASSES: its class centre plus noise."""
    rng = np.random.default_rng([sum(map(ord, layer)), index, step])
    return _centres(layer)[index % CLASSES] + rng.normal(size=LAYERS[layer][2]).astype(np.float32) * 0.7


def write_clustered_run(root: Path, indices, run_id: str = "r1", model: str = "demo", num_samples: int = 400,
                        batch_size: int = 60) -> None:
    manifest = dict(run_id=run_id, model=model, family="edm", checkpoint="local:/tmp/ckpt.pkl",
                    checkpoint_sha256="cd" * 32, layers=list(LAYERS), reduce={"mid": "full", "enc": "mean"},
                    settings={"steps": STEPS, "batch_size": 60, "resolution": 8}, seed=3,
                    num_samples=num_samples, code_version="test", device="cpu")
    w = RunWriter(root, manifest)
    indices = list(indices)
    for s in range(0, len(indices), batch_size):
        idx = indices[s:s + batch_size]
        samples = [dict(seed=100 + i, class_id=i % CLASSES, class_name=f"c{i % CLASSES}",
                        category=f"c{i % CLASSES}", label=f"{i % CLASSES}: c{i % CLASSES}", num_steps=STEPS)
                   for i in idx]
        acts = {layer: [dict(step=st, timestep=None, sigma=[80.0, 1.0][st], reduce=red, layer_shape=lshape,
                             array=np.stack([clustered_vector(layer, i, st) for i in idx]))
                        for st in range(STEPS)]
                for layer, (lshape, red, _) in LAYERS.items()}
        w.write_batch(idx, samples, None, acts)


def class_of(sample_ids) -> np.ndarray:
    return np.array([int(str(s).rsplit("-", 1)[1]) % CLASSES for s in sample_ids])
