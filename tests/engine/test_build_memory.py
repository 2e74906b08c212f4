"""Building a domain memory: import, rejection of malformed files, resume after interruption."""
from __future__ import annotations

import errno
import json

import pytest

from engine.jobs.build_memory import VALIDATE_SHARE, build_memory
from engine.memory import Memory
from engine.progress import JobCancelled
from engine.store import Pack, ValidationError
from engine.store.errors import DiskFullError
from tests.engine._kill import start_and_kill


def _texts(path) -> list[str]:
    with Pack.open(path) as p:
        return [e.text for e in p.get_many(p.ids(status="active"))]


def _corpus(tmp_path, n: int):
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({"text": f"Fact number {i}: the sample value of item {i} is {i * 7}."}) + "\n" for i in range(n)), encoding="utf-8")
    return p


def test_build_imports_jsonl_csv_and_markdown_with_sources(tmp_path, facts_jsonl, encoder):
    csv = tmp_path / "table.csv"
    csv.write_text('title,text\nOxygen,"Oxygen has the atomic number 8."\n', encoding="utf-8")
    md = tmp_path / "notes.md"
    md.write_text("# Rivers\n\nThe Danube flows into the Black Sea.\n\nThe Rhine flows into the North Sea.\n", encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    events = []
    res = build_memory({"pack": str(pack), "inputs": [str(facts_jsonl), str(csv), str(md)]}, lambda f, m="": events.append(f), lambda: False)
    assert res["errors"] == []
    assert res["entries_added"] == 10 + 1 + 2
    assert events[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in events)
    with Pack.open(pack) as p:
        entries = p.get_many(p.ids())
    sources = {e.text: e.source for e in entries}
    assert "table.csv" in sources["Oxygen has the atomic number 8."]
    assert "notes.md" in sources["The Rhine flows into the North Sea."]
    assert {e.title for e in entries if "Danube" in e.text} == {"Rivers"}
    with Memory.open(pack, encoder) as m:
        assert m.search("Which sea does the Danube reach?", k=1)[0].entry.text == "The Danube flows into the Black Sea."


def test_reimporting_the_same_file_adds_nothing(tmp_path, facts_jsonl, encoder):
    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(facts_jsonl)]}
    build_memory(cfg, lambda *a: None, lambda: False)
    res = build_memory(cfg, lambda *a: None, lambda: False)
    assert res["entries_added"] == 0 and res["files_skipped"] == [str(facts_jsonl)]
    assert len(_texts(pack)) == 10


def test_pack_made_with_full_path_import_keys_does_not_import_the_same_file_twice(tmp_path, facts_jsonl, encoder):
    # Packs made before 2026-11-27 keyed an import by the file's full path + sha256; the demo
    # packs of this machine were imported a second time when the key became name + sha256.
    from engine.store.corpus import file_key

    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(facts_jsonl)]}
    build_memory(cfg, lambda *a: None, lambda: False)
    key = file_key(facts_jsonl)
    legacy = str(facts_jsonl.resolve()) + key[key.index("#sha256:"):]
    with Pack.open(pack) as p:
        p.conn.execute("UPDATE imports SET key=? WHERE key=?", (legacy, key))
        p.conn.commit()
    res = build_memory(cfg, lambda *a: None, lambda: False)
    assert res["entries_added"] == 0 and res["files_skipped"] == [str(facts_jsonl)]
    assert len(_texts(pack)) == 10
    with Pack.open(pack, readonly=True) as p:
        assert p.import_state(key).state == "done"  # the record now carries the current key
    other = tmp_path / "elsewhere" / "other.jsonl"  # another file with the same content is not the same import
    other.parent.mkdir()
    other.write_bytes(facts_jsonl.read_bytes())
    with Pack.open(pack, readonly=True) as p:
        assert p.import_state(file_key(other)) is None


