"""Corpus parsers: JSONL, CSV, plain text and Markdown → entry records (the store's import
parsing: ``Pack.import_file`` and the import job both read files through it).

Every parser yields records ``{"text", "title", "source", "tags"}`` where ``source``
names the file and line or row the entry came from ('facts.jsonl:12',
'table.csv:row 7', 'chem.md:34-41'); a source given in the data is kept and the
location appended ('wiki/Paris (facts.jsonl:12)').

``parse_file`` validates the WHOLE file before returning anything, against the pack's
limits too (text, title, source and tag lengths, valid Unicode), and raises
:class:`CorpusError` ('FILE:LINE: reason') on the first problem, so a caller can import
a file entirely or not at all. Limits are checked before big objects are built (a
50 MB JSONL line is refused before it is decoded as JSON), and the parsers are linear
in the size of the file, reporting progress as they go.

Why ``MAX_PASSAGE_CHARS = 1000``: the key encoder (all-MiniLM-L6-v2) reads at most 256
word pieces and truncates the rest silently; 256 word pieces are about 1000–1200
characters of English prose, so a passage of at most 1000 characters is encoded whole
(and a shorter passage gives a sharper key).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.jsonl import JsonlError, decode, json_lines, read_bytes
from engine.store.pack import MAX_TEXT_CHARS, ValidationError, validate_fields

log = logging.getLogger(__name__)

MAX_PASSAGE_CHARS = 1000
FIELDS = ("text", "title", "source", "tags")
# columns of a file written by `plugmem export`: accepted so an export imports back losslessly
EXPORT_FIELDS = ("id", "status", "created", "updated", "version")
KNOWN_FIELDS = FIELDS + EXPORT_FIELDS
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text", ".md": "markdown",
            ".markdown": "markdown"}

Record = dict[str, Any]
Tick = Callable[[int], None]  # a parser reports the character offset it has reached


class CorpusError(JsonlError):
    """A corpus file that cannot be imported; ``str()`` is 'FILE:LINE: reason'."""


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
    return _key(p, h.hexdigest())


def _key(path: Path, digest: str, examples: bool = False) -> str:
    return f"{path.resolve().name}{' (examples)' if examples else ''}#sha256:{digest}"


def _kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(path, None, f"unknown file type {path.suffix or '(no suffix)'!r}; "
                                      "expected .jsonl, .csv, .txt or .md")
    return kind


@dataclass
class ParsedFile:
    """One corpus file read once: its import key (name + sha256 of the bytes parsed) and records."""

    path: Path
    key: str
    records: list[Record]


def load_file(path: str | Path, name: str | None = None,
              progress: Callable[..., None] | None = None, *, as_examples: bool = False) -> ParsedFile:
    """All records of one file, validated whole (CorpusError on the first problem), and
    the file's key computed from the same bytes (a file changed since cannot pass as parsed).

    ``name`` is how sources refer to the file (default: its file name); a folder import
    may pass the path relative to the folder ('notes/chem.md'). ``progress(fraction,
    message)`` is told how far parsing has got. ``as_examples``: the file is a probe file
    (JSONL, ``eval``'s format) read as worked examples (:mod:`engine.store.examples`); its
    import key differs from the same file's import as facts.
    """
    p = Path(path)
    kind = _kind(p)
    if as_examples and kind != "jsonl":
        raise CorpusError(p, None, "worked examples are read from a probe file (.jsonl: one "
                                   "{\"prompt\", \"answer\"} object a line)")
    data = read_bytes(p, CorpusError)
    key = _key(p, hashlib.sha256(data).hexdigest(), examples=as_examples)
    text = decode(p, data, CorpusError)
    del data
    name = name or p.name
    tick = _ticker(progress, len(text), f"reading {p.name}")
    if as_examples:
        from engine.store.examples import example_records

        objects = json_lines(p, text, expect="a JSON object with 'prompt' and 'answer'", error=CorpusError, tick=tick)
        records = [_checked(r, p, line) for line, r in example_records(objects, p, name, CorpusError)]
    elif kind == "jsonl":
        records = list(_parse_jsonl(p, name, text, tick))
    elif kind == "csv":
        records = list(_parse_csv(p, name, text, tick))
    else:
        records = list(_parse_text(p, name, text, markdown=kind == "markdown", tick=tick))
    if progress is not None:
        progress(1.0, f"read {p.name}: {len(records):,} records")
    return ParsedFile(p, key, records)


def parse_file(path: str | Path, name: str | None = None,
               progress: Callable[..., None] | None = None, *, as_examples: bool = False) -> list[Record]:
    """All records of one file, validated whole (see :func:`load_file`)."""
    return load_file(path, name, progress, as_examples=as_examples).records


def _ticker(progress: Callable[..., None] | None, total: int, message: str) -> Tick:
    """A Tick reporting offset/total to ``progress`` at most every 1 % (cheap per call)."""
    if progress is None or total <= 0:
        return lambda pos: None
    step = max(1, total // 100)
    nxt = [step]

    def tick(pos: int) -> None:
        if pos >= nxt[0]:
            nxt[0] = pos + step
            progress(min(1.0, pos / total), message)

    return tick


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


def _checked(rec: Record, path: Path, line: int) -> Record:
    """``rec`` when the pack would store it; else CorpusError at ``line`` (limits, Unicode)."""
    try:
        validate_fields(rec, require_text=True)
    except ValidationError as exc:
        raise CorpusError(path, line, str(exc)) from None
    return rec


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
    return _checked(out, path, line)


def _unknown(keys: Any) -> str:
    return f"{', '.join(repr(k) for k in sorted(keys))} (allowed: {', '.join(FIELDS)})"


# ---------------------------------------------------------------------------- JSONL
def _parse_jsonl(path: Path, name: str, text: str, tick: Tick) -> Iterator[Record]:
    for n, obj in json_lines(path, text, expect="a JSON object with 'text'", error=CorpusError, tick=tick):
        extra = set(obj) - set(KNOWN_FIELDS)
        if extra:
            raise CorpusError(path, n, f"unknown field(s) {_unknown(extra)}")
        yield _record(obj, path, n, f"{name}:{n}")


# ---------------------------------------------------------------------------- CSV
def _parse_csv(path: Path, name: str, text: str, tick: Tick) -> Iterator[Record]:
    buf = io.StringIO(text, newline="")
    reader = csv.reader(buf, strict=True)
    row_start = 1
    header: list[str] | None = None
    row_no = 0  # as a spreadsheet numbers rows: the header is row 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):  # the csv module's own bound, far above ours
                raise CorpusError(path, row_start, f"a field longer than {csv.field_size_limit():,} characters; "
                                                   f"a text holds at most {MAX_TEXT_CHARS:,}") from None
            raise CorpusError(path, row_start, f"broken CSV quoting: {exc}") from None
        line, row_start = row_start, reader.line_num + 1
        tick(buf.tell())
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


def _parse_text(path: Path, name: str, text: str, markdown: bool, tick: Tick) -> Iterator[Record]:
    """Paragraphs (runs of non-blank lines) → passages; Markdown headings become titles."""
    lines = text.split("\n")
    lines = [ln.rstrip("\r") for ln in lines]
    title: str | None = None
    para: list[tuple[int, str]] = []  # (line number, text)
    para_pos = 0  # character offset of the paragraph's first line in ``text``
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
                yield from _passages(path, name, para[0][0], body, title, lambda off: tick(para_pos + off))
            para.clear()

    pos = sum(len(lines[i]) + 1 for i in range(start))  # '\r's dropped: an offset for progress only
    for i in range(start, len(lines)):
        n, line = i + 1, lines[i]
        line_pos, pos = pos, pos + len(line) + 1
        if not para:
            para_pos = line_pos
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
        tick(line_pos)  # the start: a long line's own progress comes from its passages
    yield from flush()


def _passages(path: Path, name: str, first_line: int, body: str, title: str | None, tick: Tick) -> Iterator[Record]:
    line, seen = first_line, 0  # newlines counted up to offset ``seen``: once over the body, not per piece
    for offset, piece in iter_pieces(body):
        line += body.count("\n", seen, offset)
        seen = offset
        end = line + piece.count("\n")
        where = f"{name}:{line}" if line == end else f"{name}:{line}-{end}"
        tick(offset)
        yield _checked({"text": piece, "title": title, "source": where, "tags": []}, path, line)


def split_passage(text: str, limit: int = MAX_PASSAGE_CHARS) -> list[tuple[int, str]]:
    """``text`` cut into pieces of at most ``limit`` characters: at sentence ends where
    possible, else at whitespace, else hard. Returns (offset in text, piece); pieces are
    stripped and, joined with whitespace, hold every word of ``text`` in order."""
    return list(iter_pieces(text, limit))


def iter_pieces(text: str, limit: int = MAX_PASSAGE_CHARS) -> Iterator[tuple[int, str]]:
    """:func:`split_passage` one piece at a time, in offset order.

    Linear in ``len(text)``: each sentence is sliced once and a piece grows by offsets
    (a long paragraph used to be rescanned from its start for every piece)."""
    if len(text) <= limit:
        yield 0, text
        return
    cur: tuple[int, int] | None = None  # [lo, hi) of the piece being grown, stripped at both ends
    for a, b in _sentences(text):
        seg = text[a:b]
        lo, hi = a + len(seg) - len(seg.lstrip()), a + len(seg.rstrip())
        if lo >= hi:
            continue  # only whitespace
        if cur is not None and hi - cur[0] <= limit:
            cur = (cur[0], hi)
            continue
        if cur is not None:
            yield cur[0], text[cur[0]:cur[1]]
        if hi - lo <= limit:
            cur = (lo, hi)
            continue
        cur = None
        for x, y in _hard_split(text, lo, hi, limit):  # one sentence longer than the limit
            chunk = text[x:y]
            yield x + len(chunk) - len(chunk.lstrip()), chunk.strip()
    if cur is not None:
        yield cur[0], text[cur[0]:cur[1]]


def _sentences(text: str) -> Iterator[tuple[int, int]]:
    """[start, end) spans covering ``text``, cut after sentence-ending punctuation."""
    a = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > a:
            yield a, m.end()
            a = m.end()
    if a < len(text):
        yield a, len(text)


_SPACE = re.compile(r"\s")


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
        ws = max((m.start() for m in _SPACE.finditer(text, a + 1, cut + 1)), default=None)
        if ws is not None:
            cut = ws
        yield a, cut
        a = cut
