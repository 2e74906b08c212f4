"""The pack's SQLite schema, its migrations, and the check that a file holds exactly it.

``SCHEMA_VERSION`` is stored in ``meta``; :func:`migrate` applies the missing steps,
each in one transaction, when a pack is opened for writing. A pack made by a newer
PlugMem (higher schema version) is refused rather than guessed at.

A pack is a file strangers share: :func:`verify_schema` compares its ``sqlite_schema``
with what :func:`expected_schema` builds by running the same migrations on an empty
database, and refuses anything else (an extra trigger or view, a view in place of a
table, a changed column), before any statement touches the pack's tables.
"""
from __future__ import annotations

import functools
import sqlite3

SCHEMA_VERSION = 2
# The oldest schema whose packs this code reads as they are (v2 only dropped triggers):
# a pack on read-only media cannot be migrated, and is read without it.
READ_COMPATIBLE_FROM = 1

_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE entries (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    title   TEXT NOT NULL DEFAULT '',
    text    TEXT NOT NULL,
    source  TEXT NOT NULL DEFAULT '',
    tags    TEXT NOT NULL DEFAULT '[]',
    status  TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'deleted')),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    cv      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX entries_status ON entries(status, id);
CREATE INDEX entries_cv ON entries(cv);
CREATE INDEX entries_updated ON entries(updated, id);
CREATE TABLE entry_tags (
    tag      TEXT NOT NULL,
    entry_id INTEGER NOT NULL,
    PRIMARY KEY (tag, entry_id)
) WITHOUT ROWID;
CREATE INDEX entry_tags_entry ON entry_tags(entry_id);
CREATE TABLE vectors (
    entry_id      INTEGER PRIMARY KEY,
    entry_version INTEGER NOT NULL,
    dtype         TEXT NOT NULL,
    key           BLOB NOT NULL
);
CREATE TABLE changes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    label           TEXT NOT NULL,
    time            REAL NOT NULL,
    author          TEXT,
    content_version INTEGER NOT NULL,
    stack           INTEGER NOT NULL DEFAULT 1,
    undone          INTEGER NOT NULL DEFAULT 0,
    target          INTEGER
);
CREATE INDEX changes_stack ON changes(stack, undone, id);
CREATE TABLE history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id INTEGER NOT NULL,
    entry_id  INTEGER NOT NULL,
    op        TEXT NOT NULL,
    before    TEXT,
    after     TEXT,
    time      REAL NOT NULL,
    author    TEXT
);
CREATE INDEX history_entry ON history(entry_id, id);
CREATE INDEX history_change ON history(change_id, id);
CREATE TABLE imports (
    key       TEXT PRIMARY KEY,
    path      TEXT NOT NULL,
    total     INTEGER NOT NULL,
    rows_done INTEGER NOT NULL DEFAULT 0,
    change_id INTEGER,
    state     TEXT NOT NULL,
    started   REAL NOT NULL,
    finished  REAL
);
CREATE TABLE entities (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    aliases     TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE triples (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    head     INTEGER NOT NULL REFERENCES entities(id),
    relation TEXT NOT NULL,
    tail     TEXT NOT NULL,
    tail_id  INTEGER REFERENCES entities(id),
    source   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX triples_head ON triples(head);
CREATE VIRTUAL TABLE entries_fts USING fts5(
    title, text, content='entries', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER entries_fts_ai AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TRIGGER entries_fts_ad AFTER DELETE ON entries BEGIN
    INSERT INTO entries_fts(entries_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
END;
CREATE TRIGGER entries_fts_au AFTER UPDATE OF title, text ON entries BEGIN
    INSERT INTO entries_fts(entries_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
    INSERT INTO entries_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
"""

# v2: the full-text index is kept by the pack's own code in each write transaction.
# Triggers on entries used the FTS5 table, which SQLite refuses from schema code under
# trusted_schema=OFF; and with no trigger of ours, "no triggers at all" is the rule.
_V2 = """
DROP TRIGGER IF EXISTS entries_fts_ai;
DROP TRIGGER IF EXISTS entries_fts_ad;
DROP TRIGGER IF EXISTS entries_fts_au;
"""

# version -> SQL bringing a pack from version-1 to version
MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2}

# Tables SQLite itself may add (ANALYZE, run by `PRAGMA optimize` on close). stat4 (and the
# older stat3) exist only in SQLite builds with STAT4, which the pack's author may have had.
_STAT_TABLES = {
    "sqlite_stat1": "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
    "sqlite_stat3": "CREATE TABLE sqlite_stat3(tbl,idx,neq,nlt,ndlt,sample)",
    "sqlite_stat4": "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)",
}


class SchemaMismatch(ValueError):
    """The file's schema is not one PlugMem makes; the message says what differs."""


SchemaRow = tuple[str, str, str, "str | None"]  # type, name, tbl_name, normalised sql


def _norm(sql: str | None) -> str | None:
    return " ".join(sql.split()) if sql is not None else None


def _schema_rows(con: sqlite3.Connection) -> dict[str, SchemaRow]:
    rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema").fetchall()
    return {r[1]: (r[0], r[1], r[2], _norm(r[3])) for r in rows}


@functools.lru_cache(maxsize=None)
def expected_schema(version: int) -> dict[str, SchemaRow]:
    """The schema objects of a pack at ``version``, made by the migrations on an empty database."""
    con = sqlite3.connect(":memory:")
    try:
        for v in range(1, version + 1):
            for stmt in _statements(MIGRATIONS[v]):
                con.execute(stmt)
        rows = _schema_rows(con)
        rows.update({name: ("table", name, name, sql) for name, sql in _STAT_TABLES.items()})
        return rows
    finally:
        con.close()


def _describe(row: SchemaRow) -> str:
    return f"{row[0]} {row[1]!r}"


def verify_schema(con: sqlite3.Connection) -> int:
    """The pack's schema version, once its schema is exactly that version's; 0 for an empty file.

    Raises SchemaMismatch (what differs) or sqlite3.DatabaseError (not a database).
    Reads only ``sqlite_schema`` and, once ``meta`` is known to be our plain table, its
    ``schema_version``: nothing a hostile file defines runs here.
    """
    found = _schema_rows(con)
    if not found:
        return 0
    meta = expected_schema(1)["meta"]
    if found.get("meta") != meta:
        what = ("no pack metadata in this SQLite file" if "meta" not in found
                else f"its 'meta' is not the table PlugMem makes ({found['meta'][0]})")
        raise SchemaMismatch(f"not a PlugMem pack ({what})")
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise SchemaMismatch("not a PlugMem pack (no schema version in its metadata)")
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise SchemaMismatch(f"refused: its schema version {str(row[0])[:40]!r} is not a whole number") from None
    if version < 1:
        raise SchemaMismatch(f"refused: its schema version {version} is not one PlugMem makes")
    if version > SCHEMA_VERSION:
        return version  # the caller refuses it as too new, naming both versions
    want = expected_schema(version)
    code: list[str] = []  # what would run inside our statements: said first
    issues: list[str] = []
    for name, row in found.items():
        exp = want.get(name)
        if exp is None:
            if row[0] in ("trigger", "view"):
                code.append(f"it has a {row[0]} {name!r} (packs have none)")
            else:
                issues.append(f"unexpected {_describe(row)}")
        elif exp[0] != row[0]:
            code.append(f"{name!r} is a {row[0]}, not a {exp[0]}")
        elif exp != row:
            issues.append(f"{_describe(row)} differs from the one PlugMem makes")
    issues = code + issues + [f"{_describe(exp)} is missing" for name, exp in want.items()
                              if name not in found and name not in _STAT_TABLES]
    if issues:
        more = f" (and {len(issues) - 3} more)" if len(issues) > 3 else ""
        raise SchemaMismatch("refused: its schema is not the one PlugMem makes: " + "; ".join(issues[:3]) + more)
    return version


def migrate(con: sqlite3.Connection, current: int) -> int:
    """Apply every migration after ``current``; each in its own transaction."""
    for version in range(current + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[version]):
                con.execute(stmt)
            con.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(version),),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _statements(sql: str) -> list[str]:
    """Split a script into statements (keeping trigger bodies whole)."""
    out, buf = [], []
    for line in sql.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf))
    return out