def test_malformed_file_is_reported_with_line_and_nothing_at_all_imported(tmp_path, facts_jsonl, encoder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A good line."}\n{"text": "Another good line."}\n{"text": broken\n', encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    res = build_memory({"pack": str(pack), "inputs": [str(facts_jsonl), str(bad)]}, lambda *a: None, lambda: False)
    assert len(res["errors"]) == 1 and "bad.jsonl:3" in res["errors"][0]
    assert res["entries_added"] == 0 and not pack.exists()  # not even the good file, nor an empty pack


def test_a_record_over_the_pack_limits_late_in_a_file_imports_nothing_and_fixing_it_imports_all_once(tmp_path, facts_jsonl, encoder):
    # the fault of issue 24 (there: line 900 of 1,000, chunks of 512): chunks before the bad line used
    # to be committed before it was seen, leaving entries and an import 'running' ("record 388")
    lines = [json.dumps({"text": f"Fact number {i} is a short sentence."}) for i in range(200)]
    lines[179] = json.dumps({"text": "x" * 4001})
    src = tmp_path / "big.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    build_memory({"pack": str(pack), "inputs": [str(facts_jsonl)]}, lambda *a: None, lambda: False)
    res = build_memory({"pack": str(pack), "inputs": [str(src)], "chunk_size": 64}, lambda *a: None, lambda: False)
    assert res["entries_added"] == 0 and len(res["errors"]) == 1
    assert "big.jsonl:180" in res["errors"][0] and "4,001 characters" in res["errors"][0]
    assert len(_texts(pack)) == 10
    with Pack.open(pack, readonly=True) as p:
        assert [r[0] for r in p.conn.execute("SELECT state FROM imports")] == ["done"]  # no import left running
    lines[179] = json.dumps({"text": "Fact number 179 is fixed."})
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = build_memory({"pack": str(pack), "inputs": [str(src)], "chunk_size": 64}, lambda *a: None, lambda: False)
    assert res["errors"] == [] and res["entries_added"] == 200
    assert len(_texts(pack)) == 210


def test_a_huge_line_is_refused_before_anything_is_encoded(tmp_path, encoder, monkeypatch):
    # a 50 MB single-line JSONL took 57 s and 3.4 GB: its text was encoded before its length was checked
    src = tmp_path / "huge.jsonl"
    src.write_text(json.dumps({"text": "word " * 10_000_000}) + "\n", encoding="utf-8")
    res = build_memory({"pack": str(tmp_path / "d.plugmem"), "inputs": [str(src)]}, lambda *a: None, lambda: False)
    assert len(res["errors"]) == 1 and "huge.jsonl:1" in res["errors"][0]
    encoded = []
    real = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts, *a, **k: encoded.append(len(texts)) or real(texts, *a, **k))
    with Memory.open(tmp_path / "m.plugmem", encoder, create=True) as m:  # the same limit on the engine's own path
        with pytest.raises(ValidationError, match="100,000 characters"):
            m.add_many([{"text": "Short."}, {"text": "y" * 100_000}])
        with pytest.raises(ValidationError, match="100,000 characters"):
            m.add("y" * 100_000)
        assert encoded == [] and m.pack.count() == 0


def test_validation_reports_progress_while_parsing_a_long_paragraph(tmp_path, encoder):
    # a 2 MB paragraph, refused by its last line: all of the time goes to parsing (nothing is encoded)
    sentence = "The sample value of item number forty two is recorded in the table. "
    src = tmp_path / "long.md"
    src.write_text(sentence * 30_000 + "\n\n# " + "Title " * 60 + "\n\nA last paragraph.\n", encoding="utf-8")
    events: list[tuple[float, str]] = []
    res = build_memory({"pack": str(tmp_path / "d.plugmem"), "inputs": [str(src)]},
                       lambda f, m="": events.append((f, m)), lambda: False)
    assert len(res["errors"]) == 1 and "long.md:5" in res["errors"][0] and "'title' has 359 characters" in res["errors"][0]
    parsing = [f for f, m in events if m == "reading long.md"]
    assert len(parsing) >= 50 and parsing == sorted(parsing) and 0.0 < parsing[-1] <= VALIDATE_SHARE


