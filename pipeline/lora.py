"""DMD2's SDXL LoRA: kohya-format weights fused into a UNet, with or without peft.

DMD2 ships its 4-step LoRA as safetensors with one entry group per targeted module:
`lora_unet_<module path, dots as underscores>.lora_down.weight` (r, in[, k, k]), `.lora_up.weight`
(out, r[, 1, 1]) and `.alpha` (scalar). Fusing means W <- W + scale * (alpha / r) * up @ down, reshaped
to W's shape. With peft installed we let diffusers do it (`load_lora_weights`, `fuse_lora`, then
`unload_lora_weights`, so that module paths, and therefore hook paths, stay plain); without peft we
merge the weights ourselves. Both give the same weights (tests check this).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_PREFIX = "lora_unet_"
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def peft_available() -> bool:
    """True when diffusers can use its peft backend (peft importable and recent enough)."""
    if importlib.util.find_spec("peft") is None:
        return False
    from diffusers.utils import USE_PEFT_BACKEND

    return bool(USE_PEFT_BACKEND)


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def lora_keys(path: str | Path) -> list[str]:
    """The tensor names in a LoRA file (safetensors: without reading the tensors)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    return list(read_lora_file(path))


def check_lora_file(path: str | Path) -> int:
    """Raise a clear ValueError unless `path` is a kohya-format UNet LoRA; returns its module count."""
    try:
        return len(group_kohya(dict.fromkeys(lora_keys(path))))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def group_kohya(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{underscored module name: {"down", "up", "alpha"}}; raises on keys that are not UNet LoRA keys."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, value in state_dict.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if not key.startswith(_PREFIX) or suffix is None:
            foreign.append(key)
            continue
        name = key[len(_PREFIX) : -len(suffix)]
        groups.setdefault(name, {})[{".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}[suffix]] = value
    if foreign:
        raise ValueError(
            f"not a kohya-format UNet LoRA: {len(foreign)} keys do not look like "
            f"'lora_unet_<module>.lora_down.weight / .lora_up.weight / .alpha', e.g. {sorted(foreign)[:5]}"
            " (a full UNet state dict belongs to a non-LoRA model such as sdxl-4step)"
        )
    if not groups:
        raise ValueError("the LoRA file holds no 'lora_unet_*' weights")
    broken = [n for n, g in groups.items() if "down" not in g or "up" not in g]
    if broken:
        raise ValueError(f"LoRA modules without both lora_down and lora_up: {sorted(broken)[:5]}")
    return groups


def merge_kohya_lora(unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], scale: float = 1.0) -> list[str]:
    """Fuse kohya LoRA weights into `unet` in place, without peft. Returns the merged module paths."""
    groups = group_kohya(state_dict)
    by_flat: dict[str, str] = {}
    for path, _ in unet.named_modules():
        flat = path.replace(".", "_")
        if flat in by_flat:
            raise ValueError(f"module paths {by_flat[flat]!r} and {path!r} both flatten to {flat!r}")
        by_flat[flat] = path
    missing = sorted(n for n in groups if n not in by_flat)
    if missing:
        raise ValueError(f"{len(missing)} LoRA modules have no match in the UNet, e.g. {missing[:5]}")
    modules = dict(unet.named_modules())
    merged = []
    with torch.no_grad():
        for flat, g in groups.items():
            path = by_flat[flat]
            weight = getattr(modules[path], "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(f"LoRA targets {path!r}, which has no weight")
            down = g["down"].float().flatten(1)
            up = g["up"].float().flatten(1)
            rank = down.shape[0]
            if up.shape[1] != rank:
                raise ValueError(f"{path}: lora_up has rank {up.shape[1]}, lora_down has rank {rank}")
            alpha = float(g["alpha"]) if "alpha" in g else float(rank)
            delta = (up @ down) * (scale * alpha / rank)
            if delta.numel() != weight.numel():
                raise ValueError(f"{path}: LoRA update {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
            weight.copy_((weight.float() + delta.reshape(weight.shape).to(weight.device)).to(weight.dtype))
            merged.append(path)
    return merged


def fuse_with_diffusers(pipe, path: str | Path, scale: float = 1.0) -> None:
    """diffusers' route (needs peft): load, fuse into the base weights, then drop the peft wrappers."""
    pipe.load_lora_weights(str(path), adapter_name="dmd2")
    pipe.fuse_lora(components=["unet"], lora_scale=scale)
    pipe.unload_lora_weights()


def apply_lora(unet: torch.nn.Module, path: str | Path, scale: float = 1.0, pipeline_factory=None) -> str:
    """Fuse the LoRA at `path` into `unet`. With peft and a `pipeline_factory` (returning a diffusers
    pipeline that holds this `unet`) diffusers does it; otherwise we merge. Returns "peft" or "merge"."""
    check_lora_file(path)
    if pipeline_factory is not None and peft_available():
        pipe = pipeline_factory()
        if pipe.unet is not unet:
            raise ValueError("pipeline_factory must build a pipeline around the given unet")
        fuse_with_diffusers(pipe, path, scale)
        return "peft"
    log.info("merging the LoRA weights without peft")
    merged = merge_kohya_lora(unet, read_lora_file(path), scale)
    log.info("merged LoRA into %d UNet modules", len(merged))
    return "merge"
