"""Entries' reader states kept on disk: the same answers, no second read, damage survived."""
from __future__ import annotations

import sqlite3

import pytest
import torch

from engine.jobs.prepare_states import prepare_states
from engine.memory import Memory
from engine.mechanisms import dpm
from engine.mechanisms.dpm import DPMFusion, EntryCache
from engine.mechanisms.dpm.entry_store import EntryStateStore, identity_of, round_states
from engine.reader.tiny import make_tiny_reader
from engine.progress import JobCancelled

from .test_dpm import OSLO, PARIS, PROMPT, ROME, random_branch
from .test_retrieve import encoded_texts

TEXTS = [ROME, OSLO, PARIS]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_reader(seed=0)


@pytest.fixture(scope="module")
def branch(tiny):
    return random_branch(tiny, seed=3)


def store_of(tiny, branch, tmp_path, **kw) -> EntryStateStore:
    return EntryStateStore.for_branch(tiny, branch, tmp_path / "states", **kw)


def no_reading(monkeypatch, branch) -> None:
    def refuse(*a, **k):
        raise AssertionError("the reader read an entry the store holds")

    monkeypatch.setattr(branch, "entry_states", refuse)


def answers(fusion) -> list[str]:
    return fusion.generate_many([PROMPT, "Lion facts:"], [[ROME, PARIS], [PARIS, OSLO]], [[0.9, 0.2], [0.8, 0.4]], 5)


def test_states_round_trip_as_float16_and_are_found_by_text(tiny, branch, tmp_path):
    store = store_of(tiny, branch, tmp_path)
    layer = branch.key_layers[0]
    x = torch.randn(7, tiny.hidden_size) * 30
    store.put_many({ROME: {layer: x}})
    got = store.get_many([ROME, OSLO])
    assert list(got) == [ROME]
    assert torch.equal(got[ROME][layer], round_states(x))
    assert store.missing([OSLO, ROME, OSLO]) == [OSLO]
    store.discard_many([ROME])
    assert store.get_many([ROME]) == {}
    store.close()


def test_a_new_session_answers_the_same_without_reading_the_entries_again(tiny, branch, tmp_path, monkeypatch):
    first = DPMFusion(tiny, branch, store=store_of(tiny, branch, tmp_path))
    before = answers(first)
    first.store.close()
    plain = answers(DPMFusion(tiny, branch))  # no store at all: the same rounding, the same answers
    again = DPMFusion(tiny, branch, EntryCache(), store=store_of(tiny, branch, tmp_path))
    no_reading(monkeypatch, branch)
    assert answers(again) == before == plain


def test_an_edited_text_is_read_and_the_old_states_stay_valid(tiny, branch, tmp_path, monkeypatch):
    store = store_of(tiny, branch, tmp_path)
    DPMFusion(tiny, branch, store=store).read_entries([ROME])
    edited = ROME.replace("Rome", "Lima")
    calls = []
    real = branch.entry_states

    def counting(reader, rows, *a, **k):
        calls.append(len(rows))
        return real(reader, rows, *a, **k)

    monkeypatch.setattr(branch, "entry_states", counting)
    DPMFusion(tiny, branch, store=store).read_entries([ROME, edited])
    assert calls == [1]  # only the edited text
    assert store.missing([ROME, edited]) == []


def test_another_branch_shape_uses_another_store(tiny, branch, tmp_path):
    other = random_branch(tiny, seed=3, layers=1)
    assert identity_of(tiny, other) != identity_of(tiny, branch)
    a, b = store_of(tiny, branch, tmp_path), store_of(tiny, other, tmp_path)
    assert a.path != b.path
    DPMFusion(tiny, branch, store=a).read_entries([ROME])
    assert b.missing([ROME]) == [ROME]


