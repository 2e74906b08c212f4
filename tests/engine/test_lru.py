"""The engine's caches (entry states, prompt states, bare answers) stay bounded and keep what was used last."""
from __future__ import annotations

import pytest

from engine.reader.lru import LRU


def test_the_least_recently_used_key_goes_first():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
    c.discard("a")
    c.discard("missing")
    assert c.get("a") is None and len(c) == 1
    with pytest.raises(ValueError, match="at least 1"):
        LRU(0)
