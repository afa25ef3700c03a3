"""Derived results kept in a store: maps, kNN graphs, PCA features, comparison tables and pointers.

This module is their one owner: it decides where each lives, records what it was computed from
(provenance), reads it back, lists it and prunes what data appended since has made stale. Pipeline modules
say *what* to keep (kind, model, layer, key); never where.

    caches/<kind>/model=<model>/layer=<layer>/<key>.parquet     a result of one layer
    caches/<kind>/model=<model>/<key>.parquet                   a result of several layers (layer None)

Each file holds one table; its Parquet metadata key ``derived`` is JSON with ``kind``, ``model``, ``layer``,
``key``, ``provenance`` (``data_versions``: the data version of each layer it read, ``run_ids``: the runs
it was restricted to, None for all) and ``meta`` (what the writer wants back).

Staleness: a result is stale when a data version it records is no longer the store's current one for the
same (model, layer, runs). Kept even then: the latest map of a lineage (appended samples are placed into it
without a refit). Pointers (kinds in `POINTERS`: one-row tables naming a key) go with the map they name.
Files of the layout before this one (``projections/``, ``derived/``) are never read and always stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import layout
from .atomic import atomic_write_parquet, json_bytes

TOP = layout.CACHES
META_KEY = b"derived"
KINDS = {
    "projection": "2-D coordinates of a map (sample_id, x, y)",
    "knn": "a kNN graph (sample_id, indices, distances)",
    "features": "a PCA feature matrix (sample_id, vector)",
    "compare": "a layer-comparison table (CKA, neighbour agreement)",
    "analysis": "a table of a layer's analysis (class separation, clusters, outliers; pipeline/analysis.py)",
    "distribution": "a table of metrics between two runs on a layer (precision, recall, FD; pipeline/distribution.py)",
    "aligned": "aligned 2-D maps across steps or layers (frame, sample_id, x, y; pipeline/aligned.py)",
    "lineage": "pointer: the latest map of a lineage (what appended samples are placed into)",
    "family": "pointer: the latest map of a min_dist family (what a warm start continues)",
}
POINTERS = ("lineage", "family")


def digest(payload) -> str:
    """The SHA-256 (hex) of a JSON payload in canonical form (sorted keys, no spaces): the hash part of every
    derived result's key, computed from explicit inputs, never from arrays."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def provenance(versions: Mapping[str, str], run_ids: Iterable[str] | None) -> dict:
    """What a result was computed from: the data version of each layer it read, and its runs (None: all)."""
    return {"data_versions": {str(k): str(v) for k, v in versions.items()},
            "run_ids": None if run_ids is None else sorted({str(r) for r in run_ids})}


@dataclass(frozen=True)
class Entry:
    """One derived file, as `Derived.scan` finds it."""

    path: Path
    kind: str
    model: str
    layer: str | None
    key: str
    bytes: int
    stale: bool
    why: str  # what makes it stale, or why it is kept


