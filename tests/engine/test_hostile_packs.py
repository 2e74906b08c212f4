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

from engine.cli import main
from engine.store import Pack, PackError

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def check(capsys, pack, *flags) -> dict:
    code, out, err = run(capsys, "check", pack, "--json", *flags)
    report = json.loads(out)
    assert all("\n" not in p for p in report["problems"] + report["repaired"] + report["not_repaired"])
    return report


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, without the engine's defences: what an attacker's tool writes with."""
    return sqlite3.connect(str(path), isolation_level=None)


@pytest.fixture
def pack(tmp_path, capsys, facts_jsonl, encoder) -> Path:
    p = tmp_path / "geo.plugmem"
    assert run(capsys, "init", p)[0] == 0
    assert run(capsys, "import", p, facts_jsonl)[0] == 0
    assert run(capsys, "edit", p, 2, "--title", "Japan (edited)")[0] == 0  # a history row with snapshots
    return p


def assert_one_line_refusal(capsys, pack, needle: str, *commands) -> None:
    for cmd in commands or (("list", pack), ("show", pack, 1), ("search", pack, "capital"),
                            ("search", pack, "capital", "--text"), ("edit", pack, 1, "--title", "x"),
                            ("history", pack), ("stats", pack)):
        code, out, err = run(capsys, *cmd)
        assert code == 2, (cmd, out, err)
        assert err.count("\n") == 1 and err.startswith("plugmem: error: ") and needle in err, (cmd, err)


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


@pytest.mark.timeout(120)  # a recursive view used to make every command spin for ever
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_pack_with_code_or_a_foreign_schema_is_refused_and_left_unchanged(capsys, pack, case):
    sql, needle = HOSTILE[case]
    con = raw(pack)
    con.executescript(sql)
    con.close()
    before = sha(pack)
    with pytest.raises(PackError, match="refused: its schema is not the one PlugMem makes") as err:
        Pack.open(pack)
    assert needle in str(err.value) and str(pack) in str(err.value) and "\n" not in str(err.value)
    assert_one_line_refusal(capsys, pack, needle)
    report = check(capsys, pack)
    assert report["ok"] is False and needle in report["problems"][0]
    report = check(capsys, pack, "--repair")
    assert report["repaired"] == [] and "never modified" in report["not_repaired"][0]
    assert sha(pack) == before  # nothing ran: entry 1 and the history are as they were
    con = raw(pack)
    table = "entries_real" if "view" in case else "entries"
    assert con.execute(f"SELECT text FROM {table} WHERE id=1").fetchone()[0] == "Paris is the capital of France."
    assert con.execute("SELECT count(*) FROM history").fetchone()[0] > 0
    con.close()


def test_what_sqlite_adds_itself_is_no_schema_difference(pack):
    con = raw(pack)
    con.execute("ANALYZE")  # sqlite_stat1, as `PRAGMA optimize` on close makes it
    con.close()
    with Pack.open(pack) as p:
        assert p.count() == 10


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


# ---------------------------------------------------------------------------- check and --repair
def _nan_key(con):
    key = np.full(384, np.nan, dtype=np.float32).tobytes()
    con.execute("UPDATE vectors SET key=? WHERE entry_id=3", (key,))


def _fts_missing(con):
    t, x = con.execute("SELECT title, text FROM entries WHERE id=3").fetchone()
    con.execute("INSERT INTO entries_fts(entries_fts, rowid, title, text) VALUES ('delete', 3, ?, ?)", (t, x))


def _index_file(con, pack):
    import shutil

    from engine.memory import index_dir_for

    shutil.rmtree(index_dir_for(pack))
    index_dir_for(pack).write_text("not a folder")


def _corrupt_page(con, pack):
    root = con.execute("SELECT rootpage FROM sqlite_schema WHERE name='entries'").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    with open(pack, "r+b") as f:
        f.seek((root - 1) * size + 8)
        f.write(b"\xff" * 64)


# case -> (damage: SQL or function, what check says, derivable by repair, what other commands do)
DAMAGE = {
    "wrong-dimension keys": ("UPDATE vectors SET key = substr(key, 1, 400) WHERE entry_id IN (3, 4)",
                             "active entries have no up-to-date key", True, None),
    "NaN keys": (_nan_key, "keys are damaged", True, None),
    "corrupt FTS index": ("UPDATE entries_fts_data SET block = x'00ff00ff00ff' WHERE id = 10",
                          "full-text index: damaged", True, None),
    "FTS missing an entry": (_fts_missing, "full-text index: 1 entries missing", True, None),
    "bad tags JSON": ("UPDATE entries SET tags = 'not json' WHERE id = 3", "entries: 1 damaged", True,
                      "entry 3 has tags that are not a JSON list"),
    "BLOB text": ("UPDATE entries SET text = CAST(text AS BLOB) WHERE id = 3", "entries: 1 damaged", True,
                  "entry 3 has a bytes where its text text belongs"),
    "non-integer entry version": ("UPDATE entries SET version = 'abc' WHERE id = 3", "entries: 1 damaged", True,
                                  "entry 3 has a version 'abc'"),
    "bad entity aliases JSON": ("INSERT INTO entities(name, aliases) VALUES ('Japan', '{oops')",
                                "entities: 1 have aliases", False, None),
    "bad history JSON": ("UPDATE history SET before = '{broken' WHERE before IS NOT NULL", "history: 1 rows",
                         False, None),
    "non-integer content version": ("UPDATE meta SET value = 'abc' WHERE key = 'content_version'",
                                    "metadata content_version 'abc' is not a whole number", True,
                                    "damaged pack: metadata content_version 'abc'"),
    "vector_dtype float64": ("UPDATE meta SET value = 'float64' WHERE key = 'vector_dtype'",
                             "metadata vector_dtype 'float64'", True, "metadata vector_dtype 'float64'"),
    "non-integer schema version": ("UPDATE meta SET value = 'two' WHERE key = 'schema_version'",
                                   "schema version 'two' is not a whole number", False,
                                   "schema version 'two' is not a whole number"),
    "PACK.index is a file": (_index_file, "is a file, not the index cache folder", True, None),
    "corrupt database page": (_corrupt_page, "database", False, "damaged"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(DAMAGE))
def test_check_reports_repair_derives_and_no_command_raises(capsys, pack, case):
    damage, said, derivable, refusal = DAMAGE[case]
    con = raw(pack)
    if callable(damage):
        damage(*((con, pack) if damage.__code__.co_argcount == 2 else (con,)))
    else:
        con.execute(damage)
    con.close()
    report = check(capsys, pack)
    assert report["ok"] is False and any(said in p for p in report["problems"]), report

    # every other command: works, or refuses in one line (the message check gives, where the open refuses)
    for cmd in (("list", pack), ("show", pack, 3), ("search", pack, "capital of Japan"),
                ("search", pack, "capital", "--text"), ("history", pack), ("stats", pack), ("undo", pack),
                ("entities", pack)):
        code, out, err = run(capsys, *cmd)
        assert code == 0 or (code == 2 and err.count("\n") == 1 and err.startswith("plugmem: error: ")), (cmd, err)
        if refusal and cmd[0] == "list":
            assert code == 2 and refusal in err, (cmd, err)

    report = check(capsys, pack, "--repair")
    assert report["ok"] is False
    if derivable:
        assert report["repaired"] and report["ok_after_repair"] is True, report
        assert check(capsys, pack)["ok"] is True
        assert run(capsys, "list", pack)[0] == 0
        code, out, _ = run(capsys, "search", pack, "capital of Japan", "--json")
        assert code == 0 and json.loads(out)["results"][0]["text"] == "Tokyo is the capital of Japan."
    else:
        assert report["not_repaired"] and report["ok_after_repair"] is False, report


# ---------------------------------------------------------------------------- item 6: key poisoning
@pytest.fixture
def poisoned(pack, encoder) -> Path:
    """Entry 1 (Paris) carries the key of a question about gold: served for it at score 1.0."""
    from engine.memory import index_dir_for
    import shutil

    key = encoder.encode(["What is the chemical symbol of gold?"])[0].astype(np.float32)
    con = raw(pack)
    con.execute("UPDATE vectors SET key=? WHERE entry_id=1", (key.tobytes(),))
    con.close()
    shutil.rmtree(index_dir_for(pack))  # the cache a sharer sends is rebuilt from those keys
    return pack


def _top(capsys, pack, query, *flags):
    code, out, err = run(capsys, "search", pack, query, "--json", "-k", "1", *flags)
    assert code == 0, err
    return json.loads(out)["results"][0]


def test_keys_that_do_not_match_their_text_are_found_and_re_encoded(capsys, poisoned):
    hit = _top(capsys, poisoned, "What is the chemical symbol of gold?")
    assert hit["text"].startswith("Paris") and hit["score"] > 0.99  # what a poisoned pack does
    report = check(capsys, poisoned, "--full")
    assert report["ok"] is False and any("do not match their entry's text" in p and "ids 1" in p
                                         for p in report["problems"]), report
    report = check(capsys, poisoned, "--repair")  # 10 entries: the sample is every key
    assert report["ok_after_repair"] is True
    assert _top(capsys, poisoned, "What is the chemical symbol of gold?")["text"].startswith("The chemical symbol")
    assert check(capsys, poisoned, "--full")["ok"] is True


def test_a_pack_from_elsewhere_can_be_opened_re_encoding_every_key(capsys, poisoned):
    hit = _top(capsys, poisoned, "What is the chemical symbol of gold?", "--reencode-untrusted")
    assert hit["text"].startswith("The chemical symbol")
    assert check(capsys, poisoned, "--full")["ok"] is True  # the fresh keys were kept


def test_reencode_replaces_poisoned_keys_and_the_cache_built_from_them(capsys, poisoned):
    assert _top(capsys, poisoned, "What is the chemical symbol of gold?")["text"].startswith("Paris")  # cached now
    assert run(capsys, "reencode", poisoned)[0] == 0  # same encoder: the cache's stamp still matched
    assert _top(capsys, poisoned, "What is the chemical symbol of gold?")["text"].startswith("The chemical symbol")


def test_an_oversized_key_is_found_though_it_points_the_right_way(capsys, pack):
    con = raw(pack)
    key = np.frombuffer(con.execute("SELECT key FROM vectors WHERE entry_id=1").fetchone()[0], np.float32) * 50
    con.execute("UPDATE vectors SET key=? WHERE entry_id=1", (key.astype(np.float32).tobytes(),))
    con.close()
    report = check(capsys, pack)
    assert any("not unit length" in p for p in report["problems"]), report
    assert check(capsys, pack, "--repair")["ok_after_repair"] is True


# ---------------------------------------------------------------------------- read-only media
def _read_only_runner(media: Path):
    """Run the CLI where ``media`` cannot be written: for root (who writes through any mode
    bits) a read-only bind mount in a private mount namespace, else the folder's mode bits."""
    import shlex
    import shutil

    if os.geteuid() != 0:
        for d, _, files in os.walk(media):
            for f in files:
                os.chmod(Path(d) / f, 0o444)
            os.chmod(d, 0o555)
        return lambda *args: [sys.executable, "-m", "engine.cli", *map(str, args)]
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only here")
    m = shlex.quote(str(media))

    def argv(*args):
        cli = shlex.join([sys.executable, "-m", "engine.cli", *map(str, args)])
        return ["unshare", "-m", "sh", "-c", f"mount --bind {m} {m} && mount -o remount,bind,ro {m} && exec {cli}"]
    return argv


