"""Two writers on one pack, in real separate processes: nothing is lost, reverted or served stale.

Each test starts child interpreters (``python -c``) that get ready, wait for one "go"
line on stdin, then race; every wait is bounded so a deadlock fails instead of hanging.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine.check import check_pack
from engine.memory import Memory, index_dir_for
from engine.store import Pack

from .conftest import FACTS

ROOT = Path(__file__).resolve().parents[2]  # children import this worktree's engine
WAIT_S = 240  # generous: the machine may be shared; a deadlock still fails


def start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def race(children: list[subprocess.Popen]) -> list[str]:
    """Wait until every child printed 'ready', release them together, return their stdout."""
    try:
        for c in children:
            line = c.stdout.readline()
            assert line.strip() == "ready", f"child did not get ready: {line!r} {c.stderr.read()}"
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        outs = []
        for c in children:
            out, err = c.communicate(timeout=WAIT_S)
            assert c.returncode == 0, f"child failed (rc {c.returncode}):\n{err}"
            outs.append(out)
        return outs
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait(timeout=10)


def run_cli(*args) -> subprocess.Popen:
    """``plugmem ARGS`` in a child, released with the others by :func:`race`."""
    code = """
        import sys
        from engine.cli import main
        print("ready", flush=True); sys.stdin.readline()
        sys.exit(main(sys.argv[1:]))
    """
    return start(code, *args)


@pytest.fixture
def pack_path(tmp_path, encoder) -> Path:
    path = tmp_path / "m.plugmem"
    with Memory.open(path, encoder, create=True, name="m") as m:
        m.add_many([{"text": t, "title": title, "tags": [tag]} for t, title, tag in FACTS])
    return path


def history_chain(path: Path, eid: int) -> list:
    with Pack.open(path) as p:
        return sorted(p.history(eid), key=lambda r: r.id)


def assert_no_lost_update(path: Path, eid: int) -> None:
    """Each change to the entry starts from the state the previous one left, and versions never repeat."""
    recs = [r for r in history_chain(path, eid) if r.op != "add"]
    versions = [r.after["version"] for r in recs]
    assert len(set(versions)) == len(versions), f"versions written twice: {len(versions) - len(set(versions))}"
    for prev, cur in zip(recs, recs[1:]):
        if prev.after.get("text") is not None and cur.before.get("text") is not None:
            assert cur.before == prev.after, f"change {cur.change_id} started from a stale state"


# ---------------------------------------------------------------------------- item 3: lost update
EDIT_LOOP = """
    import sys
    from engine.store import Pack
    path, eid, field, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    p = Pack.open(path)
    print("ready", flush=True); sys.stdin.readline()
    for i in range(n):
        if field == "status":
            p.set_status([eid], "disabled" if i % 2 == 0 else "active")
        else:
            p.edit(eid, **{field: f"{field} {i}"})
    p.close()
"""


N_EDITS = 40


def race_on_one_entry(pack_path, *fields: str):
    """Two processes change ``fields`` of one entry N_EDITS times each; the entry after."""
    with Pack.open(pack_path) as p:
        eid = p.ids()[0]
    race([start(EDIT_LOOP, pack_path, eid, f, N_EDITS) for f in fields])
    with Pack.open(pack_path) as p:
        e = p.get(eid)
    assert e.version == 1 + 2 * N_EDITS
    assert_no_lost_update(pack_path, eid)
    return e


def test_two_processes_editing_title_and_text_of_one_entry_keep_both(pack_path):
    e = race_on_one_entry(pack_path, "title", "text")
    assert (e.title, e.text) == (f"title {N_EDITS - 1}", f"text {N_EDITS - 1}")


def test_disabling_in_one_process_never_reverts_an_edit_made_in_another(pack_path):
    e = race_on_one_entry(pack_path, "status", "text")
    assert e.text == f"text {N_EDITS - 1}" and e.status == "active"


UNDO_LOOP = """
    import sys
    from engine.store import Pack
    p = Pack.open(sys.argv[1])
    print("ready", flush=True); sys.stdin.readline()
    done = [p.undo() is not None for _ in range(int(sys.argv[2]))]
    p.close()
    print(sum(done))
