"""The base models DMD2 distilled from, SD v1.5 and SDXL, as teachers: many steps with classifier-free guidance.

A teacher run samples the *base* UNet (from `--base-model`, a hub id or a local diffusers folder) the way the
diffusers pipelines do: the base model's own scheduler (the class its `scheduler/scheduler_config.json`
names: PNDM for SD v1.5, Euler for SDXL base 1.0), `set_timesteps(steps)`, the start latent scaled by
`init_noise_sigma`, `scale_model_input` before and `scheduler.step` after each UNet call, and the final
latent decoded by the VAE. DMD2's "real score" used guidance 1.75 (SD v1.5) and 8 (SDXL): those are the
defaults, `--guidance` changes them.

Guidance: eps = eps_uncond + g * (eps_cond - eps_uncond), with the unconditional prediction from the empty
prompt (SD v1.5) or from zeroed text embeddings (SDXL: diffusers' `force_zeros_for_empty_prompt`, set by
SDXL base 1.0; a local base folder's model_index.json may turn it off). g = 1 runs the conditional pass only,
as diffusers does.

What a layer records at a step is what it computed in the **conditional** pass: that is the network
looking at the prompt, comparable with the students' single conditional call. The two passes are separate
UNet calls (diffusers batches them as [uncond; cond]), and only the conditional one runs inside
`recorder.step(...)`, so hooks never see the unconditional activations and never a mix of the two halves.
(The alternative would be to record the unconditional pass as well, as a second "layer", or the guided
combination, which no layer computes; neither is stored.) x0 previews (`x0_previews`) are the guided
prediction's denoised latent of each step, decoded.

Steps: a step is one entry of the scheduler's `timesteps`, i.e. one guided network evaluation, recorded with
its index, timestep and the timestep's EDM-style sigma sqrt((1 - ab_t) / ab_t). PNDM (PLMS) evaluates its
second timestep twice to warm up, so SD v1.5 at 25 steps records 26 calls (and the manifest lists them).

Store: a teacher's runs go under its student's model key (`sd15`, `sdxl`: the same UNet and layers, so one
map and one neighbour search hold both), with `kind: teacher` and `model_family` (the teacher's name) in the
run's settings and run ids that start with the teacher's name. `sdxl-teacher` goes beside the 1-step `sdxl`
by default; `build_teacher(..., store_as="sdxl-4step")` puts it beside a 4-step student instead.

Noise: the start latent is N(0, I) per sample from its seed (as the students'); stochastic schedulers get one
generator per sample, seeded from the sample's seed, so a sample does not depend on its batch.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from pipeline.adapters import t2i as student
from pipeline.adapters.base import EditUnsupported
from pipeline.adapters.t2i import BaseSource, T2IAdapter, _pick_dtype, base_source, load_base, spec
from pipeline.prompts import PromptSet

TEACHERS = {
    "sd15-teacher": {"student": "sd15", "guidance": 1.75},
    "sdxl-teacher": {"student": "sdxl", "guidance": 8.0},
}
"""Teacher model -> the student whose model key its runs are stored under, and whose base architecture,
base model id and resolution it shares (pipeline/data/t2i_models.json); DMD2's real-score guidance for it."""

NOISE_STREAM = 1_000_003  # offsets a sample's seed for the scheduler's own noise (stochastic schedulers)
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")


def teacher(model: str) -> dict:
    if model not in TEACHERS:
        raise ValueError(f"unknown teacher model {model!r}; choose one of {', '.join(TEACHERS)}")
    return TEACHERS[model]


def students(model: str) -> list[str]:
    """The student model keys `model`'s runs may be stored under (`store_as`), its own student first: every
    student of the same base architecture (sdxl-teacher: sdxl, sdxl-4step, sdxl-4step-lora)."""
    own = teacher(model)["student"]
    family = spec(own)["family"]
    return [own, *(m for m, v in student.model_specs().items() if v["family"] == family and m != own)]


