"""Train the demo model (the digits EDM network) and write its weights (under 15 minutes on 2 CPU cores).

Snapshots of the weights at a few training steps are kept beside them (`<name>-step00250.safetensors`, ...),
each recording its step, so that `generate --checkpoint <snapshot>` gives runs ordered by training step.
"""

from __future__ import annotations

import argparse

from pipeline.commands.argtypes import comma_list, non_negative_int, positive_float, positive_int

_snapshot_steps = comma_list(int, "training steps", lambda v: v >= 1, "snapshot steps must be 1 or more")


def _snapshots(text: str) -> list[int]:
    return [] if text.strip().lower() == "none" else _snapshot_steps(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.demo_model import DEMO_SNAPSHOTS, DEMO_TRAIN

    p.add_argument("--out", default=None, help="weights file (default: the shipped pipeline/data/demo_edm.safetensors)")
    p.add_argument("--minutes", type=positive_float, default=None, help="training time budget")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--steps", type=positive_int, default=DEMO_TRAIN["steps"],
                   help=f"training steps (default {DEMO_TRAIN['steps']})")
    p.add_argument("--snapshots", type=_snapshots, default=list(DEMO_SNAPSHOTS),
                   help="comma-separated training steps at which to keep a snapshot of the weights beside --out, "
                        f"or 'none' (default: {','.join(map(str, DEMO_SNAPSHOTS))}; the final file is the last step)")


def run(args: argparse.Namespace) -> int:
    from pipeline import demo_model

    out = args.out or demo_model.DEMO_WEIGHTS
    kwargs = {"seed": args.seed, "steps": args.steps, "snapshots": args.snapshots}
    if args.minutes is not None:
        kwargs["minutes"] = args.minutes
    demo_model.train_demo(out, **kwargs)
    print(f"wrote {out}")
    for step, path in demo_model.snapshots_of(out):
        if step in args.snapshots:
            print(f"snapshot at step {step}: {path}")
    return 0