class Derived:
    """The derived results of one `Store` (``store.derived``)."""

    def __init__(self, store):
        self.store = store
        self.root = Path(store.root)

    # -- paths ------------------------------------------------------------------------------------------------

    def path(self, kind: str, model: str, layer: str | None, key: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown derived kind {kind!r}; valid: {sorted(KINDS)}")
        folder = self.root / TOP / kind / layout.hive("model", layout.check_name("model", model))
        if layer is not None:
            folder = folder / layout.hive("layer", layout.check_name("layer", layer))
        return folder / f"{layout.check_key(key)}.parquet"

    # -- write and read ---------------------------------------------------------------------------------------

    def write(self, kind: str, model: str, layer: str | None, key: str, table: pd.DataFrame | pa.Table, *,
              sources: Mapping[str, str] | None = None, run_ids: Iterable[str] | None = None,
              meta: Mapping[str, Any] | None = None) -> Path:
        """Keep `table` as the result (kind, model, layer, key), computed from the data versions `sources`
        (layer -> version) of `run_ids` (None: all). Atomic: a reader sees the old file or the new one."""
        path = self.path(kind, model, layer, key)
        record = {"kind": kind, "model": model, "layer": layer, "key": key,
                  "provenance": None if sources is None else provenance(sources, run_ids), "meta": dict(meta or {})}
        return atomic_write_parquet(path, _as_table(table), {META_KEY: json_bytes(record)}, compression="zstd")

    def read(self, kind: str, model: str, layer: str | None, key: str) -> tuple[pa.Table, dict] | None:
        """(table, meta) of a result, or None when there is none (or it is unreadable: skipped with a
        warning, like any corrupt part of the store)."""
        path = self.path(kind, model, layer, key)
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
            record = json.loads((table.schema.metadata or {})[META_KEY])
        except Exception as exc:  # noqa: BLE001 - an unreadable cache is recomputed, never served
            self.store._skip(path, f"{type(exc).__name__}: {exc}")
            return None
        return table.replace_schema_metadata(None), dict(record.get("meta") or {})

    def point(self, kind: str, model: str, layer: str | None, name: str, key: str) -> Path:
        """Record `key` as the latest result of `name` (a pointer of kind `kind`, see `POINTERS`)."""
        if kind not in POINTERS:
            raise ValueError(f"{kind!r} is not a pointer kind; valid: {list(POINTERS)}")
        return self.write(kind, model, layer, name, pa.table({"key": [str(key)]}))

    def target(self, kind: str, model: str, layer: str | None, name: str) -> str | None:
        """The key a pointer names, or None."""
        got = self.read(kind, model, layer, name)
        if got is None or got[0].num_rows != 1 or "key" not in got[0].column_names:
            return None
        return str(got[0].column("key")[0].as_py())

    # -- listing, staleness, pruning --------------------------------------------------------------------------

    def scan(self) -> list[Entry]:
        """Every derived file of the store, each marked stale or kept, with the reason."""
        versions: dict[tuple, str] = {}

        def current(model: str, layer: str, runs: tuple[str, ...] | None) -> str:
            k = (model, layer, runs)
            if k not in versions:
                versions[k] = self.store.data_version(model, layer, None if runs is None else list(runs))
            return versions[k]

        found = []  # (path, kind, model, layer, record or None, error)
        for path in _files(self.root / TOP):
            kind, model, layer = _place(path.relative_to(self.root / TOP).parts)
            try:
                record, error = json.loads((pq.read_schema(path).metadata or {})[META_KEY]), ""
                if kind in POINTERS:
                    record["target"] = str(pq.read_table(path, columns=["key"]).column("key")[0].as_py())
            except Exception as exc:  # noqa: BLE001 - an unreadable cache is useless: it goes
                record, error = None, f"unreadable ({type(exc).__name__}: {exc})"
            found.append((path, kind, model, layer, record, error))

        lineage_heads = {r["target"] for _p, kind, _m, _l, r, _e in found if kind == "lineage" and r}
        out: list[Entry] = []
        for path, kind, model, layer, record, error in found:
            if kind in POINTERS:
                continue
            if error or kind is None:
                stale, why = True, error or "not a derived result of this layout"
            elif not (prov := record.get("provenance")):
                stale, why = False, "no provenance recorded: kept"
            else:
                runs = None if prov.get("run_ids") is None else tuple(prov["run_ids"])
                change = next((f"data of {lay!r} changed since (version {v})"
                               for lay, v in (prov.get("data_versions") or {}).items()
                               if current(model, lay, runs) != v), None)
                if change is None:
                    stale, why = False, "current"
                elif kind == "projection" and path.stem in lineage_heads:
                    stale, why = False, f"{change}; kept as the latest map of its lineage (appended samples go into it)"
                else:
                    stale, why = True, change
            out.append(Entry(path, kind or "other", model, layer, path.stem, _size(path), stale, why))
        kept_maps = {e.key for e in out if e.kind == "projection" and not e.stale}
        for path, kind, model, layer, record, error in found:
            if kind in POINTERS:
                target = (record or {}).get("target")
                why = error or (None if target in kept_maps else f"its map {target} is gone or stale")
                out.append(Entry(path, kind, model, layer, path.stem, _size(path), bool(why),
                                 why or f"points to {target}"))
        for top in layout.LEGACY_CACHE_TOPS:  # the layout before `caches/`: never read
            out.extend(Entry(p, "legacy", "", None, p.stem, _size(p), True, "written by an older cache layout")
                       for p in _files(self.root / top))
        return sorted(out, key=lambda e: str(e.path))

    def prune(self) -> list[Entry]:
        """Delete the stale results (see `scan`); returns them."""
        return self.remove([e for e in self.scan() if e.stale])

    @staticmethod
    def remove(entries: Iterable[Entry]) -> list[Entry]:
        """Delete derived files. Safe beside readers: a result removed under a running request is recomputed."""
        entries = list(entries)
        for e in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
        return entries


def _place(parts: tuple[str, ...]) -> tuple[str | None, str, str | None]:
    """(kind, model, layer) of a file from its path under caches/; kind None when it does not fit the layout."""
    kind = parts[0] if parts and parts[0] in KINDS else None
    model = layout.parse_hive(parts[1], "model") if len(parts) > 2 else None
    layer = layout.parse_hive(parts[2], "layer") if len(parts) == 4 else None
    if kind is None or model is None or len(parts) not in (3, 4) or (len(parts) == 4 and layer is None):
        return None, model or "", layer
    return kind, model, layer


def _files(folder: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(folder):
        out.extend(Path(dirpath) / n for n in names if n.endswith(".parquet") and not layout.is_staging(n))
    return sorted(out)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _as_table(frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise TypeError(f"expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}")
