"""Distribution metrics between two sets (`pipeline/distribution.py`) against a plain scikit-learn computation
of the same numbers, on synthetic clustered data.

Data: two sets of ``--n`` points (default 10,000 each) in ``--dim`` dimensions (default 768), float32: A drawn
around 20 cluster centres (one class per cluster), B around 16 of the same centres with a 2% wider spread
(B misses some of A's modes: precision, recall and coverage are neither 0 nor 1).

Both sides compute, for B against A with k = ``--k``: precision, recall, density, coverage, the Fréchet
distance and the intra-class diversity (mean pairwise distance per class, averaged over classes) of each set:

  ours          `pipeline.distribution.distribution_table(per_class=False)`: blocked matrix products
  scikit-learn  ``NearestNeighbors(k + 1).kneighbors`` for the radii within each set, ``kneighbors(n=1)`` for
                coverage, ``radius_neighbors`` (at the largest radius, then filtered per ball) for precision,
                density and recall; the FD with ``numpy.cov`` and ``scipy.linalg.sqrtm`` (FID's reference
                formula); the diversity with ``sklearn.metrics.pairwise_distances`` per class.

It prints the machine's load, each side's median time over ``--repeat`` alternating runs, the numbers of both
(they must agree: a fraction to within 2 points in 10,000, the FD and diversities to 1e-4 relative; the
script exits 1 otherwise), and last ``compare_ratio=<scikit-learn seconds / ours>`` (target >= 1).

Run: ``.venv/bin/python benchmarks/bench_compare.py [--n 10000] [--dim 768] [--k 5] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLUSTERS = 20
B_CLUSTERS = 16


def seconds(fn) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim)).astype(np.float32) * 3
    ya = rng.integers(0, CLUSTERS, n)
    yb = rng.integers(0, B_CLUSTERS, n)
    A = centres[ya] + rng.normal(size=(n, dim)).astype(np.float32)
    B = centres[yb] + rng.normal(size=(n, dim)).astype(np.float32) * 1.02
    return A, B, ya, yb


def ours(A, B, ya, yb, k: int) -> dict[str, float]:
    from pipeline.distribution import distribution_table

    row = distribution_table(A, B, ya, yb, k=k, per_class=False).iloc[0]
    return {m: float(row[m]) for m in ("precision", "recall", "density", "coverage", "fd", "diversity_a",
                                       "diversity_b")}


def sklearn_metrics(A, B, ya, yb, k: int) -> dict[str, float]:
    from scipy.linalg import sqrtm
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    nn_a = NearestNeighbors(n_neighbors=k + 1).fit(A)
    nn_b = NearestNeighbors(n_neighbors=k + 1).fit(B)
    ra = nn_a.kneighbors(A)[0][:, k]  # position 0 is the point itself
    rb = nn_b.kneighbors(B)[0][:, k]
    dist, idx = nn_a.radius_neighbors(B, radius=float(ra.max()), sort_results=False)
    inside = np.array([np.count_nonzero(d <= ra[i]) for d, i in zip(dist, idx, strict=True)])
    dist, idx = nn_b.radius_neighbors(A, radius=float(rb.max()), sort_results=False)
    recalled = np.array([bool(np.any(d <= rb[i])) for d, i in zip(dist, idx, strict=True)])
    nearest = nn_b.kneighbors(A, n_neighbors=1)[0][:, 0]

    a64, b64 = A.astype(np.float64), B.astype(np.float64)
    mu = a64.mean(axis=0) - b64.mean(axis=0)
    sa, sb = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = sqrtm(sa @ sb)
    fd = float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.trace(np.real(root)))

    def diversity(X, y):
        means = []
        for c in np.unique(y):
            d = pairwise_distances(X[y == c])
            if len(d) >= 2:
                means.append(d.sum() / (len(d) * (len(d) - 1)))
        return float(np.mean(means))

    return {"precision": float(np.mean(inside > 0)), "recall": float(np.mean(recalled)),
            "density": float(inside.sum() / (k * len(B))), "coverage": float(np.mean(nearest <= ra)),
            "fd": fd, "diversity_a": diversity(A, ya), "diversity_b": diversity(B, yb)}


def agree(mine: dict, theirs: dict, n: int, k: int) -> list[str]:
    """The metrics that differ by more than rounding (a fraction: 2 points in n; density: 2 / (k n))."""
    bad = []
    for name, a in mine.items():
        b = theirs[name]
        if name in ("precision", "recall", "coverage"):
            ok = abs(a - b) <= 2 / n + 1e-12
        elif name == "density":
            ok = abs(a - b) <= 2 / (k * n) + 1e-12
        else:
            ok = abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-12)
        if not ok:
            bad.append(f"{name}: ours {a:.6g}, scikit-learn {b:.6g}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="points per set (default 10,000)")
    ap.add_argument("--dim", type=int, default=768, help="dimensions (default 768)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    A, B, ya, yb = data(args.n, args.dim)
    print(f"data: {args.n:,} vs {args.n:,} points of {args.dim} dimensions ({CLUSTERS} clusters in A, "
          f"{B_CLUSTERS} of them in B), k={args.k}")
    ours(A[:50], B[:50], ya[:50], yb[:50], args.k)  # imports and first calls outside the timing
    mine, theirs = [], []
    for _ in range(max(1, args.repeat)):  # alternate, so that load changes hit both sides alike
        got_mine, t = seconds(lambda: ours(A, B, ya, yb, args.k))
        mine.append(t)
        got_theirs, t = seconds(lambda: sklearn_metrics(A, B, ya, yb, args.k))
        theirs.append(t)
    a, b = statistics.median(mine), statistics.median(theirs)
    print(f"{'metric':<12} {'ours':>12} {'scikit-learn':>14}")
    for name in got_mine:
        print(f"{name:<12} {got_mine[name]:>12.6g} {got_theirs[name]:>14.6g}")
    bad = agree(got_mine, got_theirs, args.n, args.k)
    print("same numbers: " + ("yes" if not bad else "NO: " + "; ".join(bad)))
    print(f"median of {len(mine)}: ours {a:.2f} s (blocked matrix products); scikit-learn {b:.2f} s "
          "(NearestNeighbors kneighbors + radius_neighbors, numpy.cov + scipy sqrtm, pairwise_distances)")
    print(f"compare_ratio={b / a:.2f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
