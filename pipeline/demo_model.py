"""The demo model: a small network of the ImageNet generator's architecture, trained on handwritten digits.

No real DMD2 checkpoint can be shipped or downloaded here, so the project trains its own: an ``EDMPrecond`` +
``DhariwalUNet`` (same module tree as the 296M-parameter ImageNet network, with attention and skip
concatenations) on scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), upscaled to 16x16 grey
RGB. It is trained with EDM's denoising loss and sampled on a short Karras schedule from sigma = 80, with
the 1-step case being DMD2's recipe (one call at sigma = 80).

``python -m pipeline train-demo`` (or ``python -m pipeline.demo_model``) trains it deterministically: 2,000
Adam steps, about 4 minutes on 2 idle Xeon cores (0.13 s a step). It keeps snapshots of the weights at 250, 500 and 1,000
steps beside the final file (``snapshot_path``: ``demo_edm-step00250.safetensors``, ...; each file's metadata
records its ``step``), so that runs of each checkpoint show the model over training. The shipped ``data/demo_edm.safetensors``
was trained with the same recipe on a GPU (``train_demo(device="cuda")``, noted in the file's metadata): the
same model up to floating-point differences, not the same bits. A full CPU run on a 2-core machine that was
also running the test suite took 416 s, and its samples were recognised as well (100% at 4 steps, 90.0% at
1 step, against 100% and 90.5% for the shipped weights).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models.edm import EDMPrecond
from pipeline.sampling import edm_sample, karras_sigmas, to_uint8

__all__ = [
    "DEMO_CONFIG",
    "DEMO_SIGMAS",
    "DEMO_SNAPSHOTS",
    "DEMO_TRAIN",
    "DEMO_WEIGHTS",
    "digit_accuracy",
    "digit_features",
    "digits_dataset",
    "evaluate_demo",
    "load_demo_model",
    "snapshot_path",
    "snapshots_of",
    "train_demo",
]

DEMO_CONFIG = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_channels=16,
    channel_mult=(1, 2, 4),
    channel_mult_emb=4,
    num_blocks=1,
    attn_resolutions=(8,),
    channels_per_head=16,
    sigma_data=0.5,
    dropout=0.0,
)
"""16x16 RGB; levels 16/8/4 px with 16/32/64 channels; 2-head attention at 8x8 and 4 heads in the 4x4 middle
block; 757,747 parameters (3 MB). Wider variants sampled no better on this data and train slower."""

DEMO_SIGMAS: tuple[float, ...] = tuple(karras_sigmas(4))
"""The multi-step schedule the demo samples with (the 1-step case is ``karras_sigmas(1)`` = [80])."""

DEMO_WEIGHTS = Path(__file__).resolve().parent / "data" / "demo_edm.safetensors"

DEMO_TRAIN = dict(
    steps=2000,
    batch_size=64,
    lr=1e-3,
    warmup=200,
    ema_decay=0.999,
    p_mean=-0.8,
    p_std=1.6,
    uniform_fraction=0.25,
    sigma_min=0.002,
    sigma_max=80.0,
)
"""Training hyper-parameters. Sigmas follow EDM's log-normal distribution (``p_mean``/``p_std``, shifted up
from EDM's -1.2/1.2) for most of a batch; a ``uniform_fraction`` is log-uniform on [sigma_min, sigma_max] so
that every sigma a sampler may start from or pass through, 80 included, is trained on."""


DEMO_SNAPSHOTS: tuple[int, ...] = (250, 500, 1000)
"""Training steps at which `train_demo` keeps a snapshot of the EMA weights beside the final file (which is the
last step, 2,000), so that runs of each show the model over training."""


def snapshot_path(out: str | Path, step: int) -> Path:
    """Where `train_demo(out)` writes its snapshot at `step`: `<out stem>-step<step:05d>.safetensors` beside
    `out`. `generate --checkpoint` reads the step back (from the file's metadata, or this name)."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.safetensors')}-step{int(step):05d}.safetensors")


