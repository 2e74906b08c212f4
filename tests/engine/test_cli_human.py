"""Every `plugmem` command's human output (not only --json): plain words, no traceback."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser

from .test_cli import pack, run  # noqa: F401 - pack is a fixture

# commands whose human output is checked in other files, with the test that does it
COVERED_ELSEWHERE = {
    "pkm": "test_pkm_cli.py",
    "index": "test_cli_index.py",
    "demo": "test_demo_data.py",
    "predict": "test_explain.py::test_cli_predict_prints_the_record",
    "prepare": "test_entry_store.py",
    "probes": "test_cloze.py::test_cli_probes_make_writes_a_probe_file_eval_reads",
    "eval": "test_evaluate.py",
    "eval-edits": "test_evaluate.py",
    "train-branch": "test_train_memory_reader.py",
    "train-memory-reader": "test_train_memory_reader.py",  # the old name of train-branch
    "triples": "test_plugins_cli.py",
    "entities": "test_plugins_cli.py",
    "embeddings": "test_plugins_cli.py",
    "train-transe": "test_plugins_cli.py",
    "map-tune": "test_plugins_cli.py",
    "task-tune": "test_plugins_task_tune.py::test_the_task_tune_command_prints_what_it_did_and_refuses_bad_input",
    "eval-plugin": "test_plugins_cli.py::test_train_transe_then_map_tune_then_eval_plugin",
    "plugin-gate": "test_plugins_task_tune.py::test_the_task_tune_command_prints_what_it_did_and_refuses_bad_input",
    "patch": "test_weight_patches_cli.py::test_create_show_list_apply_predict_remove",
    "compare": "test_weight_patches_cli.py::test_compare_prints_a_table_per_mechanism",
}


def test_every_pack_command_speaks_plain_words(capsys, pack, tmp_path):
    seen = set()

    def ok(*args) -> str:
        seen.add(args[0])
        code, out, err = run(capsys, *args)
        assert code == 0, (args, err)
        assert "Traceback" not in out + err and out.strip(), (args, out, err)
        return out

    assert "created" in ok("init", tmp_path / "new.plugmem")
    added = ok("import", tmp_path / "new.plugmem", tmp_path / "facts.jsonl")
    assert re.match(r"added 10 entries in [\d.]+ s \([\d.,]+/s\)", added) and "(0/s)" not in added
    assert "Tokyo is the capital of Japan." in ok("list", pack)
    assert "text" not in ok("show", pack, 2).splitlines()[0] and "Tokyo" in ok("show", pack, 2)
    assert ok("add", pack, "--text", "Ottawa is the capital of Canada.").startswith("added entry 11")
    assert ok("edit", pack, 2, "--text", "Kyoto is the capital of Japan.").strip() == "Edited entry 2 (text)"
    assert ok("edit", pack, 3, "--disable").strip() == "Disabled entry 3"
    assert ok("delete", pack, 11).strip() == "Deleted entry 11"
    assert ok("undo", pack).strip() == "Undid: delete of entry 11"
    assert ok("undo", pack).strip() == "Undid: disable of entry 3"
    assert ok("undo", pack).strip() == "Undid: edit of entry 2 (text)"
    assert ok("redo", pack).strip() == "Redid: edit of entry 2 (text)"
    hist = ok("history", pack, 2)
    assert "redo of edit: text 'Tokyo is the capital of Japan.' -> 'Kyoto is the capital of Japan.'" in hist
    assert "added: 'Tokyo is the capital of Japan.'" in hist and "None" not in hist
    assert "undo of disable: enabled" in ok("history", pack, 3)
    assert "Kyoto" in ok("search", pack, "capital of Japan", "-k", "2")
    assert "Kyoto" in ok("search", pack, "Japan", "--text")
    assert "exported 11 entries" in ok("export", pack, tmp_path / "out.jsonl")
    stats = ok("stats", pack)
    assert "entries:   11 (11 active, 0 disabled)" in stats and "all-MiniLM-L6-v2" in stats
    assert ok("check", pack).strip() == "ok"
    assert "re-encoded 11 entries" in ok("reencode", pack)

    commands = set(next(a for a in build_parser()._actions if a.dest == "cmd").choices)
    assert commands - seen - set(COVERED_ELSEWHERE) == set(), "a command's human output is tested nowhere"


def test_model_loading_prints_only_our_progress(tmp_path, facts_jsonl):
    """transformers' own 'Loading weights: 0%...' bars stay off the CLI's stderr."""
    exe = Path(sys.executable).with_name("plugmem")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_DISABLE")}
    env["PLUGMEM_HOME"] = str(tmp_path / "home")
    p = tmp_path / "g.plugmem"
    for args in (["init", p], ["import", p, facts_jsonl], ["search", p, "capital of Japan"]):
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "Loading weights" not in r.stderr and "it/s]" not in r.stderr, r.stderr
