"""`plugmem index status|rebuild|compact`: what the index holds, and maintenance on demand."""
from __future__ import annotations

from engine.memory import Memory, index_dir_for

from .test_cli import js, pack, run  # noqa: F401 - pack is a fixture


def test_status_says_what_the_index_holds(capsys, pack):
    d = js(capsys, "index", "status", pack)
    assert d["entries"] == 10 and d["tombstones"] == 0 and d["search"] == "exact" and not d["building"]
    assert d["cache"] == str(index_dir_for(pack)) and d["cache_bytes"] > 0
    code, out, err = run(capsys, "index", "status", pack)
    assert code == 0 and "entries:    10 searchable" in out and "search:     exact" in out, out + err


def test_compact_drops_tombstones_and_search_still_finds_the_rest(capsys, pack):
    # Imported rows sit in the delta; after a rebuild they are the base, where edits and deletes
    # leave tombstones until a compaction.
    assert js(capsys, "index", "rebuild", pack)["base_rows"] == 10
    assert run(capsys, "delete", pack, 1, 3)[0] == 0
    assert run(capsys, "edit", pack, 2, "--text", "Kyoto is the capital of Japan.")[0] == 0
    before = js(capsys, "index", "status", pack)
    assert before["entries"] == 8 and before["tombstones"] >= 2
    d = js(capsys, "index", "compact", pack)
    assert d["dropped"] == before["tombstones"] and d["tombstones"] == 0 and d["entries"] == 8
    assert js(capsys, "index", "status", pack)["tombstones"] == 0  # saved: a new process sees it
    res = js(capsys, "search", pack, "capital of Japan", "-k", "1")["results"]
    assert res[0]["text"] == "Kyoto is the capital of Japan."
    code, out, _ = run(capsys, "index", "compact", pack)
    assert code == 0 and out.startswith("nothing to compact: no tombstones")


def test_rebuild_waits_for_the_approximate_index_and_saves_it(capsys, pack, monkeypatch):
    from engine.index import VectorIndex

    # Past the threshold a rebuild makes an HNSW graph in the background; the command waits for it.
    monkeypatch.setattr(Memory, "_new_index", lambda self: VectorIndex(self.encoder.dim, approx_threshold=4))
    d = js(capsys, "index", "rebuild", pack)
    assert d["search"] == "hnsw" and not d["building"] and d["entries"] == 10
    assert js(capsys, "index", "status", pack, "--wait")["search"] == "hnsw"  # loaded from the saved cache
    code, out, _ = run(capsys, "index", "rebuild", pack)
    assert code == 0 and out.startswith("rebuilt in ") and "search:     hnsw" in out


def test_bad_input_is_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "index", "status", tmp_path / "none.plugmem")
    assert code == 2 and "no such pack" in err and "Traceback" not in err
    code, out, err = run(capsys, "index", "shrink", tmp_path / "none.plugmem")
    assert code == 2 and "invalid choice: 'shrink'" in err
