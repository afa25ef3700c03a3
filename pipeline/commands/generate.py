"""Generate samples with a model, recording layer activations into a store (resumable).

Rerun the same command with a larger --num-samples, or after an interruption, and only the missing
samples are generated. Under `torchrun --nproc_per_node=K -m pipeline generate ...` the batches are
sharded over the ranks, each writing its own parts.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pipeline import families
from pipeline.adapters import MODELS, build_adapter
from pipeline.commands.argtypes import in_range, non_negative_int, non_negative_int_list, positive_int

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_layers_help() -> str:
    """The families' default --layers, for the help text: one list if they all share it."""
    groups: dict[str, list[str]] = {}
    for f in families.FAMILIES.values():
        groups.setdefault(",".join(f.default_layers) or "none, --layers is required", []).append(f.name)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(names)}: {layers}" for layers, names in groups.items())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def fixed_steps_error(model: str) -> str:
    """Why --steps is refused for `model`, with what every fixed-step family runs."""
    runs: dict[int, list[str]] = {}
    for f in families.FAMILIES.values():
        if f.recipe.fixed_steps:
            runs.setdefault(f.recipe.steps, []).append(f.name)
    each = ", ".join(f"{_and(names)} run{'s' if len(names) == 1 else ''} {steps}"
                     for steps, names in sorted(runs.items()))
    return f"--steps does not apply to {model}: its timesteps are fixed ({each})"


def _guidance_defaults() -> str:
    return ", ".join(f"{f.name} {f.recipe.guidance:g}" for f in families.FAMILIES.values()
                     if f.recipe.guidance is not None) or "none takes it yet"


def _heun_families() -> str:
    return ", ".join(f.name for f in families.FAMILIES.values() if getattr(f.recipe, "heun", False)) or "none"


CHURN_FLAGS = {"s_churn": "--s-churn", "s_min": "--s-min", "s_max": "--s-max", "s_noise": "--s-noise"}


def _churn(args: argparse.Namespace, family) -> dict:
    """`churn=Churn(...)` for a Heun family when a churn flag is given; a churn flag elsewhere is refused."""
    given = {k: getattr(args, k, None) for k in CHURN_FLAGS if getattr(args, k, None) is not None}
    if not given:
        return {}
    if not getattr(family.recipe, "heun", False):
        flags = ", ".join(CHURN_FLAGS[k] for k in given)
        raise ValueError(f"{flags} {'applies' if len(given) == 1 else 'apply'} to the models sampled with EDM's "
                         f"Heun sampler ({_heun_families()}), not to {family.name}")
    from pipeline.sampling import Churn

    return {"churn": Churn(**given)}