"""


def test_two_processes_undoing_together_undo_each_change_once(pack_path):
    with Pack.open(pack_path) as p:
        ids = p.ids()
        for eid in ids:
            p.edit(eid, text=f"changed {eid}")
    per = len(ids) // 2
    outs = race([start(UNDO_LOOP, pack_path, per), start(UNDO_LOOP, pack_path, per)])
    assert sum(int(o) for o in outs) == 2 * per
    with Pack.open(pack_path) as p:
        assert [p.get(i).text for i in ids] == [t for t, _, _ in FACTS]
        targets = [r[0] for r in p.conn.execute("SELECT target FROM changes WHERE kind='undo'")]
    assert len(targets) == len(set(targets)) == 2 * per


def test_a_key_encoded_before_another_process_changed_the_text_is_not_stored_for_the_new_text(pack_path, encoder):
    """``ensure_vectors`` encodes for seconds; an edit landing meanwhile must keep its own key."""
    with Pack.open(pack_path) as p, Pack.open(pack_path) as other:
        e = p.get(p.ids()[0])
        stale_key = encoder.encode([e.text])  # encoding the text read ...
        new = "Lyon is the capital of France."
        other.edit(e.id, text=new, vector=encoder.encode([new])[0])  # ... while another process edits it
        assert p.set_vectors([e.id], stale_key, [e.version]) == 0
        key, ok = p.get_vectors([e.id])
    assert ok[0] and float(key[0] @ encoder.encode([new])[0]) > 0.999


# ---------------------------------------------------------------------------- item 2: stale index
@pytest.mark.slow  # children load the real encoder
def test_a_process_that_missed_an_outside_edit_never_saves_it_as_current(pack_path, encoder):
    with Pack.open(pack_path) as p:
        tokyo = next(e.id for e in p.iter_entries() if e.text.startswith("Tokyo"))
        gold = next(e.id for e in p.iter_entries() if "gold" in e.text)
    old, new = "Tokyo is the capital of Japan.", "The Great Barrier Reef lies off Queensland."
    app = Memory.open(pack_path, encoder)  # holds the pack open, as the app does
    try:
        race([run_cli("edit", pack_path, tokyo, "--text", new)])
        # The app searches and edits another entry: it sees the outside edit at once.
        assert [h.entry.text for h in app.search(new, k=1)] == [new]
        app.edit(gold, title="Gold (Au)")
        assert all(h.entry.id != tokyo for h in app.search(old, k=3) if h.score > 0.9)
    finally:
        app.close()  # saves its index cache
    assert check_pack(pack_path, encoder=encoder)["ok"]
    with Memory.open(pack_path, encoder) as m:
        hits = m.search(old, k=3)
        assert all(h.entry.id != tokyo for h in hits if h.score > 0.9), [(h.entry.text, h.score) for h in hits]
        assert m.search(new, k=1)[0].entry.id == tokyo


def save_as_a_lagging_writer_did(pack_path, encoder, entry_text: str, new: str) -> int:
    """What a writer that missed an outside edit used to save: its index, holding the
    entry's old key, stamped with the pack's version of now. Returns the entry's id."""
    with Memory.open(pack_path, encoder) as lagging:
        with Pack.open(pack_path) as other:
            eid = next(e.id for e in other.iter_entries() if e.text == entry_text)
            other.edit(eid, text=new, vector=encoder.encode([new])[0])
            cv = other.content_version
        lagging.index.save(index_dir_for(pack_path), {**lagging._stamp(), "content_version": cv})
        lagging._index_dirty = False
    return eid


def test_check_compares_the_index_cache_keys_with_the_entries_and_repairs(pack_path, encoder):
    old = "Tokyo is the capital of Japan."
    save_as_a_lagging_writer_did(pack_path, encoder, old, "The Great Barrier Reef lies off Queensland.")
    report = check_pack(pack_path, encoder=encoder)
    assert not report["ok"]
    assert any("vector index" in p and "differ" in p for p in report["problems"]), report["problems"]
    assert check_pack(pack_path, repair=True, encoder=encoder)["ok_after_repair"]


def test_opening_a_cache_with_old_keys_for_recent_changes_rebuilds_it(pack_path, encoder):
    old = "Tokyo is the capital of Japan."
    eid = save_as_a_lagging_writer_did(pack_path, encoder, old, "The Great Barrier Reef lies off Queensland.")
    msgs: list[str] = []
    with Memory.open(pack_path, encoder, on_message=msgs.append) as m:
        assert any("old keys" in s and "rebuild" in s for s in msgs), msgs
        assert all(h.entry.id != eid for h in m.search(old, k=3) if h.score > 0.9)
    assert check_pack(pack_path, encoder=encoder)["ok"]


# ---------------------------------------------------------------------------- item 4: cache writes
SAVE_LOOP = """
    import sys
    import numpy as np
    from engine.index import VectorIndex
    folder, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(me)
    keys = rng.standard_normal((3000, 64)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    idx = VectorIndex(64, approx_threshold=10**9)
    idx.build(np.arange(3000) + me * 10_000, keys)
    print("ready", flush=True); sys.stdin.readline()
    for r in range(rounds):
        idx.upsert([me * 10_000 + r], keys[r:r + 1])  # the small files change on every save
        if r % 4 == 0:
            idx.compact()  # and the base every few
        idx.save(folder, {"writer": "any"})
"""


def test_processes_saving_one_index_cache_together_never_fail_or_mix_files(tmp_path):
    from engine.index import VectorIndex

    folder = tmp_path / "x.index"
    race([start(SAVE_LOOP, folder, me, 8) for me in range(3)])
    idx = VectorIndex.load(folder, {"writer": "any"})  # not corrupt: one writer's files, whole
    ids = np.sort(idx.ids())
    writer = int(ids[0]) // 10_000
    assert np.array_equal(ids, np.arange(3000) + writer * 10_000)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # children load the real encoder
def test_searches_started_together_on_a_pack_without_a_cache_and_an_edit_all_succeed(pack_path):
    import shutil

    shutil.rmtree(index_dir_for(pack_path))
    with Pack.open(pack_path) as p:
        eid = p.ids()[3]
    new = "Silver has the chemical symbol Ag."
    outs = race([run_cli("search", pack_path, "capital of Japan", "--json") for _ in range(3)]
                + [run_cli("edit", pack_path, eid, "--text", new)])
    for out in outs[:3]:
        assert "Tokyo" in json.dumps(json.loads(out))
    with Pack.open(pack_path) as p:
        assert p.get(eid).text == new


def test_an_unwritable_index_cache_never_fails_an_edit_or_a_search(pack_path, encoder):
    import shutil

    folder = index_dir_for(pack_path)
    shutil.rmtree(folder)
    folder.write_text("not a folder")  # the cache cannot be written at all
    msgs: list[str] = []
    with Memory.open(pack_path, encoder, on_message=msgs.append) as m:
        eid = m.search("capital of Japan", k=1)[0].entry.id
        m.edit(eid, text="Kyoto is the capital of Japan.")
        assert m.search("capital of Japan", k=1)[0].entry.text == "Kyoto is the capital of Japan."
    assert any("index cache" in s.lower() and "not saved" in s for s in msgs), msgs
    with Pack.open(pack_path) as p:
        assert p.get(eid).text == "Kyoto is the capital of Japan."