def check_options(steps, guidance) -> tuple[int, float]:
    """(steps, guidance) as numbers, or ValueError: at least 1 step, guidance 1 (none) or more."""
    steps, guidance = int(steps), float(guidance)
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if not math.isfinite(guidance) or guidance < 1:
        raise ValueError(f"--guidance must be 1 (no guidance) or more, got {guidance:g}")
    return steps, guidance


def layer_info(model: str, resolution: int | None = None):
    """The teacher's layers and shapes: those of its base architecture (the same UNet as the students')."""
    return student.layer_info(teacher(model)["student"], resolution)


class T2ITeacherAdapter(T2IAdapter):
    """A base SD v1.5 / SDXL UNet sampled with its own scheduler and classifier-free guidance."""

    def __init__(self, *, scheduler, steps: int, guidance: float, zero_negative: bool, family_name: str,
                 **kwargs):
        steps, guidance = check_options(steps, guidance)
        self.scheduler = scheduler
        self.steps, self.guidance, self.zero_negative = steps, guidance, bool(zero_negative)
        sched = self._fresh_scheduler()
        timesteps = [float(t) for t in sched.timesteps]
        super().__init__(timesteps=[round(t) for t in timesteps], **kwargs)
        self.timesteps = [int(t) if t == int(t) else t for t in timesteps]
        self.num_steps = len(self.timesteps)
        self.alpha_bars = _alpha_bars(sched, self.timesteps, kwargs["alphas_cumprod"])
        self.sigmas = [math.sqrt((1 - a) / a) for a in self.alpha_bars]
        self._step_kwargs = set(inspect.signature(sched.step).parameters)
        # the registry family that built it (its runs are stored under the student's key, `self.name`)
        self.family_name = self.run_prefix = family_name

    def _fresh_scheduler(self):
        """A copy of the scheduler set to our steps: its state (PNDM's history, Euler's step index) starts over."""
        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(self.steps, device=getattr(self, "device", None))
        return sched

    # -- sampling -------------------------------------------------------------------------------------
    def _negative(self, prompt_embeds: torch.Tensor, pooled: torch.Tensor, n: int):
        if self.zero_negative:
            return torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
        return self.encode([""] * n)

    def _generators(self, noise_seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed((int(s) + NOISE_STREAM) % (2**63 - 1)) for s in noise_seeds]

    @torch.no_grad()
    def denoise(self, noise_seeds: list[int], prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                recorder=None, latents: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The scheduler's loop with guidance; returns (final latent float32, {step: x0 of the guided
        prediction}). `latents` replaces the seeded start latent (before `init_noise_sigma`)."""
        sched = self._fresh_scheduler()
        n = prompt_embeds.shape[0]
        x = self.step_noise(noise_seeds, 0) if latents is None else latents
        x = x.to(self.device, torch.float32) * sched.init_noise_sigma
        added = self._added_cond(pooled)
        guided = self.guidance != 1.0
        if guided:
            neg_embeds, neg_pooled = self._negative(prompt_embeds, pooled, n)
            neg_added = self._added_cond(neg_pooled)
        extra = {}
        if "generator" in self._step_kwargs:
            extra["generator"] = self._generators(noise_seeds)
        x0s: dict[int, torch.Tensor] = {}
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)
            unet_in = x_in.to(self.dtype)
            if guided:  # outside the recorder's step: the hooks do not record the unconditional pass
                eps_u = self.unet(unet_in, t, encoder_hidden_states=neg_embeds, added_cond_kwargs=neg_added).sample
            ctx = recorder.step(i, timestep=self.timesteps[i], sigma=self.sigmas[i]) if recorder is not None \
                else nullcontext()
            with ctx:
                eps = self.unet(unet_in, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added).sample
            eps = eps.float()
            if guided:
                eps_u = eps_u.float()
                eps = eps_u + self.guidance * (eps - eps_u)
            out = sched.step(eps, t, x, **extra)
            x0 = getattr(out, "pred_original_sample", None)
            x0s[i] = (x0 if x0 is not None else self._x0(x_in.float(), eps, i)).float()
            x = out.prev_sample.float()
        return x, x0s

    def _x0(self, x_in: torch.Tensor, model_out: torch.Tensor, i: int) -> torch.Tensor:
        """x0 from the scaled model input for schedulers that do not report it (PNDM)."""
        ab = self.alpha_bars[i]
        kind = self.scheduler.config.get("prediction_type", "epsilon")
        if kind == "v_prediction":
            return math.sqrt(ab) * x_in - math.sqrt(1 - ab) * model_out
        return (x_in - math.sqrt(1 - ab) * model_out) / math.sqrt(ab)

    def sample(self, noise_seeds, conditions, recorder) -> np.ndarray:
        self.last_previews = None
        prompt_embeds, pooled = self.encode([c.prompt for c in conditions])
        latent, x0s = self.denoise(list(noise_seeds), prompt_embeds, pooled, recorder)
        images = self.decode(latent)
        if self.x0_previews:
            self.last_previews = {i: self.decode(v) for i, v in x0s.items()}
        return images

    # -- edits: the students' edits replay DMD2's loop, which is not how a teacher samples ------------------
    def condition(self, class_id=None, prompt=None):
        raise EditUnsupported(self.family_name)

    def edit_inputs(self, noise_seeds, conditions):
        raise EditUnsupported(self.family_name)

    def mix_inputs(self, a, b, t):
        raise EditUnsupported(self.family_name)

    def sample_inputs(self, inputs, recorder):
        raise EditUnsupported(self.family_name)

    def identity(self) -> dict:
        ident = super().identity()
        config = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        ident["settings"].update({
            "kind": "teacher",
            "model_family": self.family_name,
            "steps": self.steps,
            "guidance_scale": self.guidance,
            "negative": "zeros" if self.zero_negative else "empty prompt",
            "recorded_pass": "conditional",
            "scheduler": type(self.scheduler).__name__,
            "scheduler_config": json.loads(json.dumps(config, default=str)),
        })
        return ident


def _alpha_bars(sched, timesteps: list, alphas_cumprod: torch.Tensor) -> list[float]:
    """ab_t of each step: from the scheduler's own sigmas where it keeps them per step (Euler-type:
    ab = 1 / (1 + sigma^2)), else the training schedule's alphas_cumprod at t (interpolated between integers)."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(timesteps) + 1:
        return [1.0 / (1.0 + float(s) ** 2) for s in sigmas[:-1]]
    ac = alphas_cumprod.detach().to("cpu", torch.float64).numpy()
    return [float(np.interp(float(t), np.arange(len(ac)), ac)) for t in timesteps]


