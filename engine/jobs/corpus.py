"""Corpus parsers: JSONL, CSV, plain text and Markdown → entry records.

Every parser yields records ``{"text", "title", "source", "tags"}`` where ``source``
names the file and line or row the entry came from ('facts.jsonl:12',
'table.csv:row 7', 'chem.md:34-41'); a source given in the data is kept and the
location appended ('wiki/Paris (facts.jsonl:12)').

``parse_file`` validates the WHOLE file before returning anything and raises
:class:`CorpusError` ('FILE:LINE: reason') on the first problem, so a caller can import
a file entirely or not at all.

Why ``MAX_PASSAGE_CHARS = 1000``: the key encoder (all-MiniLM-L6-v2) reads at most 256
word pieces and truncates the rest silently; 256 word pieces are about 1000–1200
characters of English prose, so a passage of at most 1000 characters is encoded whole
(and a shorter passage gives a sharper key).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

MAX_PASSAGE_CHARS = 1000
FIELDS = ("text", "title", "source", "tags")
# columns of a file written by `plugmem export`: accepted so an export imports back losslessly
EXPORT_FIELDS = ("id", "status", "created", "updated", "version")
KNOWN_FIELDS = FIELDS + EXPORT_FIELDS
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text", ".md": "markdown",
            ".markdown": "markdown"}

Record = dict[str, Any]


class CorpusError(ValueError):
    """A corpus file that cannot be imported; ``str()`` is 'FILE:LINE: reason'."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


# ---------------------------------------------------------------------------- files
def corpus_files(path: str | Path) -> list[Path]:
    """The files to import for ``path``: the file itself, or every supported file
    under a folder (recursive, hidden entries skipped, sorted by relative path)."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    found = []
    for f in p.rglob("*"):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() in SUFFIXES:
            found.append(f)
        else:
            log.debug("not a corpus file, skipped: %s", f)
    # per path component, case-insensitive (ties broken by case): the same order on every OS
    return sorted(found, key=lambda f: [(part.casefold(), part) for part in f.relative_to(p).parts])


def file_key(path: str | Path) -> str:
    """File name + sha256 of the content: the same file imported again has the same key.

    Not the full path: a pack built from a file (the demo packs shipped in a packaged
    install, a pack built on another machine) must recognise that file's import as done
    wherever the file now lives, instead of importing it a second time.
    """
    p = Path(path).resolve()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{p.name}#sha256:{h.hexdigest()}"


def _kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(path, None, f"unknown file type {path.suffix or '(no suffix)'!r}; "
                                      "expected .jsonl, .csv, .txt or .md")
    return kind


def read_text(path: str | Path) -> str:
    """The file as text: UTF-8 (a BOM is dropped); bad bytes → CorpusError with the line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CorpusError(p, None, "no such file") from None
    except IsADirectoryError:
        raise CorpusError(p, None, "is a folder, not a file") from None
    except OSError as exc:
        raise CorpusError(p, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CorpusError(p, line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); "
                                   "save the file as UTF-8") from None


def parse_file(path: str | Path, name: str | None = None) -> list[Record]:
    """All records of one file, validated whole (CorpusError on the first problem).

    ``name`` is how sources refer to the file (default: its file name); a folder import
    may pass the path relative to the folder ('notes/chem.md').
    """
    p = Path(path)
    kind = _kind(p)
    text = read_text(p)
    name = name or p.name
    if kind == "jsonl":
        return list(_parse_jsonl(p, name, text))
    if kind == "csv":
        return list(_parse_csv(p, name, text))
    return list(_parse_text(name, text, markdown=kind == "markdown"))


def count_records(path: str | Path) -> int:
    """Number of records ``parse_file`` would return (cheap for JSONL; no validation)."""
    p = Path(path)
    if _kind(p) == "jsonl":
        n = 0
        with open(p, "rb") as f:
            for raw in f:
                n += bool(raw.strip())
        return n
    return len(parse_file(p))


