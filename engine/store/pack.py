"""A memory pack: one SQLite file holding entries, their keys, history and undo.

Every mutation runs in one transaction that also writes its history rows, bumps the
pack's ``content_version`` and records a row in ``changes`` (the undo stack), so undo
and redo survive a restart and a crash never leaves half a change behind.

Undo is data: each history row keeps the entry's state before and after the change;
undoing a change restores the "before" state of every entry it touched, redoing
restores the "after" state. An ``add`` stores no snapshot (the entry row itself is
the "after"), so a million-entry import does not write its texts twice; its undo
hides the rows (status ``deleted``) and its redo shows them again.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from engine.fingerprint import EncoderFingerprint
from engine.store.errors import EncoderMismatchError, EntryNotFound, PackError, ValidationError
from engine.store.locks import refuse_if_held_elsewhere
from engine.store.schema import READ_COMPATIBLE_FROM, SCHEMA_VERSION, SchemaMismatch, migrate, verify_schema
from engine.store.sqlite_guard import connect

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000
MAX_TITLE_CHARS = 300
MAX_SOURCE_CHARS = 1000
MAX_TAG_CHARS = 64
MAX_TAGS = 32
FIELDS = ("title", "text", "source", "tags", "status")
STATUSES = ("active", "disabled")
VECTOR_DTYPES = ("float32", "float16")
_SQL_CHUNK = 900  # stay under SQLite's bound-parameter limit


@dataclass
class Entry:
    id: int
    title: str
    text: str
    source: str
    tags: list[str]
    status: str
    created: float
    updated: float
    version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def state(self) -> dict[str, Any]:
        """The user-visible fields (what history snapshots keep)."""
        return {"title": self.title, "text": self.text, "source": self.source, "tags": list(self.tags),
                "status": self.status, "version": self.version}


@dataclass(frozen=True)
class Change:
    """One committed mutation: its id on the undo stack, what kind, which entries."""

    change_id: int
    kind: str
    ids: list[int]
    content_version: int
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.change_id, "kind": self.kind, "ids": list(self.ids),
                "content_version": self.content_version, "label": self.label}


@dataclass
class HistoryRecord:
    id: int
    change_id: int
    entry_id: int
    op: str
    before: dict | None
    after: dict | None
    time: float
    author: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportState:
    key: str
    path: str
    total: int
    rows_done: int
    change_id: int | None
    state: str  # running | done | undone


def _is_count(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value) is not None


def _entry(row: Sequence[Any], pack: Path) -> Entry:
    """An Entry from its row; a damaged row (wrong types, unreadable tags) is refused naming it."""
    problem = entry_row_problem(row)
    if problem:
        raise PackError(f"{pack}: damaged pack: entry {row[0]} {problem}; run `plugmem check {pack}`")
    return Entry(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], float(row[6]), float(row[7]), row[8])


def _restorable(state: dict) -> bool:
    """A history snapshot holds every field an entry needs, with the right types."""
    return (all(isinstance(state.get(k), str) for k in ("title", "text", "source", "status"))
            and isinstance(state.get("tags"), list) and all(isinstance(t, str) for t in state["tags"]))


def entry_row_problem(row: Sequence[Any]) -> str | None:
    """What is wrong with an entry row (columns as in ``_COLS``), or None."""
    if not isinstance(row[0], int):
        return "has a non-integer id"
    for col, value in zip(("title", "text", "source", "status"), (row[1], row[2], row[3], row[5])):
        if not isinstance(value, str):
            return f"has a {type(value).__name__} where its {col} text belongs"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (row[6], row[7])):
        return "has a time that is not a number"
    if not isinstance(row[8], int):
        return f"has a version {str(row[8])[:40]!r} that is not a whole number"
    if json_strings(row[4]) is None:
        return "has tags that are not a JSON list of strings"
    return None


def json_strings(raw: Any) -> list[str] | None:
    """``raw`` read as a JSON list of strings (tags, aliases), or None when it is not one."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


_COLS = "id, title, text, source, tags, status, created, updated, version"


