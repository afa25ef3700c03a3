"""Class-conditional EDM generators: DMD2's ImageNet-64 network and the shipped digits demo model.

Both are the same architecture (EDMPrecond + DhariwalUNet); they differ in config, weights, class names
and sampling schedule. ImageNet follows DMD2's 1-step recipe (input 80·z at sigma 80); the demo model is a
multi-step denoiser sampled on a short Karras schedule.

The teachers (`imagenet-teacher`: EDM's ImageNet-64 network, read from its pickle by pipeline/edm_pickle.py;
`demo-teacher`: the demo weights) are the same adapter with `sampler="heun"`: EDM's 2nd-order Heun sampler
(pipeline/sampling.py `heun_sample`; step i records the step's first network call). Their runs are stored
under the student's model key (`imagenet`, `demo`: the same network and layers, so one map and one
neighbour search hold both) with `kind: teacher`, the sampler and `model_family` in the run's settings, and
run ids that start with the teacher's name.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from pipeline.adapters.base import Adapter, Condition, seeded_normal, shapes_by_hooks, slerp
from pipeline.models.edm import EDMPrecond
from pipeline.sampling import HEUN_STEPS, Churn, edm_sample, heun_sample, karras_sigmas, to_uint8

SAMPLERS = ("multistep", "heun")


class EDMAdapter(Adapter):
    family = "edm"

    def __init__(self, net: EDMPrecond, config: dict, *, name: str, class_names: list[str],
                 sigmas: list[float], device: torch.device, checkpoint: str, checkpoint_sha256: str | None,
                 class_ids: list[int] | None = None, samples_per_class: int | None = None,
                 dtype: torch.dtype = torch.float32, x0_previews: bool = False, sampler: str = "multistep",
                 churn: Churn | None = None, family_name: str | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if churn is not None and churn.active and sampler != "heun":
            raise ValueError("stochastic churn (s_churn > 0) applies to the Heun sampler only")
        self.name = name
        self.sampler = sampler
        self.churn = churn or Churn()
        # the registry family that built it (demo-teacher stores under `demo`); names its runs
        self.family_name = family_name or name
        self.run_prefix = self.family_name
        self.config = dict(config)
        self.device = torch.device(device)
        self.dtype = dtype
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.root = self.net
        self.class_names = list(class_names)
        self.sigmas = [float(s) for s in sigmas]
        self.num_steps = len(self.sigmas)
        n_classes = int(config["label_dim"])
        self.class_ids = list(range(n_classes)) if class_ids is None else [int(c) for c in class_ids]
        bad = [c for c in self.class_ids if not 0 <= c < n_classes]
        if bad:
            raise ValueError(f"class ids {bad} out of range 0..{n_classes - 1}")
        self.samples_per_class = samples_per_class
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = checkpoint_sha256
        # Not part of the run's identity: previews show the samples, they do not change them.
        self.x0_previews = bool(x0_previews)
        # step -> uint8 (B, H, W, 3) denoised image D of each step of the last `sample` call, when x0_previews
        self.last_previews: dict[int, np.ndarray] | None = None

    # -- layers -------------------------------------------------------------------------------------
    def layers(self) -> dict[str, str]:
        enc, dec = list(self.net.model.enc.keys()), list(self.net.model.dec.keys())
        names = {f"enc.{k}": f"model.enc.{k}" for k in enc}
        names.update({f"dec.{k}": f"model.dec.{k}" for k in dec})
        names["encoder_bottleneck"] = f"model.enc.{enc[-1]}"
        names["midblock"] = f"model.dec.{dec[0]}"
        return names

    @functools.cache  # noqa: B019 - one adapter per model load; the shapes never change
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        res, ch, labels = self.config["img_resolution"], self.config["img_channels"], self.config["label_dim"]
        with torch.device("meta"):
            probe = EDMPrecond(**self.config)
        x = torch.empty(1, ch, res, res, device="meta")
        sigma = torch.empty(1, device="meta")
        onehot = torch.empty(1, labels, device="meta")
        return shapes_by_hooks(probe, self.layers(), lambda: probe(x, sigma, onehot))

    # -- conditions and sampling ----------------------------------------------------------------------
    def conditions(self, indices: np.ndarray, seed: int) -> list[Condition]:
        out = []
        for i in np.asarray(indices, dtype=np.int64):
            if self.samples_per_class:
                cid = self.class_ids[(int(i) // self.samples_per_class) % len(self.class_ids)]
            else:
                rng = np.random.default_rng([int(seed), int(i), 0x1AB])
                cid = self.class_ids[int(rng.integers(len(self.class_ids)))]
            name = self.class_names[cid]
            out.append(Condition(class_id=cid, class_name=name, category=name))
        return out

    def sample(self, noise_seeds, conditions, recorder) -> np.ndarray:
        return self.sample_inputs(self.edit_inputs(noise_seeds, conditions), recorder)

    # -- edits (pipeline/edit.py) ---------------------------------------------------------------------
    def condition(self, class_id: int | None = None, prompt: str | None = None) -> Condition:
        if prompt is not None or class_id is None:
            raise ValueError(f"model {self.name!r} is conditioned on a class label, not a prompt: give a label")
        n_classes = int(self.config["label_dim"])
        if not 0 <= int(class_id) < n_classes:
            raise ValueError(f"label {class_id} is out of range for model {self.name!r}: 0..{n_classes - 1}")
        name = self.class_names[int(class_id)]
        return Condition(class_id=int(class_id), class_name=name, category=name)

    def edit_inputs(self, noise_seeds, conditions) -> dict[str, torch.Tensor]:
        """z: the start noise (B, C, H, W); eps: the re-noising draw of each later step (B, S-1, C, H, W);
        labels: one-hot class rows (B, label_dim), which the network takes as they are (soft rows too)."""
        res, ch = self.config["img_resolution"], self.config["img_channels"]
        shape = (ch, res, res)
        z = seeded_normal(noise_seeds, shape)
        # multi-step: the re-noising of steps 1..S-1; Heun: the churn noise of steps 0..S-1 (none when
        # deterministic). Both are streams i + 1 of each sample's seed.
        draws = self.num_steps - 1 if self.sampler == "multistep" else self.num_steps if self.churn.active else 0
        eps = torch.stack([seeded_normal(noise_seeds, shape, stream=i + 1) for i in range(draws)],
                          dim=1) if draws > 0 else torch.zeros((len(noise_seeds), 0, *shape))
        labels = torch.zeros(len(conditions), int(self.config["label_dim"]))
        labels[torch.arange(len(conditions)), torch.tensor([c.class_id for c in conditions])] = 1.0
        return {"z": z, "eps": eps, "labels": labels}

    def mix_inputs(self, a: dict, b: dict, t: float) -> dict:
        t = float(t)
        if t == 0.0:
            return a
        if t == 1.0:
            return b
        return {"z": slerp(a["z"], b["z"], t),
                "eps": slerp(a["eps"], b["eps"], t) if a["eps"].shape[1] else a["eps"],
                "labels": (1.0 - t) * a["labels"] + t * b["labels"]}

    def sample_inputs(self, inputs: dict, recorder) -> np.ndarray:
        self.last_previews = None
        previews: dict[int, np.ndarray] = {}

        def keep_preview(step: int, _sigma: float, denoised: torch.Tensor) -> None:
            previews[step] = to_uint8(denoised)

        z = inputs["z"].to(self.device)
        labels = inputs["labels"].to(self.device)
        eps = [inputs["eps"][:, i] for i in range(inputs["eps"].shape[1])]
        def on_step(i: int, sigma: float):
            return recorder.step(i, sigma=sigma)

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.sampler == "heun":
                denoised = heun_sample(self.net, z, labels, self.sigmas, churn=self.churn,
                                       churn_noise=eps if self.churn.active else None, on_step=on_step,
                                       on_denoised=keep_preview if self.x0_previews else None)
            else:
                denoised = edm_sample(self.net, z, labels, self.sigmas, renoise=eps, on_step=on_step,
                                      on_denoised=keep_preview if self.x0_previews else None)
        images = to_uint8(denoised)
        if self.x0_previews:
            self.last_previews = previews
        return images

    def identity(self) -> dict:
        settings = {"config": self.config, "sigmas": self.sigmas, "class_ids": self.class_ids
                    if len(self.class_ids) < int(self.config["label_dim"]) else "all",
                    "samples_per_class": self.samples_per_class, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.sampler == "heun":  # only then: the students' run ids stay what they were
            settings.update(kind="teacher", sampler="heun", churn=self.churn.settings(),
                            model_family=self.family_name)
        return {"checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256, "base_model": None,
                "settings": settings}


SHIPPED_DEMO = "shipped demo weights"  # the checkpoint a demo run's manifest names when it used the shipped file
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_imagenet(checkpoint: str, device: torch.device, *, steps: int = 1, dtype=torch.float32,
                  class_ids=None, samples_per_class=None, x0_previews: bool = False) -> EDMAdapter:
    """DMD2's ImageNet-64 generator from a local file/folder or `hf://tianweiy/DMD2/model/imagenet/<run>`."""
    from pipeline.checkpoints import load_into, load_state_dict_file, resolve_checkpoint, sha256_of
    from pipeline.imagenet_classes import class_name
    from pipeline.models.edm import imagenet_config

    config = imagenet_config()
    path = resolve_checkpoint(checkpoint)
    with torch.device("meta"):  # no 1.2 GB of random init only to be overwritten
        net = EDMPrecond(**config)
    load_into(net, load_state_dict_file(path))
    return EDMAdapter(net, config, name="imagenet", class_names=[class_name(i) for i in range(1000)],
                      sigmas=karras_sigmas(steps), device=device, checkpoint=checkpoint,
                      checkpoint_sha256=sha256_of(path), class_ids=class_ids,
                      samples_per_class=samples_per_class, dtype=dtype, x0_previews=x0_previews)


