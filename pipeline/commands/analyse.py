"""Analyse one layer in activation space: how well the classes separate (kNN purity, silhouette, the most-mixed
pairs), its clusters (HDBSCAN or k-means) and its most unusual samples (local outlier factor).

Results are cached in the store (kind "analysis"): a second run with the same data and parameters is read
back at once.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from pipeline.commands.argtypes import positive_int
from pipeline.commands.project import _step


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.analysis import CLUSTER_METHODS
    from pipeline.features import FEATURE_KINDS
    from pipeline.neighbors import METRICS

    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--model", required=True, help="model key in the store, e.g. demo")
    p.add_argument("--layer", required=True, help="layer name, e.g. midblock")
    p.add_argument("--step", type=_step, default=None, help="sampling step (default: the last recorded)")
    p.add_argument("--run", dest="runs", action="append", metavar="RUN", help="only this run (repeatable)")
    p.add_argument("--feature", default="auto", choices=[*FEATURE_KINDS, "pca"],
                   help="auto (by layer size), mean (channel means), full (stored map), pca (full map, PCA 50)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per sample (default 10)")
    p.add_argument("--metric", default="euclidean", choices=list(METRICS), help="activation-space distance")
    p.add_argument("--by", default="auto", choices=["auto", "label", "category"],
                   help="what a class is: label, category, or auto (category for prompt models)")
    p.add_argument("--clusters", default="hdbscan", choices=list(CLUSTER_METHODS), help="clustering method")
    p.add_argument("--n-clusters", type=positive_int, default=8, help="k of k-means (default 8)")
    p.add_argument("--min-cluster-size", type=positive_int, default=None,
                   help="HDBSCAN's smallest cluster (default: max(5, samples / 100))")
    p.add_argument("--top", type=positive_int, default=10, help="pairs and outliers to print (default 10)")


def _print(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(frame) else "  (none)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline import analysis
    from store import Store

    if not Path(args.store).is_dir():
        print(f"error: store folder {args.store!r} does not exist", file=sys.stderr)
        return 2
    store = Store(args.store)
    common = dict(step=args.step, feature=args.feature, run_ids=args.runs, metric=args.metric)
    t0 = time.perf_counter()
    try:
        sep = analysis.class_separation(store, args.model, args.layer, k=args.k, by=args.by, top_pairs=args.top,
                                        **common)
        clu = analysis.clusters(store, args.model, args.layer, method=args.clusters, n_clusters=args.n_clusters,
                                min_cluster_size=args.min_cluster_size, **common)
        out = analysis.outliers(store, args.model, args.layer, k=args.k, **common)
    except analysis.AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model} / {args.layer} / step {sep.step}: {sep.n_samples:,} samples, classes by {sep.by}, k={sep.k}, "
          f"{args.metric} distance ({time.perf_counter() - t0:.2f} s)")
    _print("class separation (least pure first; chance = purity of random neighbours)", sep.table)
    _print("most-mixed pairs (mixing = mean share of each class's neighbours in the other)", sep.pairs)
    table = clu.table.assign(words=[", ".join(w) for w in clu.table["words"]],
                             medoids=[" ".join(m) for m in clu.table["medoids"]])
    if not any(clu.table["words"].map(len)):  # no prompts: no words
        table = table.drop(columns="words")
    _print(f"clusters ({clu.method}; -1 = noise)", table)
    _print("most unusual samples (local outlier factor; kdist = distance to the k-th neighbour)",
           out.head(args.top))
    return 0
