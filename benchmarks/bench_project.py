"""Projection speed through the real store and `Projector`, on synthetic clustered data.

Data: 20 Gaussian clusters in 64 dimensions (centres N(0, 3^2), unit noise), stored as a layer's channel
means (``reduce="mean"``, float16) in a temporary store, projected with feature ``mean``, n_neighbors 15,
min_dist 0.1, euclidean, seed 0. For 1,500, 10,000 and 50,000 points it prints:

  fresh fit           kNN graph + spectral start + layout (+ reading features, quality, writing)
  umap-learn          the peer, up to 10,000 points: umap-learn's own default ``UMAP().fit_transform`` of the
                      same matrix, and both maps' trustworthiness (k=15)
  cache hit           the same request again (in memory, and from the store in a new Projector)
  min_dist only       0.1 -> 0.5: cached kNN graph, warm start from the current map, fewer epochs
  n_neighbors change  15 -> 10: the cached kNN graph sliced, a new layout
  transform           1,000 samples appended to the store, placed into the existing map
  refit               the same data refit from scratch (what placing avoids)
  neighbours          click -> k=10 nearest, map and activation space (first click builds the index)

then neighbour latency at 100,000 points, and the ratios. At 10,000 points the same matrix is also mapped by
t-SNE and PCA (fresh fits through the same projector). The numba warm-up runs first and is timed on its own,
so no row pays compilation. The last lines: ``min_dist_speedup=`` (fresh fit / min_dist-only, the smaller of
the 10,000- and 50,000-point sizes'), ``fresh_fit_speedup_1500=`` and ``fresh_fit_speedup_10000=``
(umap-learn's default fit / ours, with the trustworthiness difference), ``place_speedup=`` (refit / placing
the 1,000 appended samples, the smaller of the 10,000- and 50,000-point sizes'), ``tsne_fit_s=`` and ``pca_fit_s=`` (seconds, 10,000 points).
The machine's load is printed first.

``--first-fit`` instead measures, in fresh processes, the first fit of 5,000 points with and without the
warm-up before it (numba compilation cost; run it twice to see the persistent cache's effect).

Run: ``.venv/bin/python benchmarks/bench_project.py [--sizes 1500 10000 50000] [--first-fit]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, CLUSTERS, APPEND = 64, 20, 1000


def clustered(n: int, start: int = 0) -> np.ndarray:
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, DIM)) * 3
    rng = np.random.default_rng(start + 1)
    labels = (np.arange(start, start + n) * 7919) % CLUSTERS
    return (centres[labels] + rng.normal(size=(n, DIM))).astype(np.float32)


def write_samples(root: Path, first: int, n: int, total: int, batch: int = 5000) -> None:
    from store import RunWriter

    manifest = dict(run_id="bench", model="synth", family="synthetic", checkpoint="none",
                    checkpoint_sha256="0" * 64, layers=["mid"], reduce={"mid": "mean"},
                    settings={"steps": 1, "batch_size": batch}, seed=0, num_samples=total,
                    code_version="bench", device="cpu")
    w = RunWriter(root, manifest)
    X = clustered(n, first)
    for s in range(0, n, batch):
        idx = list(range(first + s, first + min(n, s + batch)))
        samples = [dict(seed=i, class_id=i % CLUSTERS, class_name=f"c{i % CLUSTERS}", category="c",
                        label=f"c{i % CLUSTERS}", num_steps=1) for i in idx]
        acts = {"mid": [dict(step=0, timestep=None, sigma=1.0, reduce="mean", layer_shape=(DIM, 8, 8),
                             array=X[s:s + len(idx)])]}
        w.write_batch(idx, samples, None, acts)


def timed(fn, repeat: int = 1):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def trust(X: np.ndarray, xy: np.ndarray, k: int = 15, sample: int = 2000) -> float:
    """scikit-learn's trustworthiness (k=15) on the same random rows for every map of X."""
    from sklearn.manifold import trustworthiness

    rows = np.sort(np.random.default_rng(0).choice(len(X), min(sample, len(X)), replace=False))
    return float(trustworthiness(X[rows], xy[rows], n_neighbors=k))


def umap_learn_default(X: np.ndarray) -> tuple[np.ndarray, float]:
    """The peer: umap-learn's own default fit of the same matrix (``UMAP().fit_transform``), timed."""
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        xy = umap.UMAP().fit_transform(X)
    return xy, time.perf_counter() - t


