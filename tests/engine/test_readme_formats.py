"""The probe and edit formats the README documents (issue 23: "document the probe and edit
formats in the README and in the tab's help") are the ones the engine reads: the README's
example probe loads, and every field it names for probes and edits is a field of the file."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from engine.probe_files import Edit, Probe, read_edits, read_probes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"### {title}")
    return README[start:README.index("\n### ", start + 1)]


def _bullet(section: str, name: str) -> str:
    return re.search(rf"\* \*\*{name}\*\* \(JSONL\):(.*?)(?=\n\* |\Z)", section, re.S).group(1)


def test_the_readme_probe_example_loads_as_documented(tmp_path):
    probes = _bullet(_section("Probe and edit files"), "Probes")
    example = re.search(r"`(\{.*?\})`", probes).group(1)
    f = tmp_path / "p.jsonl"
    f.write_text(example + "\n", encoding="utf-8")
    [p] = read_probes(f)
    want = json.loads(example)
    assert (p.prompt, p.answer, p.subject, p.relation) == (want["prompt"], want["answer"], want["subject"],
                                                             want["relation"])


def test_every_documented_field_is_read():
    section = _section("Probe and edit files")
    for name, kind in (("Probes", Probe), ("Edits", Edit)):
        named = set(re.findall(r"`([a-z_]+)`", _bullet(section, name)))
        fields = {f.name for f in dataclasses.fields(kind)}
        assert named and named <= fields, (name, named - fields)


def test_an_edit_with_the_documented_fields_loads(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"old_text": "Paris is the capital of France.", "new_text": "Lyon is the capital of France.",
                             "prompt": "The capital of France is", "new": "Lyon", "paraphrase": "France's capital is",
                             "old": "Paris"}) + "\n", encoding="utf-8")
    [e] = read_edits(f)
    assert (e.new, e.old, e.paraphrase) == ("Lyon", "Paris", "France's capital is")
