"""Real images through a generator's network, recorded as a run of kind `real` (`python -m pipeline encode-real`);
a run's generated images the same way, as a run of kind `encoded`.

A real image takes the place of a generated sample at one noise level of the sampling path, and the network is
called there as in generation, with the same hooks and reductions, so that real and generated samples share a
layer's map and neighbour search:

* EDM models (demo, imagenet): x = image + σ·n at σ, with n ~ N(0, I) drawn from the sample's seed (the run
  seed and the sample's index, as generation draws its noise), and the image's class label;
* SD/SDXL: the image is encoded by the VAE (the mean of its latent distribution, scaled as diffusers does),
  noised at DDPM timestep t with the scheduler's ᾱ_t, x_t = √ᾱ_t·z + √(1-ᾱ_t)·n, and the UNet is called with
  the image's caption.

The call goes through the adapter's own sampler (`EDMAdapter.sample_inputs`, `T2IAdapter.denoise`), on a
one-step schedule at that noise level set for the call (`_one_step`). The activations are tagged with a
sampling step (`NoiseLevel.step`): by default the step of the model's schedule that samples at that noise level
(within 0.1%: the demo's 4-step schedule samples at σ = 0.47 in its step 2 and ends at σ = 0.002, its step 3), so
a real run lands on the same map as that step of the generated runs; else step 0.

Sample i is item i of the source's listing (pipeline/sources.py), so a rerun resumes from the last whole batch
and gives the same samples; an unreadable image is reported and skipped (its index stays empty, and a rerun
tries it again). The stored image is the real image as the network sees it (cropped and resized); with
`previews` the network's denoised output is stored as that step's x0 preview.

Encoded runs (source ``run:<run_id>``, pipeline/sources.py): a generator's final images take the real images'
place, so that a 1-step student's outputs and the real data meet at one noise level (a 1-step run records only
the network's call on pure noise, where nothing can be compared). The run's kind is `encoded` (`real` when the
source run is itself a real run); each sample keeps its source sample's seed, class or prompt, and names it in
`source_sample_id`, so that it links to the generated sample. The noise added is drawn from the encoding run's
own seed and the sample's index, as for real images (independent of the noise the generator started from).
Default run id: ``<source run>-encoded`` at the model's default noise level (its schedule's last step),
``<source run>-encoded-at-sigma<σ>`` (``-at-t<timestep>`` for SD/SDXL) at another; ``-s<seed>`` is added for a
seed other than 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.adapters.base import Adapter, Condition, sample_seed
from pipeline.generate import BackgroundWriter, _batches, _sample_row, check_store_folder
from pipeline.hooks import Recorder, resolve_reduce
from pipeline.sources import RUN, BadItem, Source, SourceError
from store import RunWriter

log = logging.getLogger(__name__)

REAL_KIND = "real"
ENCODED_KIND = "encoded"


@dataclass(frozen=True)
class NoiseLevel:
    """Where on the sampling path the real images enter: σ (EDM; for SD/SDXL the DDPM-equivalent
    √((1-ᾱ)/ᾱ)), the timestep and ᾱ (SD/SDXL only), and the step the activations are tagged with."""

    sigma: float
    step: int
    timestep: int | float | None = None
    alpha_bar: float | None = None

    def settings(self) -> dict:
        out = {"sigma": self.sigma, "step": self.step}
        if self.timestep is not None:
            out.update(timestep=self.timestep, alpha_bar=self.alpha_bar)
        return out


@dataclass
class EncodeResult:
    run_id: str
    encoded: int
    total_done: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, why): left out or unreadable

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


def is_prompt_model(adapter: Adapter) -> bool:
    """True for the text-to-image adapters (a VAE and a `denoise` loop), False for the EDM class models."""
    return hasattr(adapter, "denoise") and hasattr(adapter, "vae")


def resolution_of(adapter: Adapter) -> int:
    return int(adapter.resolution) if is_prompt_model(adapter) else int(adapter.config["img_resolution"])


def noise_level(adapter: Adapter, sigma: float | None = None, timestep: int | None = None,
                step: int | None = None) -> NoiseLevel:
    """The noise level of a real run on `adapter`: `sigma` (EDM) or `timestep` (SD/SDXL); by default the last
    step of the model's sampling schedule. A 1-step model's only step is pure noise, so it needs one given.
    `step` overrides the step the activations are tagged with. Raises ValueError."""
    if step is not None and (isinstance(step, bool) or int(step) != step or step < 0):
        raise ValueError(f"step must be 0 or more, got {step!r}")
    if is_prompt_model(adapter):
        if sigma is not None:
            raise ValueError(f"--sigma applies to the EDM models; {adapter.name} takes --timestep (a DDPM "
                             f"timestep, 0..999)")
        schedule = list(adapter.timesteps)
        if timestep is None:
            if len(schedule) < 2:
                raise ValueError(f"give --timestep: {adapter.name} samples in one step at t={schedule[0]}, where "
                                 "an image is mostly noise (e.g. --timestep 250)")
            timestep = schedule[-1]
        if timestep in schedule:  # a teacher's scheduler may step at fractional timesteps
            ab = float(adapter.alpha_bars[schedule.index(timestep)])
        else:
            if isinstance(timestep, bool) or int(timestep) != timestep:
                raise ValueError(f"timestep must be an integer, got {timestep!r}")
            timestep = int(timestep)
            alphas = _alphas_cumprod(adapter)
            if not 0 <= timestep < len(alphas):
                raise ValueError(f"timestep {timestep} is out of range: 0..{len(alphas) - 1}")
            ab = float(alphas[timestep])
        default_step = schedule.index(timestep) if timestep in schedule else 0
        return NoiseLevel(math.sqrt((1 - ab) / ab), default_step if step is None else int(step), timestep, ab)
    if timestep is not None:
        raise ValueError(f"--timestep applies to the text-to-image models; {adapter.name} takes --sigma")
    schedule = [float(s) for s in adapter.sigmas]
    if sigma is None:
        if len(schedule) < 2:
            raise ValueError(f"give --sigma: {adapter.name} samples in one step at sigma {schedule[0]:g}, where an "
                             "image is all noise (e.g. --sigma 0.5)")
        sigma = schedule[-1]
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    matches = [i for i, s in enumerate(schedule) if math.isclose(s, sigma, rel_tol=1e-3)]  # 0.47 ~ 0.46998
    default_step = matches[0] if matches else 0
    return NoiseLevel(sigma, default_step if step is None else int(step))


def _alphas_cumprod(adapter) -> torch.Tensor:
    """ᾱ of every DDPM timestep, from the base model's scheduler (the adapter keeps only its own steps')."""
    from diffusers import DDIMScheduler

    from pipeline.adapters.t2i import base_source

    source = base_source(adapter.base_model, adapter.family)
    scheduler = source.load("scheduler", DDIMScheduler.from_pretrained, source.ref, subfolder="scheduler")
    return scheduler.alphas_cumprod


@contextmanager
def _one_step(adapter: Adapter, **schedule):
    """The adapter's schedule attributes set to one step for the duration of a call, then restored."""
    saved = {k: getattr(adapter, k) for k in schedule}
    try:
        for k, v in schedule.items():
            setattr(adapter, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(adapter, k, v)


class _AtStep:
    """A recorder whose `step(i, ...)` records at a fixed step: the real run's step on the sampling path."""

    def __init__(self, recorder, step: int):
        self.recorder, self.at = recorder, step

    def step(self, _i: int, timestep=None, sigma=None):
        return self.recorder.step(self.at, timestep=timestep, sigma=sigma)


def encode_batch(adapter: Adapter, images: np.ndarray, seeds: list[int], conditions: list[Condition],
                 level: NoiseLevel, recorder, denoised: bool = False) -> np.ndarray | None:
    """Noise `images` (float32 (B, 3, R, R) in [-1, 1]) to `level` and call the network once, recording into
    `recorder`; returns the network's denoised output as uint8 (B, R, R, 3) when `denoised`, else None."""
    at = _AtStep(recorder, level.step)
    if is_prompt_model(adapter):
        return _encode_latents(adapter, images, seeds, conditions, level, at, denoised)
    inputs = adapter.edit_inputs(seeds, conditions)  # z: each sample's seeded N(0, I); labels: one-hot rows
    noise = inputs["z"]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) + level.sigma * noise
    one = {"z": x / level.sigma, "eps": noise.new_zeros((len(seeds), 0, *noise.shape[1:])),
           "labels": inputs["labels"]}
    with _one_step(adapter, sigmas=[level.sigma], num_steps=1):
        out = adapter.sample_inputs(one, at)  # the sampler starts at sigmas[0]·z = x
    return out if denoised else None


