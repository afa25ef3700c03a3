"""The SD v1.5 / SDXL teachers (pipeline/adapters/t2i_teacher.py) on tiny offline base models.

The tiny bases are tests/t2i_fixtures.py's, with the scheduler folder swapped for the class the real base
ships (PNDM for SD v1.5, Euler for SDXL), and an ancestral (stochastic) Euler to test per-sample noise."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.adapters.base import EditUnsupported, seeded_normal
from pipeline.hooks import Recorder
from tests.t2i_fixtures import CATEGORIES, PROMPTS, SCHEDULER_CONFIG, tiny_files

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [11, 12]


def _with_scheduler(src: Path, dst: Path, cls_name: str, **extra) -> Path:
    import diffusers

    shutil.copytree(src, dst)
    shutil.rmtree(dst / "scheduler")
    getattr(diffusers, cls_name).from_config({**SCHEDULER_CONFIG, **extra}).save_pretrained(str(dst / "scheduler"))
    return dst


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("teacher_bases")
    return {
        "sd15": _with_scheduler(files.sd15, root / "sd15", "PNDMScheduler", skip_prk_steps=True),
        "sdxl": _with_scheduler(files.sdxl, root / "sdxl", "EulerDiscreteScheduler", timestep_spacing="leading"),
        "sd15-ancestral": _with_scheduler(files.sd15, root / "sd15a", "EulerAncestralDiscreteScheduler",
                                          timestep_spacing="leading"),
    }


MODEL = {"sd15": "sd15-teacher", "sdxl": "sdxl-teacher", "sd15-ancestral": "sd15-teacher"}


def teacher(bases, base: str, **kwargs):
    from pipeline.adapters.t2i_teacher import build_teacher
    from pipeline.prompts import PromptSet

    kwargs.setdefault("steps", 4)
    return build_teacher(MODEL[base], base_model=str(bases[base]), prompts=PromptSet.from_lists(PROMPTS, CATEGORIES),
                         device="cpu", dtype=torch.float32, **kwargs)


def _calls(unet):
    """Record every UNet call's (sample, timestep, encoder_hidden_states, added_cond_kwargs)."""
    calls = []

    def pre(_m, args, kwargs):
        calls.append((args[0].detach().clone(), args[1], kwargs["encoder_hidden_states"].detach().clone(),
                      kwargs.get("added_cond_kwargs")))

    return calls, unet.register_forward_pre_hook(pre, with_kwargs=True)


