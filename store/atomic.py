"""Atomic file writes: staging name in the same folder, flush (+ fsync), rename over the final name.

A reader, or a process killed at any instant, sees either no file or the whole file, never a prefix:
that needs only flush + rename, because every process shares the page cache. `durable=True` also
fsyncs the file before the rename and its folder after, so the rename survives a power loss too.
Staging names (`<final>.tmp-<pid>-<random>`) never end in `.parquet`/`.png`, so globs on final names
skip them.
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


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (a no-op where directories cannot be opened)."""
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


def _write_staging(final: Path, write: Callable[[Any], None], durable: bool) -> Path:
    """Write a staging file next to `final` with `write(fileobj)` and flush (+ fsync) it."""
    return _staging_by_path(final, lambda tmp: _write_fileobj(tmp, write), durable)


def _write_fileobj(tmp: Path, write: Callable[[Any], None]) -> None:
    with open(tmp, "wb") as f:
        write(f)


def _staging_by_path(final: Path, write_path: Callable[[Path], None], durable: bool) -> Path:
    """Staging file written by `write_path(tmp)` (which closes it); fsynced when `durable`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(final)
    try:
        write_path(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _rename(tmp: Path, final: Path, durable: bool) -> Path:
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(final.parent)
    return final


def _parquet_writer(table: pa.Table, metadata: Mapping[bytes, bytes] | None, options: dict):
    """A `write_path(tmp)` for a Parquet file. pyarrow writes to the path natively: through a Python
    file object it makes many small calls and is several times slower."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(metadata)
        table = table.replace_schema_metadata(merged)
    # Page checksums let `verify` tell a flipped bit from good data.
    options.setdefault("write_page_checksum", True)
    return lambda tmp: pq.write_table(table, str(tmp), **options)


def atomic_write_parquet(final: Path, table: pa.Table, metadata: Mapping[bytes, bytes] | None = None,
                         durable: bool = True, **write_options: Any) -> Path:
    """Write `table` as Parquet atomically; `metadata` is merged into the schema key-value metadata."""
    final = Path(final)
    tmp = _staging_by_path(final, _parquet_writer(table, metadata, write_options), durable)
    return _rename(tmp, final, durable)


class StagedFiles:
    """Several files written to staging names first, then renamed together by `commit()`.

    With `durable`, each file is fsynced when written and each folder once after the renames (instead
    of once per file). Leaving the `with` block without `commit()` removes the staging files.
    """

    def __init__(self, durable: bool = True):
        self.durable = durable
        self._pending: list[tuple[Path, Path]] = []

    def write_bytes(self, final: Path, data: bytes) -> None:
        final = Path(final)
        self._pending.append((_write_staging(final, lambda f: f.write(data), self.durable), final))

    def write_parquet(self, final: Path, table: pa.Table, metadata: Mapping[bytes, bytes] | None = None,
                      **write_options: Any) -> None:
        final = Path(final)
        writer = _parquet_writer(table, metadata, write_options)
        self._pending.append((_staging_by_path(final, writer, self.durable), final))

    def commit(self) -> None:
        folders = []
        while self._pending:
            tmp, final = self._pending[0]
            os.replace(tmp, final)
            self._pending.pop(0)
            if final.parent not in folders:
                folders.append(final.parent)
        if self.durable:
            for folder in folders:
                fsync_dir(folder)

    def abort(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


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
