"""The ImageNet-64 network: checkpoint key set, reference test vectors, hook safety."""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.edm import EDMPrecond, count_parameters, imagenet_config

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
needs_shared = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data not found at {REFERENCE}")

TINY = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_channels=32,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(8,),
)


def reference_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (REFERENCE / "dmd2-imagenet-statedict-keys.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip()).groups()
        keys[name] = tuple(int(s) for s in shape.replace(" ", "").split(",") if s)
    return keys


def recipe_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic weights per the test-vector README (seeded by crc32 of each key)."""
    out = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if name.endswith("resample_filter"):
            out[name] = torch.full(shape, 0.25)
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        r = torch.randn(shape, generator=gen, dtype=torch.float64)
        if r.ndim >= 2:
            r = r / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(("norm0.weight", "norm1.weight", "norm2.weight", "out_norm.weight")):
            r = 1 + 0.1 * r
        else:
            r = 0.1 * r
        out[name] = r.to(torch.float32)
    return out


def recipe_model(config: dict) -> EDMPrecond:
    with torch.device("meta"):
        model = EDMPrecond(**config)
    model.load_state_dict(recipe_state_dict(model), strict=True, assign=True)
    return model.eval()


@needs_shared
def test_full_config_matches_checkpoint_keys_and_shapes():
    with torch.device("meta"):
        model = EDMPrecond(**imagenet_config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = reference_keys()
    assert len(expected) == 553
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}
    assert list(ours) == list(expected)  # same order as the released file too
    assert count_parameters(model) == 295_899_267
    assert sum(1 for k in ours if k.endswith("resample_filter")) == 12
    assert all(not k.endswith("resample_filter") for k, _ in model.named_parameters())


def test_block_table_of_full_config():
    with torch.device("meta"):
        model = EDMPrecond(**imagenet_config())
    paths = model.block_paths()
    assert len(paths) == 37
    assert paths[15] == "model.enc.8x8_block2" and paths[16] == "model.dec.8x8_in0"
    dec = model.model.dec
    assert dec["8x8_block3"].in_channels == 1344 and dec["64x64_block0"].in_channels == 576
    assert dec["8x8_in0"].num_heads == 12 and dec["8x8_in1"].num_heads == 0
    assert model.model.enc["32x32_block0"].num_heads == 6 and model.model.enc["64x64_block0"].num_heads == 0


@needs_shared
@pytest.mark.parametrize(
    "name, config",
    [("edm_tiny16", TINY), pytest.param("edm_imagenet64_full", imagenet_config(), marks=pytest.mark.slow)],
)
def test_reproduces_reference_test_vectors(name, config):
    data = np.load(REFERENCE / "edm-test-vectors" / f"{name}.npz")
    model = recipe_model(config)
    captured = {}
    layers = [k.removeprefix("act:") for k in data.files if k.startswith("act:")]
    assert layers, "test vector file has no activations"
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: captured.__setitem__(path, out)
        )
        for path in layers
    ]
    try:
        with torch.no_grad():
            d = model(
                torch.from_numpy(data["x"]),
                torch.from_numpy(data["sigma"]),
                torch.from_numpy(data["class_labels"]),
            )
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(d.numpy(), data["D"], atol=1e-4, rtol=1e-4)
    for path in layers:
        # The hooks kept references without copying: equality also shows nothing mutated them later.
        np.testing.assert_allclose(
            captured[path].numpy(), data[f"act:{path}"], atol=1e-4, rtol=1e-4, err_msg=path
        )


def test_hooked_activations_are_not_mutated_later():
    torch.manual_seed(0)
    model = EDMPrecond(**TINY, channels_per_head=16).eval()
    for p in model.parameters():  # make every residual branch non-zero
        torch.nn.init.normal_(p, std=0.05)
    kept, snapshots = {}, {}

    def hook(module, _inputs, output):
        kept[module] = output
        snapshots[module] = output.clone()

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    x = torch.randn(2, 3, 16, 16) * 5
    with torch.no_grad():
        model(x, torch.tensor([5.0, 0.3]), torch.tensor([1, 2]))
    for h in handles:
        h.remove()
    assert len(kept) > 50  # every sub-layer, including conv1/proj whose outputs get residuals added
    for module, out in kept.items():
        if isinstance(out, torch.Tensor):
            assert torch.equal(out, snapshots[module]), type(module).__name__


def test_preconditioning_and_label_forms():
    torch.manual_seed(0)
    model = EDMPrecond(**TINY).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        by_index = model(x, 2.0, torch.tensor([0, 4, 9]))
        by_onehot = model(x, torch.full((3,), 2.0), torch.eye(10)[[0, 4, 9]])
    torch.testing.assert_close(by_index, by_onehot)
    # Freshly initialised, the output conv is zero, so D = c_skip * x exactly.
    torch.testing.assert_close(by_index, x * 0.25 / (4.0 + 0.25))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 10\)"):
        model(x, 2.0, torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        model(x, torch.tensor([1.0, 2.0]), torch.tensor([0, 1, 2]))


def test_round_trips_state_dict_strictly():
    a, b = EDMPrecond(**TINY), EDMPrecond(**TINY)
    b.load_state_dict(a.state_dict(), strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_bad_config_names_the_problem():
    with pytest.raises(ValueError, match="not divisible"):
        EDMPrecond(img_resolution=18, img_channels=3, label_dim=0, model_channels=32, channel_mult=(1, 2, 2))


def test_width_that_group_norm_cannot_split_is_explained():
    with pytest.raises(ValueError, match="144 channels cannot be group-normalised"):
        EDMPrecond(img_resolution=16, img_channels=3, label_dim=0, model_channels=48, channel_mult=(1, 3))
