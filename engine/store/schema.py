"""The pack's SQLite schema and its migrations.

``SCHEMA_VERSION`` is stored in ``meta``; :func:`migrate` applies the missing steps,
each in one transaction, when a pack is opened for writing. A pack made by a newer
PlugMem (higher schema version) is refused rather than guessed at.
"""
from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 1

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

# version -> SQL bringing a pack from version-1 to version
MIGRATIONS: dict[int, str] = {1: _V1}


def read_schema_version(con: sqlite3.Connection) -> int:
    """0 for an empty database; raises sqlite3.DatabaseError for a non-database."""
    has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if not has_meta:
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return 0 if tables == 0 else -1
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else -1


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