def load_imagenet_teacher(checkpoint: str, device: torch.device, *, steps: int = HEUN_STEPS,
                          dtype=torch.float32, class_ids=None, samples_per_class=None, x0_previews: bool = False,
                          churn: Churn | None = None) -> EDMAdapter:
    """EDM's ImageNet-64 network (``edm-imagenet-64x64-cond-adm.pkl``, the teacher DMD2 distilled from), its
    ``ema`` weights read without running the pickle's code, sampled with EDM's Heun sampler."""
    from pathlib import Path

    from pipeline.checkpoints import resolve_checkpoint, sha256_of
    from pipeline.edm_pickle import load_edm_network
    from pipeline.imagenet_classes import class_name

    folder = Path(str(checkpoint)).expanduser()
    pickles = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    if len(pickles) > 1:
        raise ValueError(f"{folder} holds several pickles ({', '.join(p.name for p in pickles)}): give one file")
    path = pickles[0] if pickles else resolve_checkpoint(checkpoint)
    net, config = load_edm_network(path)
    n = int(config["label_dim"])
    names = [class_name(i) for i in range(n)] if n == 1000 else [f"class {i}" for i in range(n)]
    return EDMAdapter(net, config, name="imagenet", class_names=names, sigmas=karras_sigmas(steps),
                      device=device, checkpoint=checkpoint, checkpoint_sha256=sha256_of(path), class_ids=class_ids,
                      samples_per_class=samples_per_class, dtype=dtype, x0_previews=x0_previews, sampler="heun",
                      churn=churn, family_name="imagenet-teacher")


