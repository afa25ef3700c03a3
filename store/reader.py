"""`Store`: read a store folder through DuckDB (metadata) and pyarrow (activation matrices).

Readers build their own file lists (only final `part-*.parquet` names, never staging files), check each
file's Parquet footer once (cached by path, size and mtime), skip corrupt files with a warning naming
them, and hand DuckDB the explicit list. Activations are only read for committed batches: an activation
part counts only when its run has a samples part of the same name, and its rows are joined to the
committed sample ids. Every query uses its own DuckDB cursor, so one `Store` serves many threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout, schema
from .atomic import atomic_write_parquet, json_bytes

log = logging.getLogger(__name__)

_STEP_COLUMNS = ["sample_id", "step", "timestep", "sigma", "dtype", "vector"]
_SHAPE_COLUMNS = ["reduce", "shape", "layer_shape"]
_HIVE = "hive_partitioning=true, hive_types_autocast=false, union_by_name=true"

# DuckDB types of each view, used to build an empty view when a store has no files yet.
_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT",
    pa.float32(): "FLOAT", pa.binary(): "BLOB", pa.list_(pa.int32()): "INTEGER[]",
    pa.list_(pa.string()): "VARCHAR[]", pa.list_(pa.int16()): "SMALLINT[]", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}
SAMPLE_COLUMNS = schema.SAMPLE_COLUMNS  # file columns and partition values, declared in store/schema.py


@dataclass(frozen=True)
class Activations:
    """One (model, layer, step) activation matrix, rows ordered by (run_id, index) like `sample_ids`."""

    sample_ids: np.ndarray  # str, (N,)
    matrix: np.ndarray  # float32, (N, D)
    shape: tuple  # stored vector shape before flattening, e.g. (768,) or (768, 4, 4)
    reduce: str  # 'mean' | 'pool4' | 'full'
    layer_shape: tuple  # the layer's (C, H, W)
    timestep: float | None  # of the first row (one run shares it); None for EDM models
    sigma: float | None
    model: str = ""
    layer: str = ""
    step: int = 0
    run_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    timesteps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # per row, NaN = null
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def empty(self) -> bool:
        return len(self.sample_ids) == 0


def _empty_activations(model: str, layer: str, step: int) -> Activations:
    return Activations(np.zeros(0, dtype=object), np.zeros((0, 0), dtype=np.float32), (), "", (), None, None,
                       model, layer, step)


class _FooterCache:
    """Parquet footers by (path, size, mtime_ns): each file is parsed once while it does not change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[int, int, pq.FileMetaData | None, str]] = {}

    def get(self, path: Path, required: Sequence[str]) -> tuple[pq.FileMetaData | None, str]:
        """(metadata, '') for a good file, (None, reason) for a bad one, (None, '') for a vanished one."""
        key = str(path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return None, ""
        with self._lock:
            hit = self._items.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2], hit[3]
        try:
            md = pq.read_metadata(key)
            names = set(md.schema.to_arrow_schema().names)
            missing = [c for c in required if c not in names]
            err = f"missing columns {missing}" if missing else ""
            if missing:
                md = None
        except FileNotFoundError:
            return None, ""
        except Exception as e:  # any unreadable footer: truncated, not Parquet, garbage
            md, err = None, f"{type(e).__name__}: {e}"
        with self._lock:
            self._items[key] = (st.st_size, st.st_mtime_ns, md, err)
        return md, err

    def mark_bad(self, path: Path, reason: str) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        with self._lock:
            self._items[str(path)] = (st.st_size, st.st_mtime_ns, None, reason)


