"""Memory = pack + encoder + index kept in sync: what search returns after each change."""
from __future__ import annotations

import pytest

from engine.fingerprint import EncoderFingerprint
from engine.memory import Memory, index_dir_for
from engine.store import EncoderMismatchError, Pack

from .conftest import FACTS


@pytest.fixture
def mem(tmp_path, encoder):
    m = Memory.open(tmp_path / "m.plugmem", encoder, create=True, name="m")
    m.add_many([{"text": t, "title": title, "tags": [tag]} for t, title, tag in FACTS])
    yield m
    m.close()


def top(mem, query, k=1):
    return [h.entry.text for h in mem.search(query, k=k)]


def test_search_finds_the_fact(mem):
    assert top(mem, "What is the capital of Japan?") == ["Tokyo is the capital of Japan."]


def test_edit_is_searchable_at_once_and_old_text_is_gone(mem):
    hit = mem.search("capital of Japan", k=1)[0].entry
    mem.edit(hit.id, text="Kyoto is the capital of Japan.")
    texts = top(mem, "capital of Japan", k=3)
    assert texts[0] == "Kyoto is the capital of Japan."
    assert "Tokyo is the capital of Japan." not in texts


def test_disabled_and_deleted_entries_are_never_returned(mem):
    hits = mem.search("capital", k=10)
    tokyo = next(h.entry.id for h in hits if "Tokyo" in h.entry.text)
    paris = next(h.entry.id for h in hits if "Paris" in h.entry.text)
    mem.set_status([tokyo], "disabled")
    mem.delete([paris])
    ids = {h.entry.id for h in mem.search("capital", k=10)}
    assert tokyo not in ids and paris not in ids
    mem.undo()  # the delete
    mem.undo()  # the disable
    ids = {h.entry.id for h in mem.search("capital", k=10)}
    assert {tokyo, paris} <= ids


def test_undo_of_edit_restores_old_text_in_search(mem):
    e = mem.search("gold chemical symbol", k=1)[0].entry
    mem.edit(e.id, text="The chemical symbol of gold is Ag.")
    mem.undo()
    assert top(mem, "gold chemical symbol") == ["The chemical symbol of gold is Au."]
    mem.redo()
    assert top(mem, "gold chemical symbol") == ["The chemical symbol of gold is Ag."]


def test_index_cache_is_reused_then_caught_up_after_outside_edits(tmp_path, encoder, mem):
    path = mem.pack.path
    mem.close()
    msgs: list[str] = []
    with Memory.open(path, encoder, on_message=msgs.append) as m:
        assert not any("rebuild" in s for s in msgs), msgs
        assert len(m.index) == len(FACTS)
    # A change made to the pack by someone not keeping the index (an older cache).
    with Pack.open(path) as p:
        eid = p.ids()[0]
        p.edit(eid, text="Lyon is the capital of France.")
    msgs.clear()
    with Memory.open(path, encoder, on_message=msgs.append) as m:
        assert any("caught up" in s for s in msgs), msgs
        assert top(m, "capital of France") == ["Lyon is the capital of France."]


@pytest.mark.parametrize("damage", ["garbage", "missing", "truncate"])
def test_damaged_index_cache_is_rebuilt_with_a_message(tmp_path, encoder, mem, damage):
    path = mem.pack.path
    mem.close()
    folder = index_dir_for(path)
    files = sorted(f for f in folder.iterdir() if f.is_file())
    assert files
    if damage == "missing":
        for f in files:
            f.unlink()
        folder.rmdir()
    else:
        for f in files:
            if damage == "garbage":
                f.write_bytes(b"\x00not an index\xff" * 3)
            else:
                f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])
    msgs: list[str] = []
    with Memory.open(path, encoder, on_message=msgs.append) as m:
        assert any("rebuil" in s or "building" in s for s in msgs), msgs
        assert top(m, "What is the capital of Japan?") == ["Tokyo is the capital of Japan."]
        assert len(m.index) == len(FACTS)


def test_pack_from_another_encoder_is_refused_naming_both(tmp_path, encoder):
    other = EncoderFingerprint("acme/other-encoder", "f" * 64, 768, "cls")
    path = tmp_path / "foreign.plugmem"
    Pack.create(path, name="foreign", encoder=other).close()
    with pytest.raises(EncoderMismatchError) as err:
        Memory.open(path, encoder)
    msg = str(err.value)
    assert "acme/other-encoder" in msg and "all-MiniLM-L6-v2" in msg
    assert "reencode" in msg
    with Pack.open(path) as p:  # nothing was changed
        assert p.encoder == other


def test_text_search_ranks_and_skips_disabled(mem):
    hits = mem.text_search("capital", k=10)
    assert len(hits) >= 3
    mem.set_status([hits[0].entry.id], "disabled")
    assert hits[0].entry.id not in {h.entry.id for h in mem.text_search("capital", k=10)}


def test_reencode_adopts_a_foreign_pack_and_keeps_its_entries(tmp_path, encoder):
    from engine.check import reencode_pack

    other = EncoderFingerprint("acme/other-encoder", "f" * 64, 768, "cls")
    path = tmp_path / "foreign.plugmem"
    with Pack.create(path, name="foreign", encoder=other) as p:
        p.add_many([{"text": t, "title": title} for t, title, _ in FACTS])
        history_before = len(p.history())
    res = reencode_pack(path, encoder=encoder)
    assert res["entries"] == len(FACTS) and "acme/other-encoder" in res["previous_encoder"]
    with Memory.open(path, encoder) as m:
        assert top(m, "What is the capital of Japan?") == ["Tokyo is the capital of Japan."]
        assert len(m.pack.history()) == history_before
