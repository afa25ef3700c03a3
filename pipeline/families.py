"""The model-family registry: what the project knows about each model, one entry per model.

A family is what `--model` names and what the store keys its data on (demo, imagenet, sd15, sdxl, sdxl-4step,
sdxl-4step-lora), except the teachers (demo-teacher, imagenet-teacher, sd15-teacher, sdxl-teacher): they store
under their student's key, the same network and layers, so that one map holds both, and name themselves in
each run's settings (`model_family`, with `kind: teacher`). Its entry declares

* `loader`: builds the adapter, `loader(name, checkpoint=, device=, steps=, dtype=, class_ids=,
  samples_per_class=, x0_previews=, **extra) -> Adapter`; a loader ignores the options that do not apply to
  its family (prompt options for class models, classes and steps for fixed-step prompt models);
* `layer_registry`: `fn(name, resolution) -> (layers, shapes)`: friendly name or alias -> module path, and
  name -> (C, H, W), computed on the meta device without a checkpoint (`resolution` in pixels, None: the
  model's own; families of one fixed size ignore it);
* `default_layers`: what `generate` records when `--layers` is omitted; `view_layers`: the names the app
  opens a model on, first stored one wins (default: `default_layers`; list a default layer's aliases here
  when a store may hold it under another name);
* `conditioning`: "class" (class labels) or "prompt" (text prompts: `generate` loads a prompt set for it);
* `recipe`: default sampling steps, whether `--steps` may change them, default dtype, a one-line
  description for `--help` and the docs, and the default classifier-free guidance of families that take
  `--guidance` (the loader then gets `guidance=`);
* `students` (teachers only): the student model keys its runs may be stored under, `generate --store-as`
  (the loader then gets `store_as=`).

`loader` and `layer_registry` are "module:function" strings, imported on first use, so importing this module
costs no torch; a callable works too (tests register tiny families that way). `generate`, `layers`,
`pipeline.adapters.build_adapter` and the app's layer defaults all read this registry: adding a family is one
adapter file (loader and layer registry) plus one `register(Family(...))` below.

Not to be confused with `Adapter.family`, the network architecture a run's manifest records (edm, sd15, sdxl).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

CONDITIONINGS = ("class", "prompt")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Recipe:
    """How a family samples by default."""

    steps: int
    """Sampling steps when `--steps` is not given (the count of a fixed schedule when `fixed_steps`)."""
    fixed_steps: bool
    """True: the model was distilled for its timesteps only, and `--steps` is refused."""
    dtype: str | None
    """Network precision when `--dtype` is not given: one of DTYPES, or None for float16 on CUDA/MPS and
    float32 on the CPU (the adapter picks by device)."""
    description: str
    """One line for `--help` and the docs."""
    guidance: float | None = None
    """Classifier-free guidance scale when `--guidance` is not given; None: the family samples without
    guidance and `generate` refuses `--guidance`."""
    heun: bool = False
    """True: sampled with EDM's 2nd-order Heun sampler (the EDM teachers), whose stochastic churn settings
    `generate --s-churn/--s-min/--s-max/--s-noise` set (the loader then gets `churn=`); refused otherwise."""


@dataclass(frozen=True)
class Family:
    """One model: see the module docstring for what each field means."""

    name: str
    loader: str | Callable
    layer_registry: str | Callable
    conditioning: str
    recipe: Recipe
    default_layers: tuple[str, ...] = ()
    view_layers: tuple[str, ...] | None = None
    students: tuple[str, ...] | str | Callable | None = None
    """Teacher families only: the student model keys its runs may be stored under (`generate --store-as`), its
    own first (the default): a tuple, or "module:function" / a callable `fn(name) -> list` of them."""

    @property
    def teacher(self) -> bool:
        return self.students is not None

    def student_keys(self) -> list[str]:
        """The model keys this teacher's runs may be stored under, the default first; [] for a non-teacher."""
        if self.students is None:
            return []
        if isinstance(self.students, tuple | list):
            return list(self.students)
        return list(_resolve(self.students)(self.name))

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "=" in self.name:
            raise ValueError(f"family name {self.name!r} must be non-empty, without '/' or '=' (it names "
                             "store folders)")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"family {self.name!r}: conditioning {self.conditioning!r} must be one of "
                             f"{', '.join(CONDITIONINGS)}")
        if self.recipe.steps < 1:
            raise ValueError(f"family {self.name!r}: recipe steps must be at least 1, got {self.recipe.steps}")
        if self.recipe.guidance is not None and not self.recipe.guidance >= 0:
            raise ValueError(f"family {self.name!r}: recipe guidance must be 0 or more, got {self.recipe.guidance}")
        if self.recipe.dtype is not None and self.recipe.dtype not in DTYPES:
            raise ValueError(f"family {self.name!r}: dtype {self.recipe.dtype!r} must be one of "
                             f"{', '.join(DTYPES)} or None")
        for ref in (self.loader, self.layer_registry):
            if not callable(ref) and (not isinstance(ref, str) or ref.count(":") != 1):
                raise ValueError(f"family {self.name!r}: {ref!r} must be a callable or 'module:function'")
        object.__setattr__(self, "default_layers", tuple(self.default_layers))
        view = self.default_layers if self.view_layers is None else tuple(self.view_layers)
        object.__setattr__(self, "view_layers", view)

    def load(self, **options):
        """Build this family's adapter: `loader(name, **options)`."""
        return _resolve(self.loader)(self.name, **options)

    def layers(self, resolution: int | None = None) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
        """(name or alias -> module path, name -> output shape) on the meta device, without a checkpoint."""
        return _resolve(self.layer_registry)(self.name, resolution)


