"""The `plugmem` command line: outputs, JSON contracts, exit codes, bad input."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def js(capsys, *args):
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def pack(tmp_path, capsys, facts_jsonl, encoder) -> Path:
    p = tmp_path / "geo.plugmem"
    assert run(capsys, "init", p)[0] == 0
    assert run(capsys, "import", p, facts_jsonl)[0] == 0
    return p


def test_stats_search_and_show(capsys, pack):
    stats = js(capsys, "stats", pack)
    assert stats["entries"] == 10 and stats["active"] == 10
    res = js(capsys, "search", pack, "capital of Japan", "-k", "3")["results"]
    assert len(res) == 3 and res[0]["text"] == "Tokyo is the capital of Japan."
    assert set(res[0]) >= {"id", "text", "title", "source", "score"}
    assert res[0]["score"] >= res[1]["score"]
    full = js(capsys, "search", pack, "capital", "--text")["results"]
    assert full and all("capital" in r["text"].lower() for r in full)
    shown = js(capsys, "show", pack, res[0]["id"])
    assert shown["text"] == "Tokyo is the capital of Japan."


def test_edit_undo_redo_history(capsys, pack):
    eid = js(capsys, "search", pack, "capital of Japan", "-k", "1")["results"][0]["id"]
    assert run(capsys, "edit", pack, eid, "--text", "Kyoto is the capital of Japan.")[0] == 0
    assert js(capsys, "search", pack, "capital of Japan", "-k", "1")["results"][0]["text"].startswith("Kyoto")
    assert run(capsys, "edit", pack, eid, "--disable")[0] == 0
    assert eid not in [r["id"] for r in js(capsys, "search", pack, "capital of Japan", "-k", "10")["results"]]
    assert js(capsys, "stats", pack)["active"] == 9
    assert run(capsys, "undo", pack)[0] == 0
    assert run(capsys, "undo", pack)[0] == 0
    assert js(capsys, "search", pack, "capital of Japan", "-k", "1")["results"][0]["text"].startswith("Tokyo")
    assert run(capsys, "redo", pack)[0] == 0
    assert js(capsys, "show", pack, eid)["text"].startswith("Kyoto")
    hist = js(capsys, "history", pack, eid)["history"]
    assert len(hist) >= 3


def test_a_change_during_another_programs_edit_evaluation_is_refused_and_nothing_is_lost(capsys, pack, evaluating_elsewhere):
    """An edit evaluation undoes its temporary edits by popping the undo stack: a change made
    meanwhile from another program would be popped (lost) with them, so it is refused."""
    eid = js(capsys, "search", pack, "capital of Japan", "-k", "1")["results"][0]["id"]
    lock = f"{pack}.evaluating.lock"
    assert not os.path.exists(lock)  # changes to a pack never evaluated leave no lock file beside it
    with evaluating_elsewhere(pack):  # the evaluating program
        code, _, err = run(capsys, "edit", pack, eid, "--text", "Kyoto is the capital of Japan.")
        assert code == 2 and "geo.plugmem: an edit evaluation is running on this pack in another program" in err
        assert js(capsys, "show", pack, eid)["text"] == "Tokyo is the capital of Japan."  # reading still works
    assert run(capsys, "edit", pack, eid, "--text", "Kyoto is the capital of Japan.")[0] == 0


def test_add_delete_export_and_check(capsys, pack, tmp_path):
    new = js(capsys, "add", pack, "--text", "Ottawa is the capital of Canada.", "--title", "Canada")["id"]
    assert js(capsys, "stats", pack)["active"] == 11
    assert run(capsys, "delete", pack, new)[0] == 0
    assert js(capsys, "stats", pack)["entries"] == 10
    out = tmp_path / "out.jsonl"
    exported = js(capsys, "export", pack, out)
    assert exported["entries"] == 10 and len(out.read_text().splitlines()) == 10
    report = js(capsys, "check", pack)
    assert report["ok"] is True and report["problems"] == []


def test_check_repairs_a_corrupt_index(capsys, pack):
    from engine.memory import index_dir_for

    for f in index_dir_for(pack).iterdir():
        f.write_bytes(b"junk")
    code, out, _ = run(capsys, "check", pack, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and any("index" in p for p in report["problems"])
    code, out, _ = run(capsys, "check", pack, "--repair", "--json")
    assert code == 0
    assert js(capsys, "check", pack)["ok"] is True


def test_check_finds_and_undoes_edits_left_by_a_killed_edit_evaluation(capsys, pack, encoder):
    from engine.evaluate.edits import AUTHOR
    from engine.memory import Memory

    before = [e["text"] for e in js(capsys, "list", pack)["entries"]]
    with Memory.open(pack, encoder) as m:  # what a SIGKILLed `plugmem eval-edits` leaves behind
        m.edit(1, text="The capital of Nowhere is Atlantis.", author=AUTHOR)
    code, out, _ = run(capsys, "check", pack, "--json")
    report = json.loads(out)
    assert code == 1 and any("interrupted edit evaluation" in p for p in report["problems"])
    report = js(capsys, "check", pack, "--repair")
    assert any("undid 1" in r for r in report["repaired"]) and report["ok_after_repair"] is True
    assert [e["text"] for e in js(capsys, "list", pack)["entries"]] == before
    assert js(capsys, "check", pack)["ok"] is True


@pytest.mark.parametrize(
    "args, needle",
    [
        (["show", "{pack}", "999999"], "no entry with id 999999"),
        (["search", "{pack}", "   "], "empty query"),
        (["edit", "{pack}", "1", "--text", "   "], "text"),
        (["show", "{missing}", "1"], "no such pack"),
        (["init", "{pack}"], "already exists"),
        (["export", "{pack}", "{tmp}/out.xlsx"], ".jsonl or .csv"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, pack, tmp_path, args, needle):
    args = [a.format(pack=pack, missing=tmp_path / "nope.plugmem", tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], err


def test_corrupt_pack_file_is_reported(capsys, tmp_path):
    bad = tmp_path / "bad.plugmem"
    bad.write_bytes(b"this is not a database" * 100)
    code, _, err = run(capsys, "stats", bad)
    assert code == 2 and "bad.plugmem" in err


def test_import_of_malformed_file_exits_nonzero_naming_line(capsys, tmp_path, encoder):
    p = tmp_path / "x.plugmem"
    bad = tmp_path / "bad.csv"
    bad.write_text('text,title\n"ok",A\n"unterminated,B\n', encoding="utf-8")
    code, out, err = run(capsys, "import", p, bad)
    assert code == 2 and "bad.csv:3" in err and "nothing was imported" in err
    assert out.splitlines()[0] == "nothing imported"
    assert not p.exists()  # refused before anything was written


def test_import_refused_for_a_record_over_the_limits_leaves_the_pack_as_it_was(capsys, pack, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"Fact {i}."}) + "\n" for i in range(40))
                   + json.dumps({"text": "x" * 4001}) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "import", pack, big, "--json")
    assert code == 2 and json.loads(out)["entries_added"] == 0
    assert "big.jsonl:41" in json.loads(out)["errors"][0]
    assert js(capsys, "stats", pack)["entries"] == 10


def test_text_that_is_not_valid_unicode_is_refused_in_one_line(capsys, pack, monkeypatch):
    import io

    for args in (["add", pack, "--text", "caf\udce9"], ["add", pack, "--text", "ok", "--title", "\ud800"],
                 ["edit", pack, "1", "--text", "caf\udce9"], ["search", pack, "caf\udce9"]):
        code, _, err = run(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "not valid Unicode" in err, err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    code, _, err = run(capsys, "add", pack, "--text", "-")
    assert code == 2 and err.strip() == "plugmem: error: standard input is not valid UTF-8 (byte 0xe9 at offset 3)"
    assert js(capsys, "stats", pack)["entries"] == 10


def test_a_full_disk_is_a_one_line_reason_and_the_same_command_resumes(capsys, tmp_path, encoder, fill_disk_after,
                                                                       monkeypatch):
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({"text": f"Fact number {i} of the corpus."}) + "\n" for i in range(20)),
                   encoding="utf-8")
    p = tmp_path / "x.plugmem"
    assert run(capsys, "init", p)[0] == 0
    fill_disk_after(2)  # no room for the chunk (resuming after some chunks: test_build_memory)
    code, _, err = run(capsys, "import", p, src, "--quiet")  # no progress lines: only the reason
    assert code == 2 and err.strip().splitlines() == [
        f"plugmem: error: disk full while importing into {p}: free space and run the same command again to resume"]
    monkeypatch.undo()
    assert js(capsys, "stats", p)["entries"] == 0
    from engine.store import Pack

    def full(self, *a):  # COMMIT is where a full disk shows in WAL mode
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Pack, "_commit", full)
    code, _, err = run(capsys, "add", p, "--text", "One more fact.")
    assert code == 2 and err.strip() == "plugmem: error: disk full while writing: free space and run the same command again"
    monkeypatch.undo()
    assert js(capsys, "stats", p)["entries"] == 0
    assert run(capsys, "import", p, src)[0] == 0  # space freed: the same command imports the file once
    assert js(capsys, "stats", p)["entries"] == 20


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("plugmem")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    env = dict(os.environ, PLUGMEM_HOME=str(tmp_path))
    r = subprocess.run([str(exe), "stats", str(tmp_path / "none.plugmem")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "no such pack" in r.stderr


def test_progress_in_a_log_file_shows_long_phases_without_flooding(capsys, monkeypatch):
    """Off a terminal: a line per 10 %, plus a line when a phase's message changes after
    quiet_s seconds with the fraction not moving (a training job's preparation)."""
    from engine.cli import common

    clock = [100.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    bar = common.ProgressBar("train", quiet_s=30.0)
    bar(0.0, "encoding keys")
    clock[0] += 40
    bar(0.0, "encoding keys")  # the line shown last: nothing new to say
    clock[0] += 5
    bar(0.0, "reader states 640/7,000")  # new message, 45 s after the last line
    clock[0] += 5
    bar(0.05, "step 5")  # neither 10 % nor 30 s since the last line
    bar(0.1, "step 10")
    bar(1.0, "done")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train: 0% encoding keys", "train: 0% reader states 640/7,000",
                     "train: 10% step 10", "train: 100% done"]