@torch.no_grad()
def _encode_latents(adapter, images, seeds, conditions, level, at, denoised):
    device = adapter.device
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    config = adapter.vae.config
    shift = config.get("shift_factor") or 0.0
    latents = (adapter.vae.encode(pixels).latent_dist.mean.float() - shift) * config.scaling_factor
    ab = level.alpha_bar
    noise = adapter.step_noise(list(seeds), 0).to(device)
    x_t = math.sqrt(ab) * latents + math.sqrt(1 - ab) * noise
    embeds, pooled = adapter.encode([c.prompt for c in conditions])
    from pipeline.adapters.t2i import T2IAdapter

    # DMD2's loop of the base class, also for a teacher (whose own loop is its scheduler's with guidance): the
    # recorded call is the UNet's conditional pass at x_t either way
    with _one_step(adapter, timesteps=[level.timestep], alpha_bars=[ab], sigmas=[level.sigma], num_steps=1):
        x0, _ = T2IAdapter.denoise(adapter, list(seeds), embeds, pooled, at, noise_fn=lambda _k: x_t)
    return adapter.decode(x0) if denoised else None


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float (B, 3, H, W) to uint8 (B, H, W, 3), rounded: an image read from a file (x / 127.5 - 1) is
    stored with exactly its prepared pixel values."""
    pixels = np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def default_run_id(adapter: Adapter, source: Source, level: NoiseLevel, seed: int, layers: dict[str, str],
                   reduce: dict[str, str]) -> str:
    if source.kind == RUN:
        return encoded_run_id(adapter, source.run["run_id"], level, seed)
    key = json.dumps({"id": adapter.identity(), "source": source.identity(), "level": level.settings(),
                      "seed": seed, "layers": sorted(layers), "reduce": reduce}, sort_keys=True, default=str)
    name = getattr(adapter, "family_name", None) or adapter.name  # a teacher's runs are named after it
    return f"real-{name}-{source.kind}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def encoded_run_id(adapter: Adapter, source_run: str, level: NoiseLevel, seed: int = 0) -> str:
    """The default id of the run that encodes `source_run` at `level` (the rule in the module docstring)."""
    try:
        default = noise_level(adapter)
    except ValueError:  # a 1-step model has no default level
        default = None
    if default is not None and math.isclose(level.sigma, default.sigma, rel_tol=1e-3):
        at = ""
    elif level.timestep is not None:
        at = f"-at-t{level.timestep:g}"
    else:
        at = f"-at-sigma{level.sigma:g}"
    return f"{source_run}-encoded{at}" + (f"-s{int(seed)}" if int(seed) else "")


def run_kind_of(source: Source) -> str:
    """The kind of the run a source's images make: `encoded` for a run's generated images, else `real`."""
    return ENCODED_KIND if source.generated else REAL_KIND


def _condition(adapter: Adapter, item) -> Condition:
    if item.caption is not None:
        return Condition(prompt=item.caption, category=item.category)
    return adapter.condition(class_id=item.class_id)


def check_source(adapter: Adapter, source: Source) -> None:
    """A class model needs labelled images, a text-to-image model captioned ones (SourceError otherwise)."""
    if is_prompt_model(adapter) and source.conditioning != "prompt":
        raise SourceError(f"{adapter.name} is conditioned on text: give images with captions (a folder with .txt "
                          f"captions beside the images, or a caption table), not a {source.kind} source")
    if not is_prompt_model(adapter) and source.conditioning != "class":
        raise SourceError(f"{adapter.name} is conditioned on a class label: give labelled images (digits, or a "
                          "folder of class folders), not captioned ones")
    if source.kind == RUN:
        run, size = source.run, resolution_of(adapter)
        if run["image_size"] != size:
            raise SourceError(f"run {run['run_id']!r} (model {run['model']}) holds {run['image_size']}x"
                              f"{run['image_size']} px images; {adapter.name} takes {size}x{size}: encode a run of a "
                              "model with this network's image size")
        names = getattr(adapter, "class_names", None)
        classes = {i.class_id for i in source.items if i.class_id is not None}
        if not is_prompt_model(adapter) and names is not None and classes and max(classes) >= len(names):
            raise SourceError(f"run {run['run_id']!r} (model {run['model']}) has class {max(classes)}; "
                              f"{adapter.name} knows classes 0..{len(names) - 1}")


def _provenance(item) -> dict:
    """A run source's sample: its seed (so that the encoded sample links to the generated one) and its id."""
    if item.sample_id is None:
        return {}
    return {"source_sample_id": item.sample_id, **({"seed": item.seed} if item.seed is not None else {})}


