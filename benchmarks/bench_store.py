"""Store write/read throughput next to plain `numpy.save`/`numpy.load` of the same data on the same disk.

Writes 20,000 activation rows of 768 float32 values through `RunWriter.write_batch` (one layer, one step,
no images; the store keeps float16 and fsyncs every file), reads the layer back with
`Store.activations` (float32), and does the same with `numpy.save`/`numpy.load` of the same float32 batches.
MB/s are megabytes of the float32 payload (rows x 768 x 4 bytes) per second, so both sides count the
same bytes. Targets: store/numpy >= 0.5 for write and for read of one layer.

    .venv/bin/python benchmarks/bench_store.py [--rows 20000] [--dim 768] [--batch 1000] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import RunWriter, Store  # noqa: E402
from store.atomic import fsync_dir  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, running them in turn so that load from other processes
    on the machine hits all of them alike."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=1000, help="rows per write_batch / per .npy file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp folder); removed afterwards")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    payload_mb = data.nbytes / 1e6
    batches = [(s, min(args.rows, s + args.batch)) for s in range(0, args.rows, args.batch)]
    samples = [dict(seed=i, label=str(i)) for i in range(args.rows)]

    base = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    counter = iter(range(10**6))
    last: dict = {}

    def store_write(durable: bool):
        root = base / f"store{next(counter)}"
        w = RunWriter(root, dict(run_id="bench", model="bench", layers=["layer"], seed=0,
                                 num_samples=args.rows, code_version="bench"), durable=durable)
        for s, e in batches:
            act = {"layer": [dict(step=0, timestep=None, sigma=1.0, reduce="mean",
                                  layer_shape=(args.dim, 1, 1), array=data[s:e])]}
            w.write_batch(range(s, e), samples[s:e], None, act)
        w.finish()
        last["store"] = root

    def numpy_write(dtype, durable: bool):
        folder = base / f"npy{next(counter)}"
        folder.mkdir()
        for s, e in batches:
            path = folder / f"part-{s:08d}.npy"
            if durable:  # the same per-file durability as the store: fsync the file and its folder
                with open(path, "wb") as f:
                    np.save(f, data[s:e].astype(dtype, copy=False))
                    f.flush()
                    os.fsync(f.fileno())
                fsync_dir(folder)
            else:
                np.save(path, data[s:e].astype(dtype, copy=False))
        last[np.dtype(dtype).name] = folder

    def store_read():
        last["matrix"] = Store(last["store"]).activations("bench", "layer", step=0).matrix  # fresh Store

    def numpy_read(name):
        return np.concatenate([np.load(p).astype(np.float32, copy=False)
                               for p in sorted(last[name].glob("*.npy"))])

    try:
        w = interleaved({
            "numpy.save float32": lambda: numpy_write(np.float32, False),
            "numpy.save float16": lambda: numpy_write(np.float16, False),
            "store, durable=False": lambda: store_write(False),
            "numpy.save float32 + fsync": lambda: numpy_write(np.float32, True),
            "store, durable=True (default)": lambda: store_write(True),
        }, args.repeats)
        r = interleaved({
            "numpy.load float32": lambda: numpy_read("float32"),
            "numpy.load float16 -> float32": lambda: numpy_read("float16"),
            "Store.activations": store_read,
        }, args.repeats)

        matrix = last["matrix"]
        assert matrix.shape == data.shape and matrix.dtype == np.float32
        err = float(np.abs(matrix - data).max() / np.abs(data).max())
        store_bytes = sum(p.stat().st_size for p in (last["store"] / "activations").rglob("*.parquet"))

        def row(name, t):
            return f"  {name:<34} {t * 1000:8.1f} ms  {payload_mb / t:8.1f} MB/s"

        load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        print(f"{args.rows} rows x {args.dim} float32 = {payload_mb:.1f} MB payload, {len(batches)} batches of "
              f"{args.batch}; median of {args.repeats} interleaved runs; disk: {base}; "
              f"{os.cpu_count()} CPUs, load average {load}")
        print(f"store keeps float16: {store_bytes / 1e6:.1f} MB of activation parts; "
              f"max relative error {err:.1e}")
        print("write (MB/s of float32 payload):")
        for k, t in w.items():
            print(row(k, t))
        print("read one layer as float32:")
        for k, t in r.items():
            print(row(k, t))
        print("ratios store/numpy (>= 0.5 is the target):")
        print(f"  write, no fsync on either side:   {w['numpy.save float32'] / w['store, durable=False']:.2f}x "
              f"(vs float16 npy {w['numpy.save float16'] / w['store, durable=False']:.2f}x)")
        print(f"  write, fsync per file both sides: "
              f"{w['numpy.save float32 + fsync'] / w['store, durable=True (default)']:.2f}x")
        print(f"  write, store durable vs plain numpy.save: "
              f"{w['numpy.save float32'] / w['store, durable=True (default)']:.2f}x")
        print(f"  read one layer:                   {r['numpy.load float32'] / r['Store.activations']:.2f}x "
              f"(vs float16 npy {r['numpy.load float16 -> float32'] / r['Store.activations']:.2f}x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
