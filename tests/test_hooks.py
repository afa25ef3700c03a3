import numpy as np
import pytest
import torch

from pipeline.hooks import Recorder, bytes_per_sample, reduce_tensor, resolve_reduce


class Mutating(torch.nn.Module):
    """A conv whose output a later in-place op overwrites, as EDM's reference code does."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        self.act(y)          # mutates y in place after the hook on conv has fired
        y.mul_(0)
        return y


def test_hook_keeps_a_copy_the_model_cannot_mutate():
    torch.manual_seed(0)
    net = Mutating()
    x = torch.randn(3, 2, 5, 5)
    expected = net.conv(x).detach().clone()
    with Recorder(net, {"conv": "conv"}, "full") as rec, rec.step(0, sigma=1.0):
        out = net(x)
    assert torch.all(out == 0)
    got = rec.pop()["conv"][0]
    assert got["array"].shape == (3, 4, 5, 5)
    np.testing.assert_allclose(got["array"].astype(np.float32), expected.numpy(), atol=2e-3, rtol=2e-3)
    assert (expected < 0).any()  # so the ReLU really did change the live tensor


def test_hooks_record_only_inside_a_step_and_tag_it():
    net = Mutating()
    x = torch.randn(2, 2, 8, 8)
    with Recorder(net, {"c": "conv"}, "mean") as rec:
        net(x)  # outside a step: nothing recorded
        for i, sigma in enumerate((80.0, 2.0)):
            with rec.step(i, timestep=999 - i, sigma=sigma):
                net(x)
        records = rec.pop()["c"]
    assert [(r["step"], r["timestep"], r["sigma"]) for r in records] == [(0, 999.0, 80.0), (1, 998.0, 2.0)]
    assert records[0]["array"].shape == (2, 4) and records[0]["reduce"] == "mean"
    assert records[0]["layer_shape"] == (4, 8, 8)
    assert rec.pop() == {}
    net(x)  # hooks are gone after the with block
    assert rec.pop() == {}


def test_tuple_outputs_take_element_zero():
    class TupleOut(torch.nn.Module):
        def forward(self, x):
            return x * 2, (x, x)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TupleOut()

        def forward(self, x):
            return self.block(x)[0]

    x = torch.ones(1, 1, 2, 2)
    with Recorder(Wrap(), {"b": "block"}, "full") as rec, rec.step(0):
        rec.root(x)
    assert np.all(rec.pop()["b"][0]["array"] == 2)


def test_reductions():
    t = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(reduce_tensor(t, "mean"), t.mean(dim=(2, 3)))
    pooled = reduce_tensor(t, "pool4")
    assert pooled.shape == (2, 3, 4, 4)
    assert torch.allclose(pooled.mean(dim=(2, 3)), t.mean(dim=(2, 3)))
    full = reduce_tensor(t, "full")
    assert torch.equal(full, t) and full.data_ptr() != t.data_ptr()
    assert resolve_reduce("auto", (768, 8, 8)) == "full"          # 49,152 values
    assert resolve_reduce("auto", (1280, 32, 32)) == "pool4"
    assert resolve_reduce("mean", (1280,)) == "full"               # vectors stay as they are
    assert bytes_per_sample("auto", (1280, 32, 32)) == 1280 * 16 * 2
    with pytest.raises(ValueError, match="choose one of"):
        resolve_reduce("max", (4, 4, 4))
