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


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """Random weights of the demo architecture (209 tensors) in a safetensors file: the checkpoint path of the
    command line without depending on the trained file."""
    import torch
    from safetensors.torch import save_file

    from pipeline.demo_model import DEMO_CONFIG
    from pipeline.models.edm import EDMPrecond

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in EDMPrecond(**DEMO_CONFIG).state_dict().items()}, path)
    return path


@pytest.fixture
def tiny_adapter():
    from tests.edm_fixtures import tiny_edm_adapter

    return tiny_edm_adapter()
