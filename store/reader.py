"""`Store`: read a store folder through DuckDB (metadata) and pyarrow (activation matrices).

Readers build their own file lists (only final `part-*.parquet` names, never staging files), check each
file's Parquet footer once (cached by path, size and mtime), skip corrupt files with a warning naming
them, and hand DuckDB the explicit list. Activations are only read for committed batches: an activation
part counts only when its run has a samples part of the same name, and its rows are joined to the
committed sample ids. Every query uses its own DuckDB cursor, so one `Store` serves many threads.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout, schema, versions
from .derived import Derived
from .footers import FooterCache, full_check
from .vectors import Activations, assemble, empty_activations, vector_values_udf

log = logging.getLogger(__name__)

_STEP_COLUMNS = ["sample_id", "step", "timestep", "sigma", "dtype", "vector"]
_SHAPE_COLUMNS = ["reduce", "shape", "layer_shape"]
_HIVE = "hive_partitioning=true, hive_types_autocast=false, union_by_name=true"
_FULL_CHECK = ("samples", "runs")  # kinds checked in full (page checksums) on their first read
_VERIFY = dict(page_checksum_verification=True)  # pyarrow reads: a damaged page raises, never decodes

# DuckDB types of each view, used to build an empty view when a store has no files yet.
_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT",
    pa.float32(): "FLOAT", pa.binary(): "BLOB", pa.list_(pa.int32()): "INTEGER[]",
    pa.list_(pa.string()): "VARCHAR[]", pa.list_(pa.int16()): "SMALLINT[]", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}
SAMPLE_COLUMNS = schema.SAMPLE_COLUMNS  # file columns and partition values, declared in store/schema.py


def _checkpoint_step(settings) -> int | None:
    """`checkpoint_step` of a manifest's settings (a JSON string), or None."""
    try:
        step = json.loads(settings).get("checkpoint_step") if isinstance(settings, str) else None
    except (ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


class Store:
    """Read access to a store folder. Cheap to create; safe to share between threads."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._con: duckdb.DuckDBPyConnection | None = None  # opened on first use (costs ~30 ms)
        self._con_lock = threading.Lock()
        self._footers = FooterCache()
        self._skip_lock = threading.Lock()
        self.skipped: list[str] = []
        self._ids_cache: dict[tuple, pa.Table] = {}
        self._kinds: tuple[tuple, dict[str, str]] | None = None  # (manifest files' stats, run_id -> kind)

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
        # The parts DuckDB reads (samples, manifests; small) are checked in full with their page checksums
        # the first time (DuckDB does not verify checksums); pyarrow verifies the pages it reads of the others.
        md, err = self._footers.get(path, schema.REQUIRED[kind], full=kind in _FULL_CHECK)
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
                con.create_function("vector_values", vector_values_udf, ["BLOB", "VARCHAR"], "FLOAT[]",
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
                    err = full_check(p)
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
        """One row per run manifest, oldest first. `reduce` and `settings` are JSON strings; `checkpoint_step`
        (nullable Int64) is the training step of the run's checkpoint where its settings record one."""
        files = self._run_files()
        cols = [f.name for f in schema.RUNS]
        df = self._scan(files, "runs", lambda src: f"SELECT * FROM {src} ORDER BY created_at, run_id") \
            if files else None
        if df is None:
            df = _empty_frame(schema.RUNS)
        df = df[[c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]]
        df["checkpoint_step"] = pd.array([_checkpoint_step(s) for s in df["settings"]], dtype="Int64")
        return df

    def checkpoint_runs(self, model: str) -> pd.DataFrame:
        """The runs of `model` that record a checkpoint step, in training order (step, then creation): the
        runs of several checkpoints of one model, as `generate` writes them (pipeline/generate.py)."""
        runs = self.runs()
        runs = runs[(runs["model"] == model) & runs["checkpoint_step"].notna()]
        return runs.sort_values(["checkpoint_step", "created_at", "run_id"], kind="stable").reset_index(drop=True)

    def manifest(self, run_id: str) -> dict | None:
        """The manifest of one run as a dict with `reduce`/`settings` parsed, or None."""
        path = layout.run_manifest_path(self.root, layout.check_name("run_id", run_id))
        if not self._good(path, "runs"):
            return None
        row = pq.read_table(path, **_VERIFY).to_pylist()[0]
        for k in schema.JSON_FIELDS:
            if isinstance(row.get(k), str):
                row[k] = json.loads(row[k])
        return row

    def run_kinds(self) -> dict[str, str]:
        """run_id -> what its samples are (`schema.run_kind` of its manifest's settings: generated, real, edit,
        teacher), for every run with a manifest. Cached until a manifest file changes."""
        files = self._run_files()
        stamp = tuple((str(p), *_stat(p)) for p in files)
        cached = self._kinds
        if cached is not None and cached[0] == stamp:
            return dict(cached[1])
        runs = self.runs()
        kinds = {str(r): schema.run_kind(s) for r, s in zip(runs["run_id"], runs["settings"], strict=True)} \
            if len(runs) and "settings" in runs.columns else {}
        self._kinds = (stamp, kinds)
        return dict(kinds)

    def _run_kind_sql(self) -> str:
        """`run_kind` as a SQL expression of `run_id` (runs without a manifest hold generated samples)."""
        special = {r: k for r, k in self.run_kinds().items() if k != schema.GENERATED_KIND}
        default = _sql_text(schema.GENERATED_KIND)
        if not special:
            return f"{default} AS run_kind"
        cases = " ".join(f"WHEN {_sql_text(r)} THEN {_sql_text(k)}" for r, k in sorted(special.items()))
        return f"CAST(CASE run_id {cases} ELSE {default} END AS VARCHAR) AS run_kind"

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
        """Distinct (step, timestep, sigma) recorded for `model` (one layer, or its first layer), with `runs`:
        how many runs record that row. `attrs["runs"]` is the number of runs with activations of the layer (what
        `pipeline.features.default_step` weighs `runs` against)."""
        empty = pd.DataFrame({"step": pd.Series(dtype="int64"), "timestep": pd.Series(dtype="float64"),
                              "sigma": pd.Series(dtype="float64"), "runs": pd.Series(dtype="int64")})
        empty.attrs["runs"] = 0
        layers = [layer] if layer is not None else self.layers(model)[:1]
        if not layers:
            return empty
        first_per_run: dict[str, Path] = {}
        for run, p in self._activation_parts(model, layers[0]):
            first_per_run.setdefault(run, p)  # every batch of a run records the same steps
        tables = []
        for p in first_per_run.values():
            try:
                t = pq.read_table(p, columns=["step", "timestep", "sigma"], **_VERIFY)
            except Exception as e:
                self._footers.mark_bad(p, str(e))
                self._skip(p, f"{type(e).__name__}: {e}")
                continue
            tables.append(t.to_pandas().drop_duplicates())  # one row per step (and sigma) of this run
        if not tables:
            return empty
        df = pd.concat(tables, ignore_index=True)
        df["step"] = df["step"].astype("int64")
        df["timestep"] = df["timestep"].astype("float64")
        df["sigma"] = df["sigma"].astype("float64")
        df = df.groupby(["step", "timestep", "sigma"], dropna=False, sort=False).size().rename("runs").reset_index()
        df["runs"] = df["runs"].astype("int64")
        df = df.sort_values(["step", "sigma"], ascending=[True, False]).reset_index(drop=True)
        df.attrs["runs"] = len(tables)
        return df

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
        derived = {"run_kind": self._run_kind_sql} if "run_kind" in cols else {}
        select = ", ".join(derived[c]() if c in derived else _null_of(c) if c in absent else _q(c) for c in cols)
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
            t = pq.ParquetFile(path, metadata=md, **_VERIFY).read_row_groups(groups, columns=["index", "step", "png"])
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
            t = pq.ParquetFile(path, metadata=md, **_VERIFY).read(columns=["sample_id", "index"])
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
                return empty_activations(model, layer, step)  # nothing written yet
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
            return empty_activations(model, layer, step)

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
            return run, p, self._read_step(p, step, ids_of[run])

        # pyarrow releases the GIL while it reads: many small parts go faster on a few threads
        results = [r for r in (_pool().map(read, parts) if len(parts) > 8 else map(read, parts))
                   if r[2] is not None and r[2].num_rows]
        info = None
        while results and info is None:  # from a part that was read, and whose shape columns are intact
            info = self._shape_info(results[0][1])
            if info is None:
                results.pop(0)
        if not results:
            return empty_activations(model, layer, step)
        return assemble([(run, t) for run, _p, t in results], order_ids, model, layer, step, info)

    def _shape_info(self, path: Path) -> dict | None:
        """reduce, shape and layer_shape of a part (one value for all its rows), from its first row; None
        (the part skipped) when they do not read."""
        md = self._good(path, "activations")
        try:
            t = pq.ParquetFile(path, metadata=md, **_VERIFY).read_row_group(0, columns=_SHAPE_COLUMNS)
        except Exception as e:
            self._footers.mark_bad(path, str(e))
            self._skip(path, f"{type(e).__name__}: {e}")
            return None
        rows = t.slice(0, 1).to_pylist()
        return rows[0] if rows else {}

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
                steps.update(pq.read_table(p, columns=["step"], **_VERIFY)["step"].to_pylist())
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
            t = pq.ParquetFile(path, metadata=md, **_VERIFY).read_row_groups(groups, columns=_STEP_COLUMNS)
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
                t = pq.read_table(p, **_VERIFY)
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

    DATA_SCOPES = versions.SCOPES

    def data_version(self, model: str | None = None, layer: str | None = None,
                     run_ids: Iterable[str] | None = None, *, scope: str | None = None) -> str:
        """Short hash of the committed files behind a scope: it changes when a batch is committed (or a
        manifest or prompts file rewritten) inside it, and only then. From names, sizes and mtimes: never
        from the data. The one "has the data changed" fingerprint of the project. Scopes:

        ``layer``   (model and layer given) the samples parts of `model` and the layer's committed parts;
        ``model``   (model given) the samples parts and text embeddings of `model`;
        ``samples`` the samples parts (of `model`, or of every model): the samples metadata;
        ``store``   everything committed: every model's samples, activation and text-embedding files, and
                    the run manifests.
        `run_ids` restricts every scope but ``store`` to those runs. The default scope follows the arguments.
        """
        return versions.data_version(self.root, model, layer, run_ids, scope)

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

    # -- derived results --------------------------------------------------------------------------------------

    @functools.cached_property
    def derived(self) -> Derived:
        """Maps, kNN graphs, PCA features and other results computed from this store (`store.derived`)."""
        return Derived(self)

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
        sample_cols = {f.name: f.type for f in schema.SAMPLES} | {"model": pa.string(), "run_id": pa.string(),
                                                                  "run_kind": pa.string()}
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
                    star += f", {self._run_kind_sql()}"  # derived from the manifests
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

def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _null_of(column: str) -> str:
    """`CAST(NULL AS <type>) AS "<column>"` for a samples column."""
    typ = {f.name: f.type for f in schema.SAMPLES}[column]
    return f"CAST(NULL AS {_DUCK_TYPES[typ]}) AS {_q(column)}"


def _sql_text(text: str) -> str:
    """A SQL string literal of `text` (quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return 0, 0


def _read_parquet(files: Sequence[Path], hive: bool = True) -> str:
    lst = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    return f"read_parquet({lst}, {_HIVE})" if hive else f"read_parquet({lst}, union_by_name=true)"


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # missing or unreadable: `python -m store verify` reports it
        return None


def _empty_frame(sch: pa.Schema) -> pd.DataFrame:
    return sch.empty_table().to_pandas()


def _empty_samples(cols: Sequence[str]) -> pd.DataFrame:
    types = {f.name: f.type for f in schema.SAMPLES} | {"model": pa.string(), "run_id": pa.string(),
                                                        "run_kind": pa.string()}
    return pa.schema([(c, types[c]) for c in cols]).empty_table().to_pandas()


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


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _walk_files(path: Path):
    for dirpath, _dirnames, filenames in os.walk(path):
        for n in filenames:
            if not layout.is_staging(n):
                yield Path(dirpath) / n