def load_demo(device: torch.device, *, checkpoint: str | None = None, steps: int | None = None,
              class_ids=None, samples_per_class=None, x0_previews: bool = False, sampler: str = "multistep",
              churn: Churn | None = None, family_name: str | None = None) -> EDMAdapter:
    """The digits model the project trains and ships (pipeline/data/demo_edm.safetensors)."""
    from pipeline import demo_model
    from pipeline.checkpoints import load_into, load_state_dict_file, resolve_checkpoint, sha256_of

    path = resolve_checkpoint(checkpoint) if checkpoint else demo_model.DEMO_WEIGHTS
    with torch.device("meta"):
        net = EDMPrecond(**demo_model.DEMO_CONFIG)
    load_into(net, load_state_dict_file(path))
    sigmas = demo_model.DEMO_SIGMAS if steps is None else karras_sigmas(steps)
    return EDMAdapter(net, demo_model.DEMO_CONFIG, name="demo", class_names=list(DIGIT_NAMES),
                      sigmas=sigmas, device=device, checkpoint=str(checkpoint or SHIPPED_DEMO),
                      checkpoint_sha256=sha256_of(path), class_ids=class_ids,
                      samples_per_class=samples_per_class, x0_previews=x0_previews, sampler=sampler, churn=churn,
                      family_name=family_name)


