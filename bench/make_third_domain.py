"""The third evaluation domain (issue 20): airports, from the PyPI package ``airportsdata``.

    pip install --no-deps --target /tmp/airports-src airportsdata==20260905 pycountry==26.2.16
    PYTHONPATH=/tmp/airports-src python bench/make_third_domain.py [--out bench/data/airports]

Neither package is a dependency of the app (install them aside as above); the generated
files are committed, so the benchmarks run offline. Sources: ``airportsdata`` (MIT) gives
each airport's IATA and ICAO codes, city, subdivision, ISO country code, time zone and
elevation; ``pycountry`` (LGPL-2.1, its ISO 3166 table) turns the country code into a name.

Other entities, relations and wordings than ``resources/demo``: a seeded sample of
international airports, each fact a sentence; every probe is asked in the entry's wording
(``prompt``) and in three held-out wordings (``paraphrases``: type-first, interrogative,
reordered), and the edits change an object to another of the same relation. This domain is
never used in training or calibration: it is the honest test. Output is deterministic
(sorted iteration, seed below): the same package versions give byte-identical files, and
``manifest.json`` records the versions, counts and sha256s.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._wordings import KINDS, edit_rows, parse_facts, probe_rows, unambiguous, write_jsonl  # noqa: E402

SEED = 20261206
DOMAIN = "airports"
N_AIRPORTS = 120
N_EDITS = 40
PACKAGES = ("airportsdata", "pycountry")

#: relation -> (fact sentence, entry wording); facts only when the entry wording is empty.
RELATIONS = {
    "iata_code": ("The IATA code of {s} is {o}.", "The IATA code of {s} is"),
    "icao_code": ("The ICAO code of {s} is {o}.", "The ICAO code of {s} is"),
    "city": ("{S} serves the city of {o}.", "{S} serves the city of"),
    "country": ("{S} is located in {o}.", "{S} is located in"),
    "subdivision": ("{S} lies in the region of {o}.", "{S} lies in the region of"),
    "timezone": ("{S} keeps the time zone {o}.", "{S} keeps the time zone"),
    "elevation": ("{S} lies at an elevation of {o} feet.", ""),
}
#: Held-out wordings per probe relation (all of this domain's wordings are held out).
WORDINGS = {
    "iata_code": {
        "type_first": "The three-letter code that airlines use for {s} is",
        "interrogative": "Question: What is the IATA airport code of {s}? Answer:",
        "reordered": "Bags checked through to {s} carry the IATA code",
    },
    "icao_code": {
        "type_first": "The four-letter location indicator of {s} is",
        "interrogative": "Question: Which ICAO code identifies {s}? Answer:",
        "reordered": "Pilots file their flight plans to {s} under the ICAO code",
    },
    "city": {
        "type_first": "The city in which {s} is found is",
        "interrogative": "Question: Which city does {s} serve? Answer:",
        "reordered": "Passengers who land at {s} arrive in the city of",
    },
    "country": {
        "type_first": "The country in which {s} lies is",
        "interrogative": "Question: In which country is {s}? Answer:",
        "reordered": "To fly into {s}, you travel to",
    },
    "subdivision": {
        "type_first": "The state or province in which {s} lies is",
        "interrogative": "Question: Which state or province is {s} in? Answer:",
        "reordered": "Within its country, {s} belongs to the region of",
    },
    "timezone": {
        "type_first": "The tz database time zone of {s} is",
        "interrogative": "Question: Which time zone does {s} use? Answer:",
        "reordered": "Departure times at {s} are given in the time zone",
    },
}
#: Country names that read with an article mid-sentence.
_THE = ("United ", "Netherlands", "Philippines", "Bahamas", "Gambia", "Maldives", "Comoros",
        "Seychelles", "Dominican Republic", "Central African Republic", "Czech Republic")


def country_name(pycountry, code: str) -> str:
    c = pycountry.countries.get(alpha_2=code)
    if c is None:
        return ""
    name = getattr(c, "common_name", None) or c.name
    if "," in name or "(" in name:
        return ""
    return "the " + name if name.startswith(_THE) or name.endswith("Islands") else name


def build_facts(airports: dict, pycountry) -> list[dict]:
    """A seeded sample of international airports, as fact records (text, title, source, tags)."""
    names: dict[str, int] = {}
    for a in airports.values():
        names[a["name"]] = names.get(a["name"], 0) + 1
    version = importlib.metadata.version("airportsdata")
    cands = []
    for code in sorted(airports):
        a = airports[code]
        country = country_name(pycountry, a["country"])
        if not (a["name"].endswith("International Airport") and names[a["name"]] == 1 and len(a["icao"]) == 4
                and a["city"] and "," not in a["city"] and a["tz"] and country):
            continue
        cands.append((a, country))
    picked = sorted(random.Random(SEED).sample(cands, N_AIRPORTS), key=lambda x: x[0]["iata"])
    facts = []
    for a, country in picked:
        ctx = {"s": a["name"], "S": a["name"]}
        objects = {"iata_code": a["iata"], "icao_code": a["icao"], "city": a["city"], "country": country,
                   "timezone": a["tz"], "elevation": f"{round(a['elevation']):,}" if a["elevation"] else ""}
        if a["subd"] and a["subd"] != a["city"]:
            objects["subdivision"] = a["subd"]
        for rel, (fact, _) in RELATIONS.items():
            if objects.get(rel):
                facts.append({"text": fact.format(**ctx, o=objects[rel]), "title": a["name"],
                              "source": f"airportsdata {version}: {a['iata']} / {rel}", "tags": [rel, DOMAIN]})
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "data" / DOMAIN))
    a = ap.parse_args()
    try:
        import airportsdata
        import pycountry
    except ImportError as exc:
        sys.exit(f"{exc.name} is not importable: install it aside as the module docstring says "
                 "(pip install --no-deps --target DIR ...; PYTHONPATH=DIR)")
    out = Path(a.out)
    facts = build_facts(airportsdata.load("IATA"), pycountry)
    templates = {r: f for r, (f, _) in RELATIONS.items()}
    ctx, parsed = parse_facts(facts, templates)
    entry = {r: p for r, (_, p) in RELATIONS.items() if p}
    probed = [p for p in unambiguous(parsed) if p["relation"] in WORDINGS]
    probes = probe_rows(probed, ctx, WORDINGS, entry, DOMAIN, "test")
    edits = edit_rows(probed, ctx, WORDINGS, entry, N_EDITS, SEED)
    counts = {"facts": write_jsonl(out / "facts.jsonl", facts), "probes": write_jsonl(out / "probes.jsonl", probes),
              "edits": write_jsonl(out / "edits.jsonl", edits), "entities": len({f["title"] for f in facts})}
    manifest = {
        "generator": "bench/make_third_domain.py", "seed": SEED, "domain": DOMAIN,
        "packages": {p: importlib.metadata.version(p) for p in PACKAGES},
        "licences": {"airportsdata": "MIT", "pycountry": "LGPL-2.1 (country names only)"},
        "use": "evaluation only: never in training or calibration", "counts": counts,
        "relations": {r: {"fact": f, "entry_wording": p, **({k: WORDINGS[r][k] for k in KINDS} if r in WORDINGS else {})}
                      for r, (f, p) in RELATIONS.items()},
        "sha256": {n: hashlib.sha256((out / n).read_bytes()).hexdigest()
                   for n in ("facts.jsonl", "probes.jsonl", "edits.jsonl")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
