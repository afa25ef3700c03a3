"""A DMD2-distilled 1-step student of the demo model (``python -m pipeline train-demo-student``).

The demo's naive 1-step run calls the multi-step teacher once at sigma = 80: it draws blurry class means.
This module distils a real 1-step generator with DMD2's recipe (Yin et al. 2024), written from its
description:

* the student G starts as a copy of the teacher and is sampled as DMD2's ImageNet generator is: one call
  ``G(80·z, sigma=80, class)``;
* a fake-score network, also a copy of the teacher, is trained with the denoising loss on the student's
  (detached) outputs at random noise levels, so that it tracks the score of the student's distribution;
* the student is updated by the distribution-matching gradient: at a random sigma its output x is noised,
  the frozen teacher gives the real denoised estimate and the fake network the fake one, and
  ``grad = (fake − real) / mean|x − real|`` (the mean per sample, as DMD normalises), applied through the
  surrogate loss ``0.5·||x − sg(x − grad)||²`` whose gradient with respect to x is ``grad``;
* two time scales: ``fake_steps`` fake-score updates per student update; no regression loss and no GAN.

Everything here computes; the command (pipeline/commands/train_demo_student.py) writes the file.

The shipped ``data/demo_student.safetensors`` is ``DISTILL_TRAIN`` with seed 0 (500 student steps, batch 64,
5 fake-score steps each): 868 s with one thread on a 2-core machine busy with other work. Its 1-step samples
(1,000, 100 per digit) are recognised at 97% by the digit classifier, with an intra-class diversity (mean
pairwise distance, 16x16 grey in [0, 1]) of 3.14 against 3.37 for the real digits, 0.40 for the naive
1-step (91%) and 1.30 for the teacher's 4-step schedule (100%). Early on, recognition peaks while the samples
are still sharpened class means; judge a run at its end, on recognition and diversity together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.models.edm import EDMPrecond

__all__ = [
    "DEMO_STUDENT_WEIGHTS",
    "DISTILL_TRAIN",
    "STUDENT_SIGMA",
    "DistillState",
    "dmd_gradient",
    "evaluate_student",
    "fake_score_loss",
    "intra_class_diversity",
    "load_student",
    "student_sample",
    "train_student",
]

STUDENT_SIGMA = 80.0
"""The noise level the student is called at (on 80·z), as DMD2's ImageNet generator and the naive 1-step."""

DEMO_STUDENT_WEIGHTS = Path(__file__).resolve().parent / "data" / "demo_student.safetensors"

DISTILL_TRAIN = dict(
    steps=500,
    batch_size=64,
    fake_steps=5,
    lr_student=5e-5,
    lr_fake=2e-4,
    betas=(0.0, 0.99),
    sigma_min=0.002,
    sigma_max=80.0,
    t_min=0.02,
    t_max=0.98,
)
"""The recipe's settings. Sigmas of the DMD gradient and of the fake-score loss are drawn as DMD2 draws its
timesteps: uniformly over the middle ``t_min``..``t_max`` of a 1,000-level Karras schedule (rho = 7) on
[sigma_min, sigma_max]. Adam with beta1 = 0 for both networks (two players; momentum lags the other's moves)."""


def _karras_table(hp: dict, levels: int = 1000) -> torch.Tensor:
    ramp = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
    lo, hi = hp["sigma_min"] ** (1 / 7), hp["sigma_max"] ** (1 / 7)
    return ((hi + ramp * (lo - hi)) ** 7).to(torch.float32)


def _draw_sigmas(n: int, gen: torch.Generator, table: torch.Tensor, hp: dict) -> torch.Tensor:
    lo = int(round(hp["t_min"] * (len(table) - 1)))
    hi = int(round(hp["t_max"] * (len(table) - 1)))
    return table[torch.randint(lo, hi + 1, (n,), generator=gen)]


