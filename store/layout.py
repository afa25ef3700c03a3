"""Paths and names of everything in a store folder.

One place decides where files live so that the writer, the readers and `verify` always agree.
Partition values (model, layer, run_id) live only in folder names (`key=value`, hive style).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

RUNS = "runs"
SAMPLES = "samples"
ACTIVATIONS = "activations"
IMAGES = "images"
TEXT_EMBEDDINGS = "text_embeddings"
CACHES = "caches"  # derived results: see store/derived.py
# Derived results of the layout before `caches/`: never read, pruned as stale.
PROJECTIONS = "projections"
DERIVED = "derived"
LEGACY_CACHE_TOPS = (PROJECTIONS, DERIVED)

TOP_LEVEL = (RUNS, SAMPLES, ACTIVATIONS, IMAGES, TEXT_EMBEDDINGS, CACHES, *LEGACY_CACHE_TOPS)

PROMPTS_FILE = "prompts.parquet"
STAGING_MARK = ".tmp-"

# Partition values become folder names and DuckDB hive values: keep them plain.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_PART_RE = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")
_IMAGE_RE = re.compile(r"^(\d{8})\.png$")
_PREVIEW_RE = re.compile(r"^(\d{8})\.step(0|[1-9]\d{0,4})\.png$")
MAX_PREVIEW_STEP = 32767  # preview_steps is list<int16>
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_name(kind: str, value: str) -> str:
    """Validate a model, layer or run id used as a folder name; return it unchanged."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > 200 or STAGING_MARK in value:
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits and . _ + - (not starting with a symbol, "
            f"no {STAGING_MARK!r}), at most 200 characters"
        )
    return value


def check_key(key: str) -> str:
    """Validate the key of a derived result (a file stem)."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or len(key) > 200 or STAGING_MARK in key:
        raise ValueError(f"invalid key {key!r}: use letters, digits and . _ + - (at most 200 characters)")
    return key


def sample_id(run_id: str, index: int) -> str:
    return f"{run_id}-{int(index):08d}"


def split_sample_id(sid: str) -> tuple[str, int]:
    """Inverse of `sample_id`: (run_id, index). Raises ValueError for a malformed id."""
    run_id, sep, idx = str(sid).rpartition("-")
    if not sep or not run_id or len(idx) < 8 or not idx.isdigit():
        raise ValueError(f"malformed sample_id {sid!r}: expected '<run_id>-<index:08d>'")
    return run_id, int(idx)


def part_name(first: int, last: int) -> str:
    if first < 0 or last < first:
        raise ValueError(f"bad index range {first}..{last}")
    return f"part-{first:08d}-{last:08d}.parquet"


def parse_part_name(name: str) -> tuple[int, int] | None:
    m = _PART_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def image_name(index: int) -> str:
    return f"{int(index):08d}.png"


def parse_image_name(name: str) -> int | None:
    m = _IMAGE_RE.match(name)
    return int(m.group(1)) if m else None


def preview_name(index: int, step: int) -> str:
    """File name of sample `index`'s x0 preview at sampling step `step`: `<index:08d>.step<step>.png`."""
    step = int(step)
    if not 0 <= step <= MAX_PREVIEW_STEP:
        raise ValueError(f"preview step must be in 0..{MAX_PREVIEW_STEP}, got {step}")
    return f"{int(index):08d}.step{step}.png"


def parse_preview_name(name: str) -> tuple[int, int] | None:
    """(index, step) of a preview file name, or None."""
    m = _PREVIEW_RE.match(name)
    if m is None or int(m.group(2)) > MAX_PREVIEW_STEP:
        return None
    return int(m.group(1)), int(m.group(2))


def is_staging(name: str) -> bool:
    return STAGING_MARK in name


def hive(key: str, value: str) -> str:
    return f"{key}={value}"


def parse_hive(name: str, key: str) -> str | None:
    prefix = key + "="
    if name.startswith(prefix) and _NAME_RE.match(name[len(prefix):]):
        return name[len(prefix):]
    return None


# -- folders -------------------------------------------------------------------------------------------

def run_manifest_path(root: Path, run_id: str) -> Path:
    return Path(root) / RUNS / f"{run_id}.parquet"


def samples_dir(root: Path, model: str, run_id: str) -> Path:
    return Path(root) / SAMPLES / hive("model", model) / hive("run_id", run_id)


def activations_dir(root: Path, model: str, layer: str, run_id: str) -> Path:
    return Path(root) / ACTIVATIONS / hive("model", model) / hive("layer", layer) / hive("run_id", run_id)


def images_dir(root: Path, model: str, run_id: str) -> Path:
    return Path(root) / IMAGES / hive("model", model) / hive("run_id", run_id)


def image_part_relpath(model: str, run_id: str, part: str) -> str:
    """The images part of a batch (format 2): same name as its samples part, e.g. `part-00000000-00000099.parquet`."""
    return f"{IMAGES}/{hive('model', model)}/{hive('run_id', run_id)}/{part}"


def image_relpath(model: str, run_id: str, index: int) -> str:
    """Format 1 stores: one PNG file per sample, `images/model=<m>/run_id=<r>/<index:08d>.png`."""
    return f"{IMAGES}/{hive('model', model)}/{hive('run_id', run_id)}/{image_name(index)}"


def preview_relpath(model: str, run_id: str, index: int, step: int) -> str:
    """Format 1 stores: previews beside the final image, `images/model=<m>/run_id=<r>/<index:08d>.step<k>.png`."""
    return f"{IMAGES}/{hive('model', model)}/{hive('run_id', run_id)}/{preview_name(index, step)}"


def text_embeddings_path(root: Path, model: str, run_id: str) -> Path:
    return Path(root) / TEXT_EMBEDDINGS / hive("model", model) / hive("run_id", run_id) / PROMPTS_FILE


# -- listing (no globbing library: plain scandir, sorted, staging files never match) --------------------

def _subdirs(path: Path, key: str) -> Iterator[tuple[str, Path]]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        value = parse_hive(e.name, key)
        if value is not None and e.is_dir():
            yield value, Path(e.path)


def list_parts(folder: Path) -> list[Path]:
    """Committed-looking part files of one partition folder, ordered by first index."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(folder) / n for n in sorted(n for n in names if _PART_RE.match(n))]


def models_in(root: Path, top: str) -> list[str]:
    return [m for m, _ in _subdirs(Path(root) / top, "model")]


def sample_partitions(root: Path, model: str | None = None) -> Iterator[tuple[str, str, Path]]:
    """(model, run_id, folder) for every samples partition folder."""
    models = [model] if model is not None else models_in(root, SAMPLES)
    for m in models:
        for run_id, folder in _subdirs(Path(root) / SAMPLES / hive("model", m), "run_id"):
            yield m, run_id, folder


def layers_in(root: Path, model: str) -> list[str]:
    return [layer for layer, _ in _subdirs(Path(root) / ACTIVATIONS / hive("model", model), "layer")]


def activation_partitions(root: Path, model: str, layer: str) -> Iterator[tuple[str, Path]]:
    """(run_id, folder) for every run folder of one (model, layer)."""
    yield from _subdirs(Path(root) / ACTIVATIONS / hive("model", model) / hive("layer", layer), "run_id")


def run_manifests(root: Path) -> list[Path]:
    folder = Path(root) / RUNS
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for n in sorted(names):
        if n.endswith(".parquet") and _NAME_RE.match(n[: -len(".parquet")]):
            out.append(folder / n)
    return out
