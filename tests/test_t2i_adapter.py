"""Text-to-image adapters on tiny offline models: every variant, equivalence with diffusers' LCMScheduler
route, LoRA with and without peft, determinism, layers, and the errors users meet."""

import math

import numpy as np
import pytest
import torch

from pipeline import lora
from pipeline.adapters.t2i import block_layers, build_t2i_adapter, layer_info, shipped_unet_config
from pipeline.checkpoints import CheckpointMismatch
from pipeline.hooks import Recorder
from pipeline.prompts import PromptSet
from tests.t2i_fixtures import CATEGORIES, IMAGE, LATENT, PROMPTS, build, tiny_files

MODELS = ("sd15", "sdxl", "sdxl-4step", "sdxl-4step-lora")
TIMESTEPS = {"sd15": [999], "sdxl": [399], "sdxl-4step": [999, 749, 499, 249],
             "sdxl-4step-lora": [999, 749, 499, 249]}
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_files(tmp_path_factory)


@pytest.fixture(scope="module")
def adapters(files):
    return {m: build(files, m) for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_every_variant_samples_and_records_each_step(adapters, model):
    a = adapters[model]
    layers = {"mid": "mid_block", "down0": "down_blocks.0", "mid.attn0": "mid_block.attentions.0"}
    conditions = a.conditions(np.arange(2), seed=0)
    with Recorder(a.root, layers, reduce="full") as rec:
        images = a.sample(SEEDS, conditions, rec)
        records = rec.pop()
    assert images.shape == (2, IMAGE, IMAGE, 3) and images.dtype == np.uint8
    assert images.std() > 0
    assert a.num_steps == len(TIMESTEPS[model])
    shapes = a.layer_shapes()
    for name in layers:
        got = records[name]
        assert [r["step"] for r in got] == list(range(a.num_steps))
        assert [r["timestep"] for r in got] == TIMESTEPS[model]
        for r in got:
            ab = a.alpha_bars[r["step"]]
            assert r["sigma"] == pytest.approx(math.sqrt((1 - ab) / ab), rel=1e-6)
            assert r["layer_shape"] == shapes[name] and r["array"].shape == (2, *shapes[name])


def test_alpha_bars_and_sigmas_follow_the_sd_schedule(adapters):
    a = adapters["sdxl-4step"]
    np.testing.assert_allclose(a.alpha_bars, [0.004660, 0.056623, 0.277669, 0.675432], rtol=2e-4)
    np.testing.assert_allclose(a.sigmas, [14.61, 4.082, 1.613, 0.693], rtol=1e-3)
    assert adapters["sdxl"].alpha_bars == pytest.approx([0.426086], rel=2e-4)
    settings = a.identity()["settings"]
    assert settings["timesteps"] == [999, 749, 499, 249] and settings["guidance_scale"] == 0.0
    assert settings["resolution"] == IMAGE and settings["latent"] == LATENT


def _lcm_pipeline(adapter, base):
    from diffusers import LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = LCMScheduler.from_pretrained(str(base / "scheduler"))
    if adapter.family == "sd15":
        return StableDiffusionPipeline(vae=adapter.vae, text_encoder=adapter.text_encoders[0],
                                       tokenizer=adapter.tokenizers[0], unet=adapter.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionXLPipeline(vae=adapter.vae, text_encoder=adapter.text_encoders[0],
                                     text_encoder_2=adapter.text_encoders[1], tokenizer=adapter.tokenizers[0],
                                     tokenizer_2=adapter.tokenizers[1], unet=adapter.unet, scheduler=scheduler)


@pytest.mark.parametrize("model", ["sd15", "sdxl", "sdxl-4step"])
def test_our_loop_matches_diffusers_lcm_route(adapters, files, model, monkeypatch):
    """Same start noise (and, for 4 steps, the same re-noising noise): same final latent."""
    import diffusers.schedulers.scheduling_lcm as lcm

    a = adapters[model]
    prompts = PROMPTS[:2]
    noises = [a.step_noise(SEEDS, k) for k in range(a.num_steps)]
    shared = iter(noises[1:])
    monkeypatch.setattr(lcm, "randn_tensor", lambda shape, **kw: next(shared).to(kw.get("dtype")))
    pipe = _lcm_pipeline(a, files.base(model))
    theirs = pipe(prompt=prompts, num_inference_steps=a.num_steps, timesteps=a.timesteps, guidance_scale=0.0,
                  height=IMAGE, width=IMAGE, latents=noises[0].clone(), output_type="latent").images
    assert next(shared, None) is None  # the scheduler drew exactly the re-noising noise we use
    ours, _ = a.denoise(SEEDS, *a.encode(prompts))
    assert ours.abs().max() > 1
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=1e-5)  # float32 rounding


def test_lora_without_peft_matches_lora_with_peft(files, adapters, monkeypatch):
    """Same fused weights either way (so the same images); and the LoRA did change the base UNet."""
    from diffusers import UNet2DConditionModel

    if not lora.peft_available():
        pytest.skip("peft is not installed: only the merge route can run")
    with_peft = adapters["sdxl-4step-lora"]
    monkeypatch.setattr(lora, "peft_available", lambda: False)
    without = build(files, "sdxl-4step-lora")
    a, b = with_peft.unet.state_dict(), without.unet.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    base = UNet2DConditionModel.from_pretrained(str(files.sdxl), subfolder="unet").state_dict()
    assert sum(not torch.equal(base[k], b[k]) for k in b) > 50


def test_lora_builds_without_peft(files, monkeypatch):
    monkeypatch.setattr(lora, "peft_available", lambda: False)
    a = build(files, "sdxl-4step-lora")
    images = a.sample(SEEDS[:1], a.conditions(np.arange(1), 0), None)
    assert images.shape == (1, IMAGE, IMAGE, 3)
    assert not any("lora" in n for n, _ in a.unet.named_modules())


def test_a_sample_does_not_depend_on_its_batch(adapters):
    a = adapters["sdxl-4step"]
    conditions = a.conditions(np.arange(3), 0)
    prompts = [c.prompt for c in conditions]
    together, _ = a.denoise([5, 6, 7], *a.encode(prompts))
    alone, _ = a.denoise([6], *a.encode(prompts[1:2]))
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[2])


