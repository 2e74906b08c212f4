"""`plugmem` fed hostile text and out-of-range arguments (issue 24): a shared pack's text cannot
drive the terminal, and every bad number or path exits 2 with one line, no traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.test_cli import js, pack, run  # noqa: F401 - `pack` is a fixture used by name

ESC_TEXT = "Tokyo \x1b[2J\x1b[31mred\x1b[0m is the \x9b1mcapital\r of \u202eJapan\u202c."
RAW = ("\x1b", "\x9b", "\x07", "\r", "\u202e")  # none of these may reach the terminal


@pytest.fixture
def hostile(capsys, pack) -> int:
    """An entry whose every field carries escape sequences, added by an author named with one."""
    return js(capsys, "add", pack, "--text", ESC_TEXT, "--title", "T\x1b]0;owned\x07", "--source", "s\x1b[8m",
              "--tags", "a\x1bb", "--author", "ev\x1b[5mil")["id"]


def _no_raw_controls(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)


@pytest.mark.parametrize("command", [["list"], ["show", "{id}"], ["search", "capital of Japan", "-k", "3"],
                                     ["search", "Tokyo", "--text"], ["history"], ["history", "{id}"]])
def test_escape_sequences_in_a_pack_are_printed_escaped(capsys, pack, hostile, command):
    code, out, err = run(capsys, command[0], pack, *[c.format(id=hostile) for c in command[1:]])
    assert code == 0, err
    _no_raw_controls(out + err)
    if command[0] != "history":  # history shows the change, not the fields
        assert "\\x1b[2J" in out and "\\x9b1m" in out and "\\u202e" in out


def test_show_prints_every_field_escaped_and_json_keeps_the_exact_text(capsys, pack, hostile):
    code, out, _ = run(capsys, "show", pack, hostile)
    assert code == 0
    assert "title:   T\\x1b]0;owned\\x07" in out and "source:  s\\x1b[8m" in out and "tags:    a\\x1bb" in out
    code, out, _ = run(capsys, "show", pack, hostile, "--json")
    _no_raw_controls(out)  # json escapes C0 itself; C1 and bidi marks too now
    assert json.loads(out)["text"] == ESC_TEXT


def test_a_listing_keeps_one_line_per_entry(capsys, pack):
    eid = js(capsys, "add", pack, "--text", "first line\nlooks like   99  a forged entry")["id"]
    for command in (["list"], ["search", "forged entry", "-k", "1"]):
        out = run(capsys, command[0], pack, *command[1:])[1]
        line = [ln for ln in out.splitlines() if "forged" in ln]
        assert len(line) == 1 and "first line" in line[0] and f"{eid}" in line[0]


BIG = "1" * 25


@pytest.mark.parametrize(
    "args, needle",
    [
        (["show", "{pack}", BIG], "argument id: must be at most 9,223,372,036,854,775,807"),
        (["show", "{pack}", "0"], "argument id: must be at least 1 (got 0)"),
        (["show", "{pack}", "one"], "argument id: 'one' is not an entry id"),
        (["list", "{pack}", "--limit", "0"], "argument --limit: must be at least 1 (got 0)"),
        (["list", "{pack}", "--limit", "-5"], "argument --limit: must be at least 1 (got -5)"),
        (["list", "{pack}", "--limit", "1" * 20], "argument --limit: must be at most"),
        (["list", "{pack}", "--after", BIG], "argument --after: must be at most"),
        (["list", "{pack}", "--after", "-1"], "argument --after: must be at least 0"),
        (["history", "{pack}", "--limit", "0"], "argument --limit: must be at least 1"),
        (["history", "{pack}", BIG], "argument id: must be at most"),
        (["edit", "{pack}", BIG, "--title", "x"], "argument id: must be at most"),
        (["delete", "{pack}", "1", BIG], "argument ids: must be at most"),
        (["search", "{pack}", "capital", "-k", "0"], "argument -k: must be at least 1"),
        (["search", "{pack}", "capital", "-k", "2.5"], "argument -k: '2.5' is not a positive whole number"),
        (["predict", "The capital of France is", "-k", "0"], "argument -k: must be at least 1"),
        (["predict", "The capital of France is", "-k", "101"], "argument -k: must be at most 100 (got 101)"),
        (["predict", "The capital of France is", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
        (["predict", "The capital of France is", "--max-new-tokens", "5000"], "argument --max-new-tokens: must be at most 1,024"),
        (["eval", "{tmp}/probes.jsonl", "-k", "1000"], "argument -k: must be at most 100"),
        (["eval", "{tmp}/probes.jsonl", "--limit", "0"], "argument --limit: must be at least 1"),
        (["eval-edits", "{tmp}/edits.jsonl", "--locality-limit", "-1"], "argument --locality-limit: must be at least 1"),
        (["prepare", "{pack}", "--batch", "0"], "argument --batch: must be at least 1"),
        (["train-memory-reader", "--data", "d.jsonl", "--out", "o", "--steps", "0"], "argument --steps: must be at least 1"),
        (["triples", "list", "{pack}", "--limit", "0"], "argument --limit: must be at least 1"),
        (["entities", "{pack}", "--limit", "-2"], "argument --limit: must be at least 1"),
        (["train-transe", "{pack}", "--dim", "0"], "argument --dim: must be at least 1"),
        (["map-tune", "{pack}", "--hidden", "-1"], "argument --hidden: must be at least 0"),
        (["list"], "the following arguments are required: pack"),
    ],
)
def test_out_of_range_arguments_exit_2_with_one_line(capsys, tmp_path, args, needle):
    # The pack need not exist: arguments are checked before anything is opened or loaded.
    args = [a.format(pack=tmp_path / "geo.plugmem", tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_a_huge_k_returns_every_entry_instead_of_allocating_for_it(capsys, pack):
    for mode in ([], ["--text"]):
        res = js(capsys, "search", pack, "capital", "-k", str(10**15), *mode)["results"]
        assert 1 <= len(res) <= 10
    assert len(js(capsys, "search", pack, "capital", "-k", str(10**15))["results"]) == 10


@pytest.mark.parametrize(
    "dest, needle",
    [
        ("{tmp}/missing/out.jsonl", "no such folder {tmp}/missing"),
        ("{tmp}/afile/out.jsonl", "{tmp}/afile is not a folder"),
        ("{tmp}/adir.jsonl", "is a folder; give a file name"),
        ("{tmp}/blocked.jsonl", "cannot write the export"),
    ],
)
def test_export_to_a_bad_place_exits_2_and_creates_nothing(capsys, pack, tmp_path, dest, needle):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.jsonl").mkdir()
    (tmp_path / "blocked.jsonl.part").mkdir()  # the export's temporary file cannot be opened (as root too)
    before = sorted(p.name for p in tmp_path.iterdir())
    dest = dest.format(tmp=tmp_path)
    code, _, err = run(capsys, "export", pack, dest, *(["--force"] if "adir" in dest else []))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle.format(tmp=tmp_path) in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_python_m_engine_cli_reports_plugin_command_errors_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from engine.store import Pack

    Pack.create(tmp_path / "p.plugmem").close()
    env = dict(os.environ, PLUGMEM_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "embeddings", "import", str(tmp_path / "p.plugmem"),
                        str(tmp_path / "none.npy")], capture_output=True, text=True, env=env, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"plugmem: error: {tmp_path / 'none.npy'}: no such embeddings file"]


def test_an_export_that_runs_out_of_space_exits_2_and_leaves_the_old_export(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: a real write fails mid-export."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from engine.store import Pack

    with Pack.create(tmp_path / "big.plugmem") as pack:
        pack.add_many([{"text": f"Entry {i}: " + "lorem ipsum " * 40} for i in range(200)])  # ~100 KB exported
    old = tmp_path / "out.jsonl"
    old.write_text("the previous export\n")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = subprocess.run([sys.executable, "-m", "engine.cli", "export", str(tmp_path / "big.plugmem"), str(old), "--force"],
                       capture_output=True, text=True, timeout=120, preexec_fn=small_files,
                       env=dict(os.environ, PLUGMEM_HOME=str(tmp_path)), cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"plugmem: error: {old}: cannot write the export (File too large)"], r.stderr
    assert old.read_text() == "the previous export\n" and not (tmp_path / "out.jsonl.part").exists()
