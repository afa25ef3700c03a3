"""Analysis speed (`pipeline/analysis.py`) through the real store, on synthetic clustered data.

Data: ``bench_project``'s store: 20 Gaussian clusters in 64 dimensions, one class per cluster, stored as a
layer's channel means (float16), analysed with feature ``mean``, k=10, euclidean. It prints the machine's
load, then for each analysis the first time (reading features included), from this process's memory, and
from the store's cache in a fresh state:

  class separation   kNN graph, purity, confusion, most-mixed pairs, silhouette (2,000 sampled rows)
  outliers           k-distance and LOF from the same kNN graph (the first time reuses separation's graph)
  clusters hdbscan   HDBSCAN (on 10 principal components), names, medoids, spread
  clusters kmeans    k-means, k = 20

then the comparison on the same matrix in the same run (median of ``--repeat``): ours = one exact kNN
graph + purity + confusion + silhouette + k-distance + LOF (the pure functions, no store); scikit-learn =
``NearestNeighbors(k).kneighbors()`` + purity from its indices + ``LocalOutlierFactor(k).fit``. The last line
is ``analysis_ratio=<scikit-learn seconds / ours>`` (target >= 1).

Run: ``.venv/bin/python benchmarks/bench_analysis.py [--n 20000] [--k 10] [--repeat 3] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_project import CLUSTERS, write_samples  # noqa: E402


def seconds(fn) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def ours(X: np.ndarray, labels: np.ndarray, k: int) -> None:
    from pipeline import analysis as A

    idx, dist = A.knn_graph(X, k)
    A.separation_tables(X, labels, idx)
    A.outlier_scores(idx, dist)


def sklearn_pipeline(X: np.ndarray, labels: np.ndarray, k: int) -> None:
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    (labels[idx] == labels[:, None]).mean(axis=1)
    LocalOutlierFactor(n_neighbors=k).fit(X)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="samples (default 20,000)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to build the store (default: a temporary folder)")
    args = ap.parse_args()

    from pipeline import analysis as A
    from pipeline.features import FEATURE_CACHE, load_features
    from store import Store

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "store"
        _, t = seconds(lambda: write_samples(root, 0, args.n, args.n))
        print(f"store: {args.n:,} samples of {CLUSTERS} classes written in {t:.1f} s")
        store = Store(root)
        common = dict(feature="mean", k=args.k)
        runs = [
            ("class separation", lambda: A.class_separation(store, "synth", "mid", **common)),
            ("outliers", lambda: A.outliers(store, "synth", "mid", **common)),
            ("clusters hdbscan", lambda: A.clusters(store, "synth", "mid", feature="mean")),
            ("clusters kmeans", lambda: A.clusters(store, "synth", "mid", feature="mean", method="kmeans",
                                                   n_clusters=CLUSTERS)),
        ]
        first = {name: seconds(fn)[1] for name, fn in runs}
        memory = {name: seconds(fn)[1] for name, fn in runs}
        A.clear_cache()
        FEATURE_CACHE.clear()
        from_store = {name: seconds(fn)[1] for name, fn in runs}
        print(f"{'analysis':<18} {'first':>8} {'memory':>8} {'store':>8}")
        for name, _ in runs:
            print(f"{name:<18} {first[name]:>7.2f}s {memory[name]:>7.3f}s {from_store[name]:>7.3f}s")

        feats = load_features(store, "synth", "mid", 0, "mean")
        X = feats.X
        labels = store.samples(model="synth", columns=["sample_id", "label"]).set_index("sample_id") \
            .reindex(feats.sample_ids)["label"].to_numpy()
        mine, theirs = [], []
        for _ in range(max(1, args.repeat)):  # alternate, so that load changes hit both sides alike
            mine.append(seconds(lambda: ours(X, labels, args.k))[1])
            theirs.append(seconds(lambda: sklearn_pipeline(X, labels, args.k))[1])
        a, b = statistics.median(mine), statistics.median(theirs)
        print(f"same matrix ({X.shape[0]:,} x {X.shape[1]}), median of {len(mine)}: ours (one kNN graph: purity, "
              f"confusion, silhouette, k-distance, LOF) {a:.2f} s; scikit-learn NearestNeighbors + "
              f"LocalOutlierFactor {b:.2f} s")
    print(f"analysis_ratio={b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