def bench_size(n: int, other_methods: bool, peer: bool) -> dict:
    from pipeline import features as F
    from pipeline import neighbors as NB
    from pipeline.project import ProjectionParams, Projector
    from store import Store

    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-project-") as tmp:
        root = Path(tmp)
        write_samples(root, 0, n, n + APPEND)
        store = Store(root)
        params = ProjectionParams(feature="mean", n_neighbors=15, min_dist=0.1)
        F.FEATURE_CACHE.clear()
        projector = Projector()
        stages = []
        t0 = time.perf_counter()
        fit, rows["fresh fit"] = timed(lambda: projector.project(
            store, "synth", "mid", 0, params, progress=lambda f, m: stages.append((time.perf_counter() - t0, m))))
        assert fit.source == "fit", fit.source
        peer_out = None
        if peer:  # umap-learn's default fit of the very matrix our fit mapped
            X = F.load_features(store, "synth", "mid", 0, "mean").X
            peer_xy, rows["umap-learn UMAP().fit_transform"] = umap_learn_default(X)
            peer_out = {"ours_trust": trust(X, fit.xy), "peer_trust": trust(X, peer_xy)}
        _, rows["cache hit (memory)"] = timed(lambda: projector.project(store, "synth", "mid", 0, params), 5)
        hit, rows["cache hit (store)"] = timed(lambda: Projector().project(store, "synth", "mid", 0, params), 5)
        assert hit.source == "cache"
        warm, rows["min_dist only"] = timed(lambda: projector.project(
            store, "synth", "mid", 0, ProjectionParams.coerce(params, min_dist=0.5)))
        assert warm.source == "warm", warm.source
        nn, rows["n_neighbors change"] = timed(lambda: projector.project(
            store, "synth", "mid", 0, ProjectionParams.coerce(params, n_neighbors=10)))
        assert nn.source == "fit"
        if other_methods:  # the same matrix, the other methods (t-SNE reuses the cached kNN graph if it can)
            for method in ("tsne", "pca"):
                other, rows[f"{method} fresh fit"] = timed(lambda method=method: projector.project(
                    store, "synth", "mid", 0, ProjectionParams(feature="mean", method=method)))
                assert other.source == "fit", other.source
                rows[f"{method} quality"] = other.quality
        write_samples(root, n, APPEND, n + APPEND)
        placed, rows[f"transform of {APPEND:,} new"] = timed(lambda: projector.project(store, "synth", "mid", 0,
                                                                                        params))
        assert placed.source == "transform" and placed.meta["placed"] == APPEND, placed.source
        refit, rows[f"refit with the {APPEND:,} new"] = timed(lambda: projector.project(store, "synth", "mid", 0,
                                                                                         params, refit=True))
        assert refit.source == "fit"
        rng = np.random.default_rng(0)
        for space in ("map", "activation"):
            sid = placed.sample_ids[0]
            _, rows[f"neighbours {space} (first click)"] = timed(
                lambda space=space, sid=sid: NB.nearest(store, placed.features, placed.key, placed.sample_ids,
                                                        placed.xy, sid, 10, space=space))
            picks = iter(rng.choice(placed.sample_ids, 60))
            _, rows[f"neighbours {space}"] = timed(
                lambda space=space, picks=picks: NB.nearest(store, placed.features, placed.key, placed.sample_ids,
                                                            placed.xy, next(picks), 10, space=space), 50)
    print(f"\n== {n:,} points ({DIM}-D, {CLUSTERS} clusters) ==")
    qualities = {k: rows.pop(k) for k in [k for k in rows if k.endswith(" quality")]}
    for name, s in rows.items():
        print(f"  {name:34s} {s * 1000:10.1f} ms" if s < 1 else f"  {name:34s} {s:10.2f} s")
    print("  fresh fit stages: " + "; ".join(f"{t:.1f}s {m}" for t, m in stages))
    q = fit.quality
    print(f"  quality: trustworthiness {q['trustworthiness']}, knn_overlap {q['knn_overlap']} (fresh fit); "
          f"{warm.quality['trustworthiness']}, {warm.quality['knn_overlap']} (warm start)")
    for name, q in qualities.items():
        print(f"  {name}: trustworthiness {q['trustworthiness']}, knn_overlap {q['knn_overlap']}")
    fresh = rows["fresh fit"]
    if peer_out:
        print(f"  trustworthiness (k=15): ours {peer_out['ours_trust']:.4f}, umap-learn default "
              f"{peer_out['peer_trust']:.4f}")
    ratios = {
        "umap-learn default / fresh": rows["umap-learn UMAP().fit_transform"] / fresh if peer_out else None,
        "refit / transform": rows[f"refit with the {APPEND:,} new"] / rows[f"transform of {APPEND:,} new"],
        "fresh / min_dist only": fresh / rows["min_dist only"],
        "fresh / n_neighbors change": fresh / rows["n_neighbors change"],
        "fresh / transform": fresh / rows[f"transform of {APPEND:,} new"],
        "fresh / cache hit (store)": fresh / rows["cache hit (store)"],
    }
    for name, r in ratios.items():
        if r is not None:
            print(f"  {name:34s} {r:10.1f}x")
    return {"n": n, "rows": rows, "speedup": ratios["fresh / min_dist only"], "peer": peer_out,
            "fresh_speedup": ratios["umap-learn default / fresh"], "place_speedup": ratios["refit / transform"]}


