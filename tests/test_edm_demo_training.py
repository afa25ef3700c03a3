"""The demo model's data set and training loop (tiny sizes; the shipped weights are tested for quality elsewhere)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.demo_model import DEMO_CONFIG, DEMO_SIGMAS, DEMO_WEIGHTS, digits_dataset, train_demo
from pipeline.models.edm import EDMPrecond
from tests.edm_fixtures import TINY_EDM

TINY = {**TINY_EDM, "model_channels": 8, "channels_per_head": 8, "sigma_data": 0.5, "dropout": 0.0}


def test_digits_dataset():
    images, labels = digits_dataset(16)
    assert images.shape == (1797, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 2])  # grey
    assert sorted(labels.unique().tolist()) == list(range(10))
    small, _ = digits_dataset(8)
    assert small.shape == (1797, 3, 8, 8)


def test_training_is_deterministic_and_writes_loadable_weights(tmp_path):
    kwargs = dict(config=TINY, steps=3, batch_size=8, warmup=2, log_every=0)
    a = train_demo(tmp_path / "a.safetensors", seed=1, **kwargs)
    b = train_demo(tmp_path / "b.safetensors", seed=1, **kwargs)
    c = train_demo(tmp_path / "c.safetensors", seed=2, **kwargs)
    wa, wb, wc = load_file(a), load_file(b), load_file(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    net = EDMPrecond(**TINY)
    net.load_state_dict(wa, strict=True)
    with pytest.raises(ValueError, match="unknown training settings"):
        train_demo(tmp_path / "d.safetensors", config=TINY, steps=1, learning_rate=1.0)


def test_shipped_weights_match_the_demo_config():
    state = load_file(DEMO_WEIGHTS)
    EDMPrecond(**DEMO_CONFIG).load_state_dict(state, strict=True)
    assert DEMO_WEIGHTS.stat().st_size < 8 * 2**20
    assert DEMO_SIGMAS[0] == 80.0 and len(DEMO_SIGMAS) >= 2
