"""The pack store: what a user of the pack sees after each operation, after a restart, on bad input."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from engine.fingerprint import EncoderFingerprint
from engine.store import EncoderMismatchError, EntryNotFound, Pack, PackError, ValidationError
from engine.store.pack import MAX_TEXT_CHARS
from engine.store.schema import SCHEMA_VERSION

from .conftest import FACTS

FP = EncoderFingerprint("test/encoder", "a" * 64, 4, "mean")


@pytest.fixture
def pack(tmp_path):
    p = Pack.create(tmp_path / "p.plugmem", name="test pack", encoder=FP)
    p.add_many([{"text": t, "title": title, "tags": [tag]} for t, title, tag in FACTS], author="ann")
    yield p
    p.close()


def texts(p: Pack) -> list[str]:
    return [e.text for e in p.get_many(p.ids())]


def test_created_pack_has_metadata_and_is_wal(pack):
    assert pack.name == "test pack" and pack.encoder == FP and pack.schema_version == SCHEMA_VERSION
    assert pack.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert pack.count() == len(FACTS) == pack.count("active")


def test_create_never_overwrites(tmp_path, pack):
    with pytest.raises(PackError, match="already exists"):
        Pack.create(pack.path)


def test_undo_redo_persist_across_reopen(tmp_path, pack):
    eid = pack.ids()[0]
    pack.edit(eid, text="Lyon is the capital of France.", author="bob")
    path = pack.path
    pack.close()
    with Pack.open(path) as p:
        assert p.can_undo() and p.undo_label() == f"edit entry {eid}"
        ch = p.undo()
        assert ch.ids == [eid] and p.get(eid).text == "Paris is the capital of France."
    with Pack.open(path) as p:
        assert p.can_redo()
        p.redo()
        assert p.get(eid).text == "Lyon is the capital of France."


def test_bulk_operations_are_one_undo_step(pack):
    ids = pack.ids()
    pack.set_status(ids[:4], "disabled")
    assert pack.count("disabled") == 4
    pack.delete(ids[4:7])
    assert pack.count() == len(FACTS) - 3
    pack.undo()
    assert pack.count() == len(FACTS)
    pack.undo()
    assert pack.count("disabled") == 0
    pack.undo()  # the initial bulk add
    assert pack.count() == 0 and not pack.can_undo()
    pack.redo()
    assert pack.count() == len(FACTS)


def test_new_change_clears_redo(pack):
    eid = pack.ids()[0]
    pack.edit(eid, title="A")
    pack.undo()
    assert pack.can_redo()
    pack.edit(eid, title="B")
    assert not pack.can_redo()


def test_every_mutation_returns_change_with_growing_content_version(pack):
    cv = pack.content_version
    eid = pack.ids()[1]
    ch = pack.edit(eid, title="Nippon")
    assert ch.kind == "edit" and ch.ids == [eid] and ch.content_version == cv + 1 == pack.content_version
    noop = pack.edit(eid, title="Nippon")
    assert noop.ids == [] and pack.content_version == cv + 1
    up, rm = pack.changes_since(cv)
    assert up.tolist() == [eid] and rm.tolist() == []
    pack.delete([eid])
    up, rm = pack.changes_since(cv + 1)
    assert rm.tolist() == [eid]


def test_history_has_before_after_author_and_add_state(pack):
    eid = pack.ids()[0]
    pack.edit(eid, text="Lyon is the capital of France.", author="bob")
    pack.set_status([eid], "disabled", author="cy")
    recs = pack.history(entry_id=eid)
    assert [r.op for r in recs] == ["disable", "edit", "add"]
    assert recs[0].author == "cy" and recs[0].before["status"] == "active" and recs[0].after["status"] == "disabled"
    assert recs[1].before["text"].startswith("Paris") and recs[1].after["text"].startswith("Lyon")
    assert recs[2].author == "ann" and recs[2].after["text"].startswith("Paris")
    assert json.dumps([r.to_dict() for r in recs])  # serialisable


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"text": ""}, "'text' is empty"),
        ({"text": "   \n "}, "'text' is empty"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, f"limit is {MAX_TEXT_CHARS:,}"),
        ({"text": "ok", "colour": "red"}, "unknown field(s) 'colour'"),
        ({"text": "ok", "title": "t" * 301}, "'title' has 301 characters"),
        ({"text": "ok", "tags": ["a,b"]}, "no commas"),
        ({"text": "ok", "status": "deleted"}, "'status' must be one of"),
        ({"text": 5}, "'text' must be a string"),
    ],
)
def test_invalid_entries_are_refused_with_the_reason_and_nothing_is_added(pack, fields, message):
    n, cv = pack.count(), pack.content_version
    with pytest.raises(ValidationError) as err:
        pack.add_many([{"text": "fine"}, fields])
    assert message in str(err.value) and "record 2" in str(err.value)
    assert pack.count() == n and pack.content_version == cv


def test_unknown_ids_are_named(pack):
    with pytest.raises(EntryNotFound, match="no entry with id 9999"):
        pack.edit(9999, text="x")
    with pytest.raises(EntryNotFound, match="9998"):
        pack.delete([pack.ids()[0], 9998])
    assert pack.count() == len(FACTS)


def test_deleted_entries_leave_every_read_path(pack, tmp_path):
    eid = pack.ids()[0]
    pack.delete([eid])
    assert eid not in pack.ids() and eid not in [e.id for e in pack.page(0, 100)]
    assert eid not in [i for i, _ in pack.fts("Paris")]
    out = tmp_path / "x.jsonl"
    pack.export(out)
    assert "Paris" not in out.read_text()
    with pytest.raises(EntryNotFound):
        pack.edit(eid, title="x")


def test_fts_ranks_and_is_safe_with_any_text(pack):
    ranked = pack.fts("capital Japan")
    assert pack.get(ranked[0][0]).text == "Tokyo is the capital of Japan."
    assert ranked == sorted(ranked, key=lambda r: -r[1])
    assert pack.fts("capi")  # prefix while typing
    for nasty in ['"', "AND OR NOT", "title:*", "(", "a' OR 1=1 --", "NEAR(", "^*"]:
        pack.fts(nasty)  # never raises


def test_fts_falls_back_to_any_word(pack):
    ids = [i for i, _ in pack.fts("Japan zebra")]
    assert ids and all("Japan" in pack.get(i).text for i in ids)


def test_paging_and_tags(pack):
    first = pack.page(0, 3)
    second = pack.page(first[-1].id, 3)
    assert [e.id for e in first + second] == pack.ids()[:6]
    assert dict(pack.tags())["geography"] == 5
    geo = pack.ids(tag="geography")
    assert len(geo) == 5 and all("geography" in e.tags for e in pack.get_many(geo))
    pack.edit(geo[0], tags=["history"])
    assert len(pack.ids(tag="geography")) == 4 and pack.ids(tag="history") == [geo[0]]


def test_vectors_go_stale_on_text_edit_only(pack):
    ids = pack.ids()
    pack.set_vectors(ids, np.eye(len(ids), 4, dtype=np.float32))
    assert pack.stale_vector_ids() == []
    pack.edit(ids[0], title="new title")
    pack.set_status([ids[1]], "disabled")
    pack.set_status([ids[1]], "active")
    assert pack.stale_vector_ids() == []
    pack.edit(ids[2], text="Sydney is not the capital of Australia.")
    assert pack.stale_vector_ids() == [ids[2]]
    vecs, ok = pack.get_vectors(ids[:3])
    assert ok.tolist() == [True, True, False] and vecs.shape == (3, 4)
    got = {int(i) for part, _ in pack.iter_active_vectors() for i in part}
    assert got == set(ids) - {ids[2]}


def test_float16_vectors_round_trip(tmp_path):
    with Pack.create(tmp_path / "h.plugmem", encoder=FP, vector_dtype="float16") as p:
        ch = p.add_many([{"text": "a"}, {"text": "b"}], vectors=np.array([[1, 0, 0, 0], [0, 0.5, 0, 0]], np.float32))
        vecs, ok = p.get_vectors(ch.ids)
        assert ok.all() and vecs.dtype == np.float32 and vecs[1, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_import_round_trip_is_lossless(pack, tmp_path, fmt):
    ids = pack.ids()
    pack.set_status(ids[:2], "disabled")
    pack.edit(ids[3], text='Quotes "inside", commas, and a\nnew line.', source="notes/a.md:3", tags=["x y", "z"])
    out = tmp_path / f"out.{fmt}"
    assert pack.export(out) == len(FACTS)
    with Pack.create(tmp_path / f"copy-{fmt}.plugmem", encoder=FP) as copy:
        copy.import_file(out)
        again = tmp_path / f"again.{fmt}"
        copy.export(again)

        def strip(path):
            if fmt == "jsonl":
                rows = [json.loads(line) for line in path.read_text().splitlines()]
            else:
                import csv

                rows = list(csv.DictReader(path.open(newline="")))
            return [{k: r[k] for k in ("title", "text", "source", "tags", "status")} for r in rows]

        assert strip(out) == strip(again)
        assert copy.count("disabled") == 2


def test_import_checkpoint_resumes_and_is_one_undo_step(tmp_path):
    path = tmp_path / "i.plugmem"
    with Pack.create(path, encoder=FP) as p:
        st = p.begin_import("k1", "data/facts.jsonl", total=5)
        p.add_many([{"text": f"fact {i}"} for i in range(3)], import_key="k1")
    with Pack.open(path) as p:  # as after a crash: state survives
        st = p.begin_import("k1", "data/facts.jsonl", total=5)
        assert st.state == "running" and st.rows_done == 3
        p.add_many([{"text": f"fact {i}"} for i in range(3, 5)], import_key="k1")
        p.finish_import("k1")
        assert p.import_state("k1").state == "done" and p.count() == 5
        assert p.undo_label() == "import facts.jsonl (5 entries)"
        p.undo()
        assert p.count() == 0 and p.import_state("k1").state == "undone"
        assert p.begin_import("k1", "data/facts.jsonl", total=5).rows_done == 0  # importable again


def test_not_a_pack_is_refused_clearly(tmp_path):
    junk = tmp_path / "junk.plugmem"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(PackError, match="not a PlugMem pack"):
        Pack.open(junk)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.close()
    with pytest.raises(PackError, match="no pack metadata"):
        Pack.open(other)
    with pytest.raises(PackError, match="no such pack"):
        Pack.open(tmp_path / "missing.plugmem")


def test_newer_schema_is_refused_and_left_alone(pack):
    path = pack.path
    pack.conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    pack.close()
    before = path.read_bytes()
    with pytest.raises(PackError, match="newer PlugMem"):
        Pack.open(path)
    assert path.read_bytes() == before


def test_truncated_pack_is_reported_by_check_not_crashing(pack, tmp_path, encoder):
    from engine.check import check_pack

    for _ in range(30):  # enough pages that a cut lands inside the data
        pack.add_many([{"text": f"filler entry number {i} " * 20} for i in range(50)])
    path = pack.path
    pack.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pack.close()
    data = path.read_bytes()
    bad = tmp_path / "bad.plugmem"
    bad.write_bytes(data[: len(data) // 2])
    report = check_pack(bad, encoder=encoder)
    assert report["ok"] is False and report["problems"]
    assert all(isinstance(p, str) and p for p in report["problems"])


def test_encoder_mismatch_names_both_and_changes_nothing(pack):
    other = EncoderFingerprint("acme/big", "b" * 64, 768, "cls")
    path = pack.path
    pack.close()
    with pytest.raises(EncoderMismatchError) as err:
        Pack.open(path, encoder=other)
    assert "test/encoder" in str(err.value) and "acme/big" in str(err.value) and "plugmem reencode" in str(err.value)
    with Pack.open(path) as p:
        assert p.encoder == FP


def test_readonly_pack_sees_writes_and_cannot_write(pack):
    ro = Pack.open(pack.path, readonly=True)
    try:
        pack.add("Oslo is the capital of Norway.")
        assert ro.count() == len(FACTS) + 1
        with pytest.raises(PackError, match="read-only"):
            ro.set_vectors([1], np.zeros((1, 4), np.float32))
    finally:
        ro.close()


def test_reencode_drops_old_keys(pack):
    ids = pack.ids()
    pack.set_vectors(ids, np.ones((len(ids), 4), np.float32))
    pack.set_encoder(EncoderFingerprint("acme/new", "c" * 64, 4, "mean"))
    assert pack.stale_vector_ids() == ids and pack.encoder.name == "acme/new"
