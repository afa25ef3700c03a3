"""DMD2's text-to-image generators: SD v1.5 1-step, SDXL 1-step, SDXL 4-step (UNet or LoRA).

Base components (tokenizers, CLIP text encoders, VAE, noise schedule, UNet config) come from a hub id or
a local diffusers-layout folder; the distilled UNet weights (or the LoRA) from `hf://tianweiy/DMD2/...` or
a local file. Sampling is our own loop, DMD2's recipe, so every step can be recorded:

    eps = unet(x_t, t, text);  x0 = (x_t - sqrt(1 - ab_t) * eps) / sqrt(ab_t)
    next step: x_t' = sqrt(ab_t') * x0 + sqrt(1 - ab_t') * fresh_noise;  last step: decode x0 with the VAE

with no classifier-free guidance. The start latent is pure N(0, I) whatever the first timestep (SDXL 1-step
runs at t=399 on pure noise, as trained). Noise is drawn per sample from generators seeded by (sample seed,
step), so a sample does not depend on the batch it was generated in.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from pipeline.adapters.base import Adapter, Condition, seeded_normal, shapes_by_hooks, slerp
from pipeline.prompts import PromptSet

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1] / "data"
LATENT_CHANNELS = 4
ENCODE_BATCH = 64  # prompts per text-encoder call when embedding the whole prompt set
DECODE_BATCH = 4  # latents per VAE call: the fp32 SDXL decoder is memory hungry at 1024 px

SD15_PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
SDXL_PARTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "unet", "scheduler")
BASES = {"sd15": SD15_PARTS, "sdxl": SDXL_PARTS}
"""The base architectures this adapter runs (a spec's `family`), with the subfolders each needs."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@cache
def model_specs() -> dict[str, dict]:
    """The released generators' weights, base model and timesteps (pipeline/data/t2i_models.json); which
    models exist, and their recipe, is the registry's (pipeline/families.py)."""
    specs = json.loads((DATA / "t2i_models.json").read_text())
    return {k: v for k, v in specs.items() if not k.startswith("_")}


def spec(model: str) -> dict:
    specs = model_specs()
    if model not in specs:
        raise ValueError(f"unknown text-to-image model {model!r}; choose one of {', '.join(specs)}")
    return specs[model]


def shipped_unet_config(model: str) -> dict:
    """The standard diffusers UNet config of the model's base (SD v1.5 or SDXL), shipped as data."""
    return json.loads((DATA / spec(model)["unet_config"]).read_text())


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------
_SUBMODULES = {"down": ("resnets", "attentions", "downsamplers"), "mid": ("resnets", "attentions"),
               "up": ("resnets", "attentions", "upsamplers")}
_SHORT = {"resnets": "res", "attentions": "attn", "downsamplers": "downsample", "upsamplers": "upsample"}


def unet_layers(unet: torch.nn.Module) -> dict[str, str]:
    """Hookable layers of a diffusers UNet2DConditionModel: friendly name -> module path, in forward order.

    Every block and its resnets/attentions/resamplers is listed twice: under its diffusers path
    (`down_blocks.1`, `mid_block.attentions.0`) and a short alias (`down1`, `mid.attn0`). `midblock` and
    `encoder_bottleneck` (the last down block, which feeds the mid block) match the ImageNet model's names.
    Down blocks return a tuple; the recorder keeps element 0, the block output after its downsampler.
    """
    names: dict[str, str] = {}

    def add(alias: str, path: str) -> None:
        names[alias] = path
        names[path] = path

    def add_block(alias: str, path: str, block: torch.nn.Module, kinds: tuple[str, ...]) -> None:
        add(alias, path)
        for kind in kinds:
            subs = getattr(block, kind, None) or []
            for m in range(len(subs)):
                # res0, attn1 ...; a block's single resampler is just `downsample` / `upsample`
                index = "" if kind.endswith("samplers") and len(subs) == 1 else str(m)
                add(f"{alias}.{_SHORT[kind]}{index}", f"{path}.{kind}.{m}")

    add("conv_in", "conv_in")
    for n, block in enumerate(unet.down_blocks):
        add_block(f"down{n}", f"down_blocks.{n}", block, _SUBMODULES["down"])
    add_block("mid", "mid_block", unet.mid_block, _SUBMODULES["mid"])
    for n, block in enumerate(unet.up_blocks):
        add_block(f"up{n}", f"up_blocks.{n}", block, _SUBMODULES["up"])
    add("conv_norm_out", "conv_norm_out")
    add("conv_out", "conv_out")
    names["midblock"] = "mid_block"
    names["encoder_bottleneck"] = f"down_blocks.{len(unet.down_blocks) - 1}"
    return names


def block_layers(layers: dict[str, str]) -> list[str]:
    """The block-level aliases (down0.., mid, up0..): the usual set to record."""
    return [n for n in layers if re.fullmatch(r"(down|up)\d+|mid", n)]


def _meta_unet(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def unet_layer_shapes(config: dict, latent: int, layers: dict[str, str] | None = None) -> dict[str, tuple]:
    """(C, H, W) of every layer at a latent size, from one forward pass of a meta-device UNet."""
    unet = _meta_unet(config)
    layers = layers if layers is not None else unet_layers(unet)
    meta = {"device": "meta"}
    x = torch.empty(1, config.get("in_channels", LATENT_CHANNELS), latent, latent, **meta)
    ctx = torch.empty(1, 77, int(config["cross_attention_dim"]), **meta)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, **meta),
                                       "time_ids": torch.empty(1, 6, **meta)}
    t = torch.empty(1, **meta)
    return shapes_by_hooks(unet, layers, lambda: unet(x, t, encoder_hidden_states=ctx, **kwargs))


