"""Tiny, offline stand-ins for the SD v1.5 / SDXL components and the DMD2 files.

`write_base_model(folder, family)` writes a complete diffusers-style base-model folder (tokenizer(s),
2-layer CLIP text encoder(s), tiny UNet with weights, tiny VAE, scheduler), small enough that a
1-step generation at latent 8x8 takes milliseconds on CPU. `write_dmd2_unet` writes a differently
initialised UNet state dict the way DMD2 ships its generators (a torch pickle of plain diffusers keys),
and `write_kohya_lora` writes a LoRA in DMD2's kohya format (`lora_unet_<path_with_underscores>.
lora_down/lora_up/alpha`). Nothing here needs the network or peft.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

LATENT = 8  # latent side; the tiny VAE downsamples x2, so images are 16 px
IMAGE = 16

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

SD15_UNET = dict(
    sample_size=LATENT,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)

SDXL_UNET = dict(
    sample_size=LATENT,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=96,
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
    norm_num_groups=32,
)

VAE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=IMAGE,
)

# The modules DMD2's generator LoRA targets (peft suffix match).
LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)


def _byte_table() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in CLIP's vocab order
    (printable bytes first, so "!" gets id 0 as in the real vocab; then the remapped control bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer with a 516-token vocab: bytes, bytes+</w>, two merges, bos and eos last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = _byte_table()
    tokens = table + [c + "</w>" for c in table]
    merges = [("c", "a"), ("ca", "t</w>")]
    tokens += ["ca", "cat</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return folder


def _load_tokenizer(folder: Path, pad: str | None = None):
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad} if pad else {}
    return CLIPTokenizer.from_pretrained(str(folder), **kwargs)


def _text_encoder(tokenizer, hidden: int, act: str, with_projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def tiny_unet(family: str, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**(SDXL_UNET if family == "sdxl" else SD15_UNET)).eval()


def write_base_model(folder: Path, family: str) -> Path:
    """Write a complete tiny diffusers-layout base model for `family` ("sd15" or "sdxl")."""
    from diffusers import AutoencoderKL, DDIMScheduler

    if family not in ("sd15", "sdxl"):
        raise ValueError(family)
    folder = Path(folder)
    tok = _load_tokenizer(write_tokenizer(folder / "tokenizer"))
    tok.save_pretrained(str(folder / "tokenizer"))
    _text_encoder(tok, 32, "quick_gelu", False, seed=1).save_pretrained(str(folder / "text_encoder"))
    if family == "sdxl":
        tok2 = _load_tokenizer(write_tokenizer(folder / "tokenizer_2"), pad="!")
        tok2.save_pretrained(str(folder / "tokenizer_2"))
        _text_encoder(tok2, 64, "gelu", True, seed=2).save_pretrained(str(folder / "text_encoder_2"))
    tiny_unet(family, seed=3).save_pretrained(str(folder / "unet"))
    torch.manual_seed(4)
    vae = AutoencoderKL(**VAE)
    if family == "sdxl":
        vae.register_to_config(scaling_factor=0.13025)
    vae.save_pretrained(str(folder / "vae"))
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if family == "sdxl":
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def write_dmd2_unet(path: Path, family: str, seed: int = 11, fmt: str = "bin") -> Path:
    """A 'distilled' UNet: same architecture, different weights, saved like DMD2's files."""
    unet = tiny_unet(family, seed=seed)
    sd = OrderedDict((k, v.detach().clone()) for k, v in unet.state_dict().items())
    path = Path(path)
    if fmt == "bin":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(dict(sd), str(path))
    return path


def lora_target_modules(unet) -> list[str]:
    names = []
    for name, mod in unet.named_modules():
        if not isinstance(mod, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if any(name == t or name.endswith("." + t) for t in LORA_TARGETS):
            names.append(name)
    return names


def write_kohya_lora(path: Path, unet=None, rank: int = 4, alpha: float = 8.0, seed: int = 21,
                     dtype=torch.float32) -> Path:
    """A LoRA for the tiny SDXL UNet in DMD2's kohya format, with non-zero up and down weights."""
    from safetensors.torch import save_file

    unet = unet if unet is not None else tiny_unet("sdxl", seed=3)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    modules = dict(unet.named_modules())
    for name in lora_target_modules(unet):
        mod = modules[name]
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size
            down = torch.randn(rank, mod.in_channels, *k, generator=gen) * 0.2
            up = torch.randn(mod.out_channels, rank, 1, 1, generator=gen) * 0.2
        else:
            down = torch.randn(rank, mod.in_features, generator=gen) * 0.2
            up = torch.randn(mod.out_features, rank, generator=gen) * 0.2
        tensors[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=dtype)
    save_file(tensors, str(path))
    return Path(path)


@dataclass(frozen=True)
class TinyFiles:
    """Everything the text-to-image tests load: two base folders, DMD2-style UNets and a LoRA."""

    sd15: Path
    sdxl: Path
    sd15_unet: Path
    sdxl_unet: Path
    lora: Path

    def base(self, model: str) -> Path:
        return self.sd15 if model == "sd15" else self.sdxl

    def checkpoint(self, model: str) -> Path:
        return {"sd15": self.sd15_unet, "sdxl-4step-lora": self.lora}.get(model, self.sdxl_unet)


_FILES: dict[str, TinyFiles] = {}


def tiny_files(tmp_path_factory) -> TinyFiles:
    """Written once per test session (every t2i test module shares them)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _FILES:
        root = tmp_path_factory.mktemp("t2i")
        _FILES[key] = TinyFiles(
            sd15=write_base_model(root / "sd15", "sd15"),
            sdxl=write_base_model(root / "sdxl", "sdxl"),
            sd15_unet=write_dmd2_unet(root / "dmd2_sd15_unet.bin", "sd15"),
            sdxl_unet=write_dmd2_unet(root / "dmd2_sdxl_unet_fp16.safetensors", "sdxl", fmt="safetensors"),
            lora=write_kohya_lora(root / "dmd2_sdxl_4step_lora.safetensors"),
        )
    return _FILES[key]


def build(files: TinyFiles, model: str, prompts=None, **kwargs):
    """The real adapter factory on the tiny files (CPU, float32)."""
    from pipeline.adapters.t2i import build_t2i_adapter
    from pipeline.prompts import PromptSet

    prompts = prompts or PromptSet.from_lists(PROMPTS, CATEGORIES)
    return build_t2i_adapter(model, checkpoint=str(files.checkpoint(model)), base_model=str(files.base(model)),
                             prompts=prompts, device="cpu", dtype=torch.float32, **kwargs)


PROMPTS = ["a photo of a cat", "a red sports car on a coastal road", "a bowl of ramen", "a castle at night"]
CATEGORIES = ["animals", "vehicles", "food", "architecture"]
