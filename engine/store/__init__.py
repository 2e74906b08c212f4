"""Memory packs: one SQLite file per pack (entries, keys, history, undo, full text)."""
from engine.store.errors import EncoderMismatchError, EntryNotFound, PackError, ValidationError
from engine.store.pack import (
    FIELDS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    Change,
    Entry,
    HistoryRecord,
    ImportState,
    Pack,
    validate_fields,
)

__all__ = [
    "Change", "EncoderMismatchError", "Entry", "EntryNotFound", "FIELDS", "HistoryRecord", "ImportState",
    "MAX_TEXT_CHARS", "MAX_TITLE_CHARS", "Pack", "PackError", "ValidationError", "validate_fields",
]