def snapshots_of(out: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the snapshots written beside `out`, in training order."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors")
    found = []
    for path in out.parent.glob(f"{stem}-step*.safetensors"):
        digits = path.name[len(stem) + len("-step"):].removesuffix(".safetensors")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def digits_dataset(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 3, R, R) float32 in [-1, 1] (white ink on black) and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(digits.target.astype(np.int64))


def load_demo_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> EDMPrecond:
    """The shipped demo network (or the weights at ``path``), in eval mode."""
    from pipeline.checkpoints import load_into, load_state_dict_file

    path = Path(path) if path is not None else DEMO_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"demo weights not found at {path}: run `python -m pipeline train-demo`")
    net = EDMPrecond(**DEMO_CONFIG)
    load_into(net, load_state_dict_file(path))
    return net.to(device).eval().requires_grad_(False)


def _train_sigmas(n: int, gen: torch.Generator, hp: dict) -> torch.Tensor:
    log_normal = torch.randn(n, generator=gen) * hp["p_std"] + hp["p_mean"]
    lo, hi = math.log(hp["sigma_min"]), math.log(hp["sigma_max"])
    log_uniform = lo + (hi - lo) * torch.rand(n, generator=gen)
    uniform = torch.rand(n, generator=gen) < hp["uniform_fraction"]
    return torch.where(uniform, log_uniform, log_normal).exp()


def _lr_at(step: int, hp: dict) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < hp["warmup"]:
        return hp["lr"] * (step + 1) / hp["warmup"]
    progress = (step - hp["warmup"]) / max(1, hp["steps"] - hp["warmup"])
    return hp["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_demo(
    out: str | Path = DEMO_WEIGHTS,
    *,
    seed: int = 0,
    minutes: float | None = None,
    threads: int | None = 2,
    device: str | torch.device = "cpu",
    config: dict | None = None,
    log_every: int = 250,
    snapshots=DEMO_SNAPSHOTS,
    **overrides,
) -> Path:
    """Train the demo network with EDM's denoising loss and Adam; write the EMA weights as safetensors.

    Deterministic for a given seed, thread count and machine: a fixed number of steps (``DEMO_TRAIN``,
    overridable by keyword) and seeded draws, all on the CPU. ``minutes`` is an optional safety cap; stopping
    on it makes the result depend on the machine's speed, and says so. ``config`` replaces ``DEMO_CONFIG``
    (tests train tiny networks; the weights then only load into that config).

    At each step count in ``snapshots`` (those below the last step) the EMA weights so far are also written, to
    ``snapshot_path(out, step)``; every file records its step in its metadata (``step``).
    """

    hp = {**DEMO_TRAIN, **overrides}
    unknown = set(overrides) - set(DEMO_TRAIN)
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; valid: {sorted(DEMO_TRAIN)}")
    with seeded_training(seed, threads) as gen:
        config = dict(DEMO_CONFIG if config is None else config)
        device = torch.device(device)
        images, labels = digits_dataset(config["img_resolution"])
        net = EDMPrecond(**config).to(device).train()
        ema = EDMPrecond(**config).to(device).eval().requires_grad_(False)
        ema.load_state_dict(net.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], betas=(0.9, 0.99))
        sd = config["sigma_data"]
        keep = sorted({int(k) for k in snapshots or ()})
        if any(k < 1 for k in keep):
            raise ValueError(f"snapshot steps must be 1 or more, got {keep}")
        keep = [k for k in keep if k < hp["steps"]]
        out = Path(out)
        meta = {"config": repr(config), "train": repr(hp), "seed": str(seed), "device": str(device)}
        done = 0
        start, running = time.monotonic(), 0.0
        for step in range(hp["steps"]):
            if minutes is not None and time.monotonic() - start > minutes * 60:
                print(
                    f"stopped at step {step} of {hp['steps']} by the {minutes}-minute cap (not reproducible)"
                )
                break
            idx = torch.randint(len(images), (hp["batch_size"],), generator=gen)
            y, cls = images[idx], labels[idx]
            sigma = _train_sigmas(len(y), gen, hp)
            noise = torch.randn(y.shape, generator=gen)
            y, cls, sigma, noise = y.to(device), cls.to(device), sigma.to(device), noise.to(device)
            s = sigma.reshape(-1, 1, 1, 1)
            denoised = net(y + s * noise, sigma, cls)
            weight = (s**2 + sd**2) / (s * sd) ** 2
            loss = (weight * (denoised - y) ** 2).mean()
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, hp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay = min(hp["ema_decay"], (1 + step) / (10 + step))
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
            done = step + 1
            if done in keep:
                _save_weights(ema, snapshot_path(out, done), {**meta, "step": str(done)})
            running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
            if log_every and (step + 1) % log_every == 0:
                print(
                    f"step {step + 1}/{hp['steps']}  loss {running:.4f}  {time.monotonic() - start:.0f}s",
                    flush=True,
                )
        _save_weights(ema, out, {**meta, "step": str(done)})
        kept = [k for k in keep if k <= done]
        print(f"trained in {time.monotonic() - start:.0f}s; wrote {out}"
              + (f" and snapshots at steps {', '.join(map(str, kept))}" if kept else ""))
        return out


