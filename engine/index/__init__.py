"""Vector index: ids + unit keys -> top-k by inner product; cache folder beside the pack."""
from engine.index.errors import IndexCacheError, IndexCorruptError, IndexMissingError, IndexStaleError
from engine.index.vector_index import DEFAULT_APPROX_THRESHOLD, VectorIndex

__all__ = [
    "DEFAULT_APPROX_THRESHOLD",
    "IndexCacheError",
    "IndexCorruptError",
    "IndexMissingError",
    "IndexStaleError",
    "VectorIndex",
]
