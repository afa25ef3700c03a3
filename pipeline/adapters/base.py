"""What every model family offers the generation loop: layers, conditions and a sampler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


class UnknownLayer(ValueError):
    """A layer name the adapter does not know; the message lists the valid ones."""


class EditUnsupported(ValueError):
    """A model family that does not (yet) offer the edits of pipeline/edit.py."""

    def __init__(self, name: str):
        super().__init__(f"edits (regenerate, interpolate, patch, steer) are not supported for model {name!r}: "
                         "its adapter does not implement condition, edit_inputs, mix_inputs and sample_inputs")


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

    # -- edits (pipeline/edit.py): a family that lacks them raises EditUnsupported ---------------------------
    def condition(self, class_id: int | None = None, prompt: str | None = None) -> Condition:
        """The condition of a class (class models) or a prompt (prompt models), as `conditions` makes it."""
        raise EditUnsupported(self.name)

    def edit_inputs(self, noise_seeds: list[int], conditions: list[Condition]) -> dict[str, torch.Tensor]:
        """Exactly what `sample` feeds the sampler for these samples, as tensors with the batch first (every
        noise draw, the condition as the network takes it), so that an edit can change or mix them;
        `sample_inputs(edit_inputs(s, c), r)` equals `sample(s, c, r)` bit for bit."""
        raise EditUnsupported(self.name)

    def mix_inputs(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict:
        """The inputs a fraction `t` of the way from `a` to `b` (one sample each): the noise by spherical
        interpolation, the condition linearly; t = 0 and t = 1 return `a` and `b` themselves."""
        raise EditUnsupported(self.name)

    def sample_inputs(self, inputs: dict[str, torch.Tensor], recorder) -> np.ndarray:
        """`sample` on inputs from `edit_inputs` (or mixed ones): uint8 images (B, H, W, 3)."""
        raise EditUnsupported(self.name)

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


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between `a` and `b` row by row (batch first): along the great circle between
    the two vectors, which keeps a Gaussian draw's typical norm where a linear mix would shrink it. `a`
    itself at t = 0 and `b` at t = 1; nearly parallel rows fall back to a linear mix."""
    t = float(t)
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    fa, fb = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    cos = ((fa / na.clamp_min(1e-30)) * (fb / nb.clamp_min(1e-30))).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    wa = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / torch.where(parallel, 1.0, sin))
    wb = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1.0, sin))
    return (wa * fa + wb * fb).reshape(a.shape).to(a.dtype)


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
