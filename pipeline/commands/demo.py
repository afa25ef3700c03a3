"""Build the demo store from the shipped digits model (under a minute on a CPU; resumable): a multi-step and a
1-step run of generated digits, their first maps, and a run of real digits (scikit-learn's, through the same
network at the last step's noise level) to compare them with."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands.argtypes import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--samples-per-class", type=positive_int, default=None,
                   help="default: 150 (1,500 samples per run: two generated runs and 1,500 real digits)")


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.errors import store_write_error
    from pipeline.demo import DEMO_SAMPLES_PER_CLASS, build_demo_store
    from pipeline.generate import check_store_folder
    from store import ManifestMismatch

    try:
        check_store_folder(args.store)
        runs = build_demo_store(args.store, samples_per_class=args.samples_per_class or DEMO_SAMPLES_PER_CLASS,
                                extras=True)
    except (ValueError, FileNotFoundError, ManifestMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only store: a started run is left `interrupted`
        print(f"error: {store_write_error(exc, args.store)}", file=sys.stderr)
        return 2
    print(f"demo store ready in {args.store}: runs {', '.join(runs)}")
    print(f"explore it: DMD2VIZ_STORE={args.store} streamlit run app/streamlit_app.py")
    return 0
