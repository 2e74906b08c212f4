"""The split by wording and the third domain (issue 20) stay what the figures say they are:
held-out wordings never reach the branch's training data, the third domain's files are
those its manifest records, and it shares no entity with the demo data."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data"
DEMO = ROOT / "resources" / "demo"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_prompts() -> set[str]:
    """Every prompt the branch's training job can read (its data: the demo's training files)."""
    out: set[str] = set()
    for domain in ("geography", "chemistry"):
        for r in rows(DEMO / domain / "counterfactual_train.jsonl"):
            out.add(r["prompt"].lower())
        for r in rows(DEMO / domain / "probes_train.jsonl"):
            out.update(q.lower() for q in [r["prompt"], *r.get("paraphrases", [])])
    return out


@pytest.mark.parametrize("folder", ["wording/geography", "wording/chemistry", "airports"])
def test_held_out_wordings_never_appear_in_the_branch_training_data(folder):
    train = training_prompts()
    probes = rows(DATA / folder / "probes.jsonl")
    edits = rows(DATA / folder / "edits.jsonl")
    assert probes and edits
    held = [q for p in probes for q in p["paraphrases"]] + [e["paraphrase"] for e in edits]
    assert not [q for q in held if q.lower() in train]
    # and every probe names its wordings' kinds, each kind asked
    assert all(p["kinds"] == ["type_first", "interrogative", "reordered"] for p in probes)
    assert {e["paraphrase_kind"] for e in edits} == {"type_first", "interrogative", "reordered"}


def test_held_out_templates_are_not_the_demo_templates():
    from bench._wordings import demo_generator

    mod = demo_generator()
    split = json.loads((DATA / "wording_split.json").read_text(encoding="utf-8"))["domains"]
    demo = {"geography": mod.GEO, "chemistry": mod.CHEM}
    for domain, relations in split.items():
        for rel, wordings in relations.items():
            assert rel in mod.HELDOUT_RELATIONS[domain]  # relations the branch never trained on
            assert not set(wordings.values()) & set(demo[domain][rel].prompts)


def test_third_domain_files_match_their_manifest_and_share_no_entity_with_the_demo():
    folder = DATA / "airports"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["packages"]["airportsdata"] and manifest["use"].startswith("evaluation only")
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    facts = rows(folder / "facts.jsonl")
    assert len(facts) == manifest["counts"]["facts"]
    titles = {f["title"] for f in facts}
    demo_titles = {f["title"] for d in ("geography", "chemistry") for f in rows(DEMO / d / "facts.jsonl")}
    assert not titles & demo_titles
    # every edit's old text is a fact of the pack, verbatim (eval-edits finds its entry by text)
    texts = {f["text"] for f in facts}
    assert all(e["old_text"] in texts and e["new"] in e["new_text"] for e in rows(folder / "edits.jsonl"))