@contextlib.contextmanager
def seeded_training(seed: int, threads: int | None):
    """A training run's randomness and threads: torch seeded, one generator for every draw (yielded), and
    `threads` CPU threads (None: as they are) until the block ends. A run is deterministic for a seed and a
    thread count."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(previous_threads)


def _save_weights(net: torch.nn.Module, path: Path, meta: dict) -> None:
    """The network's state dict as safetensors, written atomically (a temporary file renamed over `path`)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)


@cache
def _digit_classifier():
    """A classifier of the real 8x8 digits (an RBF SVM, about 99% on held-out real digits)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target)


def digit_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 NHWC images that the real-digit classifier reads as their intended class.

    Images are averaged over channels, block-averaged down to 8x8 and rescaled to the data set's 0..16.
    """
    predicted = _digit_classifier().predict(digit_features(images))
    return float((predicted == np.asarray(labels)).mean())


def digit_features(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images as the classifier reads them: averaged over channels, block-averaged down to 8x8
    and rescaled to the data set's 0..16, (N, 64)."""
    images = np.asarray(images, dtype=np.float32).mean(axis=-1)  # (N, R, R)
    n, r, _ = images.shape
    if r % 8:
        raise ValueError(f"image size {r} is not a multiple of 8")
    return (images.reshape(n, 8, r // 8, 8, r // 8).mean(axis=(2, 4)) / 255.0 * 16.0).reshape(n, 64)


def evaluate_demo(net: EDMPrecond, sigmas=DEMO_SIGMAS, per_class: int = 20, seed: int = 1) -> float:
    """Sample ``per_class`` images of each digit with ``sigmas`` and return the classifier's accuracy."""
    from pipeline.adapters.base import seeded_normal

    device = next(net.parameters()).device
    labels = torch.arange(10, device=device).repeat_interleave(per_class)
    seeds = [seed * 1_000_003 + i for i in range(len(labels))]
    res, ch = net.img_resolution, net.img_channels
    z = seeded_normal(seeds, (ch, res, res)).to(device)
    images = to_uint8(edm_sample(net, z, labels, sigmas, noise_seeds=seeds))
    return digit_accuracy(images, labels.cpu().numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEMO_WEIGHTS), help="weights file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEMO_TRAIN["steps"], help="training steps")
    parser.add_argument(
        "--minutes", type=float, default=None, help="optional time cap (breaks reproducibility)"
    )
    parser.add_argument("--eval-only", action="store_true", help="only report sample accuracy of --out")
    args = parser.parse_args(argv)
    if not args.eval_only:
        train_demo(args.out, seed=args.seed, minutes=args.minutes, steps=args.steps)
    net = load_demo_model(args.out)
    print(f"multi-step ({len(DEMO_SIGMAS)} steps) accuracy: {evaluate_demo(net):.3f}")
    print(f"1-step accuracy: {evaluate_demo(net, sigmas=karras_sigmas(1)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
