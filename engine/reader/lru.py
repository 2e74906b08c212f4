"""A small least-recently-used map: what the engine keeps of recent work (entry states,
prompt states, answers of the bare reader), bounded so that a long session does not grow."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRU:
    """``get`` / ``put`` / ``discard`` / ``clear`` by key; beyond ``size`` keys the least recently used goes."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"LRU size must be at least 1, got {size}")
        self.size = size
        self._d: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: Hashable, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        self._d.pop(key, None)

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)
