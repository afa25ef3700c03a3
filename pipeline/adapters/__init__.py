"""Model adapters, one per family, and the factory that builds one from command-line choices."""

from __future__ import annotations

import torch

from pipeline.adapters.base import Adapter, Condition, UnknownLayer

EDM_MODELS = ("demo", "imagenet")
T2I_MODELS = ("sd15", "sdxl", "sdxl-4step", "sdxl-4step-lora")
MODELS = EDM_MODELS + T2I_MODELS

__all__ = ["MODELS", "Adapter", "Condition", "UnknownLayer", "build_adapter"]


def build_adapter(model: str, *, checkpoint: str | None = None, device: torch.device | None = None,
                  steps: int | None = None, dtype: torch.dtype | None = None, class_ids=None,
                  samples_per_class: int | None = None, x0_previews: bool = False, **t2i) -> Adapter:
    """Build the adapter for `model` (see MODELS); text-to-image options go through **t2i.

    `x0_previews`: the adapter keeps each step's x0 (denoised) image in `last_previews` after `sample`."""
    device = device or torch.device("cpu")
    if model == "demo":
        from pipeline.adapters.edm import load_demo

        return load_demo(device, checkpoint=checkpoint, steps=steps, class_ids=class_ids,
                         samples_per_class=samples_per_class, x0_previews=x0_previews)
    if model == "imagenet":
        from pipeline.adapters.edm import load_imagenet

        if not checkpoint:
            raise ValueError("--model imagenet needs --checkpoint (a local file or folder, or "
                             "hf://tianweiy/DMD2/model/imagenet/<run folder>)")
        return load_imagenet(checkpoint, device, steps=steps or 1, dtype=dtype or torch.float32,
                             class_ids=class_ids, samples_per_class=samples_per_class, x0_previews=x0_previews)
    if model in T2I_MODELS:
        from pipeline.adapters.t2i import build_t2i_adapter

        return build_t2i_adapter(model, checkpoint=checkpoint, device=device, dtype=dtype, x0_previews=x0_previews,
                                 **t2i)
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