# -- the registry's entry points (pipeline/families.py) ------------------------------------------------
def demo_loader(model: str = "demo", *, checkpoint: str | None = None, device: torch.device | None = None,
                steps: int | None = None, class_ids=None, samples_per_class=None, x0_previews: bool = False,
                **_other) -> EDMAdapter:
    """Loader of `demo`: the shipped weights unless `checkpoint`; runs in float32 whatever `dtype` says."""
    return load_demo(device or torch.device("cpu"), checkpoint=checkpoint, steps=steps, class_ids=class_ids,
                     samples_per_class=samples_per_class, x0_previews=x0_previews)


def imagenet_loader(model: str = "imagenet", *, checkpoint: str | None = None,
                    device: torch.device | None = None, steps: int = 1, dtype: torch.dtype = torch.float32,
                    class_ids=None, samples_per_class=None, x0_previews: bool = False, **_other) -> EDMAdapter:
    """Loader of `imagenet`: DMD2 ships no default run, so a checkpoint is required."""
    if not checkpoint:
        raise ValueError("--model imagenet needs --checkpoint (a local file or folder, or "
                         "hf://tianweiy/DMD2/model/imagenet/<run folder>)")
    return load_imagenet(checkpoint, device or torch.device("cpu"), steps=steps, dtype=dtype,
                         class_ids=class_ids, samples_per_class=samples_per_class, x0_previews=x0_previews)


def demo_teacher_loader(model: str = "demo-teacher", *, checkpoint: str | None = None,
                        device: torch.device | None = None, steps: int | None = None, class_ids=None,
                        samples_per_class=None, x0_previews: bool = False, churn: Churn | None = None,
                        **_other) -> EDMAdapter:
    """Loader of `demo-teacher`: the demo weights (shipped unless `checkpoint`) sampled with EDM's Heun sampler,
    18 steps unless `steps`; stored under `demo`, beside the students' runs."""
    return load_demo(device or torch.device("cpu"), checkpoint=checkpoint, steps=steps or HEUN_STEPS,
                     class_ids=class_ids, samples_per_class=samples_per_class, x0_previews=x0_previews,
                     sampler="heun", churn=churn, family_name=model)


SHIPPED_DEMO_STUDENT = "shipped demo student weights"  # a demo-student run's checkpoint when it used the shipped file


class DemoStudentAdapter(EDMAdapter):
    """The DMD2-distilled demo student (pipeline/distill.py): one call at sigma = 80, stored under `demo` with
    `kind: student` and `model_family` in its run settings, beside the teacher's and the naive 1-step's runs."""

    def identity(self) -> dict:
        ident = super().identity()
        ident["settings"].update(kind="student", model_family=self.family_name)
        return ident


