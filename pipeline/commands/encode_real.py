"""Run real images (or a run's generated images) through a generator's network at one noise level and record its
layers as a run of kind `real` (`encoded`).

Sources (--images): `digits` (scikit-learn's digits, prepared as the demo model was trained), an ImageNet-style
folder (one folder per class, named by WordNet id or class index; images centre-cropped and resized as EDM made
ImageNet-64), captioned images (a folder with a .txt caption beside each image, or a CSV/TSV/JSONL/Parquet
table with an image-path and a caption column), or `run:<run_id>`: the final images of a run of the same store
(a generator's outputs, recorded as a run of kind `encoded`, default id `<run_id>-encoded`, each sample naming
its generated one in `source_sample_id`), so that they are compared with real images at the same noise level.
Items that cannot be used (an unreadable image, a missing caption, an unknown class folder) are reported by name
and skipped. EDM models take --sigma (x = image + sigma·n), SD/SDXL --timestep (the VAE latent noised with the scheduler's alpha-bar); the default is the last step of the
model's sampling schedule. Rerun the same command after an interruption and it resumes from the last whole batch.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pipeline import families
from pipeline.adapters import MODELS
from pipeline.commands.argtypes import non_negative_int, positive_float, positive_int

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.sources import KINDS

    p.add_argument("--model", required=True, choices=MODELS, help=families.model_help())
    p.add_argument("--images", required=True,
                   help="'digits', a folder of class folders, a folder of images with .txt captions, a caption "
                        "table (csv, tsv, jsonl, parquet), or run:RUN_ID (the final images of a run of --store)")
    p.add_argument("--source-kind", choices=KINDS, help="what --images is (default: guessed from it)")
    p.add_argument("--image-column", help="caption tables: the image path column (default: image, path, file ...)")
    p.add_argument("--caption-column", help="caption tables: the caption column (default: caption, text, prompt)")
    p.add_argument("--checkpoint", help="local file or folder, or hf://owner/repo/path (demo: shipped weights)")
    p.add_argument("--base-model", help="text-to-image models: hub id or local diffusers folder")
    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--layers",
                   help="comma-separated layer names (python -m pipeline layers --model M lists them; default: "
                        "the model's default layers)")
    p.add_argument("--reduce", default="auto", choices=("auto", "mean", "pool4", "full"),
                   help="what to store per layer (as generate)")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--sigma", type=positive_float,
                       help="EDM models: the noise level (default: the last sigma of the model's sampling schedule)")
    level.add_argument("--timestep", type=non_negative_int,
                       help="SD/SDXL: the DDPM timestep (default: the last timestep of the model's schedule)")
    p.add_argument("--step", type=non_negative_int,
                   help="the sampling step the activations are recorded as (default: the step of the model's "
                        "schedule at that noise level, so the run shares its map; else 0)")
    p.add_argument("--num-samples", type=positive_int, help="encode the first N images of the source (default: all)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds each image's noise with its index")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--run-id", help="run id (default: derived from model, source, noise level, seed and layers; a run "
                                    "source: RUN_ID-encoded, or RUN_ID-encoded-at-sigmaS away from the default level)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), or e.g. cuda:1, cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="network precision (default per model)")
    p.add_argument("--x0-previews", action="store_true",
                   help="also store the network's denoised output beside each real image")
    p.add_argument("--fsync", action="store_true", help="fsync every file (writes are atomic either way)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _prepare(args: argparse.Namespace):
    """(adapter, source, layers), or ValueError / OSError / CheckpointMismatch."""
    from pipeline.adapters import build_adapter
    from pipeline.generate import check_store_folder, pick_device
    from pipeline.real import check_source
    from pipeline.sources import open_source

    check_store_folder(args.store)
    family = families.get_family(args.model)
    if family.conditioning == "class" and (args.image_column or args.caption_column):
        raise ValueError(f"--image-column and --caption-column are for caption tables; {args.model} takes "
                         "labelled images")
    if args.layers is None and not family.default_layers:
        raise ValueError(f"give --layers: {args.model} has no default layers "
                         f"(python -m pipeline layers --model {args.model} lists them)")
    layers = [x for x in (args.layers or ",".join(family.default_layers)).replace(" ", "").split(",") if x]
    t2i = {"base_model": args.base_model} if family.conditioning == "prompt" else {}
    adapter = build_adapter(args.model, checkpoint=args.checkpoint, device=pick_device(args.device),
                            dtype=DTYPES.get(args.dtype), **t2i)
    source = open_source(args.images, kind=args.source_kind, class_names=getattr(adapter, "class_names", None),
                         image_column=args.image_column, caption_column=args.caption_column, store=args.store)
    check_source(adapter, source)
    adapter.resolve_layers(layers)  # an unknown layer fails before the listing is reported
    return adapter, source, layers


def run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from pipeline.checkpoints import CheckpointMismatch
    from pipeline.commands.errors import first_line, store_write_error
    from pipeline.real import encode_real
    from store import ManifestMismatch

    known = (ValueError, FileNotFoundError, CheckpointMismatch, ManifestMismatch)
    try:
        adapter, source, layers = _prepare(args)
    except known as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SafetensorError as exc:
        print(f"error: cannot read a safetensors file: {first_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # reading the checkpoint or the base model
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2

    def skip(name: str, why: str) -> None:
        print(f"skipped {name}: {why}", file=sys.stderr)

    try:
        result = encode_real(adapter, source, args.store, layers, sigma=args.sigma, timestep=args.timestep,
                             step=args.step, num_samples=args.num_samples, seed=args.seed,
                             batch_size=args.batch_size, reduce=args.reduce, run_id=args.run_id,
                             previews=args.x0_previews, progress=not args.quiet, on_skip=skip, fsync=args.fsync)
    except known as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only store: a started run is left `interrupted`
        print(f"error: {store_write_error(exc, args.store)}", file=sys.stderr)
        return 2
    print(summary(result, source.kind, source.where))
    return 0


def summary(result, kind: str, where: str = "") -> str:
    """The closing line: what was encoded, what was skipped and why (grouped), what the store holds."""
    what = f"images of {where}" if kind == "run" else f"real images ({kind})"
    text = (f"run {result.run_id}: encoded {result.encoded} {what} in {result.seconds:.1f}s; "
            f"{result.total_done} in the store")
    if result.skipped:
        reasons: dict[str, int] = {}
        for _name, why in result.skipped:
            key = why.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        text += f"; skipped {len(result.skipped)}: " + ", ".join(f"{n} {why}" for why, n in reasons.items())
    return text
