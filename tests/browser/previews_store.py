"""The store of the layout and walk browser tests: four sampling steps with x0 previews and DMD2's sigmas
(80 … 0.002, the captions that used to wrap inside a number), two layers with long real-world names, prompts to
search. Served once per session (`tests/browser/conftest.py`, fixture ``previews_server``)."""

from __future__ import annotations

import numpy as np

SIGMAS = (80.0, 9.72, 0.47, 0.002)
LAYERS = ("mid_block.attentions.0.transformer_blocks.0", "up_blocks.0.attentions.2.transformer_blocks.1")
MODEL = "sdxl-4step-lora"


def write_store(root, n: int = 60) -> None:
    from store import RunWriter
    from tests.app_fixtures import DIGITS, PROMPTS, _tile

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 6
    manifest = dict(run_id="run-a", model=MODEL, family="synthetic", checkpoint="synthetic", layers=list(LAYERS),
                    seed=1, num_samples=n, reduce={layer: "mean" for layer in LAYERS},
                    settings={"steps": len(SIGMAS), "sigmas": list(SIGMAS)})
    centers = rng.normal(0, 4, size=(6, 16))
    with RunWriter(root, manifest) as w:
        idx = np.arange(n)
        samples = [dict(seed=int(i), prompt=PROMPTS[c][0], prompt_index=int(c), category=PROMPTS[c][1],
                        label=PROMPTS[c][0], num_steps=len(SIGMAS)) for i, c in zip(idx, labels, strict=True)]
        images = [_tile(int(c), 32, rng) for c in labels]
        acts = {layer: [dict(step=s, timestep=None, sigma=sig, reduce="mean", layer_shape=(16, 2, 2),
                             array=(centers[labels] + rng.normal(0, 0.3, size=(n, 16))).astype(np.float32))
                        for s, sig in enumerate(SIGMAS)] for layer in LAYERS}
        previews = {k: [_tile(int(c) + k, 32, rng) for c in labels] for k in range(len(SIGMAS))}
        w.write_batch(idx, samples, images, acts, previews=previews)
    assert DIGITS  # the tiles draw digits
