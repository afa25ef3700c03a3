"""A tiny randomly initialised EDM network behind the real adapter."""

from __future__ import annotations

TINY_EDM = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=32, channel_mult=(1, 2),
                channel_mult_emb=4, num_blocks=1, attn_resolutions=(8,))


def tiny_edm_adapter(sigmas=(80.0, 5.0, 0.5), seed: int = 0, **kwargs):
    """A randomly initialised 16-px EDM network behind the real adapter (fast enough for any test)."""
    import torch

    from pipeline.adapters.edm import DIGIT_NAMES, EDMAdapter
    from pipeline.models.edm import EDMPrecond

    torch.manual_seed(seed)
    net = EDMPrecond(**TINY_EDM)
    return EDMAdapter(net, TINY_EDM, name="tiny", class_names=list(DIGIT_NAMES), sigmas=list(sigmas),
                      device=torch.device("cpu"), checkpoint="random init", checkpoint_sha256=f"seed{seed}",
                      **kwargs)
