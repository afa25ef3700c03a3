"""Stale caches: find and remove what no request can hit any more.

Every cache in a store (maps, kNN graphs, PCA features, compare results) is keyed by the data version of
what it was computed from, so appending a batch makes new caches and leaves the old ones behind. Each cache
records that provenance in its metadata (`provenance`); a cache is *stale* when a data version it records
is no longer the store's current one for the same (model, layer, runs). Two kinds of file are kept even
then: the latest map of a lineage, which appended samples are placed into without a refit, and caches
written before provenance was recorded (nothing says what they depend on). Pointers (`lineage/`,
`family/`) go with the map they point to.

    python -m pipeline prune-cache --store DIR [--dry-run]
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from store import layout

POINTERS = ("lineage", "family")


def provenance(versions: Mapping[str, str], run_ids: Iterable[str] | None) -> dict:
    """The metadata entry that says what a cache was computed from: the data version of each layer it
    read, and the runs it was restricted to (None: all)."""
    return {"data_versions": {str(k): str(v) for k, v in versions.items()},
            "run_ids": None if run_ids is None else sorted({str(r) for r in run_ids})}


@dataclass(frozen=True)
class CacheFile:
    path: Path
    kind: str  # projection, knn, features, lineage, family, compare, other
    model: str
    bytes: int
    stale: bool
    why: str  # what makes it stale, or why it is kept


def scan(store) -> list[CacheFile]:
    """Every cache file of the store, each marked stale or kept, with the reason."""
    root = Path(store.root)

    @functools.cache
    def current(model: str, layer: str, runs: tuple[str, ...] | None) -> str:
        return store.data_version(model, layer, None if runs is None else list(runs))

    def outdated(model: str, prov: Mapping) -> str | None:
        runs = prov.get("run_ids")
        runs = None if runs is None else tuple(runs)
        for layer, version in (prov.get("data_versions") or {}).items():
            if current(model, layer, runs) != version:
                return f"data of {layer!r} changed since (version {version})"
        return None

    entries = []  # (path, kind, model, provenance or a pointer's target key, error)
    for top in layout.ARTIFACT_TOPS:
        for path in sorted((root / top).rglob("*.parquet")):
            if layout.is_staging(path.name):
                continue
            parts = path.relative_to(root).parts
            model = next((v for part in parts if (v := layout.parse_hive(part, "model"))), "")
            kind = _kind(parts)
            try:
                info, error = (_pointer_target(path) if kind in POINTERS else _provenance_of(path, kind)), None
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is useless: it goes
                info, error = None, f"unreadable ({type(exc).__name__}: {exc})"
            entries.append((path, kind, model, info, error))

    lineage_targets = {info for _p, kind, _m, info, error in entries if kind == "lineage" and not error}
    out: list[CacheFile] = []
    for path, kind, model, info, error in entries:
        if kind in POINTERS:
            continue
        if error:
            stale, why = True, error
        elif info is None:
            stale, why = False, "no provenance (written before it was recorded): kept"
        elif (change := outdated(model, info)) is None:
            stale, why = False, "current"
        elif kind == "projection" and path.stem in lineage_targets:
            stale, why = False, f"{change}; kept as the latest map of its lineage (appended samples go into it)"
        else:
            stale, why = True, change
        out.append(CacheFile(path, kind, model, _size(path), stale, why))
    kept_maps = {f.path.stem for f in out if f.kind == "projection" and not f.stale}
    for path, kind, model, target, error in entries:
        if kind in POINTERS:
            why = error or (None if target in kept_maps else f"its map {target} is gone or stale")
            out.append(CacheFile(path, kind, model, _size(path), bool(why), why or f"points to {target}"))
    return sorted(out, key=lambda f: str(f.path))


def prune(store) -> list[CacheFile]:
    """Delete the stale caches of `store` (see `scan`); returns them."""
    return remove([f for f in scan(store) if f.stale])


def remove(files: Iterable[CacheFile]) -> list[CacheFile]:
    """Delete cache files. Safe beside readers: a cache removed under a running request is recomputed."""
    files = list(files)
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.path)
    return files


def _kind(parts: tuple[str, ...]) -> str:
    """What a cache file is, from its path inside the store."""
    if parts[0] == layout.DERIVED:
        return "compare" if len(parts) > 1 and parts[1] == "compare" else "other"
    if len(parts) == 4:  # projections/model=/layer=/<key>.parquet
        return "projection"
    return parts[3] if len(parts) == 5 and parts[3] in ("knn", "features", *POINTERS) else "other"


def _provenance_of(path: Path, kind: str) -> dict | None:
    meta = pq.read_schema(path).metadata or {}
    if kind == "projection":
        m = json.loads(meta[b"projection"])
        return {"data_versions": {m["layer"]: m["data_version"]}, "run_ids": (m.get("filter") or {}).get("run_ids")}
    if kind in POINTERS:
        return None
    return json.loads(meta.get(b"artifact", b"{}")).get("provenance")


def _pointer_target(path: Path) -> str | None:
    keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
    return str(keys[0]) if len(keys) == 1 else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
