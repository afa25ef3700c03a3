"""`RunWriter`: appends whole batches to a run, atomically, and resumes after a crash.

A batch (indices first..last) is written in this order: its images part (the PNGs of its images and x0
previews), one activation part per layer, then its samples part. The samples part is the commit record:
until it exists nothing of the batch is visible to readers, and a writer that reopens the run deletes the
leftovers (`cleanup`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout, schema
from .atomic import StagedFiles, atomic_write_parquet, json_bytes
from .lru import LRU
from .png import as_image, encode_png

log = logging.getLogger(__name__)

THUMB_SIZE = 96

MANIFEST_REQUIRED = ("run_id", "model", "layers", "seed")
MANIFEST_OPTIONAL = (
    "family",
    "checkpoint",
    "checkpoint_sha256",
    "base_model",
    "reduce",
    "settings",
    "num_samples",
    "code_version",
    "device",
)
ACTIVATION_ENTRY_KEYS = ("step", "timestep", "sigma", "reduce", "layer_shape", "array")

# Vectors are near-incompressible float16: no compression, dictionary or statistics for them (speed);
# statistics on `step` (one row group per step, so a reader can skip the other steps).
_ACT_WRITE = dict(
    compression={"sample_id": "zstd", "step": "zstd", "timestep": "zstd", "sigma": "zstd", "reduce": "zstd",
                 "shape": "zstd", "layer_shape": "zstd", "dtype": "zstd", "vector": "none"},
    use_dictionary=["sample_id", "reduce", "dtype"],
    write_statistics=["step"],
)
_SAMPLES_WRITE = dict(compression="zstd")
# PNGs are compressed already; statistics on `index` let a reader go straight to a sample's row group.
_IMAGES_WRITE = dict(compression={"sample_id": "zstd", "index": "zstd", "step": "zstd", "png": "none"},
                     use_dictionary=False, write_statistics=["index"])


class ManifestMismatch(ValueError):
    """Reopening a run with identity fields that differ from its stored manifest."""

    def __init__(self, run_id: str, diffs: dict[str, tuple[Any, Any]]):
        self.run_id = run_id
        self.fields = list(diffs)
        self.diffs = diffs
        lines = [f"  {k}: stored {a!r} != given {b!r}" for k, (a, b) in diffs.items()]
        super().__init__(
            f"run {run_id!r} already exists with different {', '.join(self.fields)}:\n" + "\n".join(lines)
            + "\nUse a new run id, or the original settings to resume it."
        )


@functools.cache
def default_code_version() -> str:
    """Short git commit of this checkout (with `-dirty`), or 'unknown' outside git. Asked once per process:
    the process runs the code it imported, whatever happens to the checkout afterwards."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_manifest(path: Path) -> dict | None:
    """The one-row manifest at `path` as a dict, or None when missing."""
    try:
        rows = pq.ParquetFile(path).read().to_pylist()
    except FileNotFoundError:
        return None
    except Exception as e:
        raise ValueError(f"the run manifest {path} is unreadable ({type(e).__name__}: {e}); check the store with "
                         f"`python -m store verify`, or delete the file to reopen the run with a new manifest") from e
    if len(rows) != 1:
        raise ValueError(f"the run manifest {path} has {len(rows)} rows, expected 1")
    return rows[0]


def _canon(field: str, value: Any) -> Any:
    """Comparable form of an identity field."""
    if field in schema.JSON_FIELDS:
        if isinstance(value, (str, bytes)):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        return json_bytes(value).decode()
    if field == "layers":
        return list(value or [])
    if field == "seed":
        return None if value is None else int(value)
    return value


def make_thumbnail(image, size: int = THUMB_SIZE) -> bytes:
    """WebP thumbnail, longest side `size` px, of a PIL image."""
    thumb = image
    if max(image.size) > size:
        thumb = image.copy()
        thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=80, method=0)  # fastest encoder: 2-3x quicker, a few % larger
    return buf.getvalue()