# ---------------------------------------------------------------------------- fields
def _tags(value: Any, path: Path, line: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    raise CorpusError(path, line, "'tags' must be a list of strings or a comma-separated string")


def _record(fields: dict[str, Any], path: Path, line: int, where: str) -> Record:
    text = fields.get("text")
    if text is None:
        raise CorpusError(path, line, "missing 'text'")
    if not isinstance(text, str):
        raise CorpusError(path, line, f"'text' must be a string, not {type(text).__name__}")
    if not text.strip():
        raise CorpusError(path, line, "empty 'text'")
    out: Record = {"text": text.replace("\r\n", "\n").strip()}
    for key in ("title", "source"):
        v = fields.get(key)
        if v is not None and not isinstance(v, str):
            raise CorpusError(path, line, f"'{key}' must be a string, not {type(v).__name__}")
        out[key] = v.strip() if isinstance(v, str) and v.strip() else None
    exported = fields.get("id") not in (None, "")
    if exported:  # a re-imported export keeps its recorded source as it is, even empty
        out["source"] = out["source"] or ""
    else:
        out["source"] = f"{out['source']} ({where})" if out["source"] else where
    status = fields.get("status")
    if status not in (None, ""):
        if status not in ("active", "disabled"):
            raise CorpusError(path, line, f"'status' must be active or disabled, not {status!r}")
        out["status"] = status
    out["tags"] = _tags(fields.get("tags"), path, line)
    return out


def _unknown(keys: Any) -> str:
    return f"{', '.join(repr(k) for k in sorted(keys))} (allowed: {', '.join(FIELDS)})"


# ---------------------------------------------------------------------------- JSONL
def _parse_jsonl(path: Path, name: str, text: str) -> Iterator[Record]:
    # split on '\n' only: str.splitlines() would also split at U+2028 inside JSON strings
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, n, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise CorpusError(path, n, f"expected a JSON object with 'text', got {type(obj).__name__}")
        extra = set(obj) - set(KNOWN_FIELDS)
        if extra:
            raise CorpusError(path, n, f"unknown field(s) {_unknown(extra)}")
        yield _record(obj, path, n, f"{name}:{n}")


# ---------------------------------------------------------------------------- CSV
def _parse_csv(path: Path, name: str, text: str) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    row_start = 1
    header: list[str] | None = None
    row_no = 0  # as a spreadsheet numbers rows: the header is row 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CorpusError(path, row_start, f"broken CSV quoting: {exc}") from None
        line, row_start = row_start, reader.line_num + 1
        row_no += 1
        if header is None:
            header = [h.strip().lower() for h in row]
            if "text" not in header:
                raise CorpusError(path, line, f"no 'text' column in the header (found: {', '.join(map(repr, row))})")
            named = [h for h in header if h]
            extra = set(named) - set(KNOWN_FIELDS)
            if extra:
                raise CorpusError(path, line, f"unknown column(s) {_unknown(extra)}")
            dup = sorted({h for h in named if named.count(h) > 1})
            if dup:
                raise CorpusError(path, line, f"column(s) named twice: {', '.join(dup)}")
            continue
        if not any(c.strip() for c in row):
            continue  # blank row
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            raise CorpusError(path, line, f"row has {len(row)} fields but the header has {len(header)}")
        fields: dict[str, Any] = {}
        for h, value in zip(header, row):
            if h:
                fields[h] = value
            elif value.strip():
                raise CorpusError(path, line, "a value in a column without a name in the header")
        yield _record(fields, path, line, f"{name}:row {row_no}")
    if header is None:
        raise CorpusError(path, 1, "empty file: expected a header row with a 'text' column")


# ---------------------------------------------------------------------------- text / Markdown
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_RULE = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")


def _parse_text(name: str, text: str, markdown: bool) -> Iterator[Record]:
    """Paragraphs (runs of non-blank lines) → passages; Markdown headings become titles."""
    lines = text.split("\n")
    lines = [ln.rstrip("\r") for ln in lines]
    title: str | None = None
    para: list[tuple[int, str]] = []  # (line number, text)
    in_fence = False
    start = 0
    if markdown and lines and lines[0].strip() == "---":  # YAML front matter
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            start = end + 1

    def flush() -> Iterator[Record]:
        if para:
            body = "\n".join(t.rstrip() for _, t in para).strip("\n")
            if body.strip():
                yield from _passages(name, para[0][0], body, title)
            para.clear()

    for i in range(start, len(lines)):
        n, line = i + 1, lines[i]
        if markdown and _FENCE.match(line):
            in_fence = not in_fence
            para.append((n, line))
            continue
        if in_fence:
            para.append((n, line))
            continue
        if not line.strip():
            yield from flush()
            continue
        if markdown:
            m = _ATX.match(line)
            if m:
                yield from flush()
                title = (m.group(2) or "").strip() or None
                continue
            if _SETEXT.match(line) and len(para) == 1:
                title = para[0][1].strip()
                para.clear()
                continue
            if _RULE.match(line):
                yield from flush()
                continue
        para.append((n, line))
    yield from flush()


def _passages(name: str, first_line: int, body: str, title: str | None) -> Iterator[Record]:
    for offset, piece in split_passage(body):
        start = first_line + body.count("\n", 0, offset)
        end = start + piece.count("\n")
        where = f"{name}:{start}" if start == end else f"{name}:{start}-{end}"
        yield {"text": piece, "title": title, "source": where, "tags": []}


def split_passage(text: str, limit: int = MAX_PASSAGE_CHARS) -> list[tuple[int, str]]:
    """``text`` cut into pieces of at most ``limit`` characters: at sentence ends where
    possible, else at whitespace, else hard. Returns (offset in text, piece); pieces are
    stripped and, joined with whitespace, hold every word of ``text`` in order."""
    if len(text) <= limit:
        return [(0, text)]
    # sentence spans: [start, end) covering the text, boundaries after sentence-ending punctuation
    bounds = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    sentences = [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1) if bounds[k] < bounds[k + 1]]
    pieces: list[tuple[int, str]] = []
    cur_start: int | None = None
    cur_end = 0

    def emit(a: int, b: int) -> None:
        chunk = text[a:b]
        stripped = chunk.strip()
        if stripped:
            pieces.append((a + (len(chunk) - len(chunk.lstrip())), stripped))

    for a, b in sentences:
        if cur_start is not None and len(text[cur_start:b].strip()) <= limit:
            cur_end = b
            continue
        if cur_start is not None:
            emit(cur_start, cur_end)
        if len(text[a:b].strip()) <= limit:
            cur_start, cur_end = a, b
            continue
        cur_start = None
        for lo, hi in _hard_split(text, a, b, limit):  # one sentence longer than the limit
            emit(lo, hi)
    if cur_start is not None:
        emit(cur_start, cur_end)
    return pieces


def _hard_split(text: str, a: int, b: int, limit: int) -> Iterator[tuple[int, int]]:
    """Spans of text[a:b] of at most ``limit`` non-blank characters, cut at whitespace when possible."""
    while a < b:
        while a < b and text[a].isspace():
            a += 1
        if b - a <= limit:
            if a < b:
                yield a, b
            return
        cut = a + limit
        ws = max((m.start() for m in re.finditer(r"\s", text[a + 1 : cut + 1])), default=None)
        if ws is not None:
            cut = a + 1 + ws
        yield a, cut
        a = cut
