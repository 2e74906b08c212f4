"""Building a domain memory: import, rejection of malformed files, resume after interruption."""
from __future__ import annotations

import json

import pytest

from engine.jobs.build_memory import build_memory
from engine.jobs.progress import JobCancelled
from engine.memory import Memory
from engine.store import Pack
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
    from engine.jobs.corpus import file_key

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


def test_malformed_file_is_reported_with_line_and_nothing_of_it_imported(tmp_path, facts_jsonl, encoder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A good line."}\n{"text": "Another good line."}\n{"text": broken\n', encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    res = build_memory({"pack": str(pack), "inputs": [str(bad), str(facts_jsonl)]}, lambda *a: None, lambda: False)
    assert len(res["errors"]) == 1 and "bad.jsonl:3" in res["errors"][0]
    texts = _texts(pack)
    assert "A good line." not in texts
    assert len(texts) == 10  # the good file still went in


def test_cancelled_build_resumes_without_loss_or_duplicates(tmp_path, encoder):
    src = _corpus(tmp_path, 50)
    pack = tmp_path / "d.plugmem"
    cfg = {"pack": str(pack), "inputs": [str(src)], "chunk_size": 16}
    calls = {"n": 0}

    def stop_after_two_chunks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(JobCancelled):
        build_memory(cfg, lambda *a: None, stop_after_two_chunks)
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
