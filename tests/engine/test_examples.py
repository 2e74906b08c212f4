"""Worked examples in a pack: a probe file imported as examples (question → answer entries)."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.jobs.build_memory import build_memory
from engine.mechanisms.context.fusion import context_prompt
from engine.memory import Memory
from engine.store import Pack
from engine.store.corpus import parse_file
from engine.store.examples import EXAMPLE_TAG, example_text, is_example

PROBES = [
    {"prompt": "The capital of Peru is", "answer": "Lima", "paraphrases": ["Peru's capital city is"],
     "relation": "capital", "subject": "Peru"},
    {"prompt": "Question: Which currency is used in Chile? Answer:", "answer": "Chilean peso",
     "relation": "currency", "subject": "Chile", "domain": "geography"},
]


@pytest.fixture
def probes_file(tmp_path):
    p = tmp_path / "probes_train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PROBES), encoding="utf-8")
    return p


def _build(pack, files, **cfg):
    return build_memory({"pack": str(pack), "inputs": [str(f) for f in files], **cfg}, lambda *a: None, lambda: False)


def _entries(pack):
    with Pack.open(pack) as p:
        return p.get_many(p.ids())


def test_a_probe_file_becomes_examples_one_per_wording(tmp_path, probes_file, facts_jsonl, encoder):
    pack = tmp_path / "d.plugmem"
    assert _build(pack, [facts_jsonl])["entries_added"] == 10
    res = _build(pack, [probes_file], as_examples=True)
    assert res["errors"] == [] and res["entries_added"] == 3  # 2 prompts + 1 paraphrase
    ex = [e for e in _entries(pack) if is_example(e)]
    assert [e.text for e in ex] == ["The capital of Peru is Lima.", "Peru's capital city is Lima.",
                                    "Question: Which currency is used in Chile? Answer: Chilean peso."]
    assert ex[0].source == "probes_train.jsonl:1" and ex[1].source == "probes_train.jsonl:1 (paraphrase 1)"
    assert ex[0].title == "Peru" and ex[0].tags == [EXAMPLE_TAG, "capital"]
    assert sum(is_example(e) for e in _entries(pack)) == 3  # the facts stay facts
    # the same file imported as facts is another import (another key), not "already imported"
    with Pack.open(pack) as p:
        assert len(p.ids(tag=EXAMPLE_TAG)) == 3


def test_examples_are_searchable_and_read_in_context(tmp_path, probes_file, facts_jsonl, encoder):
    pack = tmp_path / "d.plugmem"
    _build(pack, [facts_jsonl])
    _build(pack, [probes_file], as_examples=True)
    with Memory.open(pack, encoder) as m:
        found = m.text_search("Chilean peso", k=1)
        assert [h.entry.text for h in found] == ["Question: Which currency is used in Chile? Answer: Chilean peso."]
        hits = m.search("What is the capital city of Peru?", k=2)
        assert all(is_example(h.entry) and "Lima" in h.entry.text for h in hits)
    # the context mode places the retrieved examples before the question like any entry
    ctx = context_prompt("The capital of Peru is", [h.entry.text for h in hits])
    assert all(f"- {h.entry.text}" in ctx for h in hits)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_examples_round_trip_through_export_and_import(tmp_path, probes_file, encoder, fmt):
    pack = tmp_path / "d.plugmem"
    _build(pack, [probes_file], as_examples=True)
    out = tmp_path / f"export.{fmt}"
    with Pack.open(pack) as p:
        assert p.export(out) == 3
    again = tmp_path / "again.plugmem"
    assert _build(again, [out])["entries_added"] == 3  # an export is an ordinary corpus file
    before = [(e.text, e.title, e.source, e.tags) for e in _entries(pack)]
    after = [(e.text, e.title, e.source, e.tags) for e in _entries(again)]
    assert after == before and all(is_example(e) for e in _entries(again))


def test_undo_of_an_examples_import_removes_them(tmp_path, probes_file, facts_jsonl, encoder):
    pack = tmp_path / "d.plugmem"
    _build(pack, [facts_jsonl])
    _build(pack, [probes_file], as_examples=True)
    with Memory.open(pack, encoder) as m:
        assert m.pack.undo_label() == "import examples from probes_train.jsonl (3 entries)"
        m.undo()
        assert m.pack.ids(tag=EXAMPLE_TAG) == [] and m.pack.count("active") == 10
        assert not any(is_example(h.entry) for h in m.search("The capital of Peru is", k=10))


@pytest.mark.parametrize("line, reason", [
    ({"prompt": "The capital of Chile is"}, "field 'answer' must be a non-empty string"),
    ({"prompt": "The capital of Chile is", "answer": "Santiago", "paraphrases": "Chile's capital is"},
     "'paraphrases' must be a list of non-empty strings"),
    (["not", "an", "object"], "expected a JSON object with 'prompt' and 'answer'"),
])
def test_a_malformed_probe_line_is_refused_naming_file_and_line(tmp_path, probes_file, facts_jsonl, encoder,
                                                                 line, reason):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROBES[0]) + "\n\n" + json.dumps(line) + "\n", encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    _build(pack, [facts_jsonl])
    res = _build(pack, [probes_file, bad], as_examples=True)
    assert res["entries_added"] == 0 and len(res["errors"]) == 1
    assert res["errors"][0].startswith(f"{bad}:3: ") and reason in res["errors"][0]
    assert len(_entries(pack)) == 10  # nothing of the good file either


def test_examples_come_from_jsonl_probe_files_only(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,answer\nThe capital of Peru is,Lima\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.csv: worked examples are read from a probe file \(\.jsonl"):
        parse_file(csv, as_examples=True)


def test_cli_import_as_examples_and_list_marks_them(tmp_path, probes_file, capsys, encoder):
    pack = tmp_path / "d.plugmem"
    assert main(["import", str(pack), str(probes_file), "--as-examples"]) == 0
    assert "added 3 entries" in capsys.readouterr().out
    assert main(["list", str(pack), "--tag", EXAMPLE_TAG]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("  example  " in ln for ln in lines)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "Lima"}\n', encoding="utf-8")
    assert main(["import", str(pack), str(bad), "--as-examples"]) == 2
    assert f"{bad}:1: field 'prompt' must be a non-empty string" in capsys.readouterr().err
    assert main(["import", str(pack), str(probes_file), "--as-examples", "--ray"]) == 2
    assert "--as-examples does not go with --ray" in capsys.readouterr().err
