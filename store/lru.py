"""`LRU`: the one in-memory cache of the project: recent values by key, bounded, thread-safe.

Every process-level cache (maps, kNN graphs, feature matrices, neighbour indices, compare results, search
sandboxes, the app's jobs and highlight sets) is an `LRU` keyed by explicit keys (data versions and
parameters), never by hashing big arrays.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `max_items` values (and, with `weigh`, at most `max_weight` in total, e.g. bytes), the least
    recently used dropped first. `keep(value)` true protects a value from eviction (e.g. a running job).
    The newest value always stays, even when it alone is over `max_weight`."""

    def __init__(self, max_items: int, *, weigh: Callable[[V], int] | None = None, max_weight: int | None = None,
                 keep: Callable[[V], bool] | None = None):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items, self.max_weight = int(max_items), max_weight
        self._weigh, self._keep = weigh, keep
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()
        self._building: dict[K, threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._items

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._items)

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()
        return value

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        """The value of `key`, built once by `build()` when missing: concurrent callers of the same key wait
        for that one build instead of repeating it. A build that raises stores nothing."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                return self.put(key, build())
            finally:
                with self._lock:
                    self._building.pop(key, None)

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return self._items.pop(key, default)

    def discard_where(self, predicate: Callable[[K], bool]) -> int:
        """Drop the entries whose key satisfies `predicate`; returns how many went."""
        with self._lock:
            gone = [k for k in self._items if predicate(k)]
            for k in gone:
                del self._items[k]
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _evict(self) -> None:
        def over() -> bool:
            if len(self._items) > self.max_items:
                return True
            if self._weigh is None or self.max_weight is None:
                return False
            return sum(self._weigh(v) for v in self._items.values()) > self.max_weight

        while len(self._items) > 1 and over():
            victim = next((k for k in list(self._items)[:-1]
                           if self._keep is None or not self._keep(self._items[k])), None)
            if victim is None:
                return
            del self._items[victim]
