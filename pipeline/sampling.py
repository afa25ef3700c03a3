"""Sampling for EDM-parameterised class-conditional generators (the ImageNet-64 network and the demo model).

DMD2's ImageNet generator makes one call at sigma = 80 on 80·z. Several steps follow the multi-step
recipe: D = net(x, sigma_i), then x = D + sigma_{i+1}·eps with fresh noise, on a Karras schedule.
The teachers (the EDM networks DMD2 distils from) are sampled with EDM's 2nd-order Heun sampler
(`heun_sample`, Karras et al. 2022, Algorithm 2, with its stochastic "churn" as an option).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["HEUN_STEPS", "Churn", "edm_sample", "heun_sample", "karras_sigmas", "to_uint8"]


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


HEUN_STEPS = 18
"""EDM's default step count for its deterministic sampler (35 network calls), on karras_sigmas(18)."""


@dataclass(frozen=True)
class Churn:
    """EDM's stochastic sampling settings. At a step whose sigma_i lies in [s_min, s_max], noise raises the
    level to sigma_hat = (1 + gamma)·sigma_i, gamma = min(s_churn / steps, sqrt(2) - 1), adding
    sqrt(sigma_hat^2 - sigma_i^2)·s_noise·eps. The default (s_churn = 0) is the deterministic sampler."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        for name in ("s_churn", "s_min", "s_noise"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number, 0 or more, got {value!r}")
        if not (isinstance(self.s_max, int | float) and self.s_max >= self.s_min):
            raise ValueError(f"s_max must be at least s_min ({self.s_min}), got {self.s_max!r}")

    @property
    def active(self) -> bool:
        return self.s_churn > 0

    def gamma(self, sigma: float, steps: int) -> float:
        if not self.active or not self.s_min <= sigma <= self.s_max:
            return 0.0
        return min(self.s_churn / steps, math.sqrt(2) - 1)

    def settings(self) -> dict:
        """JSON-safe (an infinite s_max as None), for a run's manifest."""
        out = asdict(self)
        out["s_max"] = None if math.isinf(self.s_max) else self.s_max
        return out

    @classmethod
    def from_settings(cls, settings: dict | None) -> Churn:
        """The inverse of `settings()`: what a run's manifest recorded (None or {}: the deterministic sampler)."""
        values = dict(settings or {})
        if values.get("s_max") is None:
            values["s_max"] = math.inf
        return cls(**{k: float(v) for k, v in values.items() if k in cls.__dataclass_fields__})


def heun_sample(
    net: torch.nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor,
    sigmas: Sequence[float],
    *,
    churn: Churn | None = None,
    noise_seeds: Sequence[int] | None = None,
    churn_noise: Sequence[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], AbstractContextManager] | None = None,
    on_denoised: Callable[[int, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """EDM's 2nd-order Heun sampler from ``x = sigmas[0]·z`` down to sigma 0; returns the final images x_N.

    ``sigmas`` are t_0 > ... > t_{N-1} (e.g. ``karras_sigmas(18)``); t_N = 0 is appended. Step i: optionally
    raise the noise to t_hat (``churn``), take an Euler step x' = x_hat + (t_{i+1} - t_hat)·d with
    d = (x_hat - D(x_hat, t_hat)) / t_hat, and, unless t_{i+1} = 0 (the last step), correct it with the slope
    at x': x_{i+1} = x_hat + (t_{i+1} - t_hat)·(d + d')/2. That is 2N - 1 network calls.

    What a step records: ``on_step(i, t_hat)`` wraps the step's *first* call, D(x_hat, t_hat), and only that
    one, so step i of a teacher run is the network at the schedule's sigma_i (t_hat, the same unless churned)
    like step i of a multi-step run; the correction call at t_{i+1} runs untagged (hooks record nothing in
    it: its sigma is the next step's). ``on_denoised(i, t_hat, D)`` gets that call's D, the step's x0 preview.
    The last step's D is the final image up to rounding (x_N = x_hat - t_hat·d = D).

    Churn noise for step i is, per sample, ``seeded_normal(noise_seeds, shape, stream=i + 1)`` with
    ``noise_seeds``, ``churn_noise[i]`` when given (an edit's mixed draws), else from ``generator``.
    """
    churn = churn or Churn()
    steps = len(sigmas)
    if steps == 0:
        raise ValueError("sigmas is empty")
    if noise_seeds is not None and len(noise_seeds) != len(z):
        raise ValueError(f"need one noise seed per sample: {len(noise_seeds)} seeds for {len(z)} samples")
    t = [float(s) for s in sigmas] + [0.0]
    if any(b >= a for a, b in zip(t[:-1], t[1:], strict=True)):
        raise ValueError(f"the Heun sampler needs decreasing positive sigmas, got {list(sigmas)}")
    shape = tuple(z.shape[1:])
    x = t[0] * z.to(torch.float32)

    def call(x_in: torch.Tensor, sigma: float) -> torch.Tensor:
        return net(x_in, torch.full((len(x_in),), sigma, device=x_in.device), labels).to(torch.float32)

    with torch.no_grad():
        for i in range(steps):
            t_cur, t_next = t[i], t[i + 1]
            gamma = churn.gamma(t_cur, steps)
            t_hat = t_cur * (1 + gamma)
            x_hat = x
            if gamma > 0:
                if churn_noise is not None:
                    eps = churn_noise[i].to(x.device, torch.float32)
                elif noise_seeds is not None:
                    from pipeline.adapters.base import seeded_normal

                    eps = seeded_normal(noise_seeds, shape, stream=i + 1).to(x.device)
                else:
                    eps = torch.randn(x.shape, generator=generator, device=x.device)
                x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * churn.s_noise * eps
            with on_step(i, t_hat) if on_step else nullcontext():
                denoised = call(x_hat, t_hat)
            if on_denoised is not None:
                on_denoised(i, t_hat, denoised)
            d = (x_hat - denoised) / t_hat
            x = x_hat + (t_next - t_hat) * d
            if t_next > 0:
                d_next = (x - call(x, t_next)) / t_next
                x = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_next)
    return x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC RGB: (x + 1)·127.5, clamped, cast by truncation (as the reference)."""
    out = ((images.detach().to(torch.float32) + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.permute(0, 2, 3, 1).cpu().numpy()
