"""Sampling for EDM-parameterised class-conditional generators (the ImageNet-64 network and the demo model).

DMD2's ImageNet generator makes one call at sigma = 80 on 80·z. Several steps follow the multi-step
recipe: D = net(x, sigma_i), then x = D + sigma_{i+1}·eps with fresh noise, on a Karras schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

__all__ = ["edm_sample", "karras_sigmas", "to_uint8"]


def karras_sigmas(
    steps: int, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0
) -> list[float]:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1)·(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho; one step is [sigma_max]."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if steps == 1:
        return [float(sigma_max)]
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [float(s) for s in (hi + ramp * (lo - hi)) ** rho]


def edm_sample(
    net: torch.nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor,
    sigmas: Sequence[float],
    noise_seeds: Sequence[int] | None = None,
    on_step: Callable[[int, float], AbstractContextManager] | None = None,
    generator: torch.Generator | None = None,
    on_denoised: Callable[[int, float, torch.Tensor], None] | None = None,
    renoise: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the sampler and return the final denoised images D (float32, NCHW, about [-1, 1]).

    ``x = sigmas[0]·z``; for each step ``D = net(x, sigma_i, labels)``, then ``x = D + sigma_{i+1}·eps``.
    With ``noise_seeds`` (one per sample) the re-noising ``eps`` of step i is drawn from that sample's
    seed and the step only (``seeded_normal(seeds, shape, stream=i + 1)``, the same draw the generation
    adapters use), so a sample does not depend on the batch it was generated in. Otherwise ``eps`` comes
    from ``generator`` (or the global RNG). Each network call runs inside ``on_step(i, sigma_i)`` when given,
    e.g. ``lambda i, s: recorder.step(i, sigma=s)``. ``on_denoised(i, sigma_i, D)`` receives each step's
    denoised batch D (float32, NCHW; the last one is the returned image), e.g. to keep x0 previews.
    ``renoise`` (one tensor of ``z``'s shape per step after the first) gives the re-noising draws explicitly, e.g.
    mixed ones for an interpolation (pipeline/edit.py); it takes precedence over ``noise_seeds``.
    """
    if len(sigmas) == 0:
        raise ValueError("sigmas is empty")
    if noise_seeds is not None and len(noise_seeds) != len(z):
        raise ValueError(f"need one noise seed per sample: {len(noise_seeds)} seeds for {len(z)} samples")
    shape = tuple(z.shape[1:])
    x = float(sigmas[0]) * z.to(torch.float32)
    denoised = x
    with torch.no_grad():
        for i, sigma in enumerate(sigmas):
            sigma_t = torch.full((len(x),), float(sigma), device=x.device)
            with on_step(i, float(sigma)) if on_step else nullcontext():
                denoised = net(x, sigma_t, labels).to(torch.float32)
            if on_denoised is not None:
                on_denoised(i, float(sigma), denoised)
            if i + 1 < len(sigmas):
                if renoise is not None:
                    x = denoised + float(sigmas[i + 1]) * renoise[i].to(x.device, torch.float32)
                    continue
                if noise_seeds is not None:
                    from pipeline.adapters.base import seeded_normal

                    eps = seeded_normal(noise_seeds, shape, stream=i + 1).to(x.device)
                else:
                    eps = torch.randn(x.shape, generator=generator, device=x.device)
                x = denoised + float(sigmas[i + 1]) * eps
    return denoised


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC RGB: (x + 1)·127.5, clamped, cast by truncation (as the reference)."""
    out = ((images.detach().to(torch.float32) + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.permute(0, 2, 3, 1).cpu().numpy()
