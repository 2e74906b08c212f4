"""The Evaluation tab's files read through engine.jsonl: a damaged history line is skipped with
'FILE:LINE' in the log and the other runs are kept; a file's kind is told from its first record."""
from __future__ import annotations

import json
import logging

from app.evaluations import FILE_NAME, EvalRun, EvalStore
from app.views.evaluation import detect_kind


def test_a_damaged_history_line_is_logged_with_its_line_and_the_other_runs_kept(tmp_path, caplog):
    store = EvalStore(tmp_path)
    first = store.append(EvalRun("probes", "p.jsonl", "dpm", 5, ["facts"], "tiny", {"accuracy": 0.5}), [])
    with (tmp_path / FILE_NAME).open("a", encoding="utf-8") as f:
        f.write('{"kind": "probes", "resu\n')  # cut short by a crash
        f.write('["not", "a", "run"]\n')
        f.write(json.dumps({"kind": "probes", "result": "no figures"}) + "\n")
    store.append(EvalRun("edits", "e.jsonl", "context", 5, ["facts"], "tiny", {"efficacy": 1.0}), [first])
    with caplog.at_level(logging.WARNING, logger="app.evaluations"):
        runs = store.load()
    assert [(r.id, r.kind) for r in runs] == [(1, "probes"), (2, "edits")]
    where = str(tmp_path / FILE_NAME)
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split(": ")[0] for m in msgs] == [f"{where}:2", f"{where}:3", f"{where}:4"]
    assert "not valid JSON" in msgs[0] and "expected an evaluation record, got list" in msgs[1]
    assert all(m.endswith("(line skipped)") for m in msgs)


def test_unreadable_history_shows_no_runs_and_says_why(tmp_path, caplog):
    (tmp_path / FILE_NAME).write_bytes(b'{"kind": "\xff"}\n')
    with caplog.at_level(logging.WARNING, logger="app.evaluations"):
        assert EvalStore(tmp_path).load() == []
    assert f"{tmp_path / FILE_NAME}:1: not valid UTF-8" in caplog.text


def test_detect_kind_reads_the_first_record(tmp_path):
    edits = tmp_path / "e.jsonl"
    edits.write_text('\n{"entry": 1, "old_text": "a", "new_text": "b"}\n', encoding="utf-8")
    probes = tmp_path / "p.jsonl"
    probes.write_text('{"prompt": "x", "answer": "y"}\n', encoding="utf-8")
    broken = tmp_path / "b.jsonl"
    broken.write_text("[1]\n", encoding="utf-8")
    assert [detect_kind(p) for p in (edits, probes, broken, tmp_path / "missing.jsonl")] == \
        ["edits", "probes", "probes", "probes"]