def demo_student_loader(model: str = "demo-student", *, checkpoint: str | None = None,
                        device: torch.device | None = None, steps: int | None = None, class_ids=None,
                        samples_per_class=None, x0_previews: bool = False, **_other) -> EDMAdapter:
    """Loader of `demo-student`: the distilled 1-step student (pipeline/data/demo_student.safetensors unless
    `checkpoint`), sampled as DMD2 samples its generator: one call at sigma = 80; stored under `demo`."""
    from pipeline import demo_model, distill
    from pipeline.checkpoints import load_into, load_state_dict_file, resolve_checkpoint, sha256_of

    if steps not in (None, 1):
        raise ValueError(f"demo-student is a 1-step generator; it takes no --steps (got {steps})")
    shipped = checkpoint in (None, "", SHIPPED_DEMO_STUDENT)
    path = distill.DEMO_STUDENT_WEIGHTS if shipped else resolve_checkpoint(checkpoint)
    if shipped and not path.is_file():
        raise FileNotFoundError(f"demo student weights not found at {path}: run "
                                "`python -m pipeline train-demo-student`")
    with torch.device("meta"):
        net = EDMPrecond(**demo_model.DEMO_CONFIG)
    load_into(net, load_state_dict_file(path))
    return DemoStudentAdapter(net, demo_model.DEMO_CONFIG, name="demo", class_names=list(DIGIT_NAMES),
                              sigmas=[distill.STUDENT_SIGMA], device=device or torch.device("cpu"),
                              checkpoint=SHIPPED_DEMO_STUDENT if shipped else str(checkpoint),
                              checkpoint_sha256=sha256_of(path), class_ids=class_ids,
                              samples_per_class=samples_per_class, x0_previews=x0_previews, family_name=model)


def imagenet_teacher_loader(model: str = "imagenet-teacher", *, checkpoint: str | None = None,
                            device: torch.device | None = None, steps: int | None = None,
                            dtype: torch.dtype = torch.float32, class_ids=None, samples_per_class=None,
                            x0_previews: bool = False, churn: Churn | None = None, **_other) -> EDMAdapter:
    """Loader of `imagenet-teacher`: EDM's network pickle is required (NVIDIA publishes it; nothing is shipped)."""
    if not checkpoint:
        raise ValueError("--model imagenet-teacher needs --checkpoint: EDM's network pickle "
                         "(edm-imagenet-64x64-cond-adm.pkl, a local file or hf://<owner>/<repo>/<path>)")
    return load_imagenet_teacher(checkpoint, device or torch.device("cpu"), steps=steps or HEUN_STEPS,
                                 dtype=dtype or torch.float32, class_ids=class_ids,
                                 samples_per_class=samples_per_class, x0_previews=x0_previews, churn=churn)


def layer_info(model: str, resolution: int | None = None) -> tuple[dict[str, str], dict[str, tuple]]:
    """Layer registry of the EDM families: layers and their (C, H, W) on the meta device. The networks have
    one image size, so `resolution` is ignored."""
    adapter = skeleton(model)
    return adapter.layers(), adapter.layer_shapes()


def skeleton(model: str) -> EDMAdapter:
    """An adapter on the meta device (no weights, no memory), for listing layers and shapes."""
    from pipeline.models.edm import imagenet_config

    if model in ("imagenet", "imagenet-teacher"):
        config, names = imagenet_config(), [f"class {i}" for i in range(1000)]
    else:
        from pipeline.demo_model import DEMO_CONFIG

        config, names = DEMO_CONFIG, list(DIGIT_NAMES)
    with torch.device("meta"):
        net = EDMPrecond(**config)
    return EDMAdapter(net, config, name=model, class_names=names, sigmas=[80.0], device=torch.device("meta"),
                      checkpoint="(none)", checkpoint_sha256=None)