def _resolve(ref: str | Callable) -> Callable:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


FAMILIES: dict[str, Family] = {}
"""Name -> family, in registration order (the order `--model` lists them)."""


class _Names(Sequence):
    """The registered names, read live: a family registered later is a valid `--model` choice too."""

    def __len__(self) -> int:
        return len(FAMILIES)

    def __getitem__(self, i):
        return tuple(FAMILIES)[i]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(FAMILIES))

    def __contains__(self, name) -> bool:
        return name in FAMILIES

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # changes with the registry

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __repr__(self) -> str:
        return repr(tuple(self))


MODELS: Sequence[str] = _Names()
"""Every registered family's name (`pipeline.adapters.MODELS` is this object)."""


def register(family: Family, *, replace: bool = False) -> Family:
    """Add a family (a new model, or a test's tiny one); a taken name fails unless `replace`."""
    if not isinstance(family, Family):
        raise TypeError(f"register() takes a Family, got {type(family).__name__}")
    if family.name in FAMILIES and not replace:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> Family:
    """Remove a family (tests clean up their tiny ones this way)."""
    return FAMILIES.pop(get_family(name).name)


def get_family(name: str) -> Family:
    """The family called `name`; a ValueError lists the valid names."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}") from None


def view_layers(model: str | None) -> tuple[str, ...]:
    """The layer names the app opens `model` on, best first. A model the registry does not know (a store
    written by a custom adapter) gets every family's names, merged so that each family's own order holds
    (a name new to the list goes right after the name it follows in its family)."""
    if model in FAMILIES:
        return FAMILIES[model].view_layers
    names: list[str] = []
    for family in FAMILIES.values():
        at = -1
        for name in family.view_layers:
            if name in names:
                at = names.index(name)
            else:
                at += 1
                names.insert(at, name)
    return tuple(names)


def model_help() -> str:
    """`--model` help: each family's name and description (argparse-ready: '%' is doubled)."""
    return "; ".join(f"{f.name}: {f.recipe.description}" for f in FAMILIES.values()).replace("%", "%%")


# ---------------------------------------------------------------------------------------------------
# The shipped families
# ---------------------------------------------------------------------------------------------------
_EDM = "pipeline.adapters.edm"
_T2I = "pipeline.adapters.t2i"
BOTTLENECK = ("midblock", "encoder_bottleneck")
"""The layers recorded by default: the network's middle, and the last encoder block that feeds it."""
UNET_BOTTLENECK_VIEW = ("midblock", "mid_block", "encoder_bottleneck")
"""The app's first choice on a diffusers UNet, whose mid block may be stored under its module path too."""

register(Family(
    "demo", loader=f"{_EDM}:demo_loader", layer_registry=f"{_EDM}:layer_info", conditioning="class",
    default_layers=BOTTLENECK,
    recipe=Recipe(steps=4, fixed_steps=False, dtype="float32",
                  description="the shipped 16 px digits EDM model (4-step Karras schedule; any --steps)")))
register(Family(
    "imagenet", loader=f"{_EDM}:imagenet_loader", layer_registry=f"{_EDM}:layer_info", conditioning="class",
    default_layers=BOTTLENECK,
    recipe=Recipe(steps=1, fixed_steps=False, dtype="float32",
                  description="DMD2's ImageNet 64x64 class-conditional generator (1 step; needs --checkpoint)")))
# The EDM teachers: the networks sampled with EDM's Heun sampler (18 steps, 35 calls; pipeline/sampling.py).
# Their runs are stored under the student's model key (demo, imagenet: same network, same layers, one map),
# marked kind `teacher` in the run's settings (pipeline/adapters/edm.py).
register(Family(
    "demo-teacher", loader=f"{_EDM}:demo_teacher_loader", layer_registry=f"{_EDM}:layer_info",
    conditioning="class", default_layers=BOTTLENECK, students=("demo",),
    recipe=Recipe(steps=18, fixed_steps=False, dtype="float32", heun=True,
                  description="the demo model as a teacher: EDM's Heun sampler, 18 steps (35 calls), stored "
                              "under demo (--steps, --s-churn)")))