class Store:
    """Read access to a store folder. Cheap to create; safe to share between threads."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._con: duckdb.DuckDBPyConnection | None = None  # opened on first use (costs ~30 ms)
        self._con_lock = threading.Lock()
        self._footers = _FooterCache()
        self._skip_lock = threading.Lock()
        self.skipped: list[str] = []
        self._ids_cache: dict[tuple, pa.Table] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- files ------------------------------------------------------------------------------------------

    def _skip(self, path: Path, reason: str) -> None:
        with self._skip_lock:
            first = str(path) not in self.skipped
            if first:
                self.skipped.append(str(path))
        if first:
            msg = f"store: skipping corrupt file {path} ({reason})"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def _good(self, path: Path, kind: str) -> pq.FileMetaData | None:
        md, err = self._footers.get(path, schema.REQUIRED[kind])
        if err:
            self._skip(path, err)
        return md

    def _sample_parts(self, model: str | None = None, run_ids: Iterable[str] | None = None) -> list[Path]:
        runs = None if run_ids is None else set(run_ids)
        out = []
        for _m, run, folder in layout.sample_partitions(self.root, model):
            if runs is None or run in runs:
                out.extend(p for p in layout.list_parts(folder) if self._good(p, "samples"))
        return out

    def _activation_parts(self, model: str, layer: str, run_ids: Iterable[str] | None = None,
                          committed: dict[str, set[str]] | None = None) -> list[tuple[str, Path]]:
        """(run_id, path) of committed activation parts: their run has a samples part of the same name."""
        runs = None if run_ids is None else set(run_ids)
        out = []
        for run, folder in layout.activation_partitions(self.root, model, layer):
            if runs is not None and run not in runs:
                continue
            if committed is not None:
                names = committed.get(run, set())
            else:
                names = {p.name for p in layout.list_parts(layout.samples_dir(self.root, model, run))}
            out.extend((run, p) for p in layout.list_parts(folder) if p.name in names and self._good(p, "activations"))
        return out

    def _run_files(self) -> list[Path]:
        return [p for p in layout.run_manifests(self.root) if self._good(p, "runs")]

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._con_lock:
            if self._con is None:
                con = duckdb.connect()
                con.create_function("vector_values", _vector_values_udf, ["BLOB", "VARCHAR"], "FLOAT[]",
                                    type="arrow")
                self._con = con
            return self._con.cursor()

    def _scan(self, files: Sequence[Path], kind: str, build_sql, params: dict | None = None,
              arrow: bool = False):
        """Run `build_sql(from_clause)` over `files`. If DuckDB fails on a file whose footer looked fine,
        check every file in full, skip the bad ones and retry once."""
        for attempt in (0, 1):
            sql = build_sql(_read_parquet(files, hive=kind != "runs"))
            try:
                cur = self._cursor()
                rel = cur.sql(sql, params=params) if params else cur.sql(sql)
                table = rel.to_arrow_table()
                return table if arrow else table.to_pandas()
            except duckdb.Error:
                if attempt:
                    raise
                good = []
                for p in files:
                    err = _full_check(p)
                    if err:
                        self._footers.mark_bad(p, err)
                        self._skip(p, err)
                    else:
                        good.append(p)
                if len(good) == len(files):
                    raise
                files = good
                if not files:
                    return None
        return None

    # -- runs, models, layers, steps ------------------------------------------------------------------------

    def runs(self) -> pd.DataFrame:
        """One row per run manifest, oldest first. `reduce` and `settings` are JSON strings."""
        files = self._run_files()
        cols = [f.name for f in schema.RUNS]
        if not files:
            return _empty_frame(schema.RUNS)
        df = self._scan(files, "runs", lambda src: f"SELECT * FROM {src} ORDER BY created_at, run_id")
        if df is None:
            return _empty_frame(schema.RUNS)
        return df[[c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]]

    def manifest(self, run_id: str) -> dict | None:
        """The manifest of one run as a dict with `reduce`/`settings` parsed, or None."""
        path = layout.run_manifest_path(self.root, layout.check_name("run_id", run_id))
        if not self._good(path, "runs"):
            return None
        row = pq.read_table(path).to_pylist()[0]
        for k in schema.JSON_FIELDS:
            if isinstance(row.get(k), str):
                row[k] = json.loads(row[k])
        return row

    def models(self) -> list[str]:
        """Models with at least one committed sample."""
        return [m for m in layout.models_in(self.root, layout.SAMPLES)
                if any(layout.list_parts(folder) for _, _, folder in layout.sample_partitions(self.root, m))]

    def layers(self, model: str) -> list[str]:
        """Layers of `model` with committed activations, in the runs' manifest order (network order)."""
        present = []
        for layer in layout.layers_in(self.root, model):
            if self._activation_parts(model, layer):
                present.append(layer)
        rank = {name: i for i, name in enumerate(self._manifest_layers(model))}
        return sorted(present, key=lambda x: (rank.get(x, len(rank)), x))

    def _manifest_layers(self, model: str) -> list[str]:
        """Layers named by the manifests of `model`'s runs, in order of first appearance."""
        order: list[str] = []
        runs = self.runs()
        if len(runs):
            for layers in runs.loc[runs["model"] == model, "layers"]:
                order.extend(x for x in list(layers) if x not in order)
        return order

    def steps(self, model: str, layer: str | None = None) -> pd.DataFrame:
        """Distinct (step, timestep, sigma) recorded for `model` (one layer, or its first layer)."""
        empty = pd.DataFrame({"step": pd.Series(dtype="int64"), "timestep": pd.Series(dtype="float64"),
                              "sigma": pd.Series(dtype="float64")})
        layers = [layer] if layer is not None else self.layers(model)[:1]
        if not layers:
            return empty
        first_per_run: dict[str, Path] = {}
        for run, p in self._activation_parts(model, layers[0]):
            first_per_run.setdefault(run, p)  # every batch of a run records the same steps
        tables = []
        for p in first_per_run.values():
            try:
                tables.append(pq.read_table(p, columns=["step", "timestep", "sigma"]))
            except Exception as e:
                self._footers.mark_bad(p, str(e))
                self._skip(p, f"{type(e).__name__}: {e}")
        if not tables:
            return empty
        df = pa.concat_tables(tables, promote_options="permissive").to_pandas().drop_duplicates()
        df["step"] = df["step"].astype("int64")
        return df.sort_values(["step", "sigma"], ascending=[True, False]).reset_index(drop=True)

    # -- samples ----------------------------------------------------------------------------------------

    def _samples_query(self, model, run_ids, sample_ids, columns, thumbs, arrow):
        if model is not None:
            layout.check_name("model", model)
        if columns is None:
            cols = [c for c in SAMPLE_COLUMNS if thumbs or c != "thumb"]
        else:
            bad = [c for c in columns if c not in SAMPLE_COLUMNS]
            if bad:
                raise ValueError(f"unknown sample columns {bad}; valid: {list(SAMPLE_COLUMNS)}")
            cols = list(columns)
        if sample_ids is not None:
            sample_ids = [str(s) for s in sample_ids]
            wanted_runs = set()
            for s in sample_ids:
                try:
                    wanted_runs.add(layout.split_sample_id(s)[0])
                except ValueError:
                    continue
            run_ids = wanted_runs if run_ids is None else set(run_ids) & wanted_runs
        run_ids = None if run_ids is None else [str(r) for r in run_ids]
        files = self._sample_parts(model, run_ids)
        empty = _empty_samples(cols)
        if not files:
            return pa.Table.from_pandas(empty, preserve_index=False) if arrow else empty
        params = {}
        where = []
        if sample_ids is not None:
            where.append("sample_id IN (SELECT UNNEST($ids))")
            params["ids"] = sample_ids
        absent = self._absent_sample_columns(files, [c for c in cols if c in schema.SAMPLE_OPTIONAL])
        select = ", ".join(_null_of(c) if c in absent else _q(c) for c in cols)
        cond = f"WHERE {' AND '.join(where)}" if where else ""

        def sql(src):
            return f'SELECT {select} FROM {src} {cond} ORDER BY model, run_id, "index"'

        out = self._scan(files, "samples", sql, params or None, arrow=arrow)
        if out is None:
            return pa.Table.from_pandas(empty, preserve_index=False) if arrow else empty
        return out

    def _absent_sample_columns(self, files: Sequence[Path], optional: Sequence[str]) -> set[str]:
        """The `optional` columns that none of `files` has (parts written before the column existed)."""
        absent = set(optional)
        for p in files:
            if not absent:
                break
            md, _ = self._footers.get(p, schema.REQUIRED["samples"])
            if md is not None:
                absent -= set(md.schema.to_arrow_schema().names)
        return absent

    def samples(self, model: str | None = None, run_ids: Iterable[str] | None = None,
                sample_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None,
                thumbs: bool = False) -> pd.DataFrame:
        """Committed samples ordered by (model, run_id, index); `thumb` (WebP bytes) only if `thumbs`."""
        return self._samples_query(model, run_ids, sample_ids, columns, thumbs, arrow=False)

    def samples_arrow(self, columns: Sequence[str] | None = None, model: str | None = None,
                      run_ids: Iterable[str] | None = None) -> pa.Table:
        """Like `samples`, as a pyarrow Table (no `thumb` column unless asked for in `columns`)."""
        return self._samples_query(model, run_ids, None, columns, False, arrow=True)

    def thumbs(self, sample_ids: Sequence[str]) -> list[bytes | None]:
        """WebP thumbnails in the order of `sample_ids` (None for an unknown id)."""
        ids = [str(s) for s in sample_ids]
        if not ids:
            return []
        df = self.samples(sample_ids=ids, columns=["sample_id", "thumb"])
        found = dict(zip(df["sample_id"], df["thumb"], strict=True))
        return [None if found.get(s) is None else bytes(found[s]) for s in ids]

    def image(self, sample_id: str, step: int | None = None) -> bytes | None:
        """PNG bytes of the sample's final image, or of its x0 preview at sampling `step`; None when the
        sample is not committed or has no such image."""
        return self.images([sample_id], step)[0]

    def images(self, sample_ids: Sequence[str], step: int | None = None) -> list[bytes | None]:
        """Like `image` for many samples (one read per images part), in the order of `sample_ids`."""
        ids = [str(s) for s in sample_ids]
        found = self._pngs(ids, lambda listed: [None] if step is None else [int(step)] if int(step) in listed
                           else [])
        return [found.get(s, {}).get(None if step is None else int(step)) for s in ids]

    def previews(self, sample_id: str) -> dict[int, bytes]:
        """step -> PNG bytes of each x0 preview that the committed sample lists in `preview_steps`, in step
        order; {} when it has none, is not committed, or its part predates previews."""
        found = self._pngs([str(sample_id)], sorted).get(str(sample_id), {})
        return {k: found[k] for k in sorted(k for k in found if k is not None)}

    def _pngs(self, ids: list[str], wanted) -> dict[str, dict[int | None, bytes]]:
        """sample_id -> {step: PNG} for the steps `wanted(listed preview steps)` names (None: final image)."""
        if not ids:
            return {}
        df = self.samples(sample_ids=ids, columns=["sample_id", "model", "run_id", "index", "image_path",
                                                   "preview_steps"])
        out: dict[str, dict[int | None, bytes]] = {}
        parts: dict[str, dict[int, tuple[str, list]]] = {}  # images part -> index -> (sample_id, steps)
        for sid, model, run, index, ref, listed in df.itertuples(index=False, name=None):
            steps = wanted({int(k) for k in listed} if isinstance(listed, (list, tuple, np.ndarray)) else set())
            if not steps or not isinstance(ref, str):
                continue
            part = Path(ref).name
            if layout.parse_part_name(part) and ref == layout.image_part_relpath(model, run, part):
                parts.setdefault(ref, {})[int(index)] = (sid, steps)
            elif ref == layout.image_relpath(model, run, int(index)):  # format 1: a PNG file per image
                files = {k: ref if k is None else layout.preview_relpath(model, run, int(index), k) for k in steps}
                out[sid] = {k: data for k, rel in files.items() if (data := _read_bytes(self.root / rel))}
        for ref, rows in parts.items():
            for index, pngs in self._read_image_part(self.root / ref, rows).items():
                out[rows[index][0]] = pngs
        return out

    def _read_image_part(self, path: Path, rows: dict[int, tuple[str, list]]) -> dict[int, dict[int | None, bytes]]:
        """index -> {step: PNG} of the wanted rows of one images part, reading only their row groups."""
        md = self._good(path, "images")
        if md is None:
            return {}
        col = md.schema.to_arrow_schema().get_field_index("index")
        groups = []
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            if st is None or not st.has_min_max or any(st.min <= i <= st.max for i in rows):
                groups.append(g)
        try:
            t = pq.ParquetFile(path, metadata=md).read_row_groups(groups, columns=["index", "step", "png"])
        except Exception as exc:  # noqa: BLE001 - a damaged part loses its images, not the page
            self._footers.mark_bad(path, f"{type(exc).__name__}: {exc}")
            self._skip(path, f"{type(exc).__name__}: {exc}")
            return {}
        out: dict[int, dict[int | None, bytes]] = {}
        for index, step, png in zip(*(t[c].to_pylist() for c in ("index", "step", "png")), strict=True):
            if index in rows and step in rows[index][1]:
                out.setdefault(index, {})[step] = png
        return out

    # -- activations ------------------------------------------------------------------------------------

    def _committed_ids(self, model: str, run_ids: Iterable[str] | None) -> dict[str, pa.Table]:
        """run_id -> table (sample_id, index, part) of its committed samples, sorted by index."""
        out: dict[str, list[pa.Table]] = {}
        runs = None if run_ids is None else set(run_ids)
        for _m, run, folder in layout.sample_partitions(self.root, model):
            if runs is not None and run not in runs:
                continue
            for p in layout.list_parts(folder):
                t = self._ids_of(p)
                if t is not None:
                    out.setdefault(run, []).append(t)
        return {r: pa.concat_tables(ts).sort_by("index") for r, ts in out.items()}

    def _ids_of(self, path: Path) -> pa.Table | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        hit = self._ids_cache.get(key)
        if hit is not None:
            return hit
        md = self._good(path, "samples")
        if md is None:
            return None
        try:
            t = pq.ParquetFile(path, metadata=md).read(columns=["sample_id", "index"])
        except Exception as e:
            self._footers.mark_bad(path, str(e))
            self._skip(path, f"{type(e).__name__}: {e}")
            return None
        t = t.append_column("part", pa.array([path.name] * t.num_rows, pa.string()))
        if len(self._ids_cache) > 100_000:
            self._ids_cache.clear()
        self._ids_cache[key] = t
        return t

    def activations(self, model: str, layer: str, step: int = 0, run_ids: Iterable[str] | None = None,
                    sample_ids: Iterable[str] | None = None) -> Activations:
        """The float32 matrix of one (model, layer, step) for committed samples, rows ordered by
        (run_id, index). `step=-1` is the last step. Empty when the model has no activations."""
        layout.check_name("model", model)
        layout.check_name("layer", layer)
        step = int(step)
        if layer not in layout.layers_in(self.root, model):
            known = self._manifest_layers(model)
            if layer in known or not (known or layout.layers_in(self.root, model)):
                return _empty_activations(model, layer, step)  # nothing written yet
            valid = known + [x for x in layout.layers_in(self.root, model) if x not in known]
            raise ValueError(f"unknown layer {layer!r} for model {model!r}; valid: {valid}")
        committed = self._committed_ids(model, None if run_ids is None else [str(r) for r in run_ids])
        if sample_ids is not None:
            wanted = pa.array([str(s) for s in sample_ids], pa.string())
            committed = {r: t.filter(pc.is_in(t["sample_id"], value_set=wanted)) for r, t in committed.items()}
            committed = {r: t for r, t in committed.items() if t.num_rows}
        names = {r: set(t["part"].to_pylist()) for r, t in committed.items()}
        parts = self._activation_parts(model, layer, committed.keys(), names)
        if not parts:
            return _empty_activations(model, layer, step)

        available = self._steps_in(parts)
        if step < 0:
            if -step > len(available):
                raise ValueError(f"step {step} out of range; steps recorded: {available}")
            step = available[step]
        if step not in available:
            raise ValueError(f"step {step} not recorded for {model}/{layer}; valid steps: {available}")

        order_ids = pa.concat_arrays([committed[r]["sample_id"].combine_chunks() for r in sorted(committed)])
        ids_of = {r: t["sample_id"].combine_chunks() for r, t in committed.items()}

        def read(item):
            run, p = item
            return run, self._read_step(p, step, ids_of[run])

        # pyarrow releases the GIL while it reads: many small parts go faster on a few threads
        results = _pool().map(read, parts) if len(parts) > 8 else map(read, parts)
        chunks = [(run, t) for run, t in results if t is not None and t.num_rows]
        if not chunks:
            return _empty_activations(model, layer, step)
        return _assemble(chunks, order_ids, model, layer, step, self._shape_info(parts[0][1]))

    def _shape_info(self, path: Path) -> dict:
        """reduce, shape and layer_shape of a part (one value for all its rows), from its first row."""
        md = self._good(path, "activations")
        t = pq.ParquetFile(path, metadata=md).read_row_group(0, columns=_SHAPE_COLUMNS).slice(0, 1).to_pylist()
        return t[0] if t else {}

    def _steps_in(self, parts: list[tuple[str, Path]]) -> list[int]:
        """Steps recorded in `parts`, from row-group statistics (one row group per step) where possible."""
        steps: set[int] = set()
        seen_runs: set[str] = set()
        for run, p in parts:
            if run in seen_runs:  # every batch of a run records the same steps
                continue
            md = self._good(p, "activations")
            if md is None:
                continue
            seen_runs.add(run)
            col = _leaf_index(md, "step")
            stats = [md.row_group(i).column(col).statistics for i in range(md.num_row_groups)]
            if all(st is not None and st.has_min_max and st.min == st.max for st in stats):
                steps.update(int(st.min) for st in stats)
                continue
            try:
                steps.update(pq.read_table(p, columns=["step"])["step"].to_pylist())
            except Exception as e:
                self._footers.mark_bad(p, str(e))
                self._skip(p, f"{type(e).__name__}: {e}")
                seen_runs.discard(run)
        return sorted(steps)

    def _read_step(self, path: Path, step: int, ids: pa.Array) -> pa.Table | None:
        md = self._good(path, "activations")
        if md is None:
            return None
        try:
            col = _leaf_index(md, "step")
            groups = []
            for i in range(md.num_row_groups):
                st = md.row_group(i).column(col).statistics
                if st is None or not st.has_min_max or st.min <= step <= st.max:
                    groups.append(i)
            if not groups:
                return None
            t = pq.ParquetFile(path, metadata=md).read_row_groups(groups, columns=_STEP_COLUMNS)
        except Exception as e:
            self._footers.mark_bad(path, str(e))
            self._skip(path, f"{type(e).__name__}: {e}")
            return None
        mask = pc.equal(t["step"], step)
        if not pc.all(mask).as_py():
            t = t.filter(mask)
        keep = pc.is_in(t["sample_id"], value_set=ids)
        if not pc.all(keep).as_py():
            t = t.filter(keep)
        return t

    def text_embeddings(self, model: str, run_ids: Iterable[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """(frame of run_id, prompt_index, prompt, category; float32 matrix of pooled embeddings)."""
        runs = None if run_ids is None else set(run_ids)
        frames, mats = [], []
        for _m, run, _folder in layout.sample_partitions(self.root, model):
            if runs is not None and run not in runs:
                continue
            p = layout.text_embeddings_path(self.root, model, run)
            if not p.exists() or not self._good(p, "text_embeddings"):
                continue
            try:
                t = pq.read_table(p)
            except Exception as e:
                self._skip(p, f"{type(e).__name__}: {e}")
                continue
            emb = t["embedding"].combine_chunks()
            mats.append(emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(emb), -1))
            df = t.drop(["embedding"]).to_pandas()
            df.insert(0, "run_id", run)
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["run_id", "prompt_index", "prompt", "category"]), np.zeros((0, 0), np.float32)
        return pd.concat(frames, ignore_index=True), np.concatenate(mats)

    # -- versions and storage -------------------------------------------------------------------------------

    def data_version(self, model: str, layer: str | None = None, run_ids: Iterable[str] | None = None) -> str:
        """Short hash of the committed parts behind (model, layer, runs): changes when a batch is appended."""
        runs = None if run_ids is None else set(run_ids)
        items = []
        committed: dict[str, set[str]] = {}
        for _m, run, folder in layout.sample_partitions(self.root, model):
            if runs is None or run in runs:
                parts = layout.list_parts(folder)
                committed[run] = {p.name for p in parts}
                items.extend(_stat_item(self.root, p) for p in parts)
        if layer is not None:  # orphans (batches in progress or killed) do not count
            for run, folder in layout.activation_partitions(self.root, model, layer):
                names = committed.get(run, set())
                items.extend(_stat_item(self.root, p) for p in layout.list_parts(folder) if p.name in names)
        h = hashlib.sha1()
        for item in sorted(i for i in items if i is not None):
            h.update(repr(item).encode())
        return h.hexdigest()[:16]

    def storage(self, by: str = "layer") -> pd.DataFrame:
        """Bytes on disk. by='layer': model, layer, runs, files, rows, bytes of activation parts;
        by='run': model, run_id, kind, files, bytes; by='kind': kind (top-level folder), files, bytes."""
        choices = ("layer", "run", "kind")
        if by not in choices:
            raise ValueError(f"by must be one of {choices}, got {by!r}")
        rows = []
        if by == "layer":
            for model in layout.models_in(self.root, layout.ACTIVATIONS):
                for layer in layout.layers_in(self.root, model):
                    runs, files, nrows, size = set(), 0, 0, 0
                    for run, folder in layout.activation_partitions(self.root, model, layer):
                        for p in layout.list_parts(folder):
                            md = self._good(p, "activations")
                            runs.add(run)
                            files += 1
                            nrows += md.num_rows if md is not None else 0
                            size += _size(p)
                    rows.append(dict(model=model, layer=layer, runs=len(runs), files=files, rows=nrows, bytes=size))
            return pd.DataFrame(rows, columns=["model", "layer", "runs", "files", "rows", "bytes"])
        if by == "run":
            for top in (layout.SAMPLES, layout.ACTIVATIONS, layout.IMAGES, layout.TEXT_EMBEDDINGS):
                acc: dict[tuple[str, str], list[int]] = {}
                for path in _walk_files(self.root / top):
                    parts = dict(x.split("=", 1) for x in path.relative_to(self.root / top).parts[:-1] if "=" in x)
                    if "model" in parts and "run_id" in parts:
                        a = acc.setdefault((parts["model"], parts["run_id"]), [0, 0])
                        a[0] += 1
                        a[1] += _size(path)
                rows.extend(dict(model=m, run_id=r, kind=top, files=f, bytes=b) for (m, r), (f, b) in acc.items())
            df = pd.DataFrame(rows, columns=["model", "run_id", "kind", "files", "bytes"])
            return df.sort_values(["model", "run_id", "kind"]).reset_index(drop=True)
        for top in layout.TOP_LEVEL:
            files = list(_walk_files(self.root / top))
            if files:
                rows.append(dict(kind=top, files=len(files), bytes=sum(_size(p) for p in files)))
        return pd.DataFrame(rows, columns=["kind", "files", "bytes"])

    # -- projections and other derived tables -------------------------------------------------------------

    def write_projection(self, key: str, frame: pd.DataFrame | pa.Table, params: dict[str, Any]) -> Path:
        """Cache 2-D coordinates (columns sample_id, x, y, extra columns allowed) under `key`; `params`
        (must hold model and layer) are stored as JSON in the file metadata under b'projection'."""
        for k in ("model", "layer"):
            if k not in params:
                raise ValueError(f"projection params need {k!r}; got keys {sorted(params)}")
        table = _as_table(frame)
        missing = [c for c in ("sample_id", "x", "y") if c not in table.column_names]
        if missing:
            raise ValueError(f"projection frame needs columns sample_id, x, y; missing {missing}")
        path = layout.projection_path(self.root, layout.check_name("model", str(params["model"])),
                                      layout.check_name("layer", str(params["layer"])), key)
        return atomic_write_parquet(path, table, {b"projection": json_bytes(params)}, compression="zstd")

    def read_projection(self, key: str) -> tuple[pd.DataFrame, dict] | None:
        """(frame, params) cached under `key`, or None (also for a corrupt file, with a warning)."""
        layout.check_key(key)
        base = self.root / layout.PROJECTIONS
        for mdir in _dirs(base):
            for ldir in _dirs(mdir):
                p = ldir / f"{key}.parquet"
                if p.is_file():
                    got = self._read_with_meta(p, b"projection")
                    if got is not None:
                        return got[0].to_pandas(), got[1]
        return None

    def write_artifact(self, relpath: str, table: pd.DataFrame | pa.Table, metadata: dict | None = None) -> Path:
        """Cache any derived table at `relpath` (under projections/ or derived/, ending in .parquet);
        `metadata` is stored as JSON under b'artifact'."""
        path = self._artifact_path(relpath)
        return atomic_write_parquet(path, _as_table(table), {b"artifact": json_bytes(metadata or {})},
                                    compression="zstd")

    def read_artifact(self, relpath: str) -> tuple[pa.Table, dict] | None:
        path = self._artifact_path(relpath)
        if not path.is_file():
            return None
        return self._read_with_meta(path, b"artifact")

    def _artifact_path(self, relpath: str) -> Path:
        parts = Path(relpath).parts
        ok = (
            len(parts) >= 2 and not Path(relpath).is_absolute() and parts[0] in layout.ARTIFACT_TOPS
            and parts[-1].endswith(".parquet") and all(_ARTIFACT_PART.match(x) for x in parts)
            and not any(layout.is_staging(x) for x in parts)
        )
        if not ok:
            raise ValueError(f"invalid artifact path {relpath!r}: must be relative, under one of "
                             f"{layout.ARTIFACT_TOPS}, end in .parquet, and use plain names (no '..')")
        return self.root.joinpath(*parts)

    def _read_with_meta(self, path: Path, meta_key: bytes) -> tuple[pa.Table, dict] | None:
        try:
            t = pq.read_table(path)
            raw = (t.schema.metadata or {}).get(meta_key)
            params = json.loads(raw) if raw else {}
        except Exception as e:
            self._skip(path, f"{type(e).__name__}: {e}")
            return None
        return t.replace_schema_metadata(None), params

    # -- power users --------------------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh DuckDB cursor with temp views `samples`, `activations` (all models and layers, committed
        parts only, vector as FLOAT[]) and `runs` over the store as it is now. One cursor per thread."""
        cur = self._cursor()
        samples = self._sample_parts()
        acts = []
        for model in layout.models_in(self.root, layout.ACTIVATIONS):
            for layer in layout.layers_in(self.root, model):
                acts.extend(p for _, p in self._activation_parts(model, layer))
        runs = self._run_files()
        sample_cols = {f.name: f.type for f in schema.SAMPLES} | {"model": pa.string(), "run_id": pa.string()}
        act_cols = {f.name: f.type for f in schema.ACTIVATION_META} | {
            "dtype": pa.string(), "vector": "FLOAT[]", "model": pa.string(), "layer": pa.string(),
            "run_id": pa.string()}
        for name, files, cols, hive in (("samples", samples, sample_cols, True),
                                        ("activations", acts, act_cols, True),
                                        ("runs", runs, {f.name: f.type for f in schema.RUNS}, False)):
            if files:
                src = _read_parquet(files, hive=hive)
                star = "* REPLACE (vector_values(vector, dtype) AS vector)" if name == "activations" else "*"
                if name == "samples":  # parts from before an optional column: give it as null
                    star += "".join(f", {_null_of(c)}" for c in sorted(
                        self._absent_sample_columns(files, schema.SAMPLE_OPTIONAL)))
                cur.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {star} FROM {src}")
            else:
                select = ", ".join(f"CAST(NULL AS {t if isinstance(t, str) else _DUCK_TYPES[t]}) AS {_q(c)}"
                                   for c, t in cols.items())
                cur.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {select} WHERE false")
        return cur

    def close(self) -> None:
        with self._con_lock:
            if self._con is not None:
                self._con.close()
                self._con = None


# -- helpers ------------------------------------------------------------------------------------------------

_ARTIFACT_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _null_of(column: str) -> str:
    """`CAST(NULL AS <type>) AS "<column>"` for a samples column."""
    typ = {f.name: f.type for f in schema.SAMPLES}[column]
    return f"CAST(NULL AS {_DUCK_TYPES[typ]}) AS {_q(column)}"


def _read_parquet(files: Sequence[Path], hive: bool = True) -> str:
    lst = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    return f"read_parquet({lst}, {_HIVE})" if hive else f"read_parquet({lst}, union_by_name=true)"


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # missing or unreadable: `python -m store verify` reports it
        return None


def _full_check(path: Path) -> str:
    """'' when the whole file decodes (with page checksums), else the reason."""
    try:
        pq.ParquetFile(path, page_checksum_verification=True).read()
        return ""
    except FileNotFoundError:
        return ""
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _empty_frame(sch: pa.Schema) -> pd.DataFrame:
    return sch.empty_table().to_pandas()


def _empty_samples(cols: Sequence[str]) -> pd.DataFrame:
    types = {f.name: f.type for f in schema.SAMPLES} | {"model": pa.string(), "run_id": pa.string()}
    return pa.schema([(c, types[c]) for c in cols]).empty_table().to_pandas()


def _assemble(chunks: list[tuple[str, pa.Table]], order_ids: pa.Array, model: str, layer: str,
              step: int, info: dict) -> Activations:
    """Stack the vectors of `chunks` into one float32 matrix ordered like `order_ids` (no per-row Python)."""
    dims: dict[int, set[str]] = {}
    for run, t in chunks:
        dims.setdefault(_vector_dim(t), set()).add(run)
    if len(dims) > 1:
        detail = "; ".join(f"{d} values: runs {sorted(r)}" for d, r in sorted(dims.items()))
        raise ValueError(f"{model}/{layer} has vectors of different sizes across runs ({detail}); "
                         "pass run_ids to read one kind at a time")
    dim = next(iter(dims))
    n = sum(t.num_rows for _, t in chunks)
    matrix = np.empty((n, dim), dtype=np.float32)
    row = 0
    for _, t in chunks:
        dtype = _vector_dtype(t)
        for chunk in t["vector"].chunks:
            k = len(chunk)
            matrix[row:row + k] = vectors_to_numpy(chunk, dtype).reshape(k, dim)  # casts while copying
            row += k
    ids = _concat(chunks, "sample_id").combine_chunks()
    if isinstance(ids, pa.DictionaryArray):
        ids = ids.dictionary_decode()
    pos = pc.index_in(ids, value_set=order_ids).to_numpy(zero_copy_only=False)
    sel = None
    if n > 1 and not np.all(np.diff(pos) > 0):
        perm = np.argsort(pos, kind="stable")
        first = np.ones(n, dtype=bool)
        first[1:] = np.diff(pos[perm]) != 0  # a sample written twice keeps one row
        sel = perm[first]
    first_t = chunks[0][1]

    def col(name, conv):
        return conv(_concat(chunks, name).to_numpy())

    timesteps = col("timestep", lambda v: v.astype(np.float32))
    sigmas = col("sigma", lambda v: v.astype(np.float32))
    sample_ids = ids.to_numpy(zero_copy_only=False).astype(object)
    run_ids = np.concatenate([np.full(t.num_rows, run, dtype=object) for run, t in chunks])
    if sel is not None:
        matrix, sample_ids, run_ids = matrix[sel], sample_ids[sel], run_ids[sel]
        timesteps, sigmas = timesteps[sel], sigmas[sel]
    ts0 = first_t["timestep"][0].as_py()
    sg0 = first_t["sigma"][0].as_py()
    return Activations(sample_ids, matrix, tuple(info.get("shape") or ()), info.get("reduce") or "",
                       tuple(info.get("layer_shape") or ()), ts0, sg0, model, layer, step, run_ids, timesteps, sigmas)


def _vector_dtype(t: pa.Table) -> str:
    if "dtype" not in t.column_names or t.num_rows == 0:
        return "float16"
    dtype = t["dtype"][0].as_py() or "float16"
    if dtype not in schema.VECTOR_DTYPES:
        raise ValueError(f"unknown vector dtype {dtype!r}; valid: {list(schema.VECTOR_DTYPES)}")
    return dtype


def _vector_dim(t: pa.Table) -> int:
    return t.schema.field("vector").type.byte_width // schema.VECTOR_DTYPES[_vector_dtype(t)]


def vectors_to_numpy(arr: pa.Array, dtype: str = "float16") -> np.ndarray:
    """The values of a binary vector column chunk as a flat numpy array (zero-copy for fixed-size binary)."""
    np_dtype = np.dtype("<f2" if dtype == "float16" else "<f4")
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        return np.frombuffer(arr.buffers()[1], dtype=np_dtype, count=n * width // np_dtype.itemsize,
                             offset=arr.offset * width)
    # variable binary (what DuckDB hands a UDF): one contiguous data buffer between the first and last offset
    off_type = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_type, count=n + 1, offset=arr.offset * off_type().itemsize)
    data = arr.buffers()[2]
    if data is None:
        return np.zeros(0, dtype=np_dtype)
    return np.frombuffer(data, dtype=np_dtype, count=int(offsets[-1] - offsets[0]) // np_dtype.itemsize,
                         offset=int(offsets[0]))


def _vector_values_udf(vector, dtype) -> pa.Array:
    """DuckDB function vector_values(vector BLOB, dtype VARCHAR) -> FLOAT[] (the decoded values)."""
    if isinstance(vector, pa.ChunkedArray):
        vector = vector.combine_chunks()
    if isinstance(dtype, pa.ChunkedArray):
        dtype = dtype.combine_chunks()
    kinds = {d for d in dtype.unique().to_pylist() if d is not None} or {"float16"}
    if len(kinds) == 1 and not pa.types.is_fixed_size_binary(vector.type) and vector.null_count == 0:
        kind = kinds.pop()
        size = schema.VECTOR_DTYPES[kind]
        values = vectors_to_numpy(vector, kind).astype(np.float32)
        off_type = np.int64 if pa.types.is_large_binary(vector.type) else np.int32
        off = np.frombuffer(vector.buffers()[1], dtype=off_type, count=len(vector) + 1,
                            offset=vector.offset * np.dtype(off_type).itemsize)
        return pa.ListArray.from_arrays(pa.array(((off - off[0]) // size).astype(np.int32)), pa.array(values))
    out = []  # mixed dtypes or nulls in one chunk: rare, decode row by row
    for blob, kind in zip(vector.to_pylist(), dtype.to_pylist(), strict=True):
        np_dtype = "<f4" if kind == "float32" else "<f2"
        out.append(None if blob is None else np.frombuffer(blob, dtype=np_dtype).astype(np.float32).tolist())
    return pa.array(out, pa.list_(pa.float32()))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="store-read")
        return _POOL


def _leaf_index(md: pq.FileMetaData, name: str) -> int:
    for j in range(md.num_columns):
        if md.schema.column(j).path == name:
            return j
    raise KeyError(name)


def _concat(chunks: list[tuple[str, pa.Table]], name: str) -> pa.ChunkedArray:
    return pa.chunked_array([c for _, t in chunks for c in t[name].chunks], type=chunks[0][1].schema.field(name).type)


def _as_table(frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise TypeError(f"expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}")


def _stat_item(root: Path, path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _walk_files(path: Path):
    for dirpath, _dirnames, filenames in os.walk(path):
        for n in filenames:
            if not layout.is_staging(n):
                yield Path(dirpath) / n
