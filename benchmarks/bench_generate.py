"""Throughput of generation with hooks and store writes, relative to bare generation.

Same model, same batches, same process: bare = the adapter's sampler alone (no hooks, nothing written);
recorded = `pipeline.generate.generate` (hooks on the chosen layers, reductions, images, thumbnails and
Parquet parts written atomically). Prints both rates and `ratio=<recorded / bare>`.

    python benchmarks/bench_generate.py                         # demo model on the CPU
    python benchmarks/bench_generate.py --full-size --device cuda   # DMD2's ImageNet network, random weights
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.adapters.base import sample_seed  # noqa: E402
from pipeline.generate import _batches, generate, pick_device  # noqa: E402
from pipeline.hooks import Recorder  # noqa: E402


def build(full_size: bool, device: torch.device):
    from pipeline.adapters.edm import EDMAdapter, load_demo
    from pipeline.models.edm import EDMPrecond, imagenet_config

    if not full_size:
        return load_demo(device), ["encoder_bottleneck", "midblock", "dec.16x16_block0"]
    config = imagenet_config()
    torch.manual_seed(0)
    net = EDMPrecond(**config)
    adapter = EDMAdapter(net, config, name="imagenet-random", class_names=[f"class {i}" for i in range(1000)],
                         sigmas=[80.0], device=device, checkpoint="random init", checkpoint_sha256="random")
    return adapter, ["encoder_bottleneck", "midblock"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(adapter, n, batch_size, seed=0):
    recorder = Recorder(adapter.root, {}, {})
    start = time.perf_counter()
    for indices in _batches(np.arange(n), batch_size):
        seeds = [sample_seed(seed, int(i)) for i in indices]
        adapter.sample(seeds, adapter.conditions(indices, seed), recorder)
    sync(adapter.device)
    return n / (time.perf_counter() - start)


def recorded(adapter, n, batch_size, layers, seed=0, where=None):
    with tempfile.TemporaryDirectory(dir=where, prefix=".bench-store-") as tmp:
        start = time.perf_counter()
        generate(adapter, tmp, n, layers, seed=seed, batch_size=batch_size, progress=False)
        sync(adapter.device)
        return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-size", action="store_true", help="DMD2's ImageNet network with random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=".", help="where the temporary store goes (default: here; file creation "
                   "costs differ a lot between folders, e.g. /tmp on a busy machine)")
    args = p.parse_args()
    device = pick_device(args.device)
    adapter, layers = build(args.full_size, device)
    n = args.num_samples or (256 if args.full_size else 1000)
    bs = args.batch_size or (64 if args.full_size else 100)
    bare(adapter, bs, bs)  # warm-up: kernels, allocator, thread pools, layer shapes
    recorded(adapter, bs, bs, layers, where=args.dir)
    rates_bare, rates_rec = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both sides alike
        rates_bare.append(bare(adapter, n, bs))
        rates_rec.append(recorded(adapter, n, bs, layers, where=args.dir))
    b, r = float(np.median(rates_bare)), float(np.median(rates_rec))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"model={'imagenet-64 full size, random weights' if args.full_size else 'demo'} device={name} "
          f"samples={n} batch={bs} layers={','.join(layers)} steps={adapter.num_steps}")
    print(f"bare generation:            {b:8.1f} samples/s")
    print(f"with hooks + store writes:  {r:8.1f} samples/s")
    pairs = ", ".join(f"{x / y:.3f}" for x, y in zip(rates_rec, rates_bare, strict=True))
    print(f"per repeat: {pairs}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared "
          f"machine's load moves both rates)")
    print(f"ratio={r / b:.3f}")


if __name__ == "__main__":
    main()
