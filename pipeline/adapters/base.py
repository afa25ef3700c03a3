"""What every model family offers the generation loop: layers, conditions and a sampler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


class UnknownLayer(ValueError):
    """A layer name the adapter does not know; the message lists the valid ones."""


@dataclass(frozen=True)
class Condition:
    """What one sample is conditioned on: a class or a prompt."""

    class_id: int | None = None
    class_name: str | None = None
    prompt: str | None = None
    prompt_index: int | None = None
    category: str | None = None

    @property
    def label(self) -> str:
        if self.prompt is not None:
            return self.prompt
        if self.class_id is not None:
            return f"{self.class_id}: {self.class_name}" if self.class_name else str(self.class_id)
        return ""


def sample_seed(run_seed: int, index: int) -> int:
    """The noise seed of sample `index`: a function of (run seed, index) only, so a sample is the same
    whichever batch, resume or rank produced it."""
    state = np.random.SeedSequence([int(run_seed), int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def seeded_normal(seeds, shape, stream: int = 0) -> torch.Tensor:
    """One float32 N(0, I) tensor of `shape` per seed, stacked; drawn on the CPU so every device agrees.
    `stream` picks an independent draw for the same seed (e.g. the re-noising of step k)."""
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    for row, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed((int(seed) + 1_000_003 * stream) % (2**63 - 1))
        out[row] = torch.randn(shape, generator=gen, dtype=torch.float32)
    return out


class Adapter(ABC):
    """One model family. `name` is the model key in the store; layer paths are `root.named_modules()` paths."""

    name: str
    family: str
    root: torch.nn.Module

    @abstractmethod
    def layers(self) -> dict[str, str]:
        """Friendly name (and aliases) -> module path."""

    @abstractmethod
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Friendly name -> output shape of one sample, e.g. (768, 8, 8)."""

    @abstractmethod
    def conditions(self, indices: np.ndarray, seed: int) -> list[Condition]:
        """The condition of each sample index; depends only on (seed, index)."""

    @abstractmethod
    def sample(self, noise_seeds: list[int], conditions: list[Condition], recorder) -> np.ndarray:
        """Generate one batch; returns uint8 images (B, H, W, 3). Each network call runs inside
        `recorder.step(...)` so that hooks know the step it belongs to."""

    @abstractmethod
    def identity(self) -> dict:
        """What makes two runs comparable: checkpoint, checkpoint_sha256, base_model, settings (dict)."""

    def text_embeddings(self):
        """Pooled text embedding per prompt (pyarrow.Table) for prompt models; None otherwise."""
        return None

    def resolve_layers(self, names: list[str]) -> dict[str, str]:
        """Map user layer names to module paths, failing with the list of valid names."""
        known = self.layers()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UnknownLayer(
                f"unknown layer(s) {', '.join(unknown)} for model {self.name!r}; valid layers: "
                + ", ".join(known)
            )
        return {n: known[n] for n in names}


def shapes_by_hooks(module: torch.nn.Module, paths: dict[str, str], run) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each path, found by running `run()` once with temporary hooks.
    Works on the meta device, so even a 2.6 B-parameter UNet costs no memory."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, path in paths.items():
        def hook(_m, _i, out, name=name):
            out = out[0] if isinstance(out, tuple | list) else out
            shapes.setdefault(name, tuple(out.shape[1:]))
        handles.append(module.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return shapes