def load_scheduler(source: BaseSource):
    """The base model's own scheduler: the diffusers class its scheduler_config.json names."""
    import diffusers
    from diffusers import DDIMScheduler

    config = source.load("scheduler config", DDIMScheduler.load_config, source.ref, subfolder="scheduler")
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ValueError(f"base model {source.ref}: its scheduler class {name!r} is not a diffusers scheduler")
    return cls.from_config(config)


def _zero_negative(source: BaseSource, family: str) -> bool:
    """SDXL: whether the unconditional pass uses zeroed text embeddings (diffusers' default, and SDXL base
    1.0's setting), unless a local base folder's model_index.json says otherwise. SD v1.5: never."""
    if family != "sdxl":
        return False
    index = Path(source.ref) / "model_index.json"
    if source.local and index.is_file():
        try:
            return bool(json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True))
        except (OSError, ValueError):
            return True
    return True


def _unet_weights(source: BaseSource) -> tuple[str, str | None]:
    """(where the UNet weights are, their SHA-256) for the run's identity; a sharded UNet hashes its shards'
    hashes in order. A hub model found nowhere in the cache gets its hub address and no hash."""
    from pipeline.checkpoints import sha256_of

    files: list[Path] = []
    if source.local:
        unet = Path(source.ref) / "unet"
        files = [unet / n for n in _WEIGHTS if (unet / n).is_file()][:1] or sorted(unet.glob("*.safetensors"))
    else:
        from huggingface_hub import try_to_load_from_cache

        for name in _WEIGHTS:
            got = try_to_load_from_cache(source.ref, f"unet/{name}")
            if isinstance(got, str):
                files = [Path(got)]
                break
    if not files:
        return f"hf://{source.ref}/unet" if not source.local else str(Path(source.ref) / "unet"), None
    where = str(files[0]) if source.local else f"hf://{source.ref}/unet/{files[0].name}"
    if len(files) == 1:
        return where, sha256_of(files[0])
    return str(files[0].parent), hashlib.sha256("".join(sha256_of(f) for f in files).encode()).hexdigest()