@pytest.mark.timeout(300)
def test_a_pack_on_a_read_only_folder_is_listed_and_writes_are_refused_clearly(pack, tmp_path):
    import shutil

    from engine.memory import index_dir_for

    media = tmp_path / "media"
    media.mkdir()
    target = media / pack.name
    shutil.copy(pack, target)
    shutil.copytree(index_dir_for(pack), index_dir_for(target))
    argv = _read_only_runner(media)
    try:
        def cli(*args):
            return subprocess.run(argv(*args), cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                                  timeout=240)

        probe = subprocess.run(argv("stats", target, "--json"), cwd=ROOT, capture_output=True, text=True, timeout=240)
        if "mount" in probe.stderr and probe.returncode != 0 and "plugmem" not in probe.stderr:
            pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()[:200]}")
        listed = cli("list", target, "--json")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)["entries"]) == 10
        assert cli("search", target, "capital", "--text", "--json").returncode == 0
        found = cli("search", target, "capital of Japan", "--json")  # the cache beside it serves
        assert found.returncode == 0 and json.loads(found.stdout)["results"][0]["text"].startswith("Tokyo")
        checked = cli("check", target, "--json")  # a sound cache that cannot be written is no problem
        assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True, checked.stdout
        edit = cli("edit", target, 1, "--title", "x")
        assert edit.returncode == 2 and "Traceback" not in edit.stderr, edit.stderr
        assert "opened read-only (its folder is read-only); changes are refused" in edit.stderr, edit.stderr
        untrusted = cli("search", target, "capital of Japan", "--reencode-untrusted")  # keys cannot be kept there
        assert untrusted.returncode == 2 and "Traceback" not in untrusted.stderr
        assert "keys to encode for semantic search cannot be stored" in untrusted.stderr, untrusted.stderr
        with Pack.open(target, readonly=True) as ro:
            assert ro.get(1).title == "France"
    finally:
        for d, _, files in os.walk(media):
            os.chmod(d, 0o755)
