"""The EDM sampler: Karras schedule, per-sample seeded re-noising, step callbacks, uint8 conversion."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from pipeline.models.edm import EDMPrecond
from pipeline.sampling import edm_sample, karras_sigmas, to_uint8
from tests.edm_fixtures import TINY_EDM

TINY = TINY_EDM


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = EDMPrecond(**TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def test_karras_schedule():
    assert karras_sigmas(1) == [80.0]
    s = karras_sigmas(4)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
    assert s == sorted(s, reverse=True)
    # sigma_i^(1/7) is evenly spaced between the ends
    roots = np.array(s) ** (1 / 7)
    np.testing.assert_allclose(np.diff(roots), np.diff(roots)[0])
    assert karras_sigmas(3, sigma_min=0.05)[-1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="at least 1"):
        karras_sigmas(0)


def test_one_step_is_the_network_at_sigma_max(net):
    z = torch.randn(2, 3, 8, 8)
    labels = torch.tensor([3, 7])
    out = edm_sample(net, z, labels, [80.0])
    with torch.no_grad():
        torch.testing.assert_close(out, net(80.0 * z, torch.full((2,), 80.0), labels))


def test_seeded_noise_does_not_depend_on_the_batch(net):
    z = torch.randn(3, 3, 8, 8)
    labels = torch.tensor([1, 2, 3])
    seeds = [11, 22, 33]
    sigmas = karras_sigmas(3)
    together = edm_sample(net, z, labels, sigmas, noise_seeds=seeds)
    alone = edm_sample(net, z[1:2], labels[1:2], sigmas, noise_seeds=seeds[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)
    other_seed = edm_sample(net, z[1:2], labels[1:2], sigmas, noise_seeds=[99])
    assert not torch.allclose(alone, other_seed)
    with pytest.raises(ValueError, match="one noise seed per sample"):
        edm_sample(net, z, labels, sigmas, noise_seeds=[1])


def test_each_network_call_runs_inside_on_step(net):
    seen, inside = [], []

    @contextmanager
    def on_step(i, sigma):
        seen.append((i, sigma))
        inside.append(True)
        yield
        inside.pop()

    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(len(inside)))
    try:
        edm_sample(net, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), karras_sigmas(3), on_step=on_step)
    finally:
        handle.remove()
    assert [i for i, _ in seen] == [0, 1, 2]
    assert [s for _, s in seen] == pytest.approx(karras_sigmas(3))
    assert calls == [1, 1, 1]


def test_to_uint8_truncates_and_returns_nhwc():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 6)
    out = to_uint8(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    # 0 -> 127.5 -> 127 (truncated, not rounded); 0.999 -> 254.87 -> 254
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]
    rgb = to_uint8(torch.zeros(2, 3, 4, 5))
    assert rgb.shape == (2, 4, 5, 3)
