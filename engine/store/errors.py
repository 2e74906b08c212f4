"""Errors of the pack store; each message is meant for the user and names what and where."""
from __future__ import annotations

import errno
import sqlite3


class PackError(Exception):
    """The file is not a readable pack (not SQLite, not a pack, damaged, too new, closed)."""


class ValidationError(PackError, ValueError):
    """An entry that cannot be stored as given (empty text, too long, unknown field...)."""

    def __init__(self, message: str, field: str | None = None, record: int | None = None) -> None:
        self.field = field
        self.record = record
        prefix = f"record {record + 1}: " if record is not None else ""
        super().__init__(prefix + message)


class EncoderMismatchError(PackError):
    """The pack's keys were made by another encoder than the one running."""

    def __init__(self, path, pack_encoder, running_encoder) -> None:
        self.pack_encoder = pack_encoder
        self.running_encoder = running_encoder
        super().__init__(
            f"{path}: this pack was encoded with {pack_encoder.describe()}, but the running encoder is "
            f"{running_encoder.describe()}; its keys are not comparable. Re-encode it explicitly with "
            f"`plugmem reencode {path}` (entries and history are kept)."
        )


class EntryNotFound(PackError, KeyError):
    """No (live) entry with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "entry not found"


class DiskFullError(PackError):
    """The disk (or the user's quota) filled up while writing; what was committed is intact."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: SQLite's SQLITE_FULL or an OSError ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
