"""Parquet footers of a store's parts, parsed once per (path, size, mtime), and the full check of a part."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq


class FooterCache:
    """Parquet footers by (path, size, mtime_ns): each file is parsed once while it does not change.

    `get(..., full=True)` also decodes the whole file once with its page checksums (`full_check`): a part
    whose footer is intact but whose pages were damaged is then refused like an unreadable one. Readers ask
    it for the parts they hand to DuckDB (samples, manifests), which does not verify page checksums; pyarrow
    reads of the large parts (activations, images) verify the checksums of the pages they read instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # path -> (size, mtime_ns, metadata or None, reason, fully checked)
        self._items: dict[str, tuple[int, int, pq.FileMetaData | None, str, bool]] = {}

    def get(self, path: Path, required: Sequence[str], *, full: bool = False) -> tuple[pq.FileMetaData | None, str]:
        """(metadata, '') for a good file, (None, reason) for a bad one, (None, '') for a vanished one.
        With `full`, a file counts as good only once all its pages decoded and matched their checksums."""
        key = str(path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return None, ""
        with self._lock:
            hit = self._items.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            md, err, checked = hit[2], hit[3], hit[4]
            if err or md is None or checked or not full:
                return md, err
        else:
            md, err, checked = self._footer(key, required)
            if md is None and not err:
                return None, ""
        if full and md is not None:
            err = full_check(path, md)
            checked = True
            if err:
                md = None
        with self._lock:
            self._items[key] = (st.st_size, st.st_mtime_ns, md, err, checked)
        return md, err

    @staticmethod
    def _footer(key: str, required: Sequence[str]) -> tuple[pq.FileMetaData | None, str, bool]:
        try:
            md = pq.read_metadata(key)
            names = set(md.schema.to_arrow_schema().names)
            missing = [c for c in required if c not in names]
            if missing:
                return None, f"missing columns {missing}", False
            return md, "", False
        except FileNotFoundError:
            return None, "", False
        except Exception as e:  # any unreadable footer: truncated, not Parquet, garbage
            return None, f"{type(e).__name__}: {e}", False

    def mark_bad(self, path: Path, reason: str) -> None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        with self._lock:
            self._items[str(path)] = (st.st_size, st.st_mtime_ns, None, reason, True)


def full_check(path: Path, metadata: pq.FileMetaData | None = None) -> str:
    """'' when the whole file decodes (with page checksums), else the reason. Parts written without page
    checksums (older writers) are only decoded."""
    try:
        pf = pq.ParquetFile(path, metadata=metadata, page_checksum_verification=True)
        for g in range(pf.metadata.num_row_groups):  # a row group at a time: bounded memory
            pf.read_row_group(g)
        return ""
    except FileNotFoundError:
        return ""
    except Exception as e:
        return f"{type(e).__name__}: {e}"