def _pil(a: np.ndarray):
    """A PIL image viewing a uint8 (H, W, C) array from `as_image`."""
    from PIL import Image

    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


class RunWriter:
    """Writes one run of a store. One writer process per (run, rank).

    `manifest` keys: run_id, model, layers, seed (required); family, checkpoint, checkpoint_sha256,
    base_model, reduce, settings, num_samples, code_version, device (optional). `reduce` and `settings`
    are stored as JSON. Only rank 0 writes the manifest; every rank writes its own batches.
    `durable=False` skips fsync: batches stay atomic for readers and survive a killed process, but
    not necessarily a power loss.
    """

    def __init__(self, root: str | os.PathLike, manifest: Mapping[str, Any], rank: int = 0, world_size: int = 1,
                 durable: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.root = Path(root)
        self.durable = durable
        self.rank = rank
        self.world_size = world_size
        self.manifest = self._normalise(manifest)
        self.run_id: str = self.manifest["run_id"]
        self.model: str = self.manifest["model"]
        self.layers: list[str] = self.manifest["layers"]
        self._manifest_path = layout.run_manifest_path(self.root, self.run_id)
        self._finished = False

        stored = read_manifest(self._manifest_path)
        if stored is not None:
            diffs = {}
            for f in schema.IDENTITY_FIELDS:
                a, b = _canon(f, stored.get(f)), _canon(f, self.manifest.get(f))
                if a != b:
                    diffs[f] = (a, b)
            if diffs:
                raise ManifestMismatch(self.run_id, diffs)
            self._created_at = stored.get("created_at")
        else:
            self._created_at = None
        if world_size == 1:
            self.cleanup()
        self._done = set(self.done_indices().tolist())
        if rank == 0:
            self._write_manifest("running")

    # -- manifest ---------------------------------------------------------------------------------------

    @staticmethod
    def _normalise(manifest: Mapping[str, Any]) -> dict:
        if not isinstance(manifest, Mapping):
            raise TypeError(f"manifest must be a dict, got {type(manifest).__name__}")
        missing = [k for k in MANIFEST_REQUIRED if manifest.get(k) is None]
        unknown = [k for k in manifest if k not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
        if missing or unknown:
            raise ValueError(
                f"bad manifest: missing {missing}, unknown {unknown}; valid keys: "
                f"{list(MANIFEST_REQUIRED)} (required) + {list(MANIFEST_OPTIONAL)}"
            )
        m = {k: manifest.get(k) for k in MANIFEST_REQUIRED + MANIFEST_OPTIONAL}
        layout.check_name("run_id", m["run_id"])
        layout.check_name("model", m["model"])
        if isinstance(m["layers"], str):
            raise TypeError("manifest['layers'] must be a list of layer names, not a string")
        m["layers"] = [layout.check_name("layer", str(x)) for x in m["layers"]]
        if len(set(m["layers"])) != len(m["layers"]):
            raise ValueError(f"duplicate layers in manifest: {m['layers']}")
        m["seed"] = int(m["seed"])
        for k in schema.JSON_FIELDS:
            v = m[k]
            m[k] = json_bytes({} if v is None else v).decode() if not isinstance(v, str) else v
        if m["num_samples"] is not None:
            m["num_samples"] = int(m["num_samples"])
        if m["code_version"] is None:
            m["code_version"] = default_code_version()
        for k in ("family", "checkpoint", "checkpoint_sha256", "base_model", "device", "code_version"):
            if m[k] is not None:
                m[k] = str(m[k])
        return m

    def _write_manifest(self, status: str) -> dict:
        now = datetime.now(UTC)
        if self._created_at is None:
            self._created_at = now
        row = dict(self.manifest)
        row.update(
            # other ranks commit too: count from disk unless this writer is the only one
            num_done=len(self._done) if self.world_size == 1 else len(self.done_indices()),
            status=status,
            created_at=self._created_at,
            updated_at=now,
            format_version=schema.FORMAT_VERSION,
        )
        table = pa.Table.from_pylist([row], schema=schema.RUNS)
        atomic_write_parquet(self._manifest_path, table, durable=self.durable)
        return row

    # -- state ------------------------------------------------------------------------------------------

    def done_indices(self) -> np.ndarray:
        """Sorted indices committed (samples part written) by any rank of this run."""
        parts = layout.list_parts(layout.samples_dir(self.root, self.model, self.run_id))
        # a damaged commit record means the batch is not done: `cleanup` removes it and the batch is redone
        chunks = [idx for p in parts if (idx := _committed_indices(p)) is not None]
        if not chunks:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(chunks).astype(np.int64))

    def cleanup(self) -> dict[str, int]:
        """Delete staging leftovers and orphans (files of batches without an intact samples part) of this run,
        and damaged samples parts (their batches are generated again).

        Only safe while no other writer of this run is active: the constructor calls it when
        world_size == 1; with several ranks, call it on rank 0 before the others start writing.
        """
        removed = {"staging": 0, "damaged_samples": 0, "orphan_activations": 0, "orphan_images": 0,
                   "orphan_previews": 0}
        sdir = layout.samples_dir(self.root, self.model, self.run_id)
        idir = layout.images_dir(self.root, self.model, self.run_id)
        adirs = [d for layer in layout.layers_in(self.root, self.model)
                 for run, d in layout.activation_partitions(self.root, self.model, layer) if run == self.run_id]
        folders = [sdir, idir, self._manifest_path.parent,
                   layout.text_embeddings_path(self.root, self.model, self.run_id).parent, *adirs]
        for folder in folders:
            for name in _names(folder):
                if not layout.is_staging(name):
                    continue
                if folder == self._manifest_path.parent and not name.startswith(self._manifest_path.name):
                    continue
                removed["staging"] += _unlink(folder / name)
        committed = set()
        for p in layout.list_parts(sdir):
            if _committed_indices(p) is not None:
                committed.add(p.name)
            else:
                removed["damaged_samples"] += _unlink(p)
        for d in adirs:
            for p in layout.list_parts(d):
                if p.name not in committed:
                    removed["orphan_activations"] += _unlink(p)
        for p in layout.list_parts(idir):
            if p.name not in committed:
                removed["orphan_images"] += _unlink(p)
        self._cleanup_png_files(idir, removed)
        if any(removed.values()):
            log.info("run %s: removed %s", self.run_id, removed)
        return removed

    def _cleanup_png_files(self, idir: Path, removed: dict[str, int]) -> None:
        """Format 1 stores kept one PNG file per image and preview: delete those of uncommitted batches."""
        names = [n for n in _names(idir) if n.endswith(".png")]
        if not names:
            return
        done = set(self.done_indices().tolist())
        previews: dict[int, set[int]] | None = None  # read only when the folder holds preview files
        for name in names:
            idx = layout.parse_image_name(name)
            if idx is not None and idx not in done:
                removed["orphan_images"] += _unlink(idir / name)
            pv = layout.parse_preview_name(name)
            if pv is not None:
                if previews is None:
                    previews = self.committed_previews()
                if pv[1] not in previews.get(pv[0], ()):  # uncommitted batch, or a step its sample does not list
                    removed["orphan_previews"] += _unlink(idir / name)

    def committed_previews(self) -> dict[int, set[int]]:
        """index -> the preview steps its committed samples row lists (indices without previews left out)."""
        out: dict[int, set[int]] = {}
        for p in layout.list_parts(layout.samples_dir(self.root, self.model, self.run_id)):
            try:
                pf = pq.ParquetFile(p)
                if "preview_steps" not in pf.schema_arrow.names:
                    continue
                t = pf.read(columns=["index", "preview_steps"])
            except Exception as e:  # unreadable commit record: its batch is not done
                log.warning("skipping unreadable samples part %s: %s", p, e)
                continue
            for i, steps in zip(t["index"].to_pylist(), t["preview_steps"].to_pylist(), strict=True):
                if steps:
                    out[int(i)] = set(steps)
        return out

    # -- writing ----------------------------------------------------------------------------------------

    def write_batch(
        self,
        indices: Sequence[int] | np.ndarray,
        samples: Sequence[Mapping[str, Any]],
        images: Sequence[np.ndarray] | None,
        activations: Mapping[str, Sequence[Mapping[str, Any]]],
        previews: Mapping[int, Sequence[np.ndarray]] | None = None,
    ) -> str:
        """Write one batch; returns its part name. `images` may be None (no images, no thumbs).

        `activations[layer]` is a list of dicts, one per step: step, timestep (None for EDM), sigma,
        reduce ('mean' | 'pool4' | 'full'), layer_shape (C, H, W), array (B, ...) with rows in `indices` order.
        `previews` maps a sampling step to the batch's x0 preview images of that step (B uint8 arrays, or one
        (B, H, W, C) array), rows in `indices` order; each becomes a row (its step) of the images part beside
        the final image, and the samples' `preview_steps` lists the steps. None or {}: no previews.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        b = len(idx)
        if b == 0:
            raise ValueError("empty batch")
        if idx.min() < 0 or np.any(np.diff(idx) <= 0):
            raise ValueError(f"indices must be non-negative and strictly increasing, got {idx.tolist()[:20]}")
        if len(samples) != b or (images is not None and len(images) != b):
            raise ValueError(f"{b} indices but {len(samples)} samples and "
                             f"{'no' if images is None else len(images)} images")
        again = sorted(self._done.intersection(idx.tolist()))
        if again:
            raise ValueError(f"indices already committed in run {self.run_id!r}: {again[:20]}")
        given, expected = set(activations), set(self.layers)
        if given != expected:
            raise ValueError(f"activations must have exactly the run's layers {self.layers}; "
                             f"missing {sorted(expected - given)}, unknown {sorted(given - expected)}")
        name = layout.part_name(int(idx[0]), int(idx[-1]))
        sids = [layout.sample_id(self.run_id, i) for i in idx.tolist()]

        # Encode and validate everything first, so that bad input leaves no file behind.
        thumbs: list[bytes | None] = [None] * b
        sizes: list[tuple[int | None, int | None]] = [(None, None)] * b
        finals: list[bytes] | None = None
        if images is not None:
            finals = []
            for j, arr in enumerate(images):
                a = as_image(arr)
                finals.append(encode_png(a))
                thumbs[j], sizes[j] = make_thumbnail(_pil(a)), (a.shape[1], a.shape[0])
        preview_pngs = _preview_pngs(b, previews)
        steps = [k for k, _ in preview_pngs] or None
        images_table = _images_table(idx, sids, finals, preview_pngs)
        image_part = layout.image_part_relpath(self.model, self.run_id, name)
        paths = [image_part if images_table is not None else None] * b
        tables = {layer: _activation_table(layer, sids, activations[layer]) for layer in self.layers}
        samples_table = self._samples_table(idx, sids, samples, thumbs, sizes, paths, steps)

        with StagedFiles(self.durable) as staged:
            if images_table is not None:  # 1. the batch's PNGs
                staged.write_parquet(self.root / image_part, images_table,
                                     row_group_size=_image_rows_per_group(images_table, b), **_IMAGES_WRITE)
            for layer, table in tables.items():  # 2. one activation part per layer
                staged.write_parquet(layout.activations_dir(self.root, self.model, layer, self.run_id) / name,
                                     table, row_group_size=b, **_ACT_WRITE)
            staged.commit()
        # 3. the commit record, written last
        atomic_write_parquet(layout.samples_dir(self.root, self.model, self.run_id) / name, samples_table,
                             durable=self.durable, **_SAMPLES_WRITE)
        self._done.update(idx.tolist())
        return name

    def _samples_table(self, idx, sids, samples, thumbs, sizes, paths, preview_steps=None) -> pa.Table:
        allowed = set(schema.SAMPLE_INPUT_FIELDS) | {"width", "height"}
        for j, s in enumerate(samples):
            if not allowed.issuperset(s):
                raise ValueError(f"unknown sample fields {sorted(set(s) - allowed)}; valid: {sorted(allowed)}")
            if s.get("seed") is None:
                raise ValueError(f"sample {j} has no 'seed'")
        data: dict[str, Any] = {f: [s.get(f) for s in samples] for f in schema.SAMPLE_INPUT_FIELDS}
        data["width"] = [w if w is not None else s.get("width") for (w, _), s in zip(sizes, samples, strict=True)]
        data["height"] = [h if h is not None else s.get("height") for (_, h), s in zip(sizes, samples, strict=True)]
        data.update(sample_id=sids, index=idx, image_path=paths, thumb=thumbs,
                    preview_steps=[preview_steps] * len(sids))
        return pa.Table.from_arrays([pa.array(data[f.name], f.type) for f in schema.SAMPLES],
                                    schema=schema.SAMPLES)

    def write_text_embeddings(self, table) -> Path:
        """Write the pooled text embedding per prompt: columns prompt_index, prompt, category, embedding.

        `table` is a pyarrow Table, pandas DataFrame or dict of columns; `embedding` may be a 2-D array.
        """
        if isinstance(table, pa.Table):
            cols = {n: table.column(n) for n in table.column_names}
        elif hasattr(table, "columns") and hasattr(table, "iloc"):  # pandas DataFrame
            cols = {c: table[c] for c in table.columns}
        else:
            cols = dict(table)
        missing = [c for c in ("prompt_index", "prompt", "embedding") if c not in cols]
        if missing:
            raise ValueError(f"text embeddings need columns prompt_index, prompt, category, embedding; "
                             f"missing {missing}")
        emb = _matrix(cols["embedding"])
        n, dim = emb.shape
        vec = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).reshape(-1)), dim)
        out = pa.Table.from_arrays(
            [_column(cols["prompt_index"], pa.int32()), _column(cols["prompt"], pa.string()),
             _column(cols.get("category", [None] * n), pa.string()), vec],
            schema=schema.text_embeddings_schema(dim),
        )
        return atomic_write_parquet(layout.text_embeddings_path(self.root, self.model, self.run_id), out,
                                    compression="zstd")

    def finish(self, status: str = "complete") -> dict | None:
        """Record the final status and counts (rank 0 only; other ranks just stop). Returns the manifest row."""
        if status not in schema.RUN_STATUSES:
            raise ValueError(f"status must be one of {schema.RUN_STATUSES}, got {status!r}")
        self._finished = True
        if self.rank != 0:
            return None
        return self._write_manifest(status)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.finish("interrupted" if exc_type is not None else "complete")


def _preview_pngs(b: int, previews) -> list[tuple[int, list[bytes]]]:
    """[(step, PNG per sample)] of a batch's x0 previews in step order, validated and encoded."""
    if not previews:
        return []
    if not isinstance(previews, Mapping):
        raise TypeError(f"previews must be a dict step -> images, got {type(previews).__name__}")
    out = []
    for step, images in sorted(previews.items(), key=lambda kv: int(kv[0])):
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) \
                or not 0 <= int(step) <= layout.MAX_PREVIEW_STEP:
            raise ValueError(f"preview steps must be integers in 0..{layout.MAX_PREVIEW_STEP}, got {step!r}")
        if images is None or len(images) != b:
            raise ValueError(f"previews of step {step}: need {b} images (one per index), "
                             f"got {'none' if images is None else len(images)}")
        out.append((int(step), [encode_png(arr) for arr in images]))
    return out


