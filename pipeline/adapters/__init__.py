"""Model adapters, one per family, and the factory that builds one from command-line choices.

Which models exist, and how each is built, is the registry's business (pipeline/families.py)."""

from __future__ import annotations

import torch

from pipeline.adapters.base import Adapter, Condition, UnknownLayer
from pipeline.families import MODELS, get_family

__all__ = ["MODELS", "Adapter", "Condition", "UnknownLayer", "build_adapter"]


def build_adapter(model: str, *, checkpoint: str | None = None, device: torch.device | None = None,
                  steps: int | None = None, dtype: torch.dtype | None = None, class_ids=None,
                  samples_per_class: int | None = None, x0_previews: bool = False, **t2i) -> Adapter:
    """Build the adapter for `model` (see MODELS); text-to-image options go through **t2i.

    `steps` and `dtype` default to the family's recipe (a fixed-step family keeps its own timesteps).
    `x0_previews`: the adapter keeps each step's x0 (denoised) image in `last_previews` after `sample`."""
    family = get_family(model)
    recipe = family.recipe
    if steps is None and not recipe.fixed_steps:
        steps = recipe.steps
    if dtype is None and recipe.dtype is not None:
        dtype = getattr(torch, recipe.dtype)
    return family.load(checkpoint=checkpoint, device=device or torch.device("cpu"), steps=steps, dtype=dtype,
                       class_ids=class_ids, samples_per_class=samples_per_class, x0_previews=x0_previews, **t2i)