# The DMD2-distilled demo student (pipeline/distill.py, `train-demo-student`): 1 step at sigma = 80, stored under
# demo with kind `student`, beside the teacher, the naive 1-step (demo --steps 1) and the real digits.
register(Family(
    "demo-student", loader=f"{_EDM}:demo_student_loader", layer_registry=f"{_EDM}:layer_info",
    conditioning="class", default_layers=BOTTLENECK,
    # 1 step only, refused otherwise by its loader (not fixed_steps: that message lists the T2I generators)
    recipe=Recipe(steps=1, fixed_steps=False, dtype="float32",
                  description="the demo model distilled to 1 step with DMD2's recipe (train-demo-student), "
                              "stored under demo")))
register(Family(
    "imagenet-teacher", loader=f"{_EDM}:imagenet_teacher_loader", layer_registry=f"{_EDM}:layer_info",
    conditioning="class", default_layers=BOTTLENECK, students=("imagenet",),
    recipe=Recipe(steps=18, fixed_steps=False, dtype="float32", heun=True,
                  description="EDM's ImageNet 64x64 network DMD2 distilled from (--checkpoint "
                              "edm-imagenet-64x64-cond-adm.pkl, read without running its code): Heun, 18 steps, "
                              "stored under imagenet")))
register(Family(
    "sd15", loader=f"{_T2I}:loader", layer_registry=f"{_T2I}:layer_info", conditioning="prompt",
    default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    recipe=Recipe(steps=1, fixed_steps=True, dtype=None,
                  description="SD v1.5 1-step generator (FID 8.35 run)")))
register(Family(
    "sdxl", loader=f"{_T2I}:loader", layer_registry=f"{_T2I}:layer_info", conditioning="prompt",
    default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    recipe=Recipe(steps=1, fixed_steps=True, dtype=None,
                  description="SDXL 1-step generator (conditioning timestep 399, pure-noise input)")))
register(Family(
    "sdxl-4step", loader=f"{_T2I}:loader", layer_registry=f"{_T2I}:layer_info", conditioning="prompt",
    default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    recipe=Recipe(steps=4, fixed_steps=True, dtype=None, description="SDXL 4-step generator (full UNet)")))
register(Family(
    "sdxl-4step-lora", loader=f"{_T2I}:loader", layer_registry=f"{_T2I}:layer_info", conditioning="prompt",
    default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    recipe=Recipe(steps=4, fixed_steps=True, dtype=None,
                  description="SDXL 4-step generator as a LoRA fused into the SDXL base UNet")))

# The teachers DMD2 distilled SD v1.5 and SDXL from: the base UNets (--base-model), sampled with the base
# model's own diffusers scheduler and classifier-free guidance at DMD2's real-score scales (1.75 and 8),
# recording the conditional pass at every step (pipeline/adapters/t2i_teacher.py). Their runs are stored under
# the student's model key (sd15, sdxl), marked kind `teacher`, so one map holds student and teacher.
# Why 25 steps: PNDM's PLMS (SD v1.5's scheduler) and Euler (SDXL base 1.0's) are multistep/ODE samplers
# commonly run at 20-30 steps; diffusers' pipelines default to 50, but a teacher step costs two UNet calls
# and one record per layer, so 25 halves time and store against 50 (how far the two differ for these
# models is not measured here). --steps sets any count.
_T2I_TEACHER = "pipeline.adapters.t2i_teacher"
register(Family(
    "sd15-teacher", loader=f"{_T2I_TEACHER}:loader", layer_registry=f"{_T2I_TEACHER}:layer_info",
    conditioning="prompt", default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    students=f"{_T2I_TEACHER}:students",
    recipe=Recipe(steps=25, fixed_steps=False, dtype=None, guidance=1.75,
                  description="SD v1.5 base model as DMD2's teacher: its PNDM scheduler, 25 steps (26 calls), "
                              "guidance 1.75 (--steps, --guidance); stored under sd15")))
register(Family(
    "sdxl-teacher", loader=f"{_T2I_TEACHER}:loader", layer_registry=f"{_T2I_TEACHER}:layer_info",
    conditioning="prompt", default_layers=BOTTLENECK, view_layers=UNET_BOTTLENECK_VIEW,
    students=f"{_T2I_TEACHER}:students",
    recipe=Recipe(steps=25, fixed_steps=False, dtype=None, guidance=8.0,
                  description="SDXL base 1.0 as DMD2's teacher: its Euler scheduler, 25 steps, guidance 8 "
                              "(--steps, --guidance); stored under sdxl")))
