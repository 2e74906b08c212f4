"""Shared data for the knowledge-plugin tests (helpers only, no tests): a small geography-like domain."""
from __future__ import annotations

import json
from pathlib import Path

COUNTRIES = {
    # name: (aliases, capital, region, neighbours)
    "France": (["French Republic"], "Paris", "Europe", ["Spain", "Germany"]),
    "Spain": (["Kingdom of Spain"], "Madrid", "Europe", ["France", "Portugal"]),
    "Germany": (["Federal Republic of Germany"], "Berlin", "Europe", ["France"]),
    "Portugal": ([], "Lisbon", "Europe", ["Spain"]),
    "Japan": (["Nippon"], "Tokyo", "Asia", []),
    "China": (["People's Republic of China"], "Beijing", "Asia", ["India"]),
    "India": (["Republic of India"], "New Delhi", "Asia", ["China"]),
    "Niger": ([], "Niamey", "Africa", ["Nigeria"]),
    "Nigeria": (["Federal Republic of Nigeria"], "Abuja", "Africa", ["Niger"]),
    "Kenya": ([], "Nairobi", "Africa", []),
}


def triples() -> list[dict]:
    out = []
    for name, (aliases, capital, region, nbrs) in COUNTRIES.items():
        out.append({"head": name, "relation": "capital", "tail": capital, "head_aliases": aliases})
        out.append({"head": name, "relation": "region", "tail": region, "head_aliases": aliases})
        for n in nbrs:
            out.append({"head": name, "relation": "borders", "tail": n, "head_aliases": aliases,
                        "tail_aliases": COUNTRIES[n][0]})
    return out


def facts() -> list[str]:
    out = []
    for name, (_, capital, region, nbrs) in COUNTRIES.items():
        out.append(f"The capital of {name} is {capital}.")
        out.append(f"{name} is a country in {region}.")
        out.append(f"According to the atlas, {name} lies in {region}.")
        for n in nbrs:
            out.append(f"{name} borders {n}.")
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def make_pack(tmp_path: Path, *, with_facts: bool = True):
    """A pack with the domain's triples (and facts as entries); returns its path."""
    from engine.mechanisms.plugins.entities import import_triples
    from engine.store import Pack

    path = tmp_path / "geo.plugmem"
    with Pack.create(path) as pack:
        import_triples(pack, [write_jsonl(tmp_path / "triples.jsonl", triples())])
        if with_facts:
            pack.add_many([{"text": t} for t in facts()])
    return path
