"""Synthetic runs for the store tests: a few layers and steps, deterministic values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store import RunWriter

LAYERS = {"enc": (8, 4, 4), "mid": (16, 2, 2)}  # layer -> (C, H, W); stored 'full'
SIGMAS = [80.0, 2.5]
NUM_STEPS = len(SIGMAS)


def manifest(run_id: str = "r1", model: str = "demo", layers=tuple(LAYERS), **extra) -> dict:
    m = dict(run_id=run_id, model=model, family="edm", checkpoint="local:/tmp/ckpt.pkl",
             checkpoint_sha256="ab" * 32, layers=list(layers), reduce={"default": "full"},
             settings={"steps": len(SIGMAS), "batch_size": 4, "resolution": 8}, seed=7, num_samples=10,
             code_version="test", device="cpu")
    m.update(extra)
    return m


def activation_value(run_id: str, layer: str, step: int, index: int) -> np.ndarray:
    """The deterministic activation written for (run, layer, step, index)."""
    shape = LAYERS[layer]
    rng = np.random.default_rng([sum(map(ord, run_id)), sum(map(ord, layer)), step, index])
    return (rng.standard_normal(shape) * 3).astype(np.float32)


def image(index: int, size: int = 8) -> np.ndarray:
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[..., 0] = index % 256
    a[..., 1] = np.arange(size, dtype=np.uint8)[:, None] * 16
    return a


def batch(run_id: str, indices, layers=tuple(LAYERS), steps=NUM_STEPS, with_images=True):
    """(samples, images, activations) for `write_batch`."""
    indices = list(indices)
    samples = [dict(seed=1000 + i, class_id=i % 3, class_name=f"class{i % 3}", category=f"class{i % 3}",
                    label=f"{i % 3}: class{i % 3}", num_steps=steps) for i in indices]
    images = [image(i) for i in indices] if with_images else None
    acts = {
        layer: [dict(step=s, timestep=None, sigma=SIGMAS[s], reduce="full", layer_shape=LAYERS[layer],
                     array=np.stack([activation_value(run_id, layer, s, i) for i in indices]))
                for s in range(steps)]
        for layer in layers
    }
    return samples, images, acts


def write_run(root: Path, run_id: str = "r1", model: str = "demo", n: int = 10, batch_size: int = 4,
              finish: bool = True, **extra) -> RunWriter:
    w = RunWriter(root, manifest(run_id, model, num_samples=n, **extra))
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        w.write_batch(idx, *batch(run_id, idx))
    if finish:
        w.finish("complete")
    return w


# -- writer processes for the concurrency and crash tests ------------------------------------------------------

def _append_main(root: str, batches: int, batch_size: int, pause: float) -> None:
    """Append `batches` batches to run 'r1', sleeping `pause` s between them, then finish."""
    import time

    w = RunWriter(root, manifest("r1", num_samples=batches * batch_size))
    for k in range(batches):
        idx = list(range(k * batch_size, (k + 1) * batch_size))
        w.write_batch(idx, *batch("r1", idx))
        time.sleep(pause)
    w.finish()


def _hang_in_commit_main(root: str, batch_size: int) -> None:
    """Commit two batches, then hang while writing the third batch's samples part (the commit record),
    half of it already in its staging file: the state a SIGKILL mid-batch leaves behind."""
    import sys
    import time

    import store.writer as writer_mod
    from store.atomic import staging_path

    real = writer_mod.atomic_write_parquet
    w = RunWriter(root, manifest("r1", num_samples=3 * batch_size))
    for k in range(2):
        idx = list(range(k * batch_size, (k + 1) * batch_size))
        w.write_batch(idx, *batch("r1", idx))

    def hang(final, table, *args, **kwargs):
        if "samples" not in Path(final).parts:
            return real(final, table, *args, **kwargs)
        with open(staging_path(Path(final)), "wb") as f:
            f.write(b"PAR1" + b"\0" * 100)  # a partial Parquet file
            f.flush()
        print("HANGING", flush=True)
        sys.stdout.close()
        time.sleep(600)

    writer_mod.atomic_write_parquet = hang
    idx = list(range(2 * batch_size, 3 * batch_size))
    w.write_batch(idx, *batch("r1", idx))


if __name__ == "__main__":
    import sys

    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "append":
        _append_main(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "hang-in-commit":
        _hang_in_commit_main(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {cmd!r}; valid: append, hang-in-commit")


DEMO_RUN = "demo-multistep"


def build_demo_store(root: Path, samples_per_class: int = 3, run_id: str = DEMO_RUN) -> Path:
    """A store of the real demo model (`pipeline.adapters.edm.load_demo`, four steps, x0 previews):
    `samples_per_class` samples of each digit; 'midblock' stored full (feature maps), 'encoder_bottleneck' as
    channel means."""
    import torch

    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate

    torch.set_num_threads(1)
    adapter = load_demo(torch.device("cpu"), samples_per_class=samples_per_class, x0_previews=True)
    n = 10 * samples_per_class
    generate(adapter, root, n, ["encoder_bottleneck", "midblock"], run_id=run_id, batch_size=n, progress=False,
             reduce={"encoder_bottleneck": "mean", "midblock": "full"})
    return Path(root)
