"""Hostile and broken packs (issue 24): each built in the test from SQL, each refused or
reported in one line, never a traceback, never a hang, never a change to a hostile file."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.store import Pack, PackError

ROOT = Path(__file__).resolve().parents[2]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, without the engine's defences: what an attacker's tool writes with."""
    return sqlite3.connect(str(path), isolation_level=None)


@pytest.fixture
def pack(tmp_path) -> Path:
    p = tmp_path / "geo.plugmem"
    with Pack.create(p) as made:
        made.add_many([{"text": "Paris is the capital of France."}] + [{"text": f"fact {i}"} for i in range(9)])
        made.edit(2, title="edited")
    return p


# ---------------------------------------------------------------------------- item 5: schema
HOSTILE = {
    "trigger": ("CREATE TRIGGER evil AFTER UPDATE ON entries BEGIN "
                "UPDATE entries SET text='The capital of France is Berlin.' WHERE id=1; DELETE FROM history; END",
                "trigger 'evil'"),
    "view": ("ALTER TABLE entries RENAME TO entries_real; "
             "CREATE VIEW entries AS SELECT * FROM entries_real UNION ALL "
             "SELECT 999, '', 'Injected: the capital of Japan is Osaka.', '', '[]', 'active', 0, 0, 1, 0",
             "'entries' is a view, not a table"),
    "recursive view": ("ALTER TABLE entries RENAME TO entries_real; "
                       "CREATE VIEW entries AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                       "SELECT x AS id, '' AS title, 'loop' AS text, '' AS source, '[]' AS tags, 'active' AS status, "
                       "0 AS created, 0 AS updated, 1 AS version, 0 AS cv FROM c",
                       "'entries' is a view, not a table"),
    "extra column": ("ALTER TABLE entries ADD COLUMN payload TEXT DEFAULT 'x'", "table 'entries' differs"),
}



@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_pack_with_code_or_a_foreign_schema_is_refused_on_open_unchanged(pack, case):
    sql, needle = HOSTILE[case]
    con = raw(pack)
    con.executescript(sql)
    con.close()
    before = sha(pack)
    with pytest.raises(PackError, match="refused: its schema is not the one PlugMem makes") as err:
        Pack.open(pack)
    assert needle in str(err.value) and str(pack) in str(err.value) and "\n" not in str(err.value)
    assert sha(pack) == before


def test_every_pack_connection_has_the_defences_set(pack):
    with Pack.open(pack) as p, Pack.open(pack, readonly=True) as ro:
        for con in (p.conn, ro.conn):
            assert con.execute("PRAGMA trusted_schema").fetchone()[0] == 0
            assert con.execute("PRAGMA cell_size_check").fetchone()[0] == 1
            with pytest.raises(sqlite3.OperationalError):
                con.execute("SELECT load_extension('/nonexistent')")


def test_a_statement_that_runs_too_long_is_aborted(pack, monkeypatch):
    from engine.store.sqlite_guard import PackConnection

    monkeypatch.setattr(PackConnection, "limit_s", 0.5)
    with Pack.open(pack) as p:
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            p.conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                           "SELECT count(*) FROM c").fetchone()
        assert p.count() == 10  # the connection stays usable


def test_a_pack_of_schema_1_is_migrated_and_keeps_its_full_text_index(tmp_path):
    """Schema 1 kept the full-text index with triggers; schema 2 drops them (packs hold no
    code) and the pack's own writes keep the index."""
    from engine.store.schema import MIGRATIONS, _statements

    path = tmp_path / "old.plugmem"
    con = raw(path)
    for stmt in _statements(MIGRATIONS[1]):
        con.execute(stmt)
    con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("schema_version", "1"), ("content_version", "1"), ("name", "old")])
    con.execute("INSERT INTO entries(title, text, created, updated, cv) VALUES ('', 'Lima is in Peru.', 0, 0, 1)")
    con.close()
    with Pack.open(path, readonly=True) as ro:  # read as it is (read-only media cannot be migrated)
        assert ro.schema_version == 1 and ro.fts("Lima")[0][0] == 1
    with Pack.open(path) as p:
        assert p.conn.execute("SELECT count(*) FROM sqlite_schema WHERE type='trigger'").fetchone()[0] == 0
        p.edit(1, text="Cusco is in Peru.")
        p.add("Quito is in Ecuador.")
        assert [i for i, _ in p.fts("Cusco")] == [1] and p.fts("Lima") == [] and p.fts("Quito")[0][0] == 2
        assert p.schema_version == 2


