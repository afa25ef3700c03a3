"""`python -m store verify DIR` (exit 0 clean, 1 problems, 2 not a store) and `python -m store info DIR`."""

from __future__ import annotations

import argparse
import sys
import warnings

from .verify import NotAStore, is_store, verify


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_verify(args) -> int:
    try:
        report = verify(args.dir, quick=args.quick)
    except NotAStore as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def cmd_info(args) -> int:
    import pandas as pd

    from .reader import Store

    if not is_store(args.dir):
        print(f"error: {args.dir} is not a store (no runs/, samples/ or activations/ folder)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")  # skipped files are listed below instead
    st = Store(args.dir)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    runs = st.runs()
    print(f"store {args.dir}")
    print(f"\nruns ({len(runs)}):")
    if len(runs):
        view = runs[["run_id", "model", "status", "num_done", "num_samples", "seed", "checkpoint"]].copy()
        view["layers"] = runs["layers"].map(len)
        print(view.to_string(index=False))
    for model in st.models():
        layers = st.layers(model)
        n = len(st.samples(model=model, columns=["sample_id"]))
        steps = st.steps(model)
        print(f"\nmodel {model}: {n} samples, {len(layers)} layers, steps {steps['step'].tolist()}")
    by_layer = st.storage("layer")
    if len(by_layer):
        by_layer["size"] = by_layer["bytes"].map(_human)
        print("\nactivations by layer:")
        print(by_layer.to_string(index=False))
    kinds = st.storage("kind")
    if len(kinds):
        kinds["size"] = kinds["bytes"].map(_human)
        print("\nby folder:")
        print(kinds.to_string(index=False))
    if st.skipped:
        print(f"\n{len(st.skipped)} corrupt files skipped (run `python -m store verify {args.dir}`):")
        for p in st.skipped:
            print(f"  {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every file; exit 0 clean, 1 problems found, 2 not a store")
    p.add_argument("dir")
    p.add_argument("--quick", action="store_true", help="footers only: no page checksums or cross-checks")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("info", help="runs, models, layers, steps, sizes")
    p.add_argument("dir")
    p.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
