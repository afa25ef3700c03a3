"""Files the browser fetches from the app's static folder (``server.enableStaticServing``).

Streamlit serves ``app/static/`` at ``<baseUrlPath>/app/static/`` and refuses symlinks out of it, so
everything is physically copied there:

* ``vendor/plotly-<version>.min.js``: the plotly.js bundle of the installed plotly package (no CDN);
* ``thumbs/<store key>/<sample id>.webp``: the store's thumbnails, exported on demand in a background
  thread (idempotent: existing files are kept);
* ``views/<store key>/<view key>.*.json``: a view's points, colours and per-point text.

The static route needs no session, so a store's folder name is its capability: ``store_key`` is an HMAC of
the store's resolved path under a random secret of this installation (``app/.static_secret``, beside
``static/`` and never served), so it cannot be computed from a path, and it is only given for a store the
server lets users open (``DMD2VIZ_STORE_ROOTS``). Folders of the old computable names are deleted.

All writes go to a temporary name in the same folder and are renamed into place, so the browser never
reads half a file. ``thumbs/``, ``views/`` and ``vendor/`` are generated and git-ignored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
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


SECRET_NAME = ".static_secret"  # beside STATIC_DIR, not in it: Streamlit serves everything under static/
_LEGACY_KEY = re.compile(r"^[0-9a-f]{12}$")  # sha1(path)[:12]: the old, computable folder names
_LEGACY_GRACE_S = 600  # a legacy folder still written to by a server of the old code is left alone this long
_secret_lock = threading.Lock()
_secrets: dict[Path, bytes] = {}


class StoreRefused(PermissionError):
    """A store outside the folders this server opens stores from: it gets no static files."""


def _secret() -> bytes:
    """This installation's random secret (created once, mode 0600; every server process of the folder
    shares it, so exported thumbnails survive a restart). Per process when the file cannot be written."""
    path = STATIC_DIR.parent / SECRET_NAME
    with _secret_lock:
        if path in _secrets:
            return _secrets[path]
        value = _read_secret(path)
        if value is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{SECRET_NAME}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as fh:  # mkstemp: mode 0600
                        fh.write(secrets.token_hex(32))
                    with contextlib.suppress(FileExistsError):  # never replaces: two processes agree on one
                        os.link(tmp, path)
                finally:
                    os.unlink(tmp)
                value = _read_secret(path)
            except OSError as exc:
                log.warning("cannot keep the static-files secret in %s (%s): thumbnails are re-exported "
                            "after each restart", path, exc)
            if value is None:
                value = secrets.token_bytes(32)
        _secrets[path] = value
        _prune_legacy()
        return value


def _read_secret(path: Path) -> bytes | None:
    try:
        value = path.read_bytes().strip()
    except OSError:
        return None
    return value if len(value) >= 32 else None


def _prune_legacy() -> None:
    """Delete the folders of the old computable store keys (served to anyone who could guess a path)."""
    now = time.time()
    for sub in ("thumbs", "views"):
        folder = STATIC_DIR / sub
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if (_LEGACY_KEY.match(entry.name) and entry.is_dir(follow_symlinks=False)
                        and now - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_GRACE_S):
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue


def store_key(root: str | os.PathLike) -> str:
    """The folder name of a store's static files: an HMAC of its resolved path under this installation's
    secret (stable, not computable from the path). Refused (``StoreRefused``) for a store the server does
    not let users open."""
    from app.state import store_allowed  # the app's rule, checked again here: nothing is exported for others

    resolved = str(Path(root).expanduser().resolve())
    if not store_allowed(resolved):
        raise StoreRefused(f"{root} is outside the folders this server opens stores from")
    key = hmac.new(_secret(), resolved.encode(), hashlib.sha256).hexdigest()[:32]
    _key_roots[key] = resolved
    return key


_key_roots: dict[str, str] = {}  # store key -> the resolved path it was made for


def still_allowed(skey: str) -> bool:
    """Whether the store behind a key is still the folder it was made for and still allowed: False once
    that folder was swapped for a link (its resolved path changed) or the rule refuses it now."""
    root = _key_roots.get(skey)
    if root is None:
        return True  # a key not made by store_key (tests)
    from app.state import store_allowed

    return str(Path(root).resolve()) == root and store_allowed(root)


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


def map_urls(view, color_file: str) -> dict[str, str]:
    """The map component's file URLs for a view (`app.views.View`: its points, hover text and thumbnails) and
    one of its colour files: the keyword arguments `scatter_map` takes for them."""
    return {"plotly_url": plotly_js_url(), "points_url": view_url(view.store_key, view.points_file),
            "color_url": view_url(view.store_key, color_file), "meta_url": view_url(view.store_key, view.meta_file),
            "thumb_base": thumb_base_url(view.store_key)}


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
        if not still_allowed(self.skey):  # checked per batch: the store may have been swapped since
            self.error = "the store's folder changed or is no longer allowed: export stopped"
            log.warning("thumbnail export of %s refused: %s", self.skey, self.error)
            return
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
