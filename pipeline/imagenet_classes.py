"""ImageNet-1k class names in the class-index order the DMD2 ImageNet generator was trained with.

The order is the standard ILSVRC one (sorted WordNet IDs: 0 = tench, 1 = goldfish, ...). The names come
from ``data/imagenet_classes.txt``, whose header says where they were taken from. Short names are not
unique (134 and 517 are both "crane"; 638 and 639 "maillot"), so show ``class_label`` where it matters.
"""

from __future__ import annotations

import operator
from functools import cache
from pathlib import Path

__all__ = ["NUM_CLASSES", "class_label", "class_name", "class_names", "class_wnid", "find_classes"]

NUM_CLASSES = 1000
DATA_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"


@cache
def _table() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in DATA_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            wnid, name = line.split("\t")
            rows.append((wnid, name))
    if len(rows) != NUM_CLASSES:
        raise RuntimeError(f"{DATA_FILE} has {len(rows)} classes, expected {NUM_CLASSES}")
    return tuple(rows)


def _check(index: int) -> int:
    try:
        index = operator.index(index)
    except TypeError:
        raise TypeError(f"class index must be an integer, got {type(index).__name__}") from None
    if not 0 <= index < NUM_CLASSES:
        raise ValueError(f"ImageNet class index must be in [0, {NUM_CLASSES}), got {index}")
    return index


def class_name(index: int) -> str:
    """Short name of a class, e.g. ``class_name(207) == "golden retriever"``."""
    return _table()[_check(index)][1]


def class_wnid(index: int) -> str:
    """WordNet ID of a class, e.g. ``class_wnid(0) == "n01440764"``."""
    return _table()[_check(index)][0]


def class_label(index: int) -> str:
    """What the UI shows: ``"207: golden retriever"``."""
    return f"{_check(index)}: {class_name(index)}"


def class_names() -> list[str]:
    """All 1000 short names, index order."""
    return [name for _, name in _table()]


def find_classes(text: str) -> list[int]:
    """Indices whose short name contains ``text`` (case-insensitive), or whose WNID equals it."""
    needle = text.strip().lower()
    if not needle:
        return []
    return [i for i, (wnid, name) in enumerate(_table()) if needle in name.lower() or needle == wnid]