def _pipeline(adapter):
    """diffusers' own pipeline on the adapter's components and scheduler class."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = copy.deepcopy(adapter.scheduler)
    if adapter.family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=adapter.vae, text_encoder=adapter.text_encoders[0], text_encoder_2=adapter.text_encoders[1],
            tokenizer=adapter.tokenizers[0], tokenizer_2=adapter.tokenizers[1], unet=adapter.unet,
            scheduler=scheduler)
    return StableDiffusionPipeline(
        vae=adapter.vae, text_encoder=adapter.text_encoders[0], tokenizer=adapter.tokenizers[0], unet=adapter.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# ---------------------------------------------------------------------------------------------------------
def test_registry_defaults_the_base_scheduler_and_dmd2_guidance(bases):
    from pipeline.adapters import build_adapter
    from pipeline.families import get_family
    from pipeline.prompts import PromptSet

    prompts = PromptSet.from_lists(PROMPTS, CATEGORIES)
    sd = build_adapter("sd15-teacher", base_model=str(bases["sd15"]), prompts=prompts, guidance=1.75)
    assert type(sd.scheduler).__name__ == "PNDMScheduler" and sd.steps == 25 and sd.guidance == 1.75
    assert sd.num_steps == 26  # PLMS evaluates its second timestep twice
    assert sd.timesteps[:3] == [961, 921, 921] and sd.timesteps[-1] == 1
    xl = build_adapter("sdxl-teacher", base_model=str(bases["sdxl"]), prompts=prompts, guidance=8.0, steps=10)
    assert type(xl.scheduler).__name__ == "EulerDiscreteScheduler" and xl.num_steps == 10 and xl.guidance == 8
    assert xl.zero_negative and not sd.zero_negative
    # Euler's sigma is the DDPM sigma sqrt((1 - ab) / ab) of its timestep
    ac = xl.scheduler.alphas_cumprod
    assert xl.sigmas[0] == pytest.approx(float(((1 - ac[xl.timesteps[0]]) / ac[xl.timesteps[0]]) ** 0.5), rel=1e-5)
    assert get_family("sd15-teacher").recipe.guidance == 1.75 and get_family("sdxl-teacher").recipe.guidance == 8.0
    settings = sd.identity()["settings"]
    assert settings["kind"] == "teacher" and settings["steps"] == 25 and settings["guidance_scale"] == 1.75
    assert settings["scheduler"] == "PNDMScheduler" and settings["recorded_pass"] == "conditional"
    assert sd.identity()["checkpoint_sha256"] and sd.identity()["checkpoint"].endswith(".safetensors")


@pytest.mark.parametrize("base", ["sd15", "sdxl", "sd15-ancestral"])
def test_deterministic_per_seed_and_independent_of_the_batch(bases, base):
    adapter = teacher(bases, base, guidance=3.0)
    conds = adapter.conditions(np.arange(2), 0)
    a = adapter.sample(SEEDS, conds, None)
    b = adapter.sample(SEEDS, conds, None)
    np.testing.assert_array_equal(a, b)
    alone = adapter.sample(SEEDS[1:], conds[1:], None)
    np.testing.assert_array_equal(alone[0], a[1])
    other = adapter.sample([99, 12], conds, None)
    assert np.abs(other[0].astype(int) - a[0]).mean() > 1 and np.array_equal(other[1], a[1])


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_layers_recorded_per_step_with_their_shapes_and_previews(bases, base):
    adapter = teacher(bases, base, guidance=2.0, steps=3, x0_previews=True)
    names = ["midblock", "encoder_bottleneck", "up1", "conv_in"]
    with Recorder(adapter.root, adapter.resolve_layers(names), "full") as rec:
        images = adapter.sample(SEEDS, adapter.conditions(np.arange(2), 0), rec)
        got = rec.pop()
    n = adapter.num_steps
    assert n == (4 if base == "sd15" else 3)
    shapes = adapter.layer_shapes()
    for name in names:
        assert [r["step"] for r in got[name]] == list(range(n))  # one record per step: the conditional pass
        assert [r["timestep"] for r in got[name]] == [float(t) for t in adapter.timesteps]
        assert [r["sigma"] for r in got[name]] == pytest.approx(adapter.sigmas)
        for r in got[name]:
            assert r["array"].shape == (2, *shapes[name]) and r["layer_shape"] == shapes[name]
    assert sorted(adapter.last_previews) == list(range(n))
    assert all(p.shape == images.shape and p.dtype == np.uint8 for p in adapter.last_previews.values())
    # x0 previews sharpen towards the final image
    err = [np.abs(adapter.last_previews[i].astype(int) - images).mean() for i in range(n)]
    assert err[-1] < err[0]


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_guidance_one_is_the_plain_conditional_run_and_guidance_changes_the_image(bases, base):
    plain = teacher(bases, base, guidance=1.0)
    conds = plain.conditions(np.arange(2), 0)
    prompts = [c.prompt for c in conds]
    calls, handle = _calls(plain.unet)
    embeds, pooled = plain.encode(prompts)
    latent, _ = plain.denoise(SEEDS, embeds, pooled)
    handle.remove()
    assert len(calls) == plain.num_steps  # no unconditional pass at all
    start = seeded_normal(SEEDS, (4, plain.latent, plain.latent))
    pipe = _pipeline(plain)
    with torch.no_grad():
        ref = pipe(prompt=prompts, latents=start.clone(), num_inference_steps=4, guidance_scale=1.0,
                   output_type="latent").images
    torch.testing.assert_close(latent, ref.float(), atol=1e-5, rtol=1e-5)

    guided = teacher(bases, base, guidance=5.0)
    calls, handle = _calls(guided.unet)
    g_latent, _ = guided.denoise(SEEDS, embeds, pooled)
    handle.remove()
    assert len(calls) == 2 * guided.num_steps
    with torch.no_grad():
        g_ref = pipe(prompt=prompts, latents=start.clone(), num_inference_steps=4, guidance_scale=5.0,
                     output_type="latent").images
    # diffusers batches [uncond; cond] in one call, we make two: the same up to float rounding
    torch.testing.assert_close(g_latent, g_ref.float(), atol=1e-4, rtol=1e-4)
    assert (g_latent - latent).abs().mean() > 0.05
    img_plain = plain.sample(SEEDS, conds, None)
    img_guided = guided.sample(SEEDS, conds, None)
    assert np.abs(img_guided.astype(int) - img_plain).mean() > 1


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_recorded_activation_is_the_conditional_half_of_the_unet_call(bases, base):
    adapter = teacher(bases, base, guidance=4.0, steps=3)
    conds = adapter.conditions(np.arange(2), 0)
    embeds, _ = adapter.encode([c.prompt for c in conds])
    calls, handle = _calls(adapter.unet)
    with Recorder(adapter.root, adapter.resolve_layers(["midblock"]), "full") as rec:
        adapter.sample(SEEDS, conds, rec)
        got = rec.pop()["midblock"]
    handle.remove()
    n = adapter.num_steps
    assert len(calls) == 2 * n and len(got) == n

    def mid(x, t, ehs, added):
        out = {}
        h = adapter.unet.mid_block.register_forward_hook(lambda _m, _i, o: out.setdefault("v", o.detach().clone()))
        with torch.no_grad():
            adapter.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added)
        h.remove()
        return out["v"].half().float().numpy()

    for k in range(n):
        uncond, cond = calls[2 * k], calls[2 * k + 1]
        torch.testing.assert_close(cond[2], embeds)  # the recorded call is the one with the prompts
        assert not torch.equal(uncond[2], embeds)
        direct = mid(*cond)
        np.testing.assert_allclose(got[k]["array"].astype(np.float32), direct, atol=2e-3, rtol=2e-3)
        other = mid(*uncond)
        assert np.abs(other - direct).max() > 1e-2  # the test could tell the halves apart


def test_refuses_bad_options(bases):
    from pipeline.adapters.t2i_teacher import loader

    with pytest.raises(ValueError, match="--guidance must be 1"):
        teacher(bases, "sd15", guidance=0.5)
    with pytest.raises(ValueError, match="not --checkpoint"):
        loader("sd15-teacher", checkpoint="unet.bin", base_model=str(bases["sd15"]))
    with pytest.raises(ValueError, match="beside sdxl, sdxl-4step, sdxl-4step-lora"):
        teacher(bases, "sdxl", store_as="sd15")
    assert teacher(bases, "sdxl", store_as="sdxl-4step").name == "sdxl-4step"
    with pytest.raises(EditUnsupported):  # the students' edits replay DMD2's loop, not the teacher's
        teacher(bases, "sd15").edit_inputs(SEEDS, [])


def test_cli_generate_writes_a_teacher_run(bases, tmp_path, capsys):
    from pipeline.__main__ import main
    from store import Store

    store = tmp_path / "store"
    code = main(["generate", "--model", "sd15-teacher", "--base-model", str(bases["sd15"]), "--store", str(store),
                 "--num-samples", "3", "--batch-size", "2", "--steps", "3", "--guidance", "2.5",
                 "--layers", "midblock", "--device", "cpu", "--dtype", "float32", "--x0-previews", "--quiet"])
    assert code == 0, capsys.readouterr().err
    st = Store(store)
    assert st.models() == ["sd15"]  # beside the student's runs: one map for both
    samples = st.samples(model="sd15")
    assert len(samples) == 3 and samples.run_id[0].startswith("sd15-teacher-s0-")
    manifest = st.manifest(samples.run_id[0])
    settings = manifest["settings"]
    assert settings["kind"] == "teacher" and settings["model_family"] == "sd15-teacher"
    assert settings["steps"] == 3 and settings["guidance_scale"] == 2.5 and manifest["family"] == "sd15"
    assert settings["timesteps"] == [667, 334, 334, 1]
    assert list(st.steps("sd15", "midblock").step) == [0, 1, 2, 3]
    assert sorted(st.previews(samples.sample_id[0])) == [0, 1, 2, 3]


def test_cli_refuses_guidance_for_a_model_without_it(tmp_path, capsys):
    from pipeline.__main__ import main

    code = main(["generate", "--model", "demo", "--guidance", "2", "--num-samples", "1", "--store",
                 str(tmp_path), "--device", "cpu", "--quiet"])
    assert code == 2 and "--guidance does not apply to demo" in capsys.readouterr().err


def test_cli_without_base_model_offline_is_one_clear_error(tmp_path):
    """No --base-model: the default hub id, which an offline machine with an empty cache cannot load."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "generate", "--model", "sdxl-teacher", "--num-samples", "1",
         "--store", str(tmp_path / "store"), "--device", "cpu", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "stabilityai/stable-diffusion-xl-base-1.0" in err and "--base-model" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.parquet"))


def test_teacher_layers_are_the_students():
    """The same UNet architecture: same names and shapes, so the runs share the student's map."""
    from pipeline.families import get_family

    for teacher_name, student in (("sd15-teacher", "sd15"), ("sdxl-teacher", "sdxl")):
        assert get_family(teacher_name).layers(256) == get_family(student).layers(256)
        assert get_family(teacher_name).default_layers == get_family(student).default_layers
