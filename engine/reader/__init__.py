"""Models: the reader (frozen causal LM) and, later, the knowledge mechanisms around it."""
from engine.reader.reader import (
    DEFAULT_NAME,
    SUPPORTED_ARCHITECTURES,
    Reader,
    ReaderError,
    default_reader_dir,
    load_reader,
)

__all__ = [
    "DEFAULT_NAME",
    "SUPPORTED_ARCHITECTURES",
    "Reader",
    "ReaderError",
    "default_reader_dir",
    "load_reader",
]