def build_teacher(model: str, base_model: str | None = None, prompts: PromptSet | None = None,
                  seeds_per_prompt: int = 1, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None, resolution: int | None = None, steps: int | None = None,
                  guidance: float | None = None, x0_previews: bool = False,
                  store_as: str | None = None) -> T2ITeacherAdapter:
    """Build `model` (sd15-teacher, sdxl-teacher) from its base model (default: the base DMD2 used).

    `store_as`: the student whose model key (and map) the runs join, default the teacher's own student;
    any student of the same base architecture (sdxl-teacher: sdxl, sdxl-4step or sdxl-4step-lora)."""
    from diffusers import UNet2DConditionModel

    from pipeline import families

    t = teacher(model)
    s = spec(t["student"])
    family = s["family"]
    store_as = store_as or t["student"]
    if store_as not in students(model):
        raise ValueError(f"{model} can be stored beside {', '.join(students(model))} (the same {family} UNet), "
                         f"not {store_as!r}")
    recipe = families.get_family(model).recipe if model in families.MODELS else None
    steps = steps if steps is not None else (recipe.steps if recipe else 25)
    guidance = guidance if guidance is not None else t["guidance"]
    steps, guidance = check_options(steps, guidance)  # before minutes of loading
    device = torch.device(device or "cpu")
    dtype = _pick_dtype(device, dtype)
    base_model = base_model or s["base_model"]
    prompts = prompts if prompts is not None else PromptSet.load(None)
    source = base_source(base_model, family)
    tokenizers, encoders, vae, ddim, _config = load_base(source, family, dtype)
    scheduler = load_scheduler(source)
    unet = source.load("unet", UNet2DConditionModel.from_pretrained, source.ref, subfolder="unet",
                       torch_dtype=dtype)
    where, sha = _unet_weights(source)
    return T2ITeacherAdapter(
        scheduler=scheduler, steps=steps, guidance=guidance, zero_negative=_zero_negative(source, family),
        family_name=model, name=store_as, family=family, unet=unet, vae=vae, tokenizers=tokenizers,
        text_encoders=encoders,
        alphas_cumprod=ddim.alphas_cumprod, prompts=prompts, seeds_per_prompt=seeds_per_prompt, device=device,
        dtype=dtype, resolution=resolution, checkpoint=where, checkpoint_sha256=sha, base_model=base_model,
        x0_previews=x0_previews)


def loader(model: str, *, checkpoint: str | None = None, class_ids=None, samples_per_class=None,
           **options) -> T2ITeacherAdapter:
    """Loader of the teacher families (pipeline/families.py). The teacher is the base model's own UNet, so
    there is no separate checkpoint; prompts replace classes."""
    if checkpoint:
        raise ValueError(f"--model {model} samples the base model's own UNet: give the base with --base-model "
                         "(a hub id or a local diffusers folder), not --checkpoint")
    return build_teacher(model, **options)
