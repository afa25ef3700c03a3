"""Parquet footers of a store's parts, parsed once per (path, size, mtime), and the full check of a part."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq


class FooterCache:
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



def full_check(path: Path) -> str:
    """'' when the whole file decodes (with page checksums), else the reason."""
    try:
        pq.ParquetFile(path, page_checksum_verification=True).read()
        return ""
    except FileNotFoundError:
        return ""
    except Exception as e:
        return f"{type(e).__name__}: {e}"