def _store_as(args: argparse.Namespace, family) -> dict:
    """`store_as=` for a teacher given `--store-as` one of its students; refused for other models and students."""
    wanted = getattr(args, "store_as", None)
    if wanted is None:
        return {}
    if not family.teacher:
        teachers = ", ".join(f.name for f in families.FAMILIES.values() if f.teacher)
        raise ValueError(f"--store-as applies to the teachers ({teachers}), not to {family.name}: its runs are "
                         "stored under its own model key")
    keys = family.student_keys()
    if wanted not in keys:
        raise ValueError(f"--store-as {wanted}: {family.name} can be stored beside {', '.join(keys)} (the same "
                         "network and layers), not beside another model")
    return {"store_as": wanted}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=MODELS, help=families.model_help())
    p.add_argument("--checkpoint", help="local file or folder, or hf://owner/repo/path (demo: shipped weights)")
    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--num-samples", type=positive_int,
                   help="total samples in the run (default: samples-per-class x classes)")
    p.add_argument("--layers",
                   help="comma-separated layer names (python -m pipeline layers --model M lists them; "
                        f"default: {default_layers_help()})")
    p.add_argument("--reduce", default="auto", choices=("auto", "mean", "pool4", "full"),
                   help="what to store per layer: channel means, a 4x4 pooled map, the full map, or auto "
                        "(full up to 65,536 values, else pool4)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--steps", type=positive_int, help="sampling steps where the model supports several")
    p.add_argument("--samples-per-class", type=positive_int, help="balanced labels instead of random ones")
    p.add_argument("--class-ids", type=non_negative_int_list, help="restrict labels to these classes, e.g. 1,207,281")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), or e.g. cuda:1, cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="network precision (default per model)")
    p.add_argument("--guidance", type=in_range(float, 0.0, 100.0),
                   help="classifier-free guidance scale, for models sampled with guidance (the teachers; "
                        "default per model: " + _guidance_defaults() + ")")
    p.add_argument("--store-as", metavar="STUDENT",
                   help="teachers only: the student model key the runs are stored under, beside that student's "
                        "runs on one map (default: the teacher's own student; e.g. --model sdxl-teacher "
                        "--store-as sdxl-4step)")
    p.add_argument("--run-name", help="run id (default: derived from model, checkpoint, seed and settings)")
    p.add_argument("--checkpoint-step", type=non_negative_int,
                   help="the checkpoint's training step, recorded in the run's manifest so that runs of several "
                        "checkpoints are ordered by it (default: read from the checkpoint: a 'step' in a "
                        "safetensors file's metadata, or a name like ...step00500... or ...checkpoint_model_548000)")
    heun = p.add_argument_group("EDM teachers (Heun sampler: " + _heun_families() + ")")
    heun.add_argument("--s-churn", type=in_range(float, 0.0, 1e6), default=None,
                      help="EDM's stochastic churn: noise added per step, gamma = min(S_churn/steps, sqrt(2)-1) "
                           "(default 0: the deterministic sampler)")
    heun.add_argument("--s-min", type=in_range(float, 0.0, 1e6), default=None,
                      help="churn only at sigmas >= S_min (default 0)")
    heun.add_argument("--s-max", type=in_range(float, 0.0, 1e9), default=None,
                      help="churn only at sigmas <= S_max (default: no limit)")
    heun.add_argument("--s-noise", type=in_range(float, 0.0, 1e6), default=None,
                      help="scale of the churn noise (default 1)")
    t2i = p.add_argument_group("text-to-image models")
    t2i.add_argument("--base-model", help="hub id or local diffusers folder of the base components")
    t2i.add_argument("--prompt-file", help="txt (one per line), csv, jsonl or parquet with a prompt column")
    t2i.add_argument("--seeds-per-prompt", type=positive_int, default=1)
    t2i.add_argument("--resolution", type=positive_int, help="image size in pixels (default: the model's)")
    p.add_argument("--record-steps", default="all", metavar="all|last|K,...",
                   help="the sampling steps whose activations are stored: all (default), last, or step numbers "
                        "such as 0,3 (negative ones count back from the last: -1 is the last); the others leave "
                        "no trace (a long sampler, such as an 18-step teacher, can keep only the step a map needs)")
    p.add_argument("--x0-previews", action="store_true",
                   help="also store each sampling step's x0 (denoised) preview image beside the final one")
    p.add_argument("--fsync", action="store_true",
                   help="fsync every file so finished batches survive a power cut (writes are atomic either way)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _prepare(args: argparse.Namespace):
    """(adapter, number of samples, layers) of the command, or ValueError / OSError / CheckpointMismatch."""
    from pipeline.generate import check_store_folder, pick_device

    check_store_folder(args.store)  # before minutes of model loading
    device = pick_device(args.device)
    family = families.get_family(args.model)
    if args.steps is not None and family.recipe.fixed_steps:
        raise ValueError(fixed_steps_error(args.model))
    t2i = {}
    guidance = getattr(args, "guidance", None)
    if family.recipe.guidance is not None:
        t2i["guidance"] = family.recipe.guidance if guidance is None else guidance
    elif guidance is not None:
        raise ValueError(f"--guidance does not apply to {args.model}: it samples without classifier-free "
                         f"guidance (models that take it: {_guidance_defaults()})")
    t2i.update(_churn(args, family))
    t2i.update(_store_as(args, family))
    if family.conditioning == "prompt":
        from pipeline.prompts import PromptSet

        t2i.update(base_model=args.base_model, prompts=PromptSet.load(args.prompt_file),
                   seeds_per_prompt=args.seeds_per_prompt, resolution=args.resolution)
    adapter = build_adapter(args.model, checkpoint=args.checkpoint, device=device, steps=args.steps,
                            dtype=DTYPES.get(args.dtype), class_ids=args.class_ids,
                            samples_per_class=args.samples_per_class, x0_previews=args.x0_previews, **t2i)
    num = args.num_samples
    if num is None:
        if not args.samples_per_class:
            raise ValueError("give --num-samples, or --samples-per-class")
        num = args.samples_per_class * len(getattr(adapter, "class_ids", []) or [0])
    if args.layers is None and not family.default_layers:
        raise ValueError(f"give --layers: {args.model} has no default layers "
                         f"(python -m pipeline layers --model {args.model} lists them)")
    chosen = ",".join(family.default_layers) if args.layers is None else args.layers
    return adapter, num, [x for x in chosen.replace(" ", "").split(",") if x]


def run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from pipeline.checkpoints import CheckpointMismatch
    from pipeline.commands.errors import first_line, store_write_error
    from pipeline.generate import generate
    from store import ManifestMismatch

    known = (ValueError, FileNotFoundError, CheckpointMismatch, ManifestMismatch)
    try:
        adapter, num, layers = _prepare(args)
    except CheckpointMismatch as exc:
        where = "" if exc.source or not args.checkpoint else f" ({args.checkpoint})"
        print(f"error: {exc}".replace("\n", where + "\n", 1), file=sys.stderr)
        return 2
    except known as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SafetensorError as exc:  # a LoRA or component file that is not safetensors
        print(f"error: cannot read a safetensors file: {first_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # reading the checkpoint, prompts or base model
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    try:
        result = generate(adapter, args.store, num, layers, seed=args.seed, batch_size=args.batch_size,
                          reduce=args.reduce, run_id=args.run_name, progress=not args.quiet, fsync=args.fsync,
                          checkpoint_step=getattr(args, "checkpoint_step", None),
                          record_steps=getattr(args, "record_steps", None))
    except known as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only store: a started run is left `interrupted`
        print(f"error: {store_write_error(exc, args.store)}", file=sys.stderr)
        return 2
    print(f"run {result.run_id}: generated {result.generated} samples in {result.seconds:.1f}s "
          f"({result.samples_per_second:.1f} samples/s); {result.total_done} in the store")
    return 0