def bench_neighbours_100k() -> None:
    from pipeline.neighbors import NeighborIndex

    n = 100_000
    X = clustered(n)
    xy = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    print(f"\n== neighbours at {n:,} points (k=10) ==")
    rng = np.random.default_rng(2)
    for space, data, metric in (("map", xy, "euclidean"), ("activation", X, "euclidean"),
                                ("activation", X, "cosine")):
        index, build = timed(lambda data=data, space=space, metric=metric: NeighborIndex(data, space, metric))
        picks = iter(rng.integers(0, n, 60))
        _, query = timed(lambda index=index, picks=picks: index.query(int(next(picks)), 10), 50)
        print(f"  {space:10s} {metric:9s} index build {build * 1000:8.1f} ms   query {query * 1000:7.2f} ms")


FIRST_FIT = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import numpy as np
from pipeline import project as P
if {warm}:
    t = time.perf_counter(); P.warmup(); print(f"warm-up {{time.perf_counter() - t:.1f}} s", flush=True)
X = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
params = P.ProjectionParams(feature="full", n_neighbors=15)
t = time.perf_counter()
idx, dist = P.compute_knn(X, 15)
xy = P.umap_layout(X, idx, dist, params)
print(f"first fit of 5,000 points {{time.perf_counter() - t:.1f}} s (process total {{time.perf_counter() - t0:.1f}} s)")
"""


def first_fit() -> None:
    env = dict(os.environ)
    for warm in (False, True):
        print(f"-- fresh process, {'with' if warm else 'without'} warm-up first --", flush=True)
        subprocess.run([sys.executable, "-c", FIRST_FIT.format(root=str(ROOT), warm=warm)], env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_500, 10_000, 50_000])
    ap.add_argument("--first-fit", action="store_true", help="measure numba compilation in fresh processes")
    args = ap.parse_args()
    if args.first_fit:
        first_fit()
        return
    from pipeline.project import warmup

    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")
    t = time.perf_counter()
    timings = warmup()
    print(f"warm-up {time.perf_counter() - t:.1f} s: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    methods_at = 10_000 if 10_000 in args.sizes else min(args.sizes)
    results = [bench_size(n, other_methods=n == methods_at, peer=n <= 10_000) for n in args.sizes]
    bench_neighbours_100k()
    print("\n== summary ==")
    for r in results:
        rows = r["rows"]
        print(f"  {r['n']:>7,}: fresh {rows['fresh fit']:.2f} s, min_dist-only {rows['min_dist only']:.2f} s "
              f"({r['speedup']:.1f}x), cache hit {rows['cache hit (store)'] * 1000:.1f} ms, "
              f"neighbours {rows['neighbours map'] * 1000:.1f} / {rows['neighbours activation'] * 1000:.1f} ms "
              f"(map / activation)")
    large = [r for r in results if r["n"] >= 10_000] or results  # as before: the 10,000- and 50,000-point sizes
    print(f"min_dist_speedup={min(r['speedup'] for r in large):.2f}")
    for r in results:
        if r["peer"]:
            drop = r["peer"]["peer_trust"] - r["peer"]["ours_trust"]
            print(f"fresh_fit_speedup_{r['n']}={r['fresh_speedup']:.2f}  (trustworthiness {drop:+.4f} below "
                  "umap-learn's)")
    print(f"place_speedup={min(r['place_speedup'] for r in large):.2f}")
    first = next(r for r in results if r["n"] == methods_at)
    print(f"tsne_fit_s={first['rows']['tsne fresh fit']:.2f}")  # on the same {first['n']:,}-point matrix
    print(f"pca_fit_s={first['rows']['pca fresh fit']:.2f}")


if __name__ == "__main__":
    main()
