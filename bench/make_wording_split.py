"""The split by wording for the two demo domains: held-out relations asked in held-out wordings.

    python bench/make_wording_split.py [--out bench/data/wording] [--edits 40]

Reads ``bench/data/wording_split.json`` (the held-out templates) and the committed demo data
(``resources/demo/<domain>/{facts,probes_heldout}.jsonl``; the fact and entry templates
come from ``resources/make_demo_data.py``), and writes per domain:

* ``probes.jsonl`` -- every held-out-relation probe of ``probes_heldout.jsonl``, its
  ``prompt`` the demo's (entry) wording, its ``paraphrases`` the held-out wordings (``kinds``);
* ``edits.jsonl`` -- counterfactual edits of held-out-relation facts, ``prompt`` in the
  entry wording and ``paraphrase`` in a held-out wording (kinds in turn).

Nothing here is read by the branch's training or calibration. Deterministic (seed below).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._wordings import demo_generator, edit_rows, parse_facts, probe_rows, read_jsonl, unambiguous, write_jsonl  # noqa: E402

SEED = 20261206
SPLIT_FILE = ROOT / "bench" / "data" / "wording_split.json"


def demo_relations() -> dict[str, dict]:
    """The demo generator's relations per domain (its fact sentences and training wordings)."""
    mod = demo_generator()
    return {"geography": mod.GEO, "chemistry": mod.CHEM}


def build(domain: str, wordings: dict, relations: dict, out: Path, n_edits: int) -> dict:
    demo = ROOT / "resources" / "demo" / domain
    facts = read_jsonl(demo / "facts.jsonl")
    templates = {name: r.fact for name, r in relations.items()}
    ctx, parsed = parse_facts(facts, templates)
    held = [p for p in read_jsonl(demo / "probes_heldout.jsonl") if p["relation"] in wordings]
    keep = {(p["subject"], p["relation"]): p["split"] for p in held}
    mine = [p for p in unambiguous(parsed) if (p["subject"], p["relation"]) in keep]
    entry = {name: relations[name].prompts[0] for name in wordings}
    probes = []
    for p in mine:
        probes += probe_rows([p], ctx, wordings, entry, domain, keep[(p["subject"], p["relation"])])
    by_key = {(p["subject"], p["relation"]): p for p in held}
    for row in probes:  # the demo's own answer and entry prompt must agree with ours
        demo_row = by_key[(row["subject"], row["relation"])]
        if (row["prompt"], row["answer"]) != (demo_row["prompt"], demo_row["answer"]):
            raise ValueError(f"{domain}: {row['subject']} / {row['relation']}: {row['prompt']!r} -> {row['answer']!r} "
                             f"differs from the demo's {demo_row['prompt']!r} -> {demo_row['answer']!r}")
    edits = edit_rows(mine, ctx, wordings, entry, n_edits, SEED)
    folder = out / domain
    return {"probes": write_jsonl(folder / "probes.jsonl", probes),
            "edits": write_jsonl(folder / "edits.jsonl", edits),
            "relations": sorted(wordings)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "data" / "wording"))
    ap.add_argument("--edits", type=int, default=40, help="edits per domain")
    a = ap.parse_args()
    split = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    rels = demo_relations()
    summary = {d: build(d, w, rels[d], Path(a.out), a.edits) for d, w in split["domains"].items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
