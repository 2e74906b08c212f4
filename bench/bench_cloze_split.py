"""How often the cloze split (engine.evaluate.cloze) is right on the demo packs.

    python -m bench.bench_cloze_split [DEMO_WORKSPACE]

Truth: each demo entry was written from one triple (its title is the head, its tag the
relation); the split is right when the probe's answer is that triple's tail (and, cut at
a triple, the prompt is the text before it). Measured twice: with the pack's triples, as
`plugmem probes make` runs, and from the sentence alone, as for a pack without triples.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from engine.evaluate.cloze import _strip_end, make_probes, split_sentence
from engine.resources import demo_dir
from engine.store import Pack


def measure(pack_path: Path, domain: str) -> dict:
    truth: dict[tuple[str, str], set[str]] = {}
    for line in (demo_dir() / domain / "triples.jsonl").read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        truth.setdefault((t["head"].lower(), t["relation"]), set()).add(t["tail"].lower())
    with Pack.open(pack_path, readonly=True) as pack:
        entries = {e.id: e for e in pack.page(0, 1_000_000)}
        probes = make_probes(pack)

    def tails(e) -> set[str]:
        return set().union(*[truth.get((e.title.lower(), r), set()) for r in e.tags if r != domain])

    right = sum(p.answer.lower() in tails(entries[p.entry_id])
                and _strip_end(entries[p.entry_id].text).startswith(p.prompt) for p in probes)
    misses = Counter()
    alone = 0
    for e in entries.values():
        cut = split_sentence(e.text)
        ok = cut is not None and cut[1].lower() in tails(e)
        alone += ok
        if not ok:
            misses[next((t for t in e.tags if t != domain), "?")] += 1
    return {"domain": domain, "entries": len(entries), "probes": len(probes),
            "split_by": dict(Counter(p.split_by for p in probes)), "right_with_triples": right,
            "right_sentence_alone": alone, "sentence_misses_by_relation": dict(misses.most_common(6))}


def main() -> None:
    from engine.demo import ensure_demo_workspace

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(ensure_demo_workspace())
    for domain in ("geography", "chemistry"):
        r = measure(folder / f"{domain}.plugmem", domain)
        n = r["entries"]
        print(f"{domain}: {r['probes']:,} probes of {n:,} entries {r['split_by']}; right with triples "
              f"{r['right_with_triples']:,} ({r['right_with_triples'] / n:.1%}), from the sentence alone "
              f"{r['right_sentence_alone']:,} ({r['right_sentence_alone'] / n:.1%}); "
              f"sentence misses {r['sentence_misses_by_relation']}")


if __name__ == "__main__":
    main()