IMAGE_ROW_GROUP_BYTES = 1 << 20


def _image_rows_per_group(table: pa.Table, b: int) -> int:
    """Whole samples per row group, about 1 MiB of PNG each: a reader fetching one image reads that much,
    and small images (the demo's 16 px digits) are not split into hundreds of tiny groups."""
    per_sample = table.num_rows // b
    sample_bytes = max(1, table["png"].nbytes // b)
    return per_sample * max(1, IMAGE_ROW_GROUP_BYTES // sample_bytes)


def _images_table(idx: np.ndarray, sids: list[str], finals: list[bytes] | None,
                  previews: list[tuple[int, list[bytes]]]) -> pa.Table | None:
    """The batch's images part: per sample its final image (step null) then its previews; None without PNGs."""
    steps: list[int | None] = ([None] if finals is not None else []) + [k for k, _ in previews]
    if not steps:
        return None
    columns = ([finals] if finals is not None else []) + [pngs for _, pngs in previews]
    per = len(steps)
    return pa.Table.from_arrays(
        [pa.array(np.repeat(np.asarray(sids, dtype=object), per), pa.string()),
         pa.array(np.repeat(idx, per), pa.int64()),
         pa.array(steps * len(idx), pa.int16()),
         pa.array([png for row in zip(*columns, strict=True) for png in row], pa.binary())],
        schema=schema.IMAGES)


def _activation_table(layer: str, sids: list[str], entries: Sequence[Mapping[str, Any]]) -> pa.Table:
    b = len(sids)
    if not entries:
        raise ValueError(f"layer {layer!r}: no steps recorded")
    entries = sorted(entries, key=lambda e: int(e["step"]))
    steps = [int(e["step"]) for e in entries]
    if len(set(steps)) != len(steps):
        raise ValueError(f"layer {layer!r}: duplicate steps {steps}")
    arrays, shape = [], None
    for e in entries:
        unknown = set(e) - set(ACTIVATION_ENTRY_KEYS)
        if unknown or "array" not in e:
            raise ValueError(f"layer {layer!r}: activation entries need keys {list(ACTIVATION_ENTRY_KEYS)}, "
                             f"unknown {sorted(unknown)}")
        if e.get("reduce") not in schema.REDUCTIONS:
            raise ValueError(f"layer {layer!r}: reduce must be one of {schema.REDUCTIONS}, got {e.get('reduce')!r}")
        a = np.asarray(e["array"])
        if a.ndim < 2 or a.shape[0] != b:
            raise ValueError(f"layer {layer!r} step {e['step']}: array must be (batch={b}, ...), got {a.shape}")
        if shape is None:
            shape = a.shape[1:]
        elif a.shape[1:] != shape:
            raise ValueError(f"layer {layer!r}: steps have different shapes {shape} and {a.shape[1:]}")
        arrays.append(a.reshape(b, -1))
    dim = int(np.prod(shape))
    s = len(entries)
    dtype = "float16"
    if dim == 0:
        raise ValueError(f"layer {layer!r}: empty vectors (shape {shape})")
    if not _overflows_float16(arrays):
        if s == 1:
            flat = np.ascontiguousarray(_to_float16(arrays[0]))
        else:
            flat = np.empty((s * b, dim), dtype=np.float16)
            for k, a in enumerate(arrays):
                flat[k * b:(k + 1) * b] = _to_float16(a)
    else:
        # float16 overflowed (|x| > 65504): keep this part in float32 rather than lose the values.
        log.warning("layer %r: values exceed the float16 range; storing this part as float32", layer)
        flat = np.ascontiguousarray(np.concatenate(arrays), dtype="<f4")
        dtype = "float32"
    vec_type = pa.binary(dim * schema.VECTOR_DTYPES[dtype])
    vec = pa.FixedSizeBinaryArray.from_buffers(vec_type, s * b, [None, pa.py_buffer(flat)])
    rows = np.repeat(np.arange(s), b)  # row -> its step entry; rows are ordered (step, index)

    def per_step(values, typ):
        return pa.array(values, typ).take(rows)

    def opt_float(v):
        return None if v is None else float(v)

    return pa.Table.from_arrays(
        [
            pa.array(sids * s, pa.string()),
            pa.array(np.repeat(np.asarray(steps, dtype=np.int16), b)),
            per_step([opt_float(e.get("timestep")) for e in entries], pa.float32()),
            per_step([opt_float(e.get("sigma")) for e in entries], pa.float32()),
            per_step([e["reduce"] for e in entries], pa.string()),
            per_step([[int(x) for x in shape]] * s, pa.list_(pa.int32())),
            per_step([None if e.get("layer_shape") is None else [int(x) for x in e["layer_shape"]]
                      for e in entries], pa.list_(pa.int32())),
            per_step([dtype] * s, pa.string()),
            vec,
        ],
        schema=schema.activations_schema(dim, dtype),
    )


def _overflows_float16(arrays: list[np.ndarray]) -> bool:
    """Whether a finite value is beyond the float16 range (two reductions, no temporaries)."""
    for a in arrays:
        if a.dtype.kind != "f" or a.dtype.itemsize <= 2 or a.size == 0:
            continue
        hi, lo = float(a.max()), float(a.min())
        if np.isfinite(hi) and np.isfinite(lo):
            if max(hi, -lo) > schema.FLOAT16_MAX:
                return True
        elif np.any(np.isfinite(a) & (np.abs(a) > schema.FLOAT16_MAX)):  # inf/nan present: look closer
            return True
    return False


def _to_float16(a: np.ndarray) -> np.ndarray:
    """float16 copy of `a`; Arrow's cast is ~3x faster than numpy's for float32 and rounds identically."""
    if a.dtype == np.float32 and a.flags.c_contiguous:
        h = pc.cast(pa.array(a.reshape(-1)), pa.float16(), safe=False)
        return np.frombuffer(h.buffers()[1], dtype=np.float16, count=a.size).reshape(a.shape)
    return a.astype(np.float16)


def _matrix(values) -> np.ndarray:
    """A 2-D float array from an ndarray, a list of vectors, or an Arrow list column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.FixedSizeListArray) and values.null_count == 0:
        flat = values.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(values), values.type.list_size)
    if isinstance(values, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
        values = values.to_pylist()
    m = np.asarray(values) if isinstance(values, np.ndarray) else np.stack([np.asarray(v) for v in values])
    if m.ndim != 2:
        raise ValueError(f"embedding must be 2-D (rows, dim), got shape {m.shape}")
    return m


def _column(values, typ: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks().cast(typ)
    if isinstance(values, pa.Array):
        return values.cast(typ)
    return pa.array(list(values), typ)


def _names(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


# (path, inode, size, mtime) of an intact samples part -> the indices it commits: a part is written once under
# its final name (atomic rename), so a writer reopening a run (an edit run gains a part per edit) checks each
# part once per process, and again when it is replaced. Only parts whose mtime is older than RACY_NS are kept:
# a file changed again within the file system's timestamp granularity (a clock tick, 1-10 ms) could keep its
# mtime ("racy git"); one checked later than that gets a new mtime when it changes
_COMMITTED: LRU[tuple, np.ndarray] = LRU(max_items=65_536)
RACY_NS = 100_000_000


def _committed_indices(path: Path) -> np.ndarray | None:
    """The indices that the samples part at `path` commits, or None when its content is damaged (footer or
    any page, checksums verified). An I/O error reading the file is raised, never taken for damage."""
    try:
        st = os.stat(path)
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if (known := _COMMITTED.get(key)) is not None:
            return known
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        # single-threaded: starting pyarrow's thread pool here made torchrun ranks abort at exit ("terminate
        # called without an active exception") in about 1 run in 6; a samples part is small
        indices = pf.read(use_threads=False).column("index").to_numpy()
    except Exception as e:
        log.warning("samples part %s is damaged (%s: %s): its batch counts as not done", path,
                    type(e).__name__, e)
        return None
    if time.time_ns() - st.st_mtime_ns > RACY_NS:
        _COMMITTED.put(key, indices)
    return indices