def _chunks(seq: Sequence[Any], n: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# ---------------------------------------------------------------------------- validation
# a lone surrogate is no character: SQLite and the tokenizer cannot encode it (JSON '\ud800',
# a command-line argument that was not UTF-8)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(value: str, what: str, field: str | None = None, record: int | None = None) -> None:
    """Raise ValidationError when ``value`` holds a lone surrogate (text that is not valid Unicode)."""
    m = _SURROGATE.search(value)
    if m:
        raise ValidationError(f"{what} is not valid Unicode: a lone surrogate U+{ord(m.group()):04X} at character "
                              f"{m.start() + 1:,} (an invalid escape or bytes that are not UTF-8)", field, record)


def validate_fields(fields: dict[str, Any], *, require_text: bool, record: int | None = None) -> dict[str, Any]:
    """Check and normalise entry fields; raise ValidationError naming the field."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValidationError(
            f"unknown field(s) {', '.join(repr(k) for k in sorted(unknown))} (allowed: {', '.join(FIELDS)})",
            record=record,
        )
    out: dict[str, Any] = {}
    if "text" in fields or require_text:
        text = fields.get("text")
        if not isinstance(text, str):
            raise ValidationError(f"'text' must be a string, not {type(text).__name__}", "text", record)
        text = text.replace("\r\n", "\n").strip()
        if not text:
            raise ValidationError("'text' is empty", "text", record)
        if len(text) > MAX_TEXT_CHARS:
            raise ValidationError(
                f"'text' has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,} "
                "(split it into several entries)", "text", record)
        check_unicode(text, "'text'", "text", record)
        out["text"] = text
    for key, limit in (("title", MAX_TITLE_CHARS), ("source", MAX_SOURCE_CHARS)):
        if key in fields:
            v = fields[key]
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise ValidationError(f"'{key}' must be a string, not {type(v).__name__}", key, record)
            v = v.strip()
            if len(v) > limit:
                raise ValidationError(f"'{key}' has {len(v):,} characters; the limit is {limit:,}", key, record)
            check_unicode(v, f"'{key}'", key, record)
            out[key] = v
    if "tags" in fields:
        tags = fields["tags"]
        if tags is None:
            tags = []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",")]
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise ValidationError("'tags' must be a list of strings", "tags", record)
        clean: list[str] = []
        for t in tags:
            t = t.strip()
            if not t:
                continue
            if "," in t or len(t) > MAX_TAG_CHARS:
                raise ValidationError(f"tag {t[:80]!r} is invalid (no commas, at most {MAX_TAG_CHARS} characters)",
                                      "tags", record)
            check_unicode(t, f"tag {t[:80]!r}", "tags", record)
            if t not in clean:
                clean.append(t)
        if len(clean) > MAX_TAGS:
            raise ValidationError(f"{len(clean)} tags; the limit is {MAX_TAGS}", "tags", record)
        out["tags"] = clean
    if "status" in fields:
        s = fields["status"]
        if s not in STATUSES:
            raise ValidationError(f"'status' must be one of {', '.join(STATUSES)} (got {s!r}); "
                                  "delete entries with delete", "status", record)
        out["status"] = s
    return out


def clean_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records to add, validated and normalised (ValidationError naming the record): what
    :meth:`Pack.add_many` stores, checked before anything is encoded or written."""
    clean = []
    for n, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValidationError(f"must be a mapping with a 'text' field, not {type(r).__name__}", record=n)
        clean.append(validate_fields({k: v for k, v in r.items() if k in FIELDS or k not in _IGNORED_ON_ADD},
                                     require_text=True, record=n))
    return clean


# ---------------------------------------------------------------------------- the pack
def _unwritable(path: Path) -> str | None:
    """Why the pack at ``path`` cannot be written (None: it can): SQLite needs the file, and
    the folder for its -wal and -shm files."""
    if not os.access(path.parent, os.W_OK):
        return "its folder is read-only"
    if not os.access(path, os.W_OK):
        return "the file is read-only"
    return None


def iter_entries(pack, status: str | None = None, tag: str | None = None, batch: int = 2000) -> Iterator[Entry]:
    """Every live entry of ``pack`` (anything with :meth:`Pack.page`, such as the app's view
    of a pack its writer thread owns) in id order, by keyset paging ``batch`` at a time."""
    after = 0
    while True:
        rows = pack.page(after, batch, status=status, tag=tag)
        if not rows:
            return
        yield from rows
        after = rows[-1].id

class Pack:
    """One pack file. Use :meth:`create` or :meth:`open`; close it (or use ``with``)."""

    def __init__(self, path: Path, con: sqlite3.Connection, readonly: bool) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._con: sqlite3.Connection | None = con
        self.db = sqlite_utils.Database(con)
        self.schema_version = SCHEMA_VERSION
        self.readonly_reason: str | None = None  # why a pack asked for writing was opened read-only

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, name: str | None = None, encoder: EncoderFingerprint | None = None,
               vector_dtype: str = "float32") -> "Pack":
        path = Path(path)
        if path.exists():
            raise PackError(f"{path}: already exists; not overwritten")
        if vector_dtype not in VECTOR_DTYPES:
            raise PackError(f"vector dtype must be float32 or float16, not {vector_dtype!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pack = cls._connect(path, readonly=False, create=True)
        con = pack.conn
        with con:
            for k, v in (("name", name or path.stem), ("content_version", "0"), ("created", str(time.time())),
                         ("vector_dtype", vector_dtype),
                         ("encoder", json.dumps(encoder.to_dict()) if encoder else "")):
                con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, v))
        return pack

    @classmethod
    def open(cls, path: str | Path, encoder: EncoderFingerprint | None = None, readonly: bool = False,
             *, damaged_ok: bool = False) -> "Pack":
        """Open a pack; with ``encoder``, refuse one made by another encoder (naming both).

        A pack whose file or folder cannot be written is opened read-only (``readonly_reason``
        says why; changes are refused with it). Damaged metadata is refused with a one-line
        reason unless ``damaged_ok`` (for ``check``, which reports and repairs it).
        """
        path = Path(path)
        if not path.is_file():
            raise PackError(f"{path}: no such pack file")
        reason = None if readonly else _unwritable(path)
        pack = cls._connect(path, readonly=readonly or reason is not None, create=False, reason=reason)
        try:
            problems = pack.meta_problems()
            if problems and not damaged_ok:
                raise PackError(f"{path}: damaged pack: {problems[0]}; run `plugmem check {path}`")
            if encoder is not None and not problems:
                mine = pack.encoder
                if mine is None:
                    if not pack.readonly:
                        pack._set_meta("encoder", json.dumps(encoder.to_dict()))
                elif mine != encoder:
                    raise EncoderMismatchError(path, mine, encoder)
        except BaseException:
            pack.close()
            raise
        return pack

    @classmethod
    def _connect(cls, path: Path, *, readonly: bool, create: bool, reason: str | None = None) -> "Pack":
        try:
            con = connect(path, readonly=readonly, create=create)
        except sqlite3.DatabaseError as exc:
            raise PackError(f"{path}: cannot open pack ({exc})") from None
        try:
            version = verify_schema(con)
        except SchemaMismatch as exc:
            con.close()
            raise PackError(f"{path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            con.close()
            raise PackError(f"{path}: not a PlugMem pack ({exc})") from None
        if version == 0 and not create:
            con.close()
            raise PackError(f"{path}: not a PlugMem pack (no pack metadata in this SQLite file)")
        if version > SCHEMA_VERSION:
            con.close()
            raise PackError(f"{path}: made by a newer PlugMem (pack schema {version}; this version reads up to "
                            f"{SCHEMA_VERSION}); upgrade PlugMem Studio to open it")
        try:
            if not readonly:
                con.execute("PRAGMA journal_mode = WAL")
                con.execute("PRAGMA synchronous = NORMAL")
                if version < SCHEMA_VERSION:
                    migrate(con, version)
            elif version < READ_COMPATIBLE_FROM:
                con.close()
                raise PackError(f"{path}: pack schema {version} needs upgrading; open it for writing once")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            con.close()
            raise PackError(f"{path}: cannot open pack ({exc})") from None
        pack = cls(path, con, readonly)
        pack.schema_version = version if readonly else SCHEMA_VERSION
        pack.readonly_reason = reason
        return pack

    @property
    def conn(self) -> sqlite3.Connection:
        if self._con is None:
            raise PackError(f"{self.path}: pack is closed")
        return self._con

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                if not self.readonly:
                    con.execute("PRAGMA optimize")
            except sqlite3.DatabaseError:
                pass
            con.close()

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> "Pack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pack({str(self.path)!r})"

    # ------------------------------------------------------------------ metadata
    def _meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: str) -> None:
        self._writable()
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def name(self) -> str:
        return self._meta("name") or self.path.stem

    def rename(self, name: str) -> None:
        if not name.strip():
            raise ValidationError("a pack name cannot be empty", "name")
        self._set_meta("name", name.strip())

    def _meta_issue(self, key: str, raw: Any) -> str | None:
        """What is wrong with metadata value ``raw`` of ``key`` (None: nothing, or not checked)."""
        if raw is None:
            return None
        if not isinstance(raw, str):
            return f"metadata {key} is a {type(raw).__name__}, not text"
        if key in ("content_version", "entities_version") and not _is_count(raw or "0"):
            return f"metadata {key} {raw[:40]!r} is not a whole number"
        if key == "vector_dtype" and (raw or "float32") not in VECTOR_DTYPES:
            return f"metadata vector_dtype {raw[:40]!r} is not one of {', '.join(VECTOR_DTYPES)}"
        if key == "encoder" and raw:
            try:
                EncoderFingerprint.from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return f"unreadable encoder fingerprint in metadata ({exc})"
        return None

    def _checked_meta(self, key: str, default: str) -> str:
        """A metadata value that :meth:`_meta_issue` accepts; a damaged one is refused in one line."""
        raw = self._meta(key)
        issue = self._meta_issue(key, raw)
        if issue:
            raise PackError(f"{self.path}: damaged pack: {issue}; run `plugmem check {self.path} --repair`")
        return raw or default

    @property
    def content_version(self) -> int:
        return int(self._checked_meta("content_version", "0"))

    @property
    def entities_version(self) -> int:
        """Grows with every change to the pack's entities or their aliases (a triples import
        that adds or updates any): a knowledge plugin linked with older aliases is stale."""
        return int(self._checked_meta("entities_version", "0"))

    @property
    def vector_dtype(self) -> str:
        return self._checked_meta("vector_dtype", "float32")

    @property
    def encoder(self) -> EncoderFingerprint | None:
        raw = self._checked_meta("encoder", "")
        return EncoderFingerprint.from_dict(json.loads(raw)) if raw else None

    def meta_problems(self) -> list[str]:
        """What is wrong with the pack's metadata, one line each (empty: nothing)."""
        rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        return [issue for key, raw in rows if (issue := self._meta_issue(key, raw))]

    def repair_meta(self) -> list[str]:
        """Re-derive what damaged metadata can be derived from; returns what was done."""
        self._writable()
        con, done = self.conn, []
        with con:
            damaged = {key for key, raw in con.execute("SELECT key, value FROM meta").fetchall()
                       if self._meta_issue(key, raw)}

            def put(key: str, value: str, what: str) -> None:
                con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
                done.append(what)

            for key in sorted(damaged):
                if key == "content_version":
                    cv = con.execute(
                        "SELECT max(coalesce((SELECT max(cv) FROM entries WHERE typeof(cv)='integer'), 0), "
                        "coalesce((SELECT max(content_version) FROM changes WHERE typeof(content_version)='integer'),"
                        " 0))").fetchone()[0]
                    put(key, str(cv), f"content version set to {cv} (the latest change recorded)")
                elif key == "entities_version":
                    # a value no plugin was linked at: a plugin made before the damage reads as stale
                    put(key, str(int(time.time())), "entities version renewed (knowledge plugins will be re-linked)")
                elif key == "vector_dtype":
                    row = con.execute("SELECT dtype FROM vectors WHERE dtype IN ('float32', 'float16') "
                                      "GROUP BY dtype ORDER BY count(*) DESC LIMIT 1").fetchone()
                    put(key, row[0] if row else "float32", f"vector dtype set to {row[0] if row else 'float32'}")
                elif key == "encoder":
                    con.execute("DELETE FROM vectors")  # made by an encoder nobody can name: re-encoded next
                    put(key, "", "unreadable encoder fingerprint dropped with the keys it made (re-encoded next)")
                else:
                    put(key, self.path.stem if key == "name" else "", f"metadata {key} reset")
        return done

    def set_encoder(self, fp: EncoderFingerprint) -> None:
        """Adopt another encoder: all stored keys become invalid and are dropped (re-encode next)."""
        self._writable()
        con = self.conn
        with con:
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('encoder', ?)", (json.dumps(fp.to_dict()),))
            con.execute("DELETE FROM vectors")

    def _writable(self) -> None:
        if self.readonly:
            why = f" ({self.readonly_reason})" if self.readonly_reason else ""
            raise PackError(f"{self.path}: opened read-only{why}; changes are refused")

    # ------------------------------------------------------------------ reading
    def count(self, status: str | None = None) -> int:
        if status is None:
            sql, args = "SELECT count(*) FROM entries WHERE status != 'deleted'", ()
        else:
            sql, args = "SELECT count(*) FROM entries WHERE status = ?", (status,)
        return int(self.conn.execute(sql, args).fetchone()[0])

    def __len__(self) -> int:
        return self.count()

    def get(self, entry_id: int) -> Entry:
        row = self.conn.execute(f"SELECT {_COLS} FROM entries WHERE id=?", (int(entry_id),)).fetchone()
        if row is None:
            raise EntryNotFound(f"{self.path.name}: no entry with id {entry_id}")
        return _entry(row, self.path)

    def get_many(self, ids: Iterable[int]) -> list[Entry]:
        """Entries in the order of ``ids`` (any status, deleted included; unknown ids skipped)."""
        ids = [int(i) for i in ids]
        found: dict[int, Entry] = {}
        for part in _chunks(ids):
            q = f"SELECT {_COLS} FROM entries WHERE id IN ({','.join('?' * len(part))})"
            for row in self.conn.execute(q, part):
                found[int(row[0])] = _entry(row, self.path)
        return [found[i] for i in ids if i in found]

    def _where(self, status: str | None, tag: str | None) -> tuple[str, list[Any]]:
        where, args = ["status != 'deleted'"], []
        if status:
            where.append("status = ?")
            args.append(status)
        if tag:
            where.append("id IN (SELECT entry_id FROM entry_tags WHERE tag = ?)")
            args.append(tag)
        return " AND ".join(where), args

    def ids(self, status: str | None = None, tag: str | None = None) -> list[int]:
        """Ids of live entries (not deleted), ascending; filtered by status and tag."""
        return self.all_ids_array(status, tag).tolist()

    def all_ids_array(self, status: str | None = None, tag: str | None = None) -> np.ndarray:
        where, args = self._where(status, tag)
        cur = self.conn.execute(f"SELECT id FROM entries WHERE {where} ORDER BY id", args)
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def page(self, after: int = 0, limit: int = 100, status: str | None = None, tag: str | None = None) -> list[Entry]:
        """Keyset paging: up to ``limit`` live entries with id > ``after``."""
        where, args = self._where(status, tag)
        q = f"SELECT {_COLS} FROM entries WHERE {where} AND id > ? ORDER BY id LIMIT ?"
        return [_entry(r, self.path) for r in self.conn.execute(q, [*args, int(after or 0), int(limit)])]

    def iter_entries(self, status: str | None = None, tag: str | None = None, batch: int = 2000) -> Iterator[Entry]:
        """Every live entry (filtered by status and tag) in id order, read ``batch`` at a time."""
        return iter_entries(self, status, tag, batch)

    def tags(self) -> list[tuple[str, int]]:
        """(tag, number of live entries) by descending count."""
        q = ("SELECT t.tag, count(*) FROM entry_tags t JOIN entries e ON e.id = t.entry_id "
             "WHERE e.status != 'deleted' GROUP BY t.tag ORDER BY count(*) DESC, t.tag")
        return [(r[0], int(r[1])) for r in self.conn.execute(q)]

    def fts(self, query: str, limit: int = 20, status: str | None = "active") -> list[tuple[int, float]]:
        """Full-text search over title and text: [(id, score)], best first (score = -bm25).

        The query is taken as words (FTS5 syntax is neutralised, so any user text is
        safe); all words must match, the last one as a prefix; when nothing matches
        all words, entries matching any word are returned.
        """
        words = re.findall(r"\w+", query or "", flags=re.UNICODE)
        if not words:
            return []
        quoted = ['"' + w.replace('"', '""') + '"' for w in words]
        if re.match(r"\w", query[-1:], flags=re.UNICODE):  # still typing the last word
            quoted[-1] += "*"
        out: list[tuple[int, float]] = []
        for joiner in (" AND ", " OR "):
            if joiner == " OR " and (len(quoted) == 1 or len(out) >= limit):
                break
            expr = joiner.join(quoted)
            seen = {i for i, _ in out}
            where = "e.status != 'deleted'" if status is None else "e.status = ?"
            args: list[Any] = [expr] + ([] if status is None else [status]) + [int(limit) + len(seen)]
            q = (f"SELECT e.id, bm25(entries_fts) AS r FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
                 f"WHERE entries_fts MATCH ? AND {where} ORDER BY r LIMIT ?")
            try:
                rows = self.conn.execute(q, args).fetchall()
            except sqlite3.OperationalError as exc:
                log.warning("full-text query %r failed: %s", expr, exc)
                rows = []
            out += [(int(i), -float(r)) for i, r in rows if int(i) not in seen]
        return out[:limit]

    # ------------------------------------------------------------------ history
    def history(self, entry_id: int | None = None, limit: int | None = None,
                change_id: int | None = None) -> list[HistoryRecord]:
        """History rows, newest first; for one entry, one change, or the whole pack."""
        where, args = [], []
        if entry_id is not None:
            where.append("entry_id = ?")
            args.append(int(entry_id))
        if change_id is not None:
            where.append("change_id = ?")
            args.append(int(change_id))
        q = ("SELECT id, change_id, entry_id, op, before, after, time, author FROM history"
             + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC")
        if limit:
            q += f" LIMIT {int(limit)}"
        recs = [HistoryRecord(r[0], r[1], r[2], r[3], self._snapshot(r[0], r[4]), self._snapshot(r[0], r[5]), r[6], r[7])
                for r in self.conn.execute(q, args)]
        for rec in recs:
            if rec.op == "add" and rec.after is None:
                rec.after = self._state_after_add(rec)
        return recs

    def _snapshot(self, row_id: int, raw: Any) -> dict | None:
        """A history row's before/after state; a damaged one is refused naming the row."""
        if raw is None or raw == "":
            return None
        try:
            state = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            state = None
        if not isinstance(state, dict):
            raise PackError(f"{self.path}: damaged pack: history row {row_id} holds a state that is not a JSON "
                            f"object; run `plugmem check {self.path}`")
        return state

    def _restorable_state(self, change_id: int, raw: Any) -> dict:
        """The state an undo or redo of ``change_id`` writes back (without its version); refused if damaged."""
        try:
            state = self._snapshot(0, raw) if isinstance(raw, str) else None
        except PackError:
            state = None
        if not state or not _restorable(state):
            raise PackError(f"{self.path}: damaged pack: the history of change {change_id} holds a state that "
                            f"cannot be restored; run `plugmem check {self.path}`")
        state.pop("version", None)
        return state

    def _state_after_add(self, rec: HistoryRecord) -> dict | None:
        """An add keeps no snapshot: its state is the next change's 'before', or the entry now."""
        row = self.conn.execute(
            "SELECT before FROM history WHERE entry_id=? AND id>? AND before IS NOT NULL "
            "AND before LIKE '{\"title\"%' ORDER BY id LIMIT 1", (rec.entry_id, rec.id)).fetchone()
        if row:
            state = json.loads(row[0])
        else:
            try:
                state = self.get(rec.entry_id).state()
            except EntryNotFound:
                return None
        state["status"] = "active"
        return state

    # ------------------------------------------------------------------ undo stack
    def _top_undo(self) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT id, kind, label FROM changes WHERE stack=1 AND undone=0 ORDER BY id DESC LIMIT 1").fetchone()

    def _top_redo(self) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT id, kind, label FROM changes WHERE stack=1 AND undone=1 ORDER BY id LIMIT 1").fetchone()

    def can_undo(self) -> bool:
        return self._top_undo() is not None

    def undo_run_by(self, author: str) -> int:
        """How many changes on top of the undo stack, in a row, ``author`` made."""
        n = 0
        for (who,) in self.conn.execute("SELECT author FROM changes WHERE stack=1 AND undone=0 ORDER BY id DESC"):
            if who != author:
                break
            n += 1
        return n

    def top_undo_author(self) -> str | None:
        """Who made the change that Undo would undo next (None: nothing to undo, or nobody named)."""
        row = self.conn.execute(
            "SELECT author FROM changes WHERE stack=1 AND undone=0 ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def can_redo(self) -> bool:
        return self._top_redo() is not None

    def undo_label(self) -> str:
        row = self._top_undo()
        return row[2] if row else ""

    def redo_label(self) -> str:
        row = self._top_redo()
        return row[2] if row else ""

    # ------------------------------------------------------------------ mutations
    def _begin(self) -> int:
        """Start a write transaction; return the next content version. Refused while another
        process runs an edit evaluation on the pack (its undos would pop this change)."""
        self._writable()
        refuse_if_held_elsewhere(self.path)
        self.conn.execute("BEGIN IMMEDIATE")
        return self.content_version + 1

    def _new_change(self, kind: str, label: str, author: str | None, cv: int, *, stack: int = 1,
                    target: int | None = None) -> int:
        con = self.conn
        if stack:
            con.execute("UPDATE changes SET undone=2 WHERE stack=1 AND undone=1")  # a new change ends redo
        cur = con.execute(
            "INSERT INTO changes(kind, label, time, author, content_version, stack, target) VALUES (?,?,?,?,?,?,?)",
            (kind, label, time.time(), author, cv, stack, target))
        return int(cur.lastrowid)

    def _commit(self, cv: int, change_id: int | None) -> None:
        con = self.conn
        con.execute("UPDATE meta SET value=? WHERE key='content_version'", (str(cv),))
        if change_id is not None:
            con.execute("UPDATE changes SET content_version=? WHERE id=?", (cv, change_id))
        con.execute("COMMIT")

    def _rollback(self) -> None:
        if self._con is not None and self._con.in_transaction:
            self._con.execute("ROLLBACK")

    def add(self, text: str, *, title: str = "", source: str = "", tags: Sequence[str] | None = None,
            status: str = "active", author: str | None = None, vector: np.ndarray | None = None) -> Change:
        rec = {"text": text, "title": title, "source": source, "tags": list(tags or []), "status": status}
        validate_fields(rec, require_text=True)  # one entry: its errors name the field, not "record 1"
        vecs = None if vector is None else np.asarray(vector, dtype=np.float32).reshape(1, -1)
        return self.add_many([rec], vectors=vecs, author=author)

    def add_many(self, records: Iterable[dict[str, Any]], *, vectors: np.ndarray | None = None,
                 import_key: str | None = None, author: str | None = None) -> Change:
        """Add entries in one transaction (one undo step; with ``import_key``, part of that import's step)."""
        clean = clean_records(records)
        if vectors is not None and len(vectors) != len(clean):
            raise ValueError(f"{len(vectors)} vectors for {len(clean)} records")
        now = time.time()
        cv = self._begin()
        con = self.conn
        try:
            if import_key is not None:
                row = con.execute("SELECT change_id, state, path FROM imports WHERE key=?", (import_key,)).fetchone()
                if row is None or row[1] != "running":
                    raise PackError(f"{self.path.name}: no import in progress with key {import_key!r}")
                change_id, kind = int(row[0]), "import"
            else:
                label = ("add entry" if len(clean) == 1 else f"add {len(clean):,} entries")
                change_id, kind = self._new_change("add", label, author, cv), "add"
            rows = [(c.get("title", ""), c["text"], c.get("source", ""), json.dumps(c.get("tags", [])),
                     c.get("status", "active"), now, now, cv) for c in clean]
            ids: list[int] = []
            for r in rows:
                cur = con.execute(
                    "INSERT INTO entries(title, text, source, tags, status, created, updated, version, cv) "
                    "VALUES (?,?,?,?,?,?,?,1,?)", r)
                ids.append(int(cur.lastrowid))
            # the full-text index is kept here, not by triggers (schema v2: packs hold no code)
            con.executemany("INSERT INTO entries_fts(rowid, title, text) VALUES (?,?,?)",
                            [(i, r[0], r[1]) for i, r in zip(ids, rows)])
            tag_rows = [(t, i) for i, c in zip(ids, clean) for t in c.get("tags", [])]
            if tag_rows:
                con.executemany("INSERT OR IGNORE INTO entry_tags(tag, entry_id) VALUES (?,?)", tag_rows)
            con.executemany("INSERT INTO history(change_id, entry_id, op, before, after, time, author) "
                            "VALUES (?,?,'add',NULL,NULL,?,?)", [(change_id, i, now, author) for i in ids])
            if vectors is not None and len(ids):
                self._write_vectors(ids, [1] * len(ids), np.asarray(vectors))
            if import_key is not None:
                con.execute("UPDATE imports SET rows_done = rows_done + ? WHERE key=?", (len(ids), import_key))
                # "<what> <file>" as begin_import named it, with the count so far
                what = re.sub(r" \([\d,]+ entries\)$", "", self._label(change_id) or f"import {Path(row[2]).name}")
                con.execute("UPDATE changes SET label=? WHERE id=?",
                            (f"{what} ({self._import_rows(change_id) :,} entries)", change_id))
            self._commit(cv, change_id)
        except BaseException:
            self._rollback()
            raise
        return Change(change_id, kind, ids, cv, self._label(change_id))

    def _import_rows(self, change_id: int) -> int:
        return int(self.conn.execute("SELECT count(*) FROM history WHERE change_id=?", (change_id,)).fetchone()[0])

    def _label(self, change_id: int) -> str:
        row = self.conn.execute("SELECT label FROM changes WHERE id=?", (change_id,)).fetchone()
        return row[0] if row else ""

    def _live(self, ids: Sequence[int]) -> list[Entry]:
        entries = self.get_many(ids)
        found = {e.id for e in entries if e.status != "deleted"}
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise EntryNotFound(f"{self.path.name}: no entry with id {shown}")
        return [e for e in entries if e.status != "deleted"]

    def edit(self, entry_id: int, *, author: str | None = None, vector: np.ndarray | None = None,
             **fields: Any) -> Change:
        """Change some fields of one entry; a no-op edit returns a Change with no ids."""
        clean = validate_fields(fields, require_text=False)
        # Read, compare and write in one write transaction: a state read before it could be
        # another process's older one, and writing it back would revert that process's change.
        cv = self._begin()
        try:
            (old,) = self._live([entry_id])
            changed = {k: v for k, v in clean.items() if getattr(old, k) != v}
            if not changed:
                self._rollback()
                return Change(0, "edit", [], cv - 1, "")
            if set(changed) == {"status"}:
                op = "disable" if changed["status"] == "disabled" else "enable"
                label = f"{op} entry {old.id}"
            else:
                op, label = "edit", f"edit entry {old.id}"
            change_id = self._new_change(op, label, author, cv)
            new_state = {**old.state(), **changed}
            self._apply_states(change_id, [(old, new_state)], op, author, cv)
            if vector is not None and "text" in changed:
                self._write_vectors([old.id], [old.version + 1], np.asarray(vector).reshape(1, -1))
            self._commit(cv, change_id)
        except BaseException:
            self._rollback()
            raise
        return Change(change_id, op, [old.id], cv, label)

    def set_status(self, ids: Sequence[int], status: str, *, author: str | None = None) -> Change:
        """Disable or enable entries in bulk (one undo step)."""
        validate_fields({"status": status}, require_text=False)
        op = "disable" if status == "disabled" else "enable"
        return self._bulk(ids, op, author, lambda e: e.status != status, lambda e: {**e.state(), "status": status})

    def delete(self, ids: Sequence[int], *, author: str | None = None) -> Change:
        """Delete entries (kept as status 'deleted' so undo brings them back); one undo step."""
        return self._bulk(ids, "delete", author, lambda e: True, lambda e: {**e.state(), "status": "deleted"})

    def _bulk(self, ids: Sequence[int], op: str, author: str | None, wanted, new_state) -> Change:
        """Apply ``new_state`` to the ``wanted`` live entries of ``ids``, reading them inside the
        write transaction (as :meth:`edit` does) so no other process's change is written over."""
        cv = self._begin()
        try:
            entries = [e for e in self._live(list(dict.fromkeys(int(i) for i in ids))) if wanted(e)]
            if not entries:
                self._rollback()
                return Change(0, op, [], cv - 1, "")
            label = f"{op} entry {entries[0].id}" if len(entries) == 1 else f"{op} {len(entries):,} entries"
            change_id = self._new_change(op, label, author, cv)
            self._apply_states(change_id, [(e, new_state(e)) for e in entries], op, author, cv)
            self._commit(cv, change_id)
        except BaseException:
            self._rollback()
            raise
        return Change(change_id, op, [e.id for e in entries], cv, label)

    def _apply_states(self, change_id: int, pairs: list[tuple[Entry, dict[str, Any]]], op: str,
                      author: str | None, cv: int, *, snapshot: bool = True) -> None:
        """Write each entry's new state, its history row, tags and vector version (inside a transaction)."""
        con = self.conn
        now = time.time()
        upd, hist, keep_vec, retag, refts = [], [], [], [], []
        for old, st in pairs:
            v = old.version + 1
            upd.append((st["title"], st["text"], st["source"], json.dumps(st["tags"]), st["status"], now, v, cv, old.id))
            before = old.state() if snapshot else {"status": old.status, "version": old.version}
            after = {**st, "version": v} if snapshot else {"status": st["status"], "version": v}
            hist.append((change_id, old.id, op, json.dumps(before), json.dumps(after), now, author))
            if st["text"] == old.text:
                keep_vec.append((v, old.id, old.version))
            if list(st["tags"]) != list(old.tags):
                retag.append((old.id, st["tags"]))
            if (st["title"], st["text"]) != (old.title, old.text):
                refts.append((old, st))
        if refts:  # an external-content FTS5 index forgets a row only given the values it indexed
            con.executemany("INSERT INTO entries_fts(entries_fts, rowid, title, text) VALUES ('delete',?,?,?)",
                            [(o.id, o.title, o.text) for o, _ in refts])
            con.executemany("INSERT INTO entries_fts(rowid, title, text) VALUES (?,?,?)",
                            [(o.id, st["title"], st["text"]) for o, st in refts])
        con.executemany("UPDATE entries SET title=?, text=?, source=?, tags=?, status=?, updated=?, version=?, cv=? "
                        "WHERE id=?", upd)
        con.executemany("INSERT INTO history(change_id, entry_id, op, before, after, time, author) "
                        "VALUES (?,?,?,?,?,?,?)", hist)
        if keep_vec:  # only the text makes the key: a status/title change keeps the vector valid
            con.executemany("UPDATE vectors SET entry_version=? WHERE entry_id=? AND entry_version=?", keep_vec)
        for eid, tags in retag:
            con.execute("DELETE FROM entry_tags WHERE entry_id=?", (eid,))
            con.executemany("INSERT OR IGNORE INTO entry_tags(tag, entry_id) VALUES (?,?)", [(t, eid) for t in tags])

    def undo(self, author: str | None = None) -> Change | None:
        """Undo the latest change still done; None when there is nothing to undo."""
        return self._undo_redo(undo=True, author=author)

    def redo(self, author: str | None = None) -> Change | None:
        """Redo the latest undone change; None when there is nothing to redo."""
        return self._undo_redo(undo=False, author=author)

    def end_redo(self) -> int:
        """Drop the redo stack (what a new change does): undone changes can no longer be redone.

        For temporary changes undone by their maker (an edit evaluation): Edit > Redo must
        not bring them back. Returns how many changes were dropped.
        """
        self._writable()
        with self.conn:
            cur = self.conn.execute("UPDATE changes SET undone=2 WHERE stack=1 AND undone=1")
        return cur.rowcount

    def _undo_redo(self, *, undo: bool, author: str | None) -> Change | None:
        cv = self._begin()
        try:
            # The top of the stack is read inside the write transaction: two processes undoing
            # at once would otherwise both undo the same change.
            row = self._top_undo() if undo else self._top_redo()
            if row is None:
                self._rollback()
                return None
            target, kind, label = int(row[0]), row[1], row[2]
            con = self.conn
            hist = con.execute("SELECT entry_id, op, before, after FROM history WHERE change_id=? ORDER BY id"
                               + (" DESC" if undo else ""), (target,)).fetchall()
            word = "undo" if undo else "redo"
            change_id = self._new_change(word, f"{word} {label}", author, cv, stack=0, target=target)
            latest: dict[int, tuple[str, str | None, str | None]] = {}
            for eid, op, before, after in hist:  # first occurrence in apply order wins per entry
                latest.setdefault(int(eid), (op, before, after))
            entries = {e.id: e for e in self.get_many(list(latest))}
            adds, full = [], []
            for eid, (op, before, after) in latest.items():
                e = entries.get(eid)
                if e is None:
                    continue
                if op == "add":
                    adds.append((e, {**e.state(), "status": "deleted" if undo else "active"}))
                else:
                    st = self._restorable_state(target, before if undo else after)
                    full.append((e, st))
            if adds:
                self._apply_states(change_id, adds, f"{word} add", author, cv, snapshot=False)
            if full:
                self._apply_states(change_id, full, f"{word} {kind}", author, cv)
            con.execute("UPDATE changes SET undone=? WHERE id=?", (1 if undo else 0, target))
            if kind == "import":
                con.execute("UPDATE imports SET state=? WHERE change_id=?", ("undone" if undo else "done", target))
            self._commit(cv, change_id)
        except BaseException:
            self._rollback()
            raise
        return Change(change_id, word, [e.id for e, _ in adds + full], cv, f"{word} {label}")

    # ------------------------------------------------------------------ imports (checkpointed)
    def import_state(self, key: str) -> ImportState | None:
        sql = "SELECT key, path, total, rows_done, change_id, state FROM imports WHERE key=?"
        row = self.conn.execute(sql, (key,)).fetchone()
        if row is None:
            legacy = self._legacy_import_key(key)
            if legacy is not None:
                row = self.conn.execute(sql, (legacy,)).fetchone()
                if not self.readonly:
                    with self.conn:  # adopt the current key form, so every later step finds it
                        self.conn.execute("UPDATE imports SET key=? WHERE key=?", (key, legacy))
                    row = (key, *row[1:])
        return ImportState(row[0], row[1], int(row[2]), int(row[3]), row[4], row[5]) if row else None

    def _legacy_import_key(self, key: str) -> str | None:
        """The key under which packs made before 2026-11-27 recorded the same file, if any.

        Those keys were the file's full path + its sha256; keys are now the file NAME + sha256
        (a pack must recognise its imports wherever the file lives). Without this, opening
        such a pack and importing the same file again would add every entry a second time.
        """
        name, sep, digest = key.partition("#sha256:")
        if not sep or "/" in name or "\\" in name:
            return None
        suffix = sep + digest
        for (old,) in self.conn.execute("SELECT key FROM imports WHERE substr(key, -?) = ?", (len(suffix), suffix)):
            path = old[: -len(suffix)]
            if path != name and path.replace("\\", "/").rsplit("/", 1)[-1] == name:
                return old
        return None

    def begin_import(self, key: str, path: str, total: int, author: str | None = None,
                     what: str = "import") -> ImportState:
        """Start (or find, to resume) the import of one file; its chunks form one undo step,
        labelled ``"<what> <file name>"``."""
        st = self.import_state(key)
        if st is not None and st.state in ("running", "done"):
            return st
        cv = self._begin()
        try:
            change_id = self._new_change("import", f"{what} {Path(path).name}", author, cv)
            self.conn.execute(
                "INSERT OR REPLACE INTO imports(key, path, total, rows_done, change_id, state, started) "
                "VALUES (?,?,?,0,?,'running',?)", (key, str(path), int(total), change_id, time.time()))
            self.conn.execute("COMMIT")  # no entry touched: content version unchanged
        except BaseException:
            self._rollback()
            raise
        return ImportState(key, str(path), int(total), 0, change_id, "running")

    def finish_import(self, key: str) -> None:
        st = self.import_state(key)
        if st is None:
            raise PackError(f"{self.path.name}: no import with key {key!r}")
        self._writable()
        with self.conn:
            self.conn.execute("UPDATE imports SET state='done', finished=? WHERE key=?", (time.time(), key))
            if st.change_id is not None and not self._import_rows(st.change_id):
                self.conn.execute("DELETE FROM changes WHERE id=?", (st.change_id,))  # nothing to undo

    # ------------------------------------------------------------------ vectors
    def _write_vectors(self, ids: Sequence[int], versions: Sequence[int], vecs: np.ndarray) -> None:
        dtype = self.vector_dtype
        arr = np.ascontiguousarray(np.asarray(vecs, dtype=np.float32).astype(dtype, copy=False))
        self.conn.executemany(
            "INSERT OR REPLACE INTO vectors(entry_id, entry_version, dtype, key) VALUES (?,?,?,?)",
            [(int(i), int(v), dtype, arr[n].tobytes()) for n, (i, v) in enumerate(zip(ids, versions))])

    def set_vectors(self, ids: Sequence[int], vecs: np.ndarray, versions: Sequence[int] | None = None) -> int:
        """Store keys for entries (one transaction); returns how many were stored.

        ``versions``: the entry versions whose texts the keys were encoded from. A key is
        then stored only while its entry still has that version, so a key encoded from a
        text that another process changed meanwhile is never labelled as the new text's.
        Without it, keys are stored at the entries' current versions.
        """
        self._writable()
        ids = [int(i) for i in ids]
        if len(ids) != len(vecs) or (versions is not None and len(versions) != len(ids)):
            raise ValueError(f"{len(vecs)} vectors for {len(ids)} ids")
        con = self.conn
        con.execute("BEGIN IMMEDIATE")
        try:
            now = {e.id: e.version for e in self.get_many(ids)}
            missing = [i for i in ids if i not in now]
            if missing:
                raise EntryNotFound(f"{self.path.name}: no entry with id {missing[0]}")
            keep = [n for n, i in enumerate(ids) if versions is None or now[i] == int(versions[n])]
            if keep:
                self._write_vectors([ids[n] for n in keep], [now[ids[n]] for n in keep], np.asarray(vecs)[keep])
            con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return len(keep)

    def _dim(self) -> int | None:
        enc = self.encoder
        return enc.dim if enc else None

    @staticmethod
    def _decode(blob: Any, dtype: Any) -> np.ndarray | None:
        """A stored key as float32, or None when it cannot be one (unknown dtype, odd size, not a blob)."""
        if dtype not in VECTOR_DTYPES or not isinstance(blob, bytes) or len(blob) % (2 if dtype == "float16" else 4):
            return None
        return np.frombuffer(blob, dtype=np.float16 if dtype == "float16" else np.float32).astype(np.float32)

    @staticmethod
    def _usable(key: np.ndarray | None, dim: int | None) -> bool:
        """A key the index can hold: the encoder's size, every component finite."""
        return key is not None and (dim is None or len(key) == dim) and bool(np.isfinite(key).all())

    def get_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(keys [n, dim] float32, ok [n] bool): ok is False where the key is missing, stale or damaged."""
        ids = [int(i) for i in ids]
        got: dict[int, np.ndarray] = {}
        for part in _chunks(ids):
            q = (f"SELECT v.entry_id, v.dtype, v.key FROM vectors v JOIN entries e ON e.id = v.entry_id "
                 f"WHERE v.entry_version = e.version AND v.entry_id IN ({','.join('?' * len(part))})")
            for eid, dtype, blob in self.conn.execute(q, part):
                key = self._decode(blob, dtype)
                if key is not None:
                    got[int(eid)] = key
        dim = self._dim() or (len(next(iter(got.values()))) if got else 0)
        out = np.zeros((len(ids), dim), dtype=np.float32)
        ok = np.zeros(len(ids), dtype=bool)
        for n, i in enumerate(ids):
            v = got.get(i)
            if self._usable(v, dim):
                out[n] = v
                ok[n] = True
        return out, ok

    def stale_vector_ids(self) -> list[int]:
        """Active entries whose key is missing, older than their text, or of the wrong size or type."""
        dim = self._dim()
        size = ("OR v.dtype NOT IN ('float32', 'float16') OR typeof(v.key) != 'blob' "
                "OR length(v.key) != ? * (CASE v.dtype WHEN 'float16' THEN 2 ELSE 4 END)") if dim else ""
        q = ("SELECT e.id FROM entries e LEFT JOIN vectors v ON v.entry_id = e.id WHERE e.status = 'active' "
             f"AND (v.entry_id IS NULL OR v.entry_version != e.version {size}) ORDER BY e.id")
        return [int(r[0]) for r in self.conn.execute(q, (dim,) if dim else ())]

    def iter_active_vectors(self, batch: int = 65536,
                            damaged: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, keys) of active entries with current keys, in id order, in batches.

        Keys the index cannot hold (wrong size, NaN or Inf) are left out; their ids are
        appended to ``damaged`` when given, so the caller can encode them afresh.
        """
        q = ("SELECT v.entry_id, v.dtype, v.key FROM vectors v JOIN entries e ON e.id = v.entry_id "
             "WHERE e.status = 'active' AND v.entry_version = e.version AND v.entry_id > ? "
             "ORDER BY v.entry_id LIMIT ?")
        after = 0
        dim = self._dim()
        while True:
            rows = self.conn.execute(q, (after, batch)).fetchall()
            if not rows:
                return
            after = int(rows[-1][0])
            dtype = rows[0][1]
            width = dim or (len(rows[0][2]) // (2 if dtype == "float16" else 4) if isinstance(rows[0][2], bytes) else 0)
            nbytes = width * (2 if dtype == "float16" else 4)
            if dtype in VECTOR_DTYPES and all(r[1] == dtype and isinstance(r[2], bytes) and len(r[2]) == nbytes
                                              for r in rows):  # the common case: one buffer, one conversion
                keys = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float16 if dtype == "float16"
                                     else np.float32).astype(np.float32).reshape(len(rows), width)
                good = np.isfinite(keys).all(axis=1)
            else:
                decoded = [self._decode(r[2], r[1]) for r in rows]
                good = np.array([self._usable(k, width) for k in decoded], dtype=bool)
                keys = np.stack([k if g else np.zeros(width, np.float32) for k, g in zip(decoded, good)]) \
                    if len(rows) else np.zeros((0, width), np.float32)
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if not good.all():
                if damaged is not None:
                    damaged.extend(int(i) for i in ids[~good])
                ids, keys = ids[good], keys[good]
            if len(ids):
                yield ids, keys

    def recently_changed_ids(self, limit: int) -> list[int]:
        """Ids of the ``limit`` active entries changed last (newest first)."""
        # '+status': walk the cv index from its end rather than sorting every active entry
        q = "SELECT id FROM entries WHERE +status = 'active' ORDER BY cv DESC LIMIT ?"
        return [int(r[0]) for r in self.conn.execute(q, (int(limit),))]

    def changes_since(self, content_version: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids to upsert, ids to remove) for an index made at ``content_version``."""
        rows = self.conn.execute("SELECT id, status FROM entries WHERE cv > ?", (int(content_version),)).fetchall()
        up = np.array([r[0] for r in rows if r[1] == "active"], dtype=np.int64)
        rm = np.array([r[0] for r in rows if r[1] != "active"], dtype=np.int64)
        return up, rm

    # ------------------------------------------------------------------ export / import
    def export(self, dest: str | Path) -> int:
        from engine.store.io import export_pack

        return export_pack(self, Path(dest))

    def import_file(self, src: str | Path, *, author: str | None = None, vectors=None) -> Change:
        """Add every entry of an exported (or any corpus) JSONL/CSV file as one undo step."""
        from engine.store.corpus import parse_file

        records = parse_file(Path(src))
        return self.add_many(records, author=author, vectors=vectors)

    # ------------------------------------------------------------------ entities and triples
    def entities(self) -> list[dict[str, Any]]:
        return [{"id": r[0], "name": r[1], "aliases": self.read_aliases(r[0], r[2]), "description": r[3]}
                for r in self.conn.execute("SELECT id, name, aliases, description FROM entities ORDER BY id")]

    def read_aliases(self, entity_id: int, raw: Any) -> list[str]:
        """An entity's stored aliases; damaged ones are refused in one line naming the entity."""
        aliases = json_strings(raw)
        if aliases is None:
            raise PackError(f"{self.path}: damaged pack: entity {entity_id} has aliases that are not a JSON list "
                            f"of strings; run `plugmem check {self.path}`")
        return aliases

    @contextmanager
    def entity_writes(self) -> Iterator[sqlite3.Connection]:
        """One transaction for writes to the entities and triples tables, through the same
        checks as an entry edit (read-only, another process's edit evaluation): committed
        whole when the block ends, rolled back when it raises. The content version stays:
        entries, their keys and the index do not depend on entities."""
        self._begin()
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def triples(self, head: int | None = None) -> list[dict[str, Any]]:
        q = "SELECT id, head, relation, tail, tail_id, source FROM triples"
        args: tuple = ()
        if head is not None:
            q, args = q + " WHERE head=?", (int(head),)
        return [{"id": r[0], "head": r[1], "relation": r[2], "tail": r[3], "tail_id": r[4], "source": r[5]}
                for r in self.conn.execute(q + " ORDER BY id", args)]


# fields of exported files that are not entry fields; accepted on add and ignored
_IGNORED_ON_ADD = ("id", "created", "updated", "version")
