"""The committed demo data (resources/demo) is well formed, honest and reproducible.

No model is loaded: these checks are about the files a user gets on first start.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "demo"
SCRIPT = ROOT / "resources" / "make_demo_data.py"
DOMAINS = ("geography", "chemistry")
FILES = ("facts.jsonl", "triples.jsonl", "probes_train.jsonl", "probes_heldout.jsonl",
         "edits.jsonl", "counterfactual_train.jsonl")
KEYS = {
    "facts.jsonl": {"text", "title", "source", "tags"},
    "triples.jsonl": {"head", "relation", "tail", "head_aliases", "tail_aliases"},
    "probes_train.jsonl": {"prompt", "answer", "paraphrases", "relation", "subject", "domain"},
    "probes_heldout.jsonl": {"prompt", "answer", "paraphrases", "relation", "subject", "domain",
                             "split"},
    "edits.jsonl": {"old_text", "new_text", "prompt", "new", "old", "paraphrase", "relation",
                    "subject"},
    "counterfactual_train.jsonl": {"text", "prompt", "answer", "relation", "subject"},
}


def _rows(domain: str, name: str) -> list[dict]:
    path = DEMO / domain / name
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{path}:{n}: not JSON: {e}")
    return rows


def _manifest() -> dict:
    return json.loads((DEMO / "manifest.json").read_text(encoding="utf-8"))


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("name", FILES)
def test_files_exist_parse_and_have_the_documented_fields(domain, name):
    rows = _rows(domain, name)
    assert rows, f"{domain}/{name} is empty"
    for n, r in enumerate(rows, 1):
        assert set(r) == KEYS[name], f"{domain}/{name}:{n} has fields {sorted(r)}"
        for k, v in r.items():
            if isinstance(v, str) and k not in ("tail",):
                assert v.strip() == v and v, f"{domain}/{name}:{n}: field {k!r} is {v!r}"


def test_sizes_are_reasonable():
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 3.5 * 2**20, f"demo data is {total / 2**20:.1f} MiB"
    for domain in DOMAINS:
        assert len(_rows(domain, "facts.jsonl")) >= 1000
        assert len(_rows(domain, "probes_train.jsonl")) >= 500
        assert 50 <= len(_rows(domain, "edits.jsonl")) <= 150


@pytest.mark.parametrize("domain", DOMAINS)
def test_facts_are_unique_sentences_with_their_source(domain):
    facts = _rows(domain, "facts.jsonl")
    texts = [f["text"] for f in facts]
    assert len(texts) == len(set(texts)), "duplicate fact sentences"
    pkg = "countryinfo" if domain == "geography" else "mendeleev"
    for f in facts:
        assert f["text"][0].isupper() and f["text"].endswith("."), f["text"]
        assert f["source"].startswith(f"{pkg} ") and f"{f['title']} / " in f["source"], f
        assert f["tags"][1] == domain
        assert "  " not in f["text"] and not f["text"].endswith(" .") and "{" not in f["text"], f["text"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_probe_is_backed_by_a_fact_of_its_subject(domain):
    by_subject: dict[str, str] = defaultdict(str)
    for f in _rows(domain, "facts.jsonl"):
        by_subject[f["title"]] += " " + f["text"].lower()
    for name in ("probes_train.jsonl", "probes_heldout.jsonl"):
        for p in _rows(domain, name):
            assert p["domain"] == domain
            assert p["answer"] and p["answer"] == p["answer"].strip().rstrip(".,;:"), p
            assert p["answer"].lower() in by_subject[p["subject"]], f"no fact backs {p}"
            assert 1 <= len(p["paraphrases"]) <= 3, p
            assert p["prompt"] not in p["paraphrases"]
            assert not p["prompt"].endswith(" "), p


@pytest.mark.parametrize("domain", DOMAINS)
def test_one_prompt_one_answer(domain):
    answers: dict[str, set[str]] = defaultdict(set)
    for name in ("probes_train.jsonl", "probes_heldout.jsonl"):
        for p in _rows(domain, name):
            for prompt in [p["prompt"], *p["paraphrases"]]:
                answers[prompt.lower()].add(p["answer"].lower())
    ambiguous = {k: v for k, v in answers.items() if len(v) > 1}
    assert not ambiguous, f"prompts with several answers: {list(ambiguous.items())[:3]}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_split_keeps_heldout_entities_and_relations_out_of_training(domain):
    train = _rows(domain, "probes_train.jsonl")
    held = _rows(domain, "probes_heldout.jsonl")
    counts = _manifest()["domains"][domain]
    held_relations = set(counts["heldout_relations"])
    held_entities = {p["subject"] for p in held if p["split"] in ("heldout_entity", "heldout_both")}
    assert held_relations and held_entities
    assert len(held_entities) <= counts["heldout_entities"]
    assert not {p["relation"] for p in train} & held_relations
    assert not {p["subject"] for p in train} & held_entities
    assert {p["relation"] for p in held} >= held_relations
    for p in held:
        he, hr = p["subject"] in held_entities, p["relation"] in held_relations
        assert p["split"] == ("heldout_both" if he and hr else
                              "heldout_entity" if he else "heldout_relation"), p
    # Counterfactual training facts stay on the training side too.
    train_relations = {p["relation"] for p in train}
    for c in _rows(domain, "counterfactual_train.jsonl"):
        assert c["relation"] in train_relations and c["subject"] not in held_entities, c


@pytest.mark.parametrize("domain", DOMAINS)
def test_edits_rewrite_a_real_fact_of_a_heldout_entity(domain):
    facts = {f["text"] for f in _rows(domain, "facts.jsonl")}
    held = _rows(domain, "probes_heldout.jsonl")
    held_entities = {p["subject"] for p in held if p["split"] != "heldout_relation"}
    probes = {(p["subject"], p["relation"]): p for p in held}
    for e in _rows(domain, "edits.jsonl"):
        assert e["old_text"] in facts, f"edit's old_text is not a fact: {e['old_text']!r}"
        assert e["new_text"] not in facts or e["new_text"] != e["old_text"]
        assert e["old"].lower() in e["old_text"].lower() and e["new"].lower() in e["new_text"].lower()
        assert not e["new"].lower().startswith(e["old"].lower())
        assert not e["old"].lower().startswith(e["new"].lower())
        assert e["subject"] in held_entities
        p = probes[(e["subject"], e["relation"])]
        assert e["prompt"] == p["prompt"] and e["old"] == p["answer"]
        assert e["paraphrase"] in p["paraphrases"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_counterfactuals_replace_the_object_with_another_of_the_same_relation(domain):
    facts = {f["text"] for f in _rows(domain, "facts.jsonl")}
    answers: dict[str, set[str]] = defaultdict(set)
    for name in ("probes_train.jsonl", "probes_heldout.jsonl"):
        for p in _rows(domain, name):
            answers[p["relation"]].add(p["answer"])
    cf = _rows(domain, "counterfactual_train.jsonl")
    assert len(cf) >= 500
    for c in cf:
        assert c["text"] not in facts, f"counterfactual is a true fact: {c['text']!r}"
        assert c["answer"] in answers[c["relation"]], c
        assert c["answer"].lower() in c["text"].lower()


def test_triples_match_facts():
    for domain in DOMAINS:
        facts = _rows(domain, "facts.jsonl")
        triples = _rows(domain, "triples.jsonl")
        assert len(facts) == len(triples)
        for f, t in zip(facts, triples):
            assert (t["head"], t["relation"]) == (f["title"], f["tags"][0])
            assert isinstance(t["head_aliases"], list) and isinstance(t["tail_aliases"], list)


def test_manifest_hashes_match_the_files():
    """A hand edit without regenerating is caught here."""
    m = _manifest()
    assert set(m["packages"]) == {"countryinfo", "mendeleev"}
    listed = set(m["files"])
    on_disk = {p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*")
               if p.is_file() and p.name != "manifest.json"}
    assert listed == on_disk, f"unlisted: {on_disk - listed}, missing: {listed - on_disk}"
    for rel, info in m["files"].items():
        data = (DEMO / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"], f"{rel} changed by hand"
        assert data.count(b"\n") == info["lines"]


def test_regenerating_gives_identical_files(tmp_path):
    missing = [p for p in ("countryinfo", "mendeleev") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (optional extra demo-data)")
    m = _manifest()
    for pkg, version in m["packages"].items():
        if importlib.metadata.version(pkg) != version:
            pytest.skip(f"{pkg} {importlib.metadata.version(pkg)} installed, data made with {version}")
    new = _load_script().build_all(tmp_path)
    assert new == m
    for rel in [*m["files"], "manifest.json"]:
        assert (tmp_path / rel).read_bytes() == (DEMO / rel).read_bytes(), rel
