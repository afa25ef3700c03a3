"""Files the browser fetches from the app's static folder (``server.enableStaticServing``).

Streamlit serves ``app/static/`` at ``<baseUrlPath>/app/static/`` and refuses symlinks out of it, so
everything is physically copied there:

* ``vendor/plotly-<version>.min.js``: the plotly.js bundle of the installed plotly package (no CDN);
* ``thumbs/<store key>/<sample id>.webp``: the store's thumbnails, exported on demand in a background
  thread (idempotent: existing files are kept);
* ``views/<store key>/<view key>.*.json``: a view's points, colours and per-point text.

All writes go to a temporary name in the same folder and are renamed into place, so the browser never
reads half a file. ``thumbs/``, ``views/`` and ``vendor/`` are generated and git-ignored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import streamlit as st

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
THUMB_EXT = ".webp"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_VIEW_FILES_KEPT = 400  # per store; the oldest view files beyond this are deleted


def static_url(relative: str) -> str:
    """URL path of a file under ``app/static/``, honouring ``server.baseUrlPath``."""
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    prefix = f"/{base}" if base else ""
    return f"{prefix}/app/static/{relative.lstrip('/')}"


def store_key(root: str | os.PathLike) -> str:
    """A short, stable folder name for a store (its resolved path hashed)."""
    resolved = str(Path(root).expanduser().resolve())
    return hashlib.sha1(resolved.encode()).hexdigest()[:12]


def thumb_name(sample_id: str) -> str:
    """File stem of a thumbnail; map.js computes the same name."""
    if _SAFE_ID.match(sample_id):
        return sample_id
    return "b64-" + base64.urlsafe_b64encode(sample_id.encode()).decode().rstrip("=")


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode())


def plotly_js_url() -> str:
    """Copy the plotly.js bundle of the installed plotly package under static/ (once) and return its URL."""
    import plotly

    name = f"plotly-py{plotly.__version__}.min.js"
    target = STATIC_DIR / "vendor" / name
    if not target.exists():
        source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return static_url(f"vendor/{name}")


def views_dir(skey: str) -> Path:
    return STATIC_DIR / "views" / skey


def view_url(skey: str, filename: str) -> str:
    return static_url(f"views/{skey}/{filename}")


def thumbs_dir(skey: str) -> Path:
    return STATIC_DIR / "thumbs" / skey


def thumb_base_url(skey: str) -> str:
    return static_url(f"thumbs/{skey}/")


def prune_views(skey: str, keep: int = _VIEW_FILES_KEPT) -> int:
    """Delete the oldest view files of a store beyond ``keep``; returns how many were deleted."""
    folder = views_dir(skey)
    if not folder.is_dir():
        return 0
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    doomed = files[: max(0, len(files) - keep)]
    for path in doomed:
        path.unlink(missing_ok=True)
    return len(doomed)


class ThumbExport:
    """Exports the thumbnails of some samples of one store to ``thumbs/<store key>/`` in a thread.

    ``fetch(sample_ids) -> list[bytes]`` reads the thumbnails (``Store.thumbs``). Files that already exist
    are skipped, so exporting the same view twice costs one directory listing.
    """

    BATCH = 2000

    def __init__(self, skey: str, fetch: Callable[[list[str]], list[bytes]]):
        self.skey = skey
        self.fetch = fetch
        self.folder = thumbs_dir(skey)
        self._lock = threading.Lock()
        self._queue: list[list[str]] = []
        self._requested: set[str] = set()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.error: str | None = None

    def missing(self, sample_ids: Iterable[str]) -> list[str]:
        ids = list(sample_ids)
        if len(ids) < 200:  # a few files: stat them rather than list a folder of many thousands
            return [s for s in ids if not (self.folder / (thumb_name(s) + THUMB_EXT)).exists()]
        try:
            have = {p.name for p in os.scandir(self.folder)} if self.folder.is_dir() else set()
        except FileNotFoundError:
            have = set()
        return [s for s in ids if thumb_name(s) + THUMB_EXT not in have]

    def request_once(self, key: str, sample_ids: Iterable[str]) -> None:
        """``request`` the thumbnails of a view the first time it is drawn (reruns of it cost nothing)."""
        with self._lock:
            if key in self._requested:
                return
            self._requested.add(key)
        self.request(sample_ids)

    def ensure(self, sample_ids: Iterable[str]) -> int:
        """Write the missing thumbnails of a few ids now, in the calling thread (the selection panel must not
        wait behind a whole map's export); returns how many were written."""
        todo = self.missing(sample_ids)
        if todo:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write(todo)
        return len(todo)

    def request(self, sample_ids: Iterable[str], *, wait: bool = False) -> int:
        """Queue the missing thumbnails of ``sample_ids`` for the background thread; returns how many."""
        todo = self.missing(sample_ids)
        if not todo:
            return 0
        with self._lock:
            self._queue.append(todo)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"thumbs-{self.skey}", daemon=True)
                self._thread.start()
            thread = self._thread
        if wait:
            thread.join()
        return len(todo)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            with self._lock:
                if not self._queue:
                    return
                todo = self._queue.pop(0)
            todo = self.missing(todo)
            for start in range(0, len(todo), self.BATCH):
                self._write(todo[start : start + self.BATCH])

    def _write(self, batch: list[str]) -> None:
        try:
            blobs = self.fetch(batch)
        except Exception as exc:  # a corrupt part must not kill the exporter
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("thumbnail export failed for %d samples: %s", len(batch), self.error)
            return
        for sample_id, blob in zip(batch, blobs, strict=True):
            if blob:
                _atomic_write(self.folder / (thumb_name(sample_id) + THUMB_EXT), bytes(blob))
                self.written += 1
