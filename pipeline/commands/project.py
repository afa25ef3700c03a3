"""Precompute a projection (UMAP, t-SNE or PCA) of one layer into the store's cache (prints its key, source,
time and quality).

A cached projection is returned at once; appended samples are placed into the existing map unless --refit.
Precomputing here keeps the app's first map off numba's compile time (the command itself compiles once).
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.commands.argtypes import in_range, non_negative_int, positive_int
from pipeline.features import FEATURE_KINDS


def _step(text: str) -> int | str:
    from pipeline.features import FeatureError, parse_step

    try:
        return parse_step(text)
    except FeatureError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.methods import BACKENDS, METHODS
    from pipeline.neighbors import METRICS

    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--model", required=True, help="model key in the store, e.g. demo")
    p.add_argument("--layer", required=True, help="layer name, e.g. midblock")
    p.add_argument("--step", type=_step, default=None,
                   help="sampling step (default: the last recorded; -1 = last), or 'all': every step in one map, "
                        "one point per (sample, step), ids '<sample_id>@<step>'")
    p.add_argument("--run", dest="runs", action="append", metavar="RUN", help="only this run (repeatable)")
    p.add_argument("--feature", default="auto", choices=[*FEATURE_KINDS, "pca"],
                   help="auto (by layer size), mean (channel means), full (stored map), pca (full map, PCA 50)")
    p.add_argument("--pca", type=positive_int, default=None, metavar="K", help="PCA to K dimensions first")
    p.add_argument("--standardize", action="store_true", help="z-score every feature column first")
    p.add_argument("--method", default="umap", choices=list(METHODS),
                   help="umap (default), tsne (openTSNE) or pca (the linear baseline)")
    for cls in METHODS.values():  # each method's own parameters, e.g. --n-neighbors, --min-dist, --perplexity
        for name, par in cls.PARAMS.items():
            p.add_argument("--" + name.replace("_", "-"), default=None,
                           type=in_range(type(par.default), par.low, par.high),
                           help=f"{cls.title} {name}, {par.low}-{par.high} (default {par.default}): {par.help}")
    p.add_argument("--metric", default="euclidean", choices=METRICS)
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--backend", default="umap", choices=BACKENDS, help="umap (CPU) or cuml (CUDA GPU)")
    p.add_argument("--refit", action="store_true", help="recompute from scratch (no cache, no placement)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _method_options(args: argparse.Namespace) -> dict:
    """The chosen method's parameters given on the command line; another method's are an error."""
    from pipeline.methods import METHODS
    from pipeline.project import ProjectionError

    given = {name: getattr(args, name) for cls in METHODS.values() for name in cls.PARAMS
             if getattr(args, name, None) is not None}
    own = METHODS[args.method].PARAMS
    foreign = sorted("--" + n.replace("_", "-") for n in given if n not in own)
    if foreign:
        raise ProjectionError(f"{', '.join(foreign)} does not apply to --method {args.method}; its parameters: "
                              + (", ".join("--" + n.replace("_", "-") for n in own) or "none"))
    return {n: v for n, v in given.items() if n in own}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.project import ProjectionError, ProjectionParams, default_projector
    from store import Store

    if not Path(args.store).is_dir():
        print(f"error: store folder {args.store!r} does not exist", file=sys.stderr)
        return 2
    try:
        own = _method_options(args)
        params = ProjectionParams.coerce({"feature": args.feature, "pca": args.pca,
                                          "standardize": args.standardize or None, "method": args.method, **own,
                                          "metric": args.metric, "seed": args.seed, "backend": args.backend})
    except ProjectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}", file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.set_description_str(message[:60])
            bar.update(max(0, round(fraction * 100) - bar.n))

    t0 = time.perf_counter()
    try:
        proj = default_projector().project(Store(args.store), args.model, args.layer, args.step, params,
                                           run_ids=args.runs, progress=progress, refit=args.refit)
    except ProjectionError as e:
        if bar is not None:
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    q = proj.quality or {}
    print(f"key: {proj.key}")
    print(f"source: {proj.source}  samples: {len(proj):,}  step: {proj.step}  time: {time.perf_counter() - t0:.2f} s")
    print(f"quality: trustworthiness={q.get('trustworthiness')} knn_overlap={q.get('knn_overlap')} "
          f"(k={q.get('k')}, {q.get('sample')} sampled points)")
    return 0
