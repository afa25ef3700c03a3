"""Fixtures shared across the suite: the reference folder beside the clone and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Tests never touch the network; the hub client must fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (reference data) is not beside this clone")
    return SHARED


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


@pytest.fixture
def tiny_adapter():
    return tiny_edm_adapter()
