"""The one "has the data changed" fingerprint of a store (`Store.data_version`): a short hash of the names,
sizes and mtimes of the committed files behind a scope, never of the data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from . import layout

SCOPES = ("store", "samples", "model", "layer")


def data_version(root: Path, model: str | None = None, layer: str | None = None,
                 run_ids: Iterable[str] | None = None, scope: str | None = None) -> str:
    """See `Store.data_version`."""
    root = Path(root)
    if scope is None:
        scope = "layer" if layer is not None else "model" if model is not None else "store"
    if scope not in SCOPES:
        raise ValueError(f"unknown data scope {scope!r}; valid: {list(SCOPES)}")
    if scope == "layer" and (model is None or layer is None):
        raise ValueError("the 'layer' data scope needs a model and a layer")
    if scope == "model" and model is None:
        raise ValueError("the 'model' data scope needs a model")
    runs = None if run_ids is None or scope == "store" else set(run_ids)
    models = [model] if model is not None and scope != "store" else layout.models_in(root, layout.SAMPLES)
    items = []
    for m in models:
        committed: dict[str, set[str]] = {}
        for _m, run, folder in layout.sample_partitions(root, m):
            if runs is None or run in runs:
                parts = layout.list_parts(folder)
                committed[run] = {p.name for p in parts}
                items.extend(_stat_item(root, p) for p in parts)
        if scope in ("model", "store"):
            items.extend(_stat_item(root, layout.text_embeddings_path(root, m, run)) for run in committed)
        layers = [layer] if scope == "layer" else layout.layers_in(root, m) if scope == "store" else []
        for lay in layers:  # orphans (batches in progress or killed) do not count
            for run, folder in layout.activation_partitions(root, m, lay):
                names = committed.get(run, set())
                items.extend(_stat_item(root, p) for p in layout.list_parts(folder) if p.name in names)
    if scope == "store":
        items.extend(_stat_item(root, p) for p in layout.run_manifests(root))
    h = hashlib.sha1()
    for item in sorted(i for i in items if i is not None):
        h.update(repr(item).encode())
    return h.hexdigest()[:16]


def _stat_item(root: Path, path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


