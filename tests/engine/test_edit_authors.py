"""Undo and redo rows name who did them (Memory and the CLI pass the author on); a single
added entry's error names its field, not "record 1"."""
from __future__ import annotations

import pytest

from engine.cli import main
from engine.memory import Memory
from engine.store import Pack, ValidationError

from .conftest import FACTS


def test_memory_undo_and_redo_record_their_author(tmp_path, encoder):
    m = Memory.open(tmp_path / "m.plugmem", encoder, create=True, name="m")
    try:
        ch = m.add_many([{"text": t, "title": title} for t, title, _ in FACTS[:2]], author="ana")
        eid = ch.ids[0]
        m.edit(eid, text="Lyon is the capital of France.", author="ana")
        m.undo(author="ben")
        m.redo(author="cleo")
        rows = m.pack.history(entry_id=eid)
        assert [(r.op.split()[0], r.author) for r in rows[:3]] == [("redo", "cleo"), ("undo", "ben"), ("edit", "ana")]
    finally:
        m.close()


def test_cli_undo_names_its_author(tmp_path, capsys, facts_jsonl, encoder):
    p = tmp_path / "geo.plugmem"
    assert main(["init", str(p)]) == 0
    assert main(["import", str(p), str(facts_jsonl)]) == 0
    assert main(["edit", str(p), "1", "--text", "Changed.", "--author", "ana"]) == 0
    assert main(["undo", str(p), "--author", "ben"]) == 0
    capsys.readouterr()
    with Pack.open(p, readonly=True) as pack:
        assert pack.history(entry_id=1)[0].author == "ben"


def test_adding_one_entry_names_the_field_not_a_record(tmp_path):
    with Pack.create(tmp_path / "p.plugmem") as pack:
        with pytest.raises(ValidationError) as err:
            pack.add("   ", title="Mars")
        assert err.value.field == "text" and str(err.value) == "'text' is empty"
        with pytest.raises(ValidationError) as err:
            pack.add_many([{"text": "ok"}, {"text": ""}])
        assert str(err.value).startswith("record 2: ")  # a batch still says which record
