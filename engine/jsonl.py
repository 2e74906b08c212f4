"""JSON Lines files (and the text files beside them) read strictly: a problem names its file and line.

Every JSONL file the engine takes (corpus imports, probes and edits, training examples,
triples, held-out entities) is read here, so all apply the same rules:

* UTF-8, a BOM dropped; bad bytes are reported with their line and column;
* lines split at ``'\\n'`` only (``str.splitlines()`` would also split at U+2028 inside
  a JSON string), a trailing ``'\\r'`` dropped, blank lines skipped;
* a line longer than :data:`MAX_LINE_CHARS` refused before ``json.loads`` sees it, and
  JSON nested too deeply for the parser reported as such rather than a RecursionError.

Errors are :class:`JsonlError` ('FILE:LINE: reason'); a caller with an error class of its
own passes it as ``error`` (a subclass) or re-raises with the same message.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

# An entry is at most ~7,500 characters of fields, each at most 12 characters as a JSON
# escape; no probe, edit or triple comes near: a longer line holds no valid record.
MAX_LINE_CHARS = 1 << 20


class JsonlError(ValueError):
    """A file that cannot be read as asked; ``str()`` is 'FILE:LINE: reason' (or 'FILE: reason')."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def read_bytes(path: str | Path, error: type[JsonlError] = JsonlError) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise error(p, None, "no such file") from None
    except IsADirectoryError:
        raise error(p, None, "is a folder, not a file") from None
    except OSError as exc:
        raise error(p, None, f"cannot read: {exc.strerror or exc}") from None


def decode(path: str | Path, data: bytes, error: type[JsonlError] = JsonlError) -> str:
    """``data`` as UTF-8 text (a BOM dropped); bad bytes → ``error`` at their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(path, line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); "
                                "save the file as UTF-8") from None


def read_text(path: str | Path, error: type[JsonlError] = JsonlError) -> str:
    """The file as UTF-8 text (see :func:`decode`)."""
    return decode(path, read_bytes(path, error), error)


def json_lines(path: str | Path, text: str, *, expect: str = "a JSON object", error: type[JsonlError] = JsonlError,
               tick: Callable[[int], None] | None = None,
               skip: Callable[[JsonlError], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of ``text`` (the content of ``path``).

    ``expect`` completes 'expected ..., got list' for a line that is JSON but not an
    object. ``tick(offset)`` is told the character offset reached, for progress.
    ``skip``: a bad line is handed to it and passed over instead of raising (a history
    file the app appends to, where one damaged line must not hide the others).
    """
    for item in _json_lines(path, text, expect, error, tick):
        if isinstance(item, JsonlError):
            if skip is None:
                raise item
            skip(item)
        else:
            yield item


def _json_lines(path: str | Path, text: str, expect: str, error: type[JsonlError],
                tick: Callable[[int], None] | None) -> Iterator[tuple[int, dict[str, Any]] | JsonlError]:
    pos = 0
    for n, raw in enumerate(text.split("\n"), start=1):
        pos += len(raw) + 1
        if tick is not None:
            tick(pos)
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            yield error(path, n, f"line has {len(line):,} characters, more than the {MAX_LINE_CHARS:,} a line may "
                                 "hold (split it into several records)")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield error(path, n, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield error(path, n, "JSON nested too deeply to read")
            continue
        if not isinstance(obj, dict):
            yield error(path, n, f"expected {expect}, got {type(obj).__name__}")
            continue
        yield n, obj


def read_jsonl(path: str | Path, *, expect: str = "a JSON object",
               error: type[JsonlError] = JsonlError) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each record of a JSONL file; the first problem raises ``error``."""
    yield from json_lines(path, read_text(path, error), expect=expect, error=error)
