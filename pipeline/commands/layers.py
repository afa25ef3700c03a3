"""List a model's hookable layers with their output shapes and stored bytes per sample.

No checkpoint is needed: the network is built on the meta device.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.commands.argtypes import positive_int
from pipeline.families import MODELS, get_family, model_help
from pipeline.hooks import bytes_per_sample, resolve_reduce


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=MODELS, help=model_help())
    p.add_argument("--resolution", type=positive_int, help="image size for text-to-image models")


def layer_table(model: str, resolution: int | None = None) -> list[dict]:
    """One row per hookable module: its first name and aliases, module path, output shape, default reduction
    and bytes per sample, from the family's layer registry (pipeline/families.py)."""
    layers, shapes = get_family(model).layers(resolution)
    names_of: dict[str, list[str]] = {}
    for name, path in layers.items():
        names_of.setdefault(path, []).append(name)
    rows = []
    for path, names in names_of.items():
        shape = tuple(shapes[names[0]])
        rows.append({"name": names[0], "aliases": names[1:], "path": path, "shape": shape,
                     "auto": resolve_reduce("auto", shape),
                     **{f"bytes_{r}": bytes_per_sample(r, shape) for r in ("mean", "pool4", "full")}})
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        rows = layer_table(args.model, args.resolution)
    except ValueError as exc:  # e.g. a resolution the model's UNet cannot take
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        r["shown"] = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
    width = max(len(r["shown"]) for r in rows)
    pwidth = max(len(r["path"]) for r in rows)
    print(f"{'layer':<{width}}  {'module path':<{pwidth}}  {'output shape':<18} {'auto':<6} "
          f"{'mean B':>8} {'pool4 B':>9} {'full B':>11}")
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        print(f"{r['shown']:<{width}}  {r['path']:<{pwidth}}  {shape:<18} {r['auto']:<6} "
              f"{r['bytes_mean']:>8,} {r['bytes_pool4']:>9,} {r['bytes_full']:>11,}")
    return 0