def check_resolution(resolution: int, vae_scale: int, config: dict) -> int:
    """The latent side for an image side; the UNet halves it once per down block but the last."""
    step = vae_scale * 2 ** (len(config["block_out_channels"]) - 1)
    if resolution <= 0 or resolution % step:
        raise ValueError(f"resolution {resolution} must be a positive multiple of {step} for this model "
                         f"(VAE factor {vae_scale} x {step // vae_scale} for the UNet's down blocks)")
    return resolution // vae_scale


def layer_info(model: str, resolution: int | None = None) -> tuple[dict[str, str], dict[str, tuple]]:
    """Layers and their (C, H, W) at `resolution` px from the shipped UNet config: no download. The layer
    registry of the text-to-image families (pipeline/families.py)."""
    config = shipped_unet_config(model)
    latent = check_resolution(resolution or spec(model)["resolution"], 8, config)
    layers = unet_layers(_meta_unet(config))
    return layers, unet_layer_shapes(config, latent, layers)


# ---------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------
def _offline() -> bool:
    from huggingface_hub import constants

    flag = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


@dataclass
class BaseSource:
    """Where the base components come from: a local folder, or a hub id (cache only when offline)."""

    ref: str
    local: bool

    def kwargs(self) -> dict:
        return {} if self.local else {"local_files_only": _offline()}

    def load(self, what: str, fn, *args, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return fn(*args, **kwargs, **self.kwargs())
        except (OSError, ValueError, EntryNotFoundError) as exc:  # hub errors are OSErrors but this one
            if self.local:
                raise ValueError(f"cannot load {what} from {self.ref}: {exc}") from exc
            raise ValueError(
                f"cannot load {what} of base model {self.ref!r} from the hub or its cache: {exc}. "
                "Pass a local diffusers folder with --base-model, or fetch the model once with network access."
            ) from exc


def base_source(base_model: str, family: str) -> BaseSource:
    parts = BASES[family]
    expected = f"expected subfolders {', '.join(p + '/' for p in parts)}"
    path = Path(base_model).expanduser()
    if path.exists():
        missing = [p for p in parts if not (path / p).is_dir()] if path.is_dir() else list(parts)
        if not missing and not (path / "unet" / "config.json").is_file():
            missing = ["unet/config.json"]
        if missing:
            raise ValueError(f"unknown base model folder: {path} ({expected}; missing {', '.join(missing)})")
        return BaseSource(str(path), local=True)
    if not _HUB_ID.match(base_model):
        raise ValueError(f"unknown base model folder: {path} (does not exist; {expected}, or give a hub id "
                         "such as stabilityai/stable-diffusion-xl-base-1.0)")
    return BaseSource(base_model, local=False)


def _cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _pick_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


# ---------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------
class T2IAdapter(Adapter):
    """One DMD2 text-to-image generator with its base components, sampled with DMD2's loop."""

    def __init__(self, *, name: str, family: str, unet, vae, tokenizers: list, text_encoders: list,
                 alphas_cumprod: torch.Tensor, timesteps: list[int], prompts: PromptSet,
                 seeds_per_prompt: int, device: torch.device, dtype: torch.dtype, resolution: int | None,
                 checkpoint: str, checkpoint_sha256: str | None, base_model: str, x0_previews: bool = False):
        if family not in BASES:
            raise ValueError(f"unknown family {family!r}; this adapter runs {', '.join(BASES)}")
        if seeds_per_prompt < 1:
            raise ValueError(f"--seeds-per-prompt must be at least 1, got {seeds_per_prompt}")
        self.name, self.family = name, family
        self.device, self.dtype = torch.device(device), dtype
        self.unet = _to(unet, self.device, dtype)
        self.root = self.unet
        # The SDXL VAE overflows in float16; run both VAEs in float32 (decoding is a small share of the time).
        self.vae = _to(vae, self.device, torch.float32)
        self.tokenizers = list(tokenizers)
        self.text_encoders = [_to(te, self.device, dtype) for te in text_encoders]
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        config = dict(self.unet.config)
        self.resolution = int(resolution or config["sample_size"] * self.vae_scale)
        self.latent = check_resolution(self.resolution, self.vae_scale, config)
        self.timesteps = [int(t) for t in timesteps]
        self.num_steps = len(self.timesteps)
        ac = alphas_cumprod.detach().to("cpu", torch.float32)
        self.alpha_bars = [float(ac[t]) for t in self.timesteps]
        self.sigmas = [math.sqrt((1 - a) / a) for a in self.alpha_bars]  # DDPM t on the EDM sigma axis
        self.prompts = prompts
        self.seeds_per_prompt = int(seeds_per_prompt)
        self.checkpoint, self.checkpoint_sha256, self.base_model = checkpoint, checkpoint_sha256, base_model
        self.x0_previews = bool(x0_previews)
        # step -> uint8 (B, H, W, 3) decoded x0 of the last `sample` call, when x0_previews is on
        self.last_previews: dict[int, np.ndarray] | None = None
        self._shapes: dict[str, tuple] | None = None

    # -- layers -------------------------------------------------------------------------------------
    def layers(self) -> dict[str, str]:
        return unet_layers(self.unet)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            self._shapes = unet_layer_shapes(dict(self.unet.config), self.latent, self.layers())
        return self._shapes

    # -- conditions -----------------------------------------------------------------------------------
    def conditions(self, indices: np.ndarray, seed: int) -> list[Condition]:
        """Sample i gets prompt i // seeds_per_prompt, cycling through the set; `seed` plays no part."""
        out = []
        for i in np.asarray(indices, dtype=np.int64):
            k = (int(i) // self.seeds_per_prompt) % len(self.prompts)
            prompt, category = self.prompts[k]
            out.append(Condition(prompt=prompt, prompt_index=k, category=category))
        return out

    # -- text ------------------------------------------------------------------------------------------
    def _tokenize(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, 77, D), pooled (B, P)) exactly as the diffusers SD / SDXL pipelines build them:
        SD1.5 conditions on CLIP's last hidden state; SDXL on both encoders' penultimate hidden states,
        concatenated, with text_encoder_2's projected `text_embeds` as the pooled vector."""
        if self.family == "sd15":
            out = self.text_encoders[0](self._tokenize(self.tokenizers[0], prompts))
            return out.last_hidden_state, out.pooler_output
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            out = encoder(self._tokenize(tokenizer, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    def text_embeddings(self):
        """Pooled text embedding of every prompt in the set (SD1.5: CLIP pooled output; SDXL:
        text_encoder_2's text_embeds), float16, for clustering and colouring by prompt."""
        import pyarrow as pa

        from store import schema

        chunks = []
        for start in range(0, len(self.prompts), ENCODE_BATCH):
            batch = list(self.prompts.prompts[start:start + ENCODE_BATCH])
            chunks.append(self.encode(batch)[1].float().cpu())
        emb = torch.cat(chunks).numpy().astype(np.float16)
        n, dim = emb.shape
        return pa.Table.from_arrays(
            [pa.array(np.arange(n, dtype=np.int32)), pa.array(list(self.prompts.prompts), pa.string()),
             pa.array(list(self.prompts.categories), pa.string()),
             pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)],
            schema=schema.text_embeddings_schema(dim))

    # -- sampling ---------------------------------------------------------------------------------------
    def step_noise(self, noise_seeds: list[int], step: int) -> torch.Tensor:
        """The noise of step `step` (0: the start latent; k > 0: the re-noising before step k), float32."""
        return seeded_normal(noise_seeds, (LATENT_CHANNELS, self.latent, self.latent), stream=step)

    def _added_cond(self, pooled: torch.Tensor) -> dict | None:
        if self.family != "sdxl":
            return None
        r = self.resolution  # original size, crop (0, 0), target size
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """VAE-decode latents to uint8 (B, H, W, 3): ((img + 1) * 127.5) clamped, truncated like DMD2."""
        images = []
        shift = self.vae.config.get("shift_factor") or 0.0
        for chunk in x0.split(DECODE_BATCH):
            z = chunk.float() / self.vae.config.scaling_factor + shift
            img = self.vae.decode(z).sample.float()
            images.append(((img + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(images).numpy()

    @torch.no_grad()
    def denoise(self, noise_seeds: list[int], prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                recorder=None, noise_fn=None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """DMD2's loop on latents; returns (final x0 float32, {step: x0}). `noise_fn(step)` overrides the
        seeded noise (tests share noise with diffusers' scheduler this way)."""
        noise_fn = noise_fn or (lambda step: self.step_noise(noise_seeds, step))
        x = noise_fn(0).to(self.device, torch.float32)
        added = self._added_cond(pooled)
        x0s: dict[int, torch.Tensor] = {}
        x0 = x
        for i, t in enumerate(self.timesteps):
            ab = self.alpha_bars[i]
            timestep = torch.tensor(t, device=self.device, dtype=torch.long)
            ctx = recorder.step(i, timestep=t, sigma=self.sigmas[i]) if recorder is not None else nullcontext()
            with ctx:
                eps = self.unet(x.to(self.dtype), timestep, encoder_hidden_states=prompt_embeds,
                                added_cond_kwargs=added).sample
            # x0 from eps with the scheduler's alpha-bar. (DMD2's SD1.5 test script hard-codes 0.0047 for
            # alpha-bar_999 instead of the schedule's 0.004660, which scales x0 by 1.0043; we use the schedule,
            # as diffusers' LCMScheduler route does.)
            x0 = (x - math.sqrt(1 - ab) * eps.float()) / math.sqrt(ab)
            x0s[i] = x0
            if i + 1 < len(self.timesteps):
                nxt = self.alpha_bars[i + 1]
                x = math.sqrt(nxt) * x0 + math.sqrt(1 - nxt) * noise_fn(i + 1).to(self.device, torch.float32)
        return x0, x0s

    def sample(self, noise_seeds, conditions, recorder) -> np.ndarray:
        return self.sample_inputs(self.edit_inputs(noise_seeds, conditions), recorder)

    # -- edits (pipeline/edit.py) ---------------------------------------------------------------------
    def condition(self, class_id: int | None = None, prompt: str | None = None) -> Condition:
        """The condition of `prompt`; its index and category when it is one of this adapter's prompt set."""
        if class_id is not None or prompt is None:
            raise ValueError(f"model {self.name!r} is conditioned on a prompt, not a class label: give a prompt")
        if not str(prompt).strip():
            raise ValueError("the prompt is empty")
        index = next((k for k, p in enumerate(self.prompts.prompts) if p == prompt), None)
        return Condition(prompt=str(prompt), prompt_index=index,
                         category=None if index is None else self.prompts.categories[index])

    def edit_inputs(self, noise_seeds, conditions) -> dict[str, torch.Tensor]:
        """noise: every step's draw (B, S, 4, h, w), step 0 the start latent; embeds (B, 77, D) and pooled
        (B, P): the text encoders' outputs as the UNet takes them (SDXL: pooled goes in with the time ids)."""
        missing = [k for k, c in enumerate(conditions) if c.prompt is None]
        if missing:
            raise ValueError(f"model {self.name!r} is conditioned on a prompt: condition {missing[0]} has none")
        seeds = list(noise_seeds)
        embeds, pooled = self.encode([c.prompt for c in conditions])
        noise = torch.stack([self.step_noise(seeds, s) for s in range(self.num_steps)], dim=1)
        return {"noise": noise, "embeds": embeds, "pooled": pooled}

    def mix_inputs(self, a: dict, b: dict, t: float) -> dict:
        """Each step's noise by spherical interpolation; the text encoders' outputs, pooled embeddings
        included, linearly (in float32, back to their dtype)."""
        t = float(t)
        if t == 0.0:
            return a
        if t == 1.0:
            return b

        def mix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ((1.0 - t) * x.float() + t * y.float()).to(x.dtype)

        noise = torch.stack([slerp(a["noise"][:, s], b["noise"][:, s], t) for s in range(a["noise"].shape[1])],
                            dim=1)
        return {"noise": noise, "embeds": mix(a["embeds"], b["embeds"]), "pooled": mix(a["pooled"], b["pooled"])}

    def sample_inputs(self, inputs: dict, recorder) -> np.ndarray:
        self.last_previews = None
        noise = inputs["noise"]
        if noise.shape[1] != self.num_steps:
            raise ValueError(f"inputs hold noise for {noise.shape[1]} steps, model {self.name!r} samples in "
                             f"{self.num_steps}")
        embeds = inputs["embeds"].to(self.device, self.dtype)
        pooled = inputs["pooled"].to(self.device, self.dtype)
        x0, x0s = self.denoise([], embeds, pooled, recorder, noise_fn=lambda step: noise[:, step])
        images = self.decode(x0)
        if self.x0_previews:
            last = len(self.timesteps) - 1
            self.last_previews = {i: images if i == last else self.decode(v) for i, v in x0s.items()}
        return images

    def identity(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "base_model": self.base_model,
            "settings": {
                "timesteps": self.timesteps,
                "alpha_bars": self.alpha_bars,
                "sigmas": self.sigmas,
                "guidance_scale": 0.0,
                "resolution": self.resolution,
                "latent": self.latent,
                "dtype": str(self.dtype).removeprefix("torch."),
                "prompt_set": self.prompts.source,
                "prompt_set_sha256": self.prompts.sha256,
                "num_prompts": len(self.prompts),
                "seeds_per_prompt": self.seeds_per_prompt,
                "label_mode": "prompt",
            },
        }


def _to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # Cast only when needed: diffusers warns on every `.to(dtype)`.
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------
def load_base(source: BaseSource, family: str, dtype: torch.dtype):
    """Tokenizers, text encoders, VAE (float32), alphas_cumprod and the UNet config of a base model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    ref = source.ref
    tokenizers = [_tokenizer(source, "tokenizer")] + ([_tokenizer(source, "tokenizer_2")] if family == "sdxl" else [])
    encoders = [source.load("text_encoder", CLIPTextModel.from_pretrained, ref, subfolder="text_encoder",
                            dtype=dtype)]
    if family == "sdxl":
        encoders.append(source.load("text_encoder_2", CLIPTextModelWithProjection.from_pretrained, ref,
                                    subfolder="text_encoder_2", dtype=dtype))
    vae = source.load("vae", AutoencoderKL.from_pretrained, ref, subfolder="vae", torch_dtype=torch.float32)
    scheduler = source.load("scheduler", DDIMScheduler.from_pretrained, ref, subfolder="scheduler")
    unet_config = source.load("unet config", UNet2DConditionModel.load_config, ref, subfolder="unet")
    return tokenizers, encoders, vae, scheduler, dict(unet_config)


def _tokenizer(source: BaseSource, subfolder: str):
    from transformers import CLIPTokenizer

    tok = source.load(subfolder, CLIPTokenizer.from_pretrained, source.ref, subfolder=subfolder)
    # transformers 5 quietly builds an empty tokenizer when it finds no vocabulary files
    if len(tok) < 256:
        where = f"{source.ref}/{subfolder}" if source.local else f"{subfolder} of {source.ref!r}"
        raise ValueError(f"cannot load {where}: no vocabulary found ({len(tok)} tokens); expected vocab.json + "
                         "merges.txt or tokenizer.json" + ("" if source.local else
                         " in the Hugging Face cache. Pass a local diffusers folder with --base-model, or "
                         "fetch the model once with network access."))
    return tok


def build_t2i_adapter(model: str, checkpoint: str | None = None, base_model: str | None = None,
                      prompts: PromptSet | None = None, seeds_per_prompt: int = 1,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                      resolution: int | None = None, x0_previews: bool = False) -> T2IAdapter:
    """Build `model` (sd15, sdxl, sdxl-4step, sdxl-4step-lora) from its base and DMD2 weights.

    `checkpoint` and `base_model` default to the released files and the base DMD2 used (see
    pipeline/data/t2i_models.json). The UNet and text encoders run in `dtype` (float16 on GPUs, float32 on
    the CPU by default); the VAE always in float32.
    """
    from diffusers import UNet2DConditionModel

    from pipeline import checkpoints, lora

    s = spec(model)
    family = s["family"]
    device = torch.device(device or "cpu")
    dtype = _pick_dtype(device, dtype)
    checkpoint = checkpoint or s["checkpoint"]
    base_model = base_model or s["base_model"]
    prompts = prompts if prompts is not None else PromptSet.load(None)
    source = base_source(base_model, family)
    tokenizers, encoders, vae, scheduler, unet_config = load_base(source, family, dtype)

    weights = checkpoints.resolve_checkpoint(checkpoint)
    if s["lora"]:
        unet = source.load("unet", UNet2DConditionModel.from_pretrained, source.ref, subfolder="unet",
                           torch_dtype=dtype).to(device)
        route = _fuse_lora(family, unet, vae, tokenizers, encoders, scheduler, weights, lora)
        log.info("fused LoRA %s into the base UNet (%s)", weights, route)
    else:
        unet = _meta_unet(unet_config)
        state = checkpoints.load_state_dict_file(weights)
        if state and all(k.startswith("lora_unet_") for k in state):
            raise ValueError(f"{weights} is a LoRA (kohya format), not a full UNet: use --model sdxl-4step-lora")
        checkpoints.load_into(unet, _cast_state(state, dtype))
    return T2IAdapter(
        name=model, family=family, unet=unet, vae=vae, tokenizers=tokenizers, text_encoders=encoders,
        alphas_cumprod=scheduler.alphas_cumprod, timesteps=s["timesteps"], prompts=prompts,
        seeds_per_prompt=seeds_per_prompt, device=device, dtype=dtype, resolution=resolution,
        checkpoint=str(checkpoint), checkpoint_sha256=checkpoints.sha256_of(weights), base_model=base_model,
        x0_previews=x0_previews)


def loader(model: str, *, steps: int | None = None, class_ids=None, samples_per_class=None,
           **options) -> T2IAdapter:
    """Loader of the text-to-image families (pipeline/families.py): `build_t2i_adapter(model, **options)`.
    DMD2's generators have fixed timesteps and prompts in place of classes, so `steps`, `class_ids` and
    `samples_per_class` do not apply (`generate` refuses --steps for them)."""
    return build_t2i_adapter(model, **options)


def _fuse_lora(family, unet, vae, tokenizers, encoders, scheduler, path, lora) -> str:
    """Fuse the LoRA with diffusers (a pipeline object only to reach `load_lora_weights`) or by hand."""
    if family != "sdxl":
        raise ValueError("LoRA generators are only released for SDXL")

    def pipeline():
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                         scheduler=scheduler)

    return lora.apply_lora(unet, path, pipeline_factory=pipeline)
