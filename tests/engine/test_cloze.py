"""Cloze probes from a pack's own entries: the split at a triple's object or in the
sentence, the probe file `plugmem probes make` writes, and that it reads back as probes."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.evaluate import read_probes
from engine.evaluate.cloze import make_probes, split_by_triples, split_sentence
from engine.store import Pack


@pytest.mark.parametrize("text, expected", [
    ("Paris is the capital of France.", ("Paris is the capital of", "France")),
    ("Hydrogen melts at 13.99 kelvin.", ("Hydrogen melts at", "13.99")),
    ("Hydrogen has the atomic number 1.", ("Hydrogen has the atomic number", "1")),
    ("Albania shares a land border with the Republic of Macedonia.",
     ("Albania shares a land border with the", "Republic of Macedonia")),
    ("In French, Albania is called Albanie.", ("In French, Albania is called", "Albanie")),
    ("The capital of the United States is Washington D.C.", ("The capital of the United States is", "Washington D.C.")),
    ("Aspirin thins the blood and relieves mild pain", ("Aspirin thins the blood and relieves mild", "pain")),
])
def test_sentence_split(text, expected):
    assert split_sentence(text) == expected


def test_a_text_too_short_is_not_cut():
    assert split_sentence("Yes.") is None and split_sentence("Paris rocks.") is None


def test_triple_split_prefers_the_tagged_relation_then_the_latest_object():
    text = "The element with the chemical symbol H is hydrogen."
    triples = [("symbol", "H"), ("atomic_number", "1"), ("element_with_symbol", "Hydrogen")]
    assert split_by_triples(text, triples, ["element_with_symbol"]) == (
        "The element with the chemical symbol H is", "hydrogen", "element_with_symbol")
    # untagged: the object found latest in the text wins
    assert split_by_triples(text, triples)[2] == "element_with_symbol"
    # "1" is not found inside "100": whole words only
    assert split_by_triples("Water boils at 100 degrees.", [("boils", "1")]) is None


@pytest.fixture
def drug_pack(tmp_path):
    from engine.mechanisms.plugins.entities import import_triples

    p = tmp_path / "drugs.plugmem"
    with Pack.create(p) as pack:
        pack.add_many([
            {"text": "The maximum daily dose of paracetamol is 4 grams.", "title": "Paracetamol", "tags": ["max_dose"]},
            {"text": "Ibuprofen belongs to the class of NSAIDs.", "title": "Ibuprofen", "tags": ["drug_class"]},
            {"text": "Warfarin interacts with vitamin K.", "title": "Warfarin"},
            {"text": "Short.", "title": ""},
        ])
        triples = tmp_path / "t.jsonl"
        triples.write_text(json.dumps({"head": "Paracetamol", "relation": "max_dose", "tail": "4 grams"}) + "\n"
                           + json.dumps({"head": "Ibuprofen", "relation": "drug_class", "tail": "NSAIDs"}) + "\n")
        import_triples(pack, [triples])
    return p


def test_probes_from_a_pack_use_its_triples_then_the_sentence(drug_pack):
    with Pack.open(drug_pack, readonly=True) as pack:
        probes = make_probes(pack)
    got = [(p.prompt, p.answer, p.subject, p.relation, p.split_by) for p in probes]
    assert [p.paraphrases for p in probes] == [(), (), ()]  # no prompt names its relation in those words
    assert got == [
        ("The maximum daily dose of paracetamol is", "4 grams", "Paracetamol", "max_dose", "triple"),
        ("Ibuprofen belongs to the class of", "NSAIDs", "Ibuprofen", "drug_class", "triple"),
        ("Warfarin interacts with", "vitamin K", "Warfarin", "", "sentence"),
    ]  # "Short." cannot be cut


def test_cli_probes_make_writes_a_probe_file_eval_reads(drug_pack, tmp_path, capsys):
    out = tmp_path / "drugs.probes.jsonl"
    assert main(["probes", "make", str(drug_pack), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["probes"] == 3 and doc["split_by"] == {"triple": 2, "sentence": 1} and doc["out"] == str(out)
    assert doc["paraphrases"] == 0
    probes = read_probes(out)
    assert [p.answer for p in probes] == ["4 grams", "NSAIDs", "vitamin K"] and probes[0].subject == "Paracetamol"
    assert main(["probes", "make", str(drug_pack), "--out", str(out), "--sample", "2"]) == 0
    assert "2 probes from drugs.plugmem" in capsys.readouterr().out
    assert len(read_probes(out)) == 2
    assert main(["probes", "make", str(drug_pack), "--out", str(out), "--sample", "0"]) == 2
    assert "--sample: must be at least 1" in capsys.readouterr().err


def test_a_paraphrase_only_where_the_prompt_names_the_relation():
    from engine.evaluate.cloze import paraphrase

    assert paraphrase("Hydrogen has the atomic number", "Hydrogen", "atomic_number") == "The atomic number of Hydrogen is"
    assert paraphrase("The international calling codes of Jamaica are", "Jamaica", "calling_codes") == \
        "The calling codes of Jamaica are"
    assert paraphrase("The capital of the Bahamas is", "Bahamas", "capital") is None  # already that form
    assert paraphrase("The element with the chemical symbol H is", "Hydrogen", "element_with_symbol") is None
    assert paraphrase("Hydrogen melts at", "Hydrogen", "melting_point") is None
