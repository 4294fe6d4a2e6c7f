"""ExpiringStore: what a server keeps for its clients (conversations, images), bounded by count and idle time.

A client that never comes back must not grow the server's memory: an entry is dropped when it has not
been used for ``max_idle_s`` seconds, and the least recently used one is dropped when a new entry would
exceed ``max_items``. Keys are random ids (32 hex digits) that clients cannot guess.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ExpiringStore(Generic[V]):
    """Thread-safe id -> value map with a least-recently-used bound and an idle timeout."""

    def __init__(self, max_items: int, max_idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1 or max_idle_s <= 0:
            raise ValueError(f"max_items must be >= 1 and max_idle_s > 0, got {max_items} and {max_idle_s}")
        self.max_items = max_items
        self.max_idle_s = max_idle_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, value: V) -> str:
        """Store ``value`` under a new id and return the id."""
        key = uuid.uuid4().hex
        with self._lock:
            self._expire()
            self._items[key] = (value, self._clock())
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> V | None:
        """The value of ``key`` (and mark it used now), or None when unknown or expired."""
        with self._lock:
            self._expire()
            item = self._items.get(key)
            if item is None:
                return None
            self._items[key] = (item[0], self._clock())
            self._items.move_to_end(key)
            return item[0]

    def remove(self, key: str) -> bool:
        """Forget ``key``; False when it was unknown or expired."""
        with self._lock:
            self._expire()
            return self._items.pop(key, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        """Drop entries idle for longer than max_idle_s (the oldest-used come first)."""
        limit = self._clock() - self.max_idle_s
        while self._items:
            key, (_, used) = next(iter(self._items.items()))
            if used >= limit:
                break
            del self._items[key]