def test_a_corrupt_store_file_is_set_aside_and_answers_are_unchanged(tiny, branch, tmp_path, caplog):
    good = DPMFusion(tiny, branch, store=store_of(tiny, branch, tmp_path))
    expected = answers(good)
    path = good.store.path
    good.store.close()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    store = store_of(tiny, branch, tmp_path)
    assert "unusable" in caplog.text
    aside = list(path.parent.glob(path.name + ".*.corrupt"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert answers(DPMFusion(tiny, branch, store=store)) == expected
    assert store.missing(TEXTS) == []  # stored again in the new file


def test_a_store_of_another_reader_at_the_path_is_set_aside(tiny, branch, tmp_path, caplog):
    store = store_of(tiny, branch, tmp_path)
    path = store.path
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value='{\"reader\": \"someone else\"}' WHERE key='identity'")
    con.commit()
    con.close()
    again = store_of(tiny, branch, tmp_path)
    assert "another reader" in caplog.text
    assert len(again) == 0 and list(path.parent.glob("*.corrupt"))


def test_a_damaged_row_is_dropped_and_read_again(tiny, branch, tmp_path, caplog):
    store = store_of(tiny, branch, tmp_path)
    expected = answers(DPMFusion(tiny, branch, store=store))
    store._con.execute("UPDATE states SET data = substr(data, 1, 10)")
    assert answers(DPMFusion(tiny, branch, store=store)) == expected
    assert "wrong size" in caplog.text
    assert store.missing(TEXTS) == []  # read again and stored whole


def test_the_least_recently_used_states_go_beyond_the_size_limit(tiny, branch, tmp_path):
    layer = branch.key_layers[0]
    row = tiny.hidden_size * 2 * 4  # 4 tokens, float16
    store = store_of(tiny, branch, tmp_path, max_bytes=row * 100)
    for n in range(150):
        store.put_many({f"entry {n}": {layer: torch.ones(4, tiny.hidden_size)}})
        if n == 90:  # still under the limit: nothing dropped yet
            assert store.get_many(["entry 0"])  # used again: kept below
    st = store.stats()
    assert st["bytes"] <= row * 100 * (1 + 1 / 16)
    assert store.missing(["entry 0", "entry 1", "entry 149"]) == ["entry 1"]


def test_prepare_job_reads_every_active_entry_once_and_resumes(tiny, branch, tmp_path, encoder, monkeypatch):
    pack = tmp_path / "zoo.plugmem"
    with Memory.open(pack, encoder, create=True, name="zoo") as m:
        m.add_many([{"text": f"Animal {n} facts: {w} {w} {w}"} for n, w in enumerate("Rome Oslo Lima Cairo Quito".split())])
        m.set_status([m.pack.ids()[0]], "disabled")  # not retrieved, so not prepared
    cfg = {"packs": [str(pack)], "cache_dir": str(tmp_path / "states"), "batch": 2}
    stops = iter([False, False, True])  # the statement keys' batch, the first entries' batch, stop
    with pytest.raises(JobCancelled, match="what was read is kept"):
        prepare_states(cfg, should_stop=lambda: next(stops), reader=tiny, branch=branch)
    seen = []
    res = prepare_states(cfg, progress=lambda f, msg="", **k: seen.append(f), reader=tiny, branch=branch)
    assert (res["entries"], res["already"], res["read"]) == (4, 2, 2)
    assert res["store_entries"] == 4 and seen[-1] == 1.0 and seen == sorted(seen)
    assert (res["keys"], res["keys_encoded"], res["keys_skipped_packs"]) == (4, 0, [])  # kept from the first run
    with EntryStateStore.for_branch(tiny, branch, tmp_path / "states") as store:
        with Memory.open(pack, encoder) as m:
            texts = [e.text for e in m.pack.page(0, 10)]
        assert store.missing(texts) == [texts[0]]  # the disabled one


def test_prepare_job_names_bad_config(tiny, branch, tmp_path):
    with pytest.raises(ValueError, match="'packs' must be a non-empty list"):
        prepare_states({"packs": []}, reader=tiny, branch=branch)
    with pytest.raises(FileNotFoundError, match="no such memory pack"):
        prepare_states({"packs": [str(tmp_path / "nope.plugmem")]}, reader=tiny, branch=branch)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        prepare_states({"packs": ["x"], "batch": 0}, reader=tiny, branch=branch)


def test_cli_prepare_then_predict_reads_nothing(tmp_path, encoder, capsys, monkeypatch):
    from engine.cli import main
    from engine.reader import load_reader

    from .test_dpm import copy_branch

    folder = make_tiny_reader(seed=0).save(tmp_path / "tiny-reader")
    reader = load_reader(folder)
    branch_dir = dpm.save(copy_branch(reader), tmp_path / "branch")
    pack = tmp_path / "zoo.plugmem"
    with Memory.open(pack, encoder, create=True, name="zoo") as m:
        m.add_many([{"text": t} for t in TEXTS])
    monkeypatch.setenv("PLUGMEM_ENTRY_STATES", str(tmp_path / "states"))
    assert main(["prepare", str(pack), "--reader", str(folder), "--branch", str(branch_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"read": 3' in out
    assert main(["prepare", str(pack), "--reader", str(folder), "--branch", str(branch_dir)]) == 0
    human = capsys.readouterr().out
    assert "3 entries: 0 read" in human and "3 already stored" in human and "0 of 3 statement keys encoded" in human
    monkeypatch.setattr(dpm.MemoryBranch, "entry_states", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    assert main(["predict", PROMPT, "--memory", str(pack), "-k", "3", "--max-new-tokens", "2",
                 "--reader", str(folder), "--branch", str(branch_dir), "--json"]) == 0
    assert main(["prepare", str(tmp_path / "nope.plugmem"), "--reader", str(folder), "--branch", str(branch_dir)]) == 2
    assert "no such memory pack" in capsys.readouterr().err


def test_prepare_job_keeps_statement_keys_so_a_new_session_encodes_only_the_prompt(tiny, branch, tmp_path, encoder,
                                                                                  monkeypatch):
    import importlib
    from dataclasses import replace

    from engine.explain import retrieve
    from engine.store import Pack

    mod = importlib.import_module("engine.explain.predict")
    pack = tmp_path / "zoo.plugmem"
    with Memory.open(pack, encoder, create=True, name="zoo") as m:
        m.add_many([{"text": t} for t in TEXTS])
    foreign = tmp_path / "foreign.plugmem"
    with Pack.create(foreign, name="foreign", encoder=replace(encoder.fingerprint, weights_sha256="0" * 64)) as p:
        p.add("Penguins cannot fly.")
    monkeypatch.setenv("PLUGMEM_ENTRY_STATES", str(tmp_path / "states"))
    res = prepare_states({"packs": [str(pack), str(foreign)]}, reader=tiny, branch=branch)
    assert (res["keys"], res["keys_encoded"], res["keys_skipped_packs"]) == (3, 3, ["foreign.plugmem"])
    assert res["entries"] == 4  # the reader still reads the foreign pack's entries
    mod.reset_statement_keys()
    seen = encoded_texts(monkeypatch, encoder)
    with Memory.open(pack, encoder) as m:
        assert len(retrieve(PROMPT, [m], 3)) == 3
    assert seen == [PROMPT]
    mod.reset_statement_keys()