def test_x0_previews_per_step(adapters, monkeypatch):
    a = adapters["sdxl-4step"]
    assert a.last_previews is None
    monkeypatch.setattr(a, "x0_previews", True)
    images = a.sample(SEEDS[:1], a.conditions(np.arange(1), 0), None)
    previews = a.last_previews
    assert sorted(previews) == [0, 1, 2, 3]
    np.testing.assert_array_equal(previews[3], images)
    assert all(p.shape == images.shape and p.dtype == np.uint8 for p in previews.values())
    assert not np.array_equal(previews[0], previews[3])


def test_conditions_cycle_through_prompts_with_k_seeds_each(files):
    a = build(files, "sd15", seeds_per_prompt=3)
    conds = a.conditions(np.arange(14), seed=99)
    assert [c.prompt_index for c in conds] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0]
    assert conds[4].prompt == PROMPTS[1] and conds[4].category == CATEGORIES[1] and conds[4].label == PROMPTS[1]
    assert conds[4].class_id is None
    assert a.conditions(np.array([4]), seed=1) == [conds[4]]
    with pytest.raises(ValueError, match="seeds-per-prompt must be at least 1"):
        build(files, "sd15", seeds_per_prompt=0)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_text_embeddings_are_the_pooled_vectors(adapters, model):
    a = adapters[model]
    table = a.text_embeddings()
    assert table.column_names == ["prompt_index", "prompt", "category", "embedding"]
    assert table.column("prompt_index").to_pylist() == list(range(len(PROMPTS)))
    assert table.column("prompt").to_pylist() == PROMPTS
    assert table.column("category").to_pylist() == CATEGORIES
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    with torch.no_grad():
        if model == "sd15":
            ids = a.tokenizers[0](PROMPTS, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
            expected = a.text_encoders[0](ids).pooler_output
        else:
            ids = a.tokenizers[1](PROMPTS, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
            expected = a.text_encoders[1](ids).text_embeds
    np.testing.assert_allclose(emb, expected.numpy(), atol=2e-3)
    assert len({tuple(r) for r in emb}) == len(PROMPTS)


def test_layers_have_aliases_and_paths(adapters):
    a = adapters["sdxl"]
    layers = a.layers()
    assert layers["mid"] == layers["mid_block"] == layers["midblock"] == "mid_block"
    assert layers["down1"] == "down_blocks.1" and layers["encoder_bottleneck"] == "down_blocks.1"
    assert layers["mid.attn0"] == "mid_block.attentions.0" and layers["down0.downsample"] == "down_blocks.0.downsamplers.0"
    assert layers["up0.res1"] == "up_blocks.0.resnets.1" and layers["up0.upsample"] == "up_blocks.0.upsamplers.0"
    for path in set(layers.values()):
        a.root.get_submodule(path)  # every path resolves
    assert block_layers(layers) == ["down0", "down1", "mid", "up0", "up1"]
    shapes = a.layer_shapes()
    assert shapes["down0"] == (32, 4, 4) and shapes["mid"] == (64, 4, 4) and shapes["up1"] == (32, 8, 8)
    assert shapes["conv_out"] == (4, LATENT, LATENT) and set(shapes) == set(layers)


def test_layer_info_of_the_real_models_needs_no_download():
    layers, shapes = layer_info("sdxl")
    assert shapes["down0"] == (320, 64, 64) and shapes["down2"] == (1280, 32, 32)
    assert shapes["mid"] == (1280, 32, 32) and shapes["mid_block.attentions.0"] == (1280, 32, 32)
    assert shapes["up0"] == (1280, 64, 64) and shapes["up1"] == (640, 128, 128) and shapes["up2"] == (320, 128, 128)
    blocks = ["down0", "down1", "down2", "mid", "up0", "up1", "up2"]
    assert sum(2 * math.prod(shapes[b]) for b in blocks) == 51_118_080  # fp16 bytes per sample, full maps
    assert "down3" not in layers  # SDXL has 3 down blocks
    _, half = layer_info("sdxl", 512)
    assert half["mid"] == (1280, 16, 16)
    _, sd = layer_info("sd15")
    assert sd["down0"] == (320, 32, 32) and sd["down3"] == (1280, 8, 8) and sd["up2"] == (640, 64, 64)
    assert sum(2 * math.prod(sd[b]) for b in ["down0", "down1", "down2", "down3", "mid", "up0", "up1", "up2", "up3"]) \
        == 12_615_680
    with pytest.raises(ValueError, match="resolution 1000 must be a positive multiple of 32"):
        layer_info("sdxl", 1000)


@pytest.mark.parametrize("model,params,keys", [("sd15", 859_520_964, 686), ("sdxl", 2_567_463_684, 1_680)])
def test_shipped_unet_configs_are_the_real_architectures(model, params, keys):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(shipped_unet_config(model))
    assert sum(p.numel() for p in unet.parameters()) == params
    assert len(unet.state_dict()) == keys


def test_unknown_base_model_folder(files, tmp_path):
    with pytest.raises(ValueError, match=r"unknown base model folder: .*nowhere \(does not exist; expected "
                                         r"subfolders tokenizer/, text_encoder/"):
        build_t2i_adapter("sd15", checkpoint=str(files.sd15_unet), base_model=str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"unknown base model folder: .*partial \(expected subfolders tokenizer/, "
                                         r"tokenizer_2/.*missing tokenizer, tokenizer_2, text_encoder"):
        build_t2i_adapter("sdxl", checkpoint=str(files.sdxl_unet), base_model=str(partial))
    # an SD1.5 folder is not an SDXL base: it lacks the second tokenizer and text encoder
    with pytest.raises(ValueError, match="missing tokenizer_2, text_encoder_2"):
        build_t2i_adapter("sdxl", checkpoint=str(files.sdxl_unet), base_model=str(files.sd15))


def test_hub_base_model_not_in_cache_says_what_to_do(files, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(ValueError, match=r"cannot load tokenizer of 'someone/not-cached'.*--base-model"):
        build_t2i_adapter("sd15", checkpoint=str(files.sd15_unet), base_model="someone/not-cached")
    empty = files.sd15.parent / "no-vocab"
    for part in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        (empty / part).mkdir(parents=True, exist_ok=True)
    (empty / "unet" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"cannot load .*no-vocab/tokenizer: no vocabulary found"):
        build_t2i_adapter("sd15", checkpoint=str(files.sd15_unet), base_model=str(empty))


def test_wrong_unet_keys_are_listed(files):
    with pytest.raises(CheckpointMismatch) as err:
        build_t2i_adapter("sdxl", checkpoint=str(files.sd15_unet), base_model=str(files.sdxl))
    text = str(err.value)
    assert "missing keys" in text and "unexpected keys" in text
    assert "add_embedding.linear_1.weight" in text  # SDXL-only key, absent from the SD1.5 file
    assert err.value.missing and err.value.unexpected


def test_lora_and_full_unet_files_swapped(files):
    with pytest.raises(ValueError, match=r"is a LoRA \(kohya format\), not a full UNet: use --model sdxl-4step-lora"):
        build_t2i_adapter("sdxl", checkpoint=str(files.lora), base_model=str(files.sdxl))
    with pytest.raises(ValueError, match=r"not a kohya-format UNet LoRA: 292 keys .*such as sdxl-4step"):
        build_t2i_adapter("sdxl-4step-lora", checkpoint=str(files.sdxl_unet), base_model=str(files.sdxl))


def test_unknown_model_and_bad_resolution(files):
    with pytest.raises(ValueError, match="unknown text-to-image model 'sd3'; choose one of sd15, sdxl, sdxl-4step"):
        build_t2i_adapter("sd3")
    with pytest.raises(ValueError, match="resolution 18 must be a positive multiple of 4"):
        build(files, "sdxl", resolution=18)


def test_other_resolution_changes_shapes(files):
    a = build(files, "sdxl", resolution=32, x0_previews=True)
    assert a.latent == 16 and a.layer_shapes()["mid"] == (64, 8, 8)
    images = a.sample(SEEDS[:1], a.conditions(np.arange(1), 0), None)
    assert images.shape == (1, 32, 32, 3)
    assert a.identity()["settings"]["resolution"] == 32
    np.testing.assert_array_equal(a.last_previews[0], images)  # 1 step: the preview is the image


def test_adapter_from_prompt_file(files, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a lighthouse in a storm\na field of tulips\n")
    a = build(files, "sd15", prompts=PromptSet.load(path))
    assert [c.prompt for c in a.conditions(np.arange(3), 0)] == ["a lighthouse in a storm", "a field of tulips",
                                                                  "a lighthouse in a storm"]
    assert [c.prompt_index for c in a.conditions(np.arange(3), 0)] == [0, 1, 0]
    settings = a.identity()["settings"]
    assert settings["prompt_set"] == str(path) and settings["num_prompts"] == 2
    assert settings["prompt_set_sha256"] == PromptSet.load(path).sha256 != PromptSet.load(None).sha256
    # the stored text embeddings are those of the file's prompts, one row each
    assert a.text_embeddings().column("prompt").to_pylist() == ["a lighthouse in a storm", "a field of tulips"]