def encode_real(adapter: Adapter, source: Source, store_root: str | Path, layers: list[str], *,
                sigma: float | None = None, timestep: int | None = None, step: int | None = None,
                num_samples: int | None = None, seed: int = 0, batch_size: int = 16,
                reduce: str | dict[str, str] = "auto", run_id: str | None = None, previews: bool = False,
                progress: bool = True, on_batch=None, on_skip: Callable[[str, str], None] | None = None,
                fsync: bool = False) -> EncodeResult:
    """Encode the first `num_samples` items of `source` (None: all) into a run of kind `real` (`encoded` for a
    run source of generated images), skipping the indices already committed. `on_skip(name, why)` hears of every item left out (default: a log warning);
    `on_batch(done, total)` of every committed batch. Bad arguments raise ValueError (SourceError for a source
    that does not fit the model) before anything is written; an error once started leaves the run
    `interrupted`, and a rerun resumes it."""
    for name, value in (("batch_size", batch_size), ("num_samples", num_samples)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be 0 or more, got {seed!r}")
    check_source(adapter, source)
    check_store_folder(store_root)
    level = noise_level(adapter, sigma, timestep, step)
    on_skip = on_skip or (lambda name, why: log.warning("skipped %s: %s", name, why))
    count = len(source.items) if num_samples is None else min(int(num_samples), len(source.items))
    paths = adapter.resolve_layers(layers)
    shapes = adapter.layer_shapes()
    wanted = reduce if isinstance(reduce, dict) else {name: reduce for name in paths}
    reductions = {name: resolve_reduce(wanted.get(name, "auto"), shapes[name]) for name in paths}
    run_id = run_id or default_run_id(adapter, source, level, seed, paths, reductions)
    ident = adapter.identity()
    resolution = resolution_of(adapter)
    manifest = {
        "run_id": run_id, "model": adapter.name, "family": adapter.family,
        "checkpoint": ident.get("checkpoint"), "checkpoint_sha256": ident.get("checkpoint_sha256"),
        "base_model": ident.get("base_model"), "layers": list(paths), "reduce": reductions,
        "settings": {**ident.get("settings", {}), "kind": run_kind_of(source), "source": source.identity(),
                     **level.settings(), "resolution": resolution, "layer_paths": paths,
                     "layer_shapes": {k: list(shapes[k]) for k in paths}},
        "seed": int(seed), "num_samples": count, "device": str(next(adapter.root.parameters()).device),
    }
    skipped = list(source.problems)
    for name, why in source.problems:
        on_skip(name, why)
    writer = RunWriter(store_root, manifest, durable=fsync)
    start = time.perf_counter()
    status, encoded = "interrupted", 0
    try:
        done = set(writer.done_indices().tolist())
        todo = np.array([i for i in range(count) if i not in done], dtype=np.int64)
        batches = _batches(todo, int(batch_size))
        total = len(todo)
        device = next(adapter.root.parameters()).device
        with Recorder(adapter.root, paths, reductions) as recorder, \
                BackgroundWriter(writer, threaded=device.type != "cpu") as background, \
                tqdm(total=total, unit="image", disable=not progress, desc=run_id, dynamic_ncols=True) as bar:
            seen = 0
            for indices in batches:
                good, images = [], []
                items = [source.items[i] for i in indices.tolist()]
                for i, item, got in zip(indices.tolist(), items, source.load_many(items, resolution), strict=True):
                    if isinstance(got, BadItem):
                        skipped.append((item.name, str(got)))
                        on_skip(item.name, str(got))
                    else:
                        images.append(got)
                        good.append(i)
                if good:
                    batch = np.stack(images)
                    seeds = [sample_seed(seed, i) for i in good]  # the noise added
                    conditions = [_condition(adapter, source.items[i]) for i in good]
                    out = encode_batch(adapter, batch, seeds, conditions, level, recorder, denoised=previews)
                    rows = [{**_sample_row(s, c, adapter), "num_steps": 1, **_provenance(source.items[i])}
                            for i, s, c in zip(good, seeds, conditions, strict=True)]
                    background.write_batch(np.asarray(good, dtype=np.int64), rows, list(to_uint8_hwc(batch)),
                                           recorder.pop(), {level.step: out} if previews else None)
                    encoded += len(good)
                seen += len(indices)
                bar.update(len(indices))
                if on_batch is not None:
                    on_batch(seen, total)
            background.close()
        status = "complete"
    finally:
        try:
            writer.finish(status)
        except OSError as exc:
            if status == "complete":
                raise
            log.warning("run %s: could not record its status %r: %s", run_id, status, exc)
    return EncodeResult(run_id, encoded, len(writer.done_indices()), time.perf_counter() - start, skipped)
