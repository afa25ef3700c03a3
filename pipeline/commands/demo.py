"""Build the demo store from the shipped digits model (under a minute on a CPU; resumable)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="data", help="store folder (default: ./data)")
    p.add_argument("--samples-per-class", type=int, default=None, help="default: 150 (1,500 samples per run, 3,000 in all)")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo import DEMO_SAMPLES_PER_CLASS, build_demo_store

    runs = build_demo_store(args.store, samples_per_class=args.samples_per_class or DEMO_SAMPLES_PER_CLASS)
    print(f"demo store ready in {args.store}: runs {', '.join(runs)}")
    print(f"explore it: DMD2VIZ_STORE={args.store} streamlit run app/streamlit_app.py")
    return 0
