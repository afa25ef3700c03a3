"""A tiny randomly initialised EDM network behind the real adapter."""

from __future__ import annotations

TINY_EDM = dict(img_resolution=8, img_channels=3, label_dim=10, model_channels=16, channel_mult=(1, 2),
                num_blocks=1, attn_resolutions=(4,), channels_per_head=16)
"""The architecture at its smallest that still has attention, a down/up level and skip concatenations."""


def tiny_edm_adapter(sigmas=(80.0, 5.0, 0.5), seed: int = 0, **kwargs):
    """A randomly initialised 8-px EDM network behind the real adapter (fast enough for any test)."""
    import torch

    from pipeline.adapters.edm import DIGIT_NAMES, EDMAdapter
    from pipeline.models.edm import EDMPrecond

    torch.manual_seed(seed)
    net = EDMPrecond(**TINY_EDM)
    return EDMAdapter(net, TINY_EDM, name="tiny", class_names=list(DIGIT_NAMES), sigmas=list(sigmas),
                      device=torch.device("cpu"), checkpoint="random init", checkpoint_sha256=f"seed{seed}",
                      **kwargs)
