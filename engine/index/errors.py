"""Errors of the index cache: the caller rebuilds from the pack and tells the user why."""
from __future__ import annotations


class IndexCacheError(Exception):
    """The saved index cannot be used; ``reason`` is 'missing', 'stale' or 'corrupt'."""

    reason = "unusable"


class IndexMissingError(IndexCacheError):
    reason = "missing"


class IndexStaleError(IndexCacheError):
    """The cache was saved for another pack state (its stamp differs)."""

    reason = "stale"


class IndexCorruptError(IndexCacheError):
    """A file is unreadable, truncated, or inconsistent with the others."""

    reason = "corrupt"
