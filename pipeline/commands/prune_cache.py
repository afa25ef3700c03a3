"""Remove stale caches from a store: maps, kNN graphs, PCA features and compare results computed from
data that has changed since (a batch appended, a run removed).

Kept: caches of the current data and the latest map of each lineage (appended samples are placed into it
without a refit); caches of the layout before `caches/` always go (see `store.derived`). `--dry-run` only
lists.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="store folder")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per cache file, with the reason")


def run(args) -> int:
    from store import Store
    from store.verify import is_store

    root = Path(args.store)
    if not is_store(root):
        print(f"error: {root} is not a store", file=sys.stderr)
        return 2
    derived = Store(root).derived
    files = derived.scan()
    stale = [f for f in files if f.stale]
    if args.verbose:
        for f in files:
            print(f"{'STALE' if f.stale else 'keep '}  {f.path.relative_to(root)}  ({f.why})")
    if not args.dry_run:
        derived.remove(stale)
    counts, sizes = Counter(f.kind for f in stale), Counter()
    for f in stale:
        sizes[f.kind] += f.bytes
    verb = "would remove" if args.dry_run else "removed"
    detail = ", ".join(f"{counts[k]} {k} ({_mb(sizes[k])})" for k in sorted(counts)) or "nothing"
    print(f"{verb} {len(stale)} of {len(files)} cache files, {_mb(sum(sizes.values()))}: {detail}")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
