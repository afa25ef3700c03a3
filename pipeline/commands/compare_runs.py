"""Compare the distributions of runs of one model on a layer: precision, recall, density, coverage, Fréchet
distance and intra-class diversity, overall and (with --per-class) per class or prompt category.

The first run of --runs is the reference (A); every other run (B) is measured against it: precision is the
share of B inside A's k-NN manifold (B is realistic), recall the share of A inside B's (B covers A).
--step last (the default) compares each run at its own last recorded step (a 1-step student at 0, a 4-step
one at 3); --step K compares step K of both runs. Results are cached in the store (kind "distribution"): a
second run with the same data and parameters is read back at once.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.commands.argtypes import positive_int


def _step(text: str) -> int | str:
    value = text.strip().lower()
    if value == "last":
        return "last"
    if value.lstrip("-").isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a step number or 'last', got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.distribution import DEFAULT_K
    from pipeline.features import FEATURE_KINDS

    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--model", required=True, help="model key in the store, e.g. demo")
    p.add_argument("--layer", required=True, help="layer name, e.g. midblock")
    p.add_argument("--runs", required=True, metavar="A,B[,C...]",
                   help="run ids, comma-separated: the first is the reference, each other is compared with it")
    p.add_argument("--step", type=_step, default="last",
                   help="'last' (each run's own last step, the default) or a step number recorded by every run")
    p.add_argument("--k", type=positive_int, default=DEFAULT_K,
                   help=f"neighbours that set a sample's manifold radius (default {DEFAULT_K})")
    p.add_argument("--per-class", action="store_true", help="also one row per class (or prompt category)")
    p.add_argument("--feature", default="auto", choices=[*FEATURE_KINDS, "pca"],
                   help="auto (by layer size), mean (channel means), full (stored map), pca (full map, PCA 50)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline import distribution
    from store import Store

    if not Path(args.store).is_dir():
        print(f"error: store folder {args.store!r} does not exist", file=sys.stderr)
        return 2
    store = Store(args.store)
    t0 = time.perf_counter()
    try:
        table = distribution.compare_runs(store, args.model, args.layer, args.runs, step=args.step, k=args.k,
                                          per_class=args.per_class, feature=args.feature)
    except distribution.DistributionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.per_class:
        table = table[table["class"] == distribution.ALL]
    steps = ", ".join(f"{r} at step {s}" for r, s in dict(zip(
        [*table["run_a"], *table["run_b"]], [*table["step_a"], *table["step_b"]], strict=True)).items())
    print(f"{args.model} / {args.layer}: {steps}; k={args.k} ({time.perf_counter() - t0:.2f} s)")
    print("precision: share of B inside A's manifold; recall: share of A inside B's; density about 1 and "
          "coverage near 1 when B is distributed like A; fd: Fréchet distance; diversity: mean pairwise "
          "distance within a class")
    shown = table.drop(columns=["step_a", "step_b"]).rename(columns={"run_a": "A", "run_b": "B"})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–"))
    return 0
