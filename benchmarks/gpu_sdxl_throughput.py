"""SDXL-size UNet throughput at 1024 px: bare vs with our hooks, reductions and store writes.

The UNet is built from the shipped SDXL config (pipeline/data/unet_sdxl.json) with random weights, so no
download is needed; speed does not depend on the weights. One UNet call per batch (a 1-step generator; a
4-step run is four of these). Modes, interleaved so clock drift hits all alike:

  bare        unet(...) only
  hooks       + forward hooks on the chosen layers, reduction on the device, copy to host (Recorder.pop)
  store       + RunWriter.write_batch of those activations into a temporary store (no images: the VAE is
              not part of this measurement)
  store-full  as `store` but every chosen layer kept as a full map (what --reduce full costs)

Prints samples/s per mode, its ratio to bare, bytes written per sample, peak GPU memory and the device.

    python benchmarks/gpu_sdxl_throughput.py            # CUDA, float16, 1024 px (about a minute on an H100)
    python benchmarks/gpu_sdxl_throughput.py --tiny     # a tiny UNet on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.adapters.t2i import block_layers, shipped_unet_config, unet_layer_shapes, unet_layers  # noqa: E402
from pipeline.hooks import Recorder, resolve_reduce  # noqa: E402

MODES = ("bare", "hooks", "store", "store-full")
# A small SDXL-shaped UNet (two down blocks, text-time added conditioning) for --tiny runs.
TINY_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    cross_attention_dim=96, attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2],
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80, norm_num_groups=32,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_unet(config: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.to(dtype=dtype).eval().requires_grad_(False)


def make_inputs(config: dict, batch: int, latent: int, resolution: int, device, dtype) -> tuple:
    gen = torch.Generator(device="cpu").manual_seed(1)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    x = torch.randn(batch, 4, latent, latent, generator=gen)
    ctx = torch.randn(batch, 77, config["cross_attention_dim"], generator=gen)
    text = torch.randn(batch, pooled, generator=gen)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]]).repeat(batch, 1)
    to = {"device": device, "dtype": dtype}
    added = {"text_embeds": text.to(**to), "time_ids": time_ids.to(**to)}
    return x.to(**to), torch.tensor(999, device=device), ctx.to(**to), added


class Runner:
    """Runs one batch in a given mode; store modes append to their own run in a temporary store."""

    def __init__(self, unet, inputs, layers: dict[str, str], shapes: dict[str, tuple], reduce: str, root: Path):
        from store import RunWriter

        self.unet, self.inputs, self.layers = unet, inputs, layers
        self.batch = inputs[0].shape[0]
        self.reductions = {
            "hooks": {n: resolve_reduce(reduce, shapes[n]) for n in layers},
            "store": {n: resolve_reduce(reduce, shapes[n]) for n in layers},
            "store-full": {n: "full" for n in layers},
        }
        self.recorders = {m: Recorder(unet, layers, r) for m, r in self.reductions.items()}
        self.writers = {
            m: RunWriter(root, {"run_id": f"bench-{m}", "model": "sdxl-random", "layers": list(layers), "seed": 0,
                                "reduce": self.reductions[m], "settings": {"benchmark": True}})
            for m in ("store", "store-full")
        }
        self.next_index = {m: 0 for m in self.writers}
        self.root = root

    def forward(self):
        x, t, ctx, added = self.inputs
        return self.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

    def run(self, mode: str) -> None:
        with torch.no_grad():
            if mode == "bare":
                self.forward()
                sync(self.inputs[0].device)
                return
            rec = self.recorders[mode]
            with rec, rec.step(0, timestep=999, sigma=14.6):
                self.forward()
            acts = rec.pop()  # device -> host copy; synchronises
            if mode in self.writers:
                start = self.next_index[mode]
                indices = np.arange(start, start + self.batch)
                self.next_index[mode] += self.batch
                samples = [{"seed": int(i), "prompt": "random", "prompt_index": 0, "category": "benchmark",
                            "label": "random", "num_steps": 1} for i in indices]
                self.writers[mode].write_batch(indices, samples, None, acts)

    def bytes_per_sample(self, mode: str) -> float:
        folder = self.root / "activations" / "model=sdxl-random"
        total = sum(p.stat().st_size for p in folder.rglob(f"run_id=bench-{mode}/*.parquet"))
        return total / max(1, self.next_index[mode])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny SDXL-shaped UNet (fast, any device)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cuda, cpu")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="default: float16 on CUDA, float32 on the CPU")
    p.add_argument("--resolution", type=int, help="image side in px (default 1024; --tiny: 64)")
    p.add_argument("--batch-size", type=int, help="default 4 (--tiny: 2)")
    p.add_argument("--batches", type=int, help="timed batches per mode and repeat (default 5; --tiny: 2)")
    p.add_argument("--repeats", type=int, help="interleaved rounds over the modes (default 2; --tiny: 1)")
    p.add_argument("--layers", help="comma-separated layer names (default: every block, down0 .. mid .. upN)")
    p.add_argument("--reduce", default="auto", choices=("auto", "mean", "pool4", "full"))
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    args = p.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    config = dict(TINY_CONFIG) if args.tiny else shipped_unet_config("sdxl")
    resolution = args.resolution or (64 if args.tiny else 1024)
    latent = resolution // 8
    batch = args.batch_size or (2 if args.tiny else 4)
    args.batches = args.batches or (2 if args.tiny else 5)
    args.repeats = args.repeats or (1 if args.tiny else 2)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or "bare" not in modes:
        p.error(f"--modes must include bare and only use {', '.join(MODES)}; got {args.modes}")

    t0 = time.perf_counter()
    unet = build_unet(config, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    all_layers = unet_layers(unet)
    names = [n for n in args.layers.split(",") if n] if args.layers else block_layers(all_layers)
    unknown = [n for n in names if n not in all_layers]
    if unknown:
        p.error(f"unknown layers {unknown}; valid: {', '.join(all_layers)}")
    layers = {n: all_layers[n] for n in names}
    shapes = unet_layer_shapes(config, latent, layers)
    params = sum(q.numel() for q in unet.parameters())
    print(f"device: {device_name(device)}  torch {torch.__version__}")
    print(f"unet: {'tiny' if args.tiny else 'SDXL'} config, {params:,} params, {dtype}, random weights "
          f"(built in {build_s:.1f}s)")
    print(f"input: {resolution} px (latent {latent}x{latent}), batch {batch}, {args.batches} batches x "
          f"{args.repeats} repeats per mode")
    for n in names:
        how = resolve_reduce(args.reduce, shapes[n])
        print(f"  layer {n:<6} {all_layers[n]:<16} {'x'.join(map(str, shapes[n])):<14} reduce={how}")

    inputs = make_inputs(config, batch, latent, resolution, device, dtype)
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-") as tmp:
        runner = Runner(unet, inputs, layers, shapes, args.reduce, Path(tmp))
        with torch.no_grad():
            out = runner.forward()
        finite = bool(torch.isfinite(out).all())
        for mode in modes:  # warm-up: kernels, allocator, hook paths, first Parquet writes
            runner.run(mode)
        seconds = {m: 0.0 for m in modes}
        peak = {}
        for _ in range(args.repeats):
            for mode in modes:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                start = time.perf_counter()
                for _ in range(args.batches):
                    runner.run(mode)
                sync(device)
                seconds[mode] += time.perf_counter() - start
                if device.type == "cuda":
                    peak[mode] = max(peak.get(mode, 0), torch.cuda.max_memory_allocated(device))
        n = batch * args.batches * args.repeats
        rates = {m: n / s for m, s in seconds.items()}
        written = {m: runner.bytes_per_sample(m) for m in modes if m in runner.writers}

    if not finite:
        print("note: random weights gave non-finite outputs in this dtype; timings are still valid")
    print(f"\n{'mode':<11} {'samples/s':>10} {'ratio':>7} {'ms/batch':>9} {'stored/sample':>14} {'peak GPU mem':>13}")
    for m in modes:
        stored = f"{written[m] / 1e6:.3f} MB" if m in written else "-"
        mem = f"{peak[m] / 2**30:.2f} GiB" if m in peak else "-"
        ms = 1000 * seconds[m] / (args.batches * args.repeats)
        print(f"{m:<11} {rates[m]:>10.2f} {rates[m] / rates['bare']:>7.3f} {ms:>9.1f} {stored:>14} {mem:>13}")
    if device.type == "cuda":
        print(f"peak GPU memory overall: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    result = {"device": device_name(device), "dtype": str(dtype), "resolution": resolution, "batch": batch,
              "samples_per_s": rates, "ratio": {m: rates[m] / rates["bare"] for m in modes},
              "bytes_per_sample": written, "peak_bytes": peak, "finite": finite}
    print("result: " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