def test_a_disk_filling_up_during_an_import_gives_a_reason_and_the_import_resumes(tmp_path, encoder, monkeypatch,
                                                                                   fill_disk_after):
    src = _corpus(tmp_path, 60)
    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(src)], "chunk_size": 8}
    Pack.create(pack).close()
    fill_disk_after(20)
    with pytest.raises(DiskFullError) as info:
        build_memory(cfg, lambda *a: None, lambda: False)
    assert str(info.value) == (f"disk full while importing into {pack}: free space and run the same command "
                               "again to resume")
    monkeypatch.undo()
    partial = len(_texts(pack))
    assert 0 < partial < 60 and partial % 8 == 0  # whole chunks only
    res = build_memory(cfg, lambda *a: None, lambda: False)  # space freed: the same command resumes
    assert res["entries_added"] == 60 - partial
    texts = _texts(pack)
    assert len(texts) == 60 and len(set(texts)) == 60


def test_no_space_left_for_the_index_cache_is_said_and_the_import_stands(tmp_path, encoder, monkeypatch):
    """The cache is derived: the import's entries are committed, so it succeeds and says the
    cache was not saved; the next open rebuilds it."""
    from engine.index.vector_index import VectorIndex

    real = VectorIndex.save

    def no_space(self, *a, **k):  # the cache written when the import ends (an empty one at open is fine)
        if len(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(VectorIndex, "save", no_space)
    pack = tmp_path / "d.plugmem"
    res = build_memory({"pack": str(pack), "inputs": [str(_corpus(tmp_path, 20))]}, lambda *a: None, lambda: False)
    assert res["entries_added"] == 20 and not res["errors"]
    assert any("not saved" in n and "No space left" in n for n in res["notes"]), res["notes"]
    monkeypatch.undo()
    assert len(_texts(pack)) == 20  # the entries were committed; only the derived cache is missing
    with Memory.open(pack, encoder) as m:
        assert len(m.index) == 20


def test_cancelled_build_resumes_without_loss_or_duplicates(tmp_path, encoder):
    src = _corpus(tmp_path, 50)
    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(src)], "chunk_size": 16}
    chunks = []  # progress messages of committed chunks ('big.jsonl: 16 of 50')

    def stop_after_two_chunks() -> bool:
        return len(chunks) >= 2

    with pytest.raises(JobCancelled):
        build_memory(cfg, lambda f, m="": chunks.extend([m] if " of 50" in m else []), stop_after_two_chunks)
    assert len(_texts(pack)) == 32  # exactly the committed chunks
    res = build_memory(cfg, lambda *a: None, lambda: False)
    assert res["entries_added"] == 18
    texts = _texts(pack)
    assert len(texts) == 50 and len(set(texts)) == 50
    with Memory.open(pack, encoder) as m:  # index caught up with what the first run left
        assert len(m.index) == 50
        with Pack.open(pack) as p:
            assert p.count() == 50
        # the whole import is one undo step
        m.undo()
        assert m.pack.count() == 0


def test_build_killed_with_sigkill_resumes_from_checkpoint(tmp_path):
    from engine.jobs.runner import JobRunner

    src = _corpus(tmp_path, 400)
    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(src)], "chunk_size": 32}
    runner = JobRunner(tmp_path / "jobs.sqlite")
    h = start_and_kill(runner, "build_memory", "engine.jobs.build_memory:build_memory", cfg, timeout=120)
    partial = len(_texts(pack))
    assert 0 < partial < 400
    h2 = runner.resume(h.id)
    res = h2.wait(timeout=300)
    assert res.status == "done", res
    texts = _texts(pack)
    assert len(texts) == 400 and len(set(texts)) == 400
