"""Train the demo model (the digits EDM network) and write its weights (under 15 minutes on 2 CPU cores)."""

from __future__ import annotations

import argparse

from pipeline.commands.argtypes import non_negative_int, positive_float


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="weights file (default: the shipped pipeline/data/demo_edm.safetensors)")
    p.add_argument("--minutes", type=positive_float, default=None, help="training time budget")
    p.add_argument("--seed", type=non_negative_int, default=0)


def run(args: argparse.Namespace) -> int:
    from pipeline import demo_model

    out = args.out or demo_model.DEMO_WEIGHTS
    kwargs = {"seed": args.seed}
    if args.minutes is not None:
        kwargs["minutes"] = args.minutes
    demo_model.train_demo(out, **kwargs)
    print(f"wrote {out}")
    return 0