def student_sample(student: EDMPrecond, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The student's 1-step images (NCHW, about [-1, 1]): one call at sigma = 80 on 80·z."""
    sigma = torch.full((len(z),), STUDENT_SIGMA, device=z.device)
    return student(STUDENT_SIGMA * z, sigma, labels)


def dmd_gradient(x: torch.Tensor, real_denoised: torch.Tensor, fake_denoised: torch.Tensor) -> torch.Tensor:
    """DMD's distribution-matching gradient of the student's outputs ``x``: the fake minus the real denoised
    estimate, divided per sample by the mean absolute difference between ``x`` and the real estimate (so its
    scale does not depend on the noise level). Non-finite entries become 0."""
    dims = tuple(range(1, x.ndim))
    weight = (x - real_denoised).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)
    return torch.nan_to_num((fake_denoised - real_denoised) / weight)


def _dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The surrogate 0.5·||x − sg(x − grad)||², averaged over elements: its gradient w.r.t. x is grad/numel."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).mean()


def fake_score_loss(fake: EDMPrecond, images: torch.Tensor, labels: torch.Tensor, sigma: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """EDM's weighted denoising loss of the fake-score network on (detached) student images."""
    sd = fake.sigma_data
    s = sigma.reshape(-1, 1, 1, 1)
    denoised = fake(images + s * noise, sigma, labels)
    weight = (s**2 + sd**2) / (s * sd) ** 2
    return (weight * (denoised - images) ** 2).mean()


@dataclass
class DistillState:
    """The networks and optimisers of a distillation run, and what it has logged."""

    teacher: EDMPrecond
    student: EDMPrecond
    fake: EDMPrecond
    opt_student: torch.optim.Optimizer
    opt_fake: torch.optim.Optimizer
    hp: dict
    step: int = 0
    history: list[dict] = field(default_factory=list)


def init_state(teacher: EDMPrecond, **overrides) -> DistillState:
    """Student and fake-score network as copies of ``teacher`` (which is frozen), with their optimisers."""
    hp = {**DISTILL_TRAIN, **overrides}
    unknown = set(overrides) - set(DISTILL_TRAIN)
    if unknown:
        raise ValueError(f"unknown distillation settings {sorted(unknown)}; valid: {sorted(DISTILL_TRAIN)}")
    for key in ("steps", "batch_size", "fake_steps"):
        if int(hp[key]) < 1:
            raise ValueError(f"{key} must be 1 or more, got {hp[key]}")
    teacher = teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    betas = tuple(hp["betas"])
    return DistillState(
        teacher=teacher, student=student, fake=fake, hp=hp,
        opt_student=torch.optim.Adam(student.parameters(), lr=hp["lr_student"], betas=betas),
        opt_fake=torch.optim.Adam(fake.parameters(), lr=hp["lr_fake"], betas=betas))


def _draw_batch(n: int, gen: torch.Generator, shape: tuple[int, ...], n_classes: int):
    z = torch.randn((n, *shape), generator=gen)
    labels = torch.randint(n_classes, (n,), generator=gen)
    return z, labels


def distill_step(state: DistillState, gen: torch.Generator) -> dict:
    """One student update after ``fake_steps`` fake-score updates; returns the step's losses."""
    hp, teacher, student, fake = state.hp, state.teacher, state.student, state.fake
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    table = _karras_table(hp)
    n = int(hp["batch_size"])
    fake_losses = []
    for _ in range(int(hp["fake_steps"])):
        z, labels = _draw_batch(n, gen, shape, teacher.label_dim)
        sigma = _draw_sigmas(n, gen, table, hp)
        noise = torch.randn((n, *shape), generator=gen)
        with torch.no_grad():
            images = student_sample(student, z, labels)
        loss = fake_score_loss(fake, images, labels, sigma, noise)
        state.opt_fake.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_fake.step()
        fake_losses.append(loss.item())

    z, labels = _draw_batch(n, gen, shape, teacher.label_dim)
    sigma = _draw_sigmas(n, gen, table, hp)
    noise = torch.randn((n, *shape), generator=gen)
    x = student_sample(student, z, labels)
    with torch.no_grad():
        noisy = x.detach() + sigma.reshape(-1, 1, 1, 1) * noise
        real_d = teacher(noisy, sigma, labels)
        fake.eval()
        fake_d = fake(noisy, sigma, labels)
        fake.train()
        grad = dmd_gradient(x.detach(), real_d, fake_d)
    loss = _dmd_loss(x, grad)
    state.opt_student.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_student.step()
    state.step += 1
    return {"step": state.step, "fake_loss": float(np.mean(fake_losses)), "dmd_loss": loss.item(),
            "grad_norm": float(grad.pow(2).mean().sqrt())}


def intra_class_diversity(images: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between images of the same class, averaged over classes.

    ``images``: uint8 NHWC (as generated and stored) or float arrays of any shape per image; uint8 images are
    read as grey in [0, 1] (the mean over channels), so a real digit set and a generated one compare alike.
    Classes with fewer than two images are skipped; none left is an error."""
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if images.dtype == np.uint8:
        flat = images.astype(np.float64).mean(axis=-1).reshape(len(images), -1) / 255.0
    else:
        flat = images.astype(np.float64).reshape(len(images), -1)
    per_class = []
    for cls in np.unique(labels):
        x = flat[labels == cls]
        m = len(x)
        if m < 2:
            continue
        sq = (x**2).sum(1)
        d2 = np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0, None)
        per_class.append(np.sqrt(d2)[np.triu_indices(m, 1)].mean())
    if not per_class:
        raise ValueError("no class has two or more images")
    return float(np.mean(per_class))


def evaluate_student(student: EDMPrecond, per_class: int = 20, seed: int = 1) -> dict:
    """Recognition by the real-digit classifier and intra-class diversity of ``per_class`` 1-step samples of
    each digit, drawn from the same seeds as ``demo_model.evaluate_demo``."""
    from pipeline.adapters.base import seeded_normal
    from pipeline.demo_model import digit_accuracy
    from pipeline.sampling import to_uint8

    was_training = student.training
    student.eval()
    labels = torch.arange(10).repeat_interleave(per_class)
    seeds = [seed * 1_000_003 + i for i in range(len(labels))]
    z = seeded_normal(seeds, (student.img_channels, student.img_resolution, student.img_resolution))
    with torch.no_grad():
        images = to_uint8(student_sample(student, z, labels))
    student.train(was_training)
    return {"recognition": digit_accuracy(images, labels.numpy()),
            "diversity": intra_class_diversity(images, labels.numpy())}


def train_student(
    teacher: EDMPrecond,
    *,
    seed: int = 0,
    threads: int | None = 2,
    eval_every: int = 50,
    eval_per_class: int = 20,
    on_log: Callable[[dict], None] | None = None,
    **overrides,
) -> DistillState:
    """Distil a 1-step student from ``teacher`` (not modified) with ``DISTILL_TRAIN`` (overridable).

    Deterministic for a seed and thread count: every draw comes from one seeded generator. Every
    ``eval_every`` student steps (and at the end) the student's recognition and intra-class diversity are
    measured (``evaluate_student``; 0: never) and passed, with the losses, to ``on_log``."""
    from pipeline.demo_model import seeded_training

    with seeded_training(seed, threads) as gen:
        state = init_state(teacher, **overrides)
        start = time.monotonic()
        total = int(state.hp["steps"])
        for step in range(total):
            record = distill_step(state, gen)
            record["seconds"] = time.monotonic() - start
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == total):
                record.update(evaluate_student(state.student, per_class=eval_per_class))
            state.history.append(record)
            if on_log is not None:
                on_log(record)
        state.student.eval()
        return state


def load_student(path: str | Path | None = None, device: str | torch.device = "cpu") -> EDMPrecond:
    """The shipped demo student (or the weights at ``path``), in eval mode."""
    from pipeline.demo_model import load_demo_model

    path = Path(path) if path is not None else DEMO_STUDENT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"demo student weights not found at {path}: run "
                                "`python -m pipeline train-demo-student`")
    return load_demo_model(path, device)


def log_line(record: dict, total: int) -> str:
    """One progress line of a training record."""
    line = (f"step {record['step']}/{total}  fake loss {record['fake_loss']:.4f}  "
            f"dmd |grad| {record['grad_norm']:.3f}  {record['seconds']:.0f}s")
    if "recognition" in record:
        line += f"  recognised {record['recognition']:.1%}  diversity {record['diversity']:.3f}"
    return line

