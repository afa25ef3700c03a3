"""Atomic file writes: staging name in the same folder, flush + fsync, rename over the final name.

A reader (or a crash) sees either no file or the whole file, never a prefix. Staging names
(`<final>.tmp-<pid>-<random>`) never end in `.parquet`/`.png`, so globs on the final names skip them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import STAGING_MARK


def staging_path(final: Path) -> Path:
    final = Path(final)
    return final.with_name(f"{final.name}{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets you open a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(final: Path, write: Callable[[Any], None]) -> Path:
    """Call `write(fileobj)` on a staging file, fsync it, then rename it to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(final)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)
    return final


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    return atomic_write(final, lambda f: f.write(data))


def atomic_write_parquet(
    final: Path,
    table: pa.Table,
    metadata: Mapping[bytes, bytes] | None = None,
    **write_options: Any,
) -> Path:
    """Write `table` as Parquet atomically; `metadata` is merged into the schema key-value metadata.

    Page checksums are on by default so that `verify` can tell a flipped bit from good data.
    """
    write_options.setdefault("write_page_checksum", True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(metadata)
        table = table.replace_schema_metadata(merged)
    return atomic_write(final, lambda f: pq.write_table(table, f, **write_options))


def json_bytes(value: Any) -> bytes:
    """Canonical JSON (sorted keys) so equal settings always give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
