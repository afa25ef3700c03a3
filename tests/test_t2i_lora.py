"""DMD2's kohya-format LoRA: our peft-free merge equals diffusers' fuse, and bad files fail clearly."""

import copy

import pytest
import torch

from pipeline import lora
from tests.t2i_fixtures import lora_target_modules, tiny_files, tiny_unet, write_kohya_lora


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory)


def _pipeline(base, unet):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(base), unet=unet,
                                                     scheduler=LCMScheduler.from_pretrained(str(base / "scheduler")))


@pytest.mark.skipif(not lora.peft_available(), reason="diffusers' LoRA loader needs peft")
def test_merge_without_peft_equals_diffusers_fuse(files):
    from diffusers import UNet2DConditionModel

    base_unet = UNet2DConditionModel.from_pretrained(str(files.sdxl), subfolder="unet")
    ours, theirs = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    merged = lora.merge_kohya_lora(ours, lora.read_lora_file(files.lora))
    assert sorted(merged) == sorted(lora_target_modules(base_unet)) and len(merged) > 50

    pipe = _pipeline(files.sdxl, theirs)
    keys = set(theirs.state_dict())
    lora.fuse_with_diffusers(pipe, files.lora)
    assert set(theirs.state_dict()) == keys  # peft wrappers are gone: hook paths stay plain
    assert not any("lora" in name or "base_layer" in name for name, _ in theirs.named_modules())

    a, b, orig = ours.state_dict(), theirs.state_dict(), base_unet.state_dict()
    changed = [k for k in a if not torch.equal(a[k], orig[k])]
    assert len(changed) == len(merged)  # exactly one weight per targeted module moved
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_merge_applies_alpha_over_rank(tmp_path):
    unet = tiny_unet("sdxl")
    path = write_kohya_lora(tmp_path / "l.safetensors", unet, rank=2, alpha=1.0, seed=5)
    state = lora.read_lora_file(path)
    target = "down_blocks.1.attentions.0.proj_in"
    key = "lora_unet_" + target.replace(".", "_")
    before = unet.get_submodule(target).weight.detach().clone()
    lora.merge_kohya_lora(unet, state, scale=2.0)
    expected = before + 2.0 * (1.0 / 2) * state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]
    torch.testing.assert_close(unet.get_submodule(target).weight, expected)


def test_merge_handles_conv_weights_and_fp16_files(tmp_path):
    unet = tiny_unet("sdxl")
    path = write_kohya_lora(tmp_path / "l16.safetensors", unet, dtype=torch.float16)
    state = lora.read_lora_file(path)
    conv = "down_blocks.0.resnets.0.conv1"
    key = "lora_unet_" + conv.replace(".", "_")
    before = unet.get_submodule(conv).weight.detach().clone()
    lora.merge_kohya_lora(unet, state)
    up, down = state[f"{key}.lora_up.weight"].float(), state[f"{key}.lora_down.weight"].float()
    delta = (up.flatten(1) @ down.flatten(1)).reshape(before.shape) * (8.0 / 4)
    torch.testing.assert_close(unet.get_submodule(conv).weight, before + delta)
    assert unet.get_submodule(conv).weight.dtype == torch.float32


def test_bad_lora_files_fail_clearly(tmp_path):
    unet = tiny_unet("sdxl")
    good = lora.read_lora_file(write_kohya_lora(tmp_path / "l.safetensors", unet))
    with pytest.raises(ValueError, match=r"not a kohya-format UNet LoRA: 1 keys .*unet\.foo\.lora_A\.weight"):
        lora.merge_kohya_lora(unet, {**good, "unet.foo.lora_A.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no match in the UNet, e\.g\. \['down_blocks_9_nothing'\]"):
        lora.merge_kohya_lora(unet, {**good, "lora_unet_down_blocks_9_nothing.lora_down.weight": torch.zeros(1, 1),
                                     "lora_unet_down_blocks_9_nothing.lora_up.weight": torch.zeros(1, 1)})
    half = {k: v for k, v in good.items() if not k.endswith("lora_up.weight")}
    with pytest.raises(ValueError, match="without both lora_down and lora_up"):
        lora.merge_kohya_lora(unet, half)
    with pytest.raises(ValueError, match="no 'lora_unet_"):
        lora.merge_kohya_lora(unet, {})
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        lora.read_lora_file(tmp_path / "missing.safetensors")


def test_route_follows_peft_availability(tmp_path, monkeypatch):
    unet = tiny_unet("sdxl")
    path = write_kohya_lora(tmp_path / "l.safetensors", unet)
    built = []

    def factory():
        built.append(True)
        raise AssertionError("the diffusers route must not be taken without peft")

    monkeypatch.setattr(lora, "peft_available", lambda: False)
    assert lora.apply_lora(unet, path, pipeline_factory=factory) == "merge"
    assert not built
