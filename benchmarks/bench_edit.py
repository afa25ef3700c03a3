"""Time of each edit (pipeline/edit.py) for 8 results, relative to generating 8 fresh samples of the same run.

Demo model on the CPU, one process, one store: fresh = `pipeline.generate.generate` resuming the run with 8
more samples (hooks, images, previews, Parquet parts); regenerate = 8 samples with another label and seed
(`regenerate_many`: one batch, as the app asks); interpolate = 8 frames; steer = 8 alphas; patch = 8 samples
from one neighbour set (`patch_many`). Every edit runs in a new `Editor` that takes the generator from one
shared `GeneratorCache`, as the app's sessions do (loading it is not timed; recomputing the sets is). Each
repeat asks for new edits (the same edit twice would be a lookup). Prints the times and
`edit_ratio_<op>=<edit time / fresh time>` (medians).

    python benchmarks/bench_edit.py [--per-class 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.adapters.edm import load_demo  # noqa: E402
from pipeline.demo import DEMO_LAYERS  # noqa: E402
from pipeline.edit import Editor, GeneratorCache, Regeneration  # noqa: E402
from pipeline.generate import generate  # noqa: E402

RUN = "bench"
N = 8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=10, help="samples of each digit in the run edited")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", help="where to build the store (default: a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        adapter = load_demo(torch.device("cpu"), samples_per_class=args.per_class, x0_previews=True)
        size = 10 * args.per_class
        generate(adapter, root, size, list(DEMO_LAYERS), run_id=RUN, batch_size=100, progress=False)
        generators = GeneratorCache()
        editor = Editor(root, device="cpu", generators=generators)
        editor.adapter(editor.parents([f"{RUN}-00000000"])[0])  # load once: not timed

        def fresh_editor() -> Editor:
            return Editor(root, device="cpu", generators=generators)  # the generator stays loaded

        def sid(i: int) -> str:
            return f"{RUN}-{i % size:08d}"

        total = size

        def fresh(r: int) -> None:
            nonlocal total
            total += N
            done = generate(adapter, root, total, list(DEMO_LAYERS), run_id=RUN, batch_size=N, progress=False)
            assert done.generated == N, done

        ops = {
            "fresh": fresh,
            "regenerate": lambda r: fresh_editor().regenerate_many(
                [Regeneration(sid(r * N + k), label=(r + k) % 10, seed=10_000 + r) for k in range(N)]),
            "interpolate": lambda r: fresh_editor().interpolate(sid(r), sid(r + size // 2), N),
            "steer": lambda r: fresh_editor().steer(sid(r), "encoder_bottleneck", [sid(r + 1), sid(r + 2)],
                                                    [sid(r + size // 2), sid(r + size // 2 + 1)],
                                                    [r + k / N for k in range(N)]),
            "patch": lambda r: fresh_editor().patch_many([sid(r * N + k) for k in range(N)], "encoder_bottleneck",
                                                         [sid(r + 1), sid(r + 2), sid(r + 3)]),
        }
        times: dict[str, list[float]] = {op: [] for op in ops}
        for r in range(args.repeats):
            for op, fn in ops.items():  # interleaved, so the machine's load moves all of them alike
                start = time.perf_counter()
                fn(r)
                times[op].append(time.perf_counter() - start)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = statistics.median(times["fresh"])
    print(f"demo model, CPU, {N} results each, median of {args.repeats} (load average {load:.1f})")
    print(f"{'fresh':<12} {base * 1000:8.1f} ms")
    for op in ("regenerate", "interpolate", "steer", "patch"):
        print(f"{op:<12} {statistics.median(times[op]) * 1000:8.1f} ms")
    for op in ("regenerate", "interpolate", "steer", "patch"):
        print(f"edit_ratio_{op}={statistics.median(times[op]) / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
