"""Generate the demo domain packs in ``resources/demo/`` from data that PyPI packages carry.

Sources (both MIT-licensed, installed with the optional extra ``demo-data``):

* ``countryinfo`` -- one JSON file per country in the package's ``data/`` folder
  (capital, UN geoscheme region, calling codes, ISO codes, currencies, borders, ...).
* ``mendeleev`` -- its bundled SQLite database ``elements.db`` (read directly, read-only,
  which is much faster than importing its ORM).

The app never imports these packages: the generated files are committed. The output is
deterministic (sorted iteration, one seeded RNG per purpose), so regenerating with the
same package versions gives byte-identical files; ``manifest.json`` records versions,
counts and sha256s, and ``tests/engine/test_demo_data.py`` checks both.

Run: ``.venv/bin/python resources/make_demo_data.py [--out resources/demo]``
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import random
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SEED = 20261124
HELDOUT_ENTITY_FRACTION = 0.2
EDITS_PER_DOMAIN = 100
COUNTERFACTUALS_PER_PROBE = 1
#: Relations whose probes appear only in the held-out file (never in training probes).
HELDOUT_RELATIONS = {
    "geography": ("tld", "name_in_german", "intermediate_region"),
    "chemistry": ("discovery_year", "crystal_structure"),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "demo"


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Relation:
    """How one relation is written: a fact sentence and 2-4 prompt templates.

    Templates are ``str.format`` strings over the subject's context (``s``: subject as it
    reads mid-sentence, ``S``: at sentence start, ``sp``/``Sp``: possessive forms, plus
    domain extras) and ``o`` (the object as it reads in the sentence). ``probe`` is False
    for relations kept as facts only (multi-valued or long objects).
    """

    name: str
    fact: str
    prompts: tuple[str, ...] = ()

    @property
    def probe(self) -> bool:
        return bool(self.prompts)


@dataclass
class Fact:
    subject: str  # entity name (the title)
    relation: Relation
    obj: str  # object as written in the sentence
    field: str  # source field in the package
    ctx: dict  # template fields + 'source' + 'head_aliases'
    tail: str = ""  # triple tail (defaults to obj)
    tail_aliases: list[str] = field(default_factory=list)

    def text(self, obj: str | None = None) -> str:
        return self.relation.fact.format(**self.ctx, o=self.obj if obj is None else obj)


def _fact(subject: str, rel: Relation, obj: str, fld: str, ctx: dict[str, str],
          tail: str = "", tail_aliases: list[str] | None = None) -> Fact:
    return Fact(subject, rel, obj, fld, ctx, tail or obj, list(tail_aliases or []))


_STOP_END = {"and", "the", "of", "or", "a", "an"}


def answer_of(obj: str) -> str:
    """The expected start of the continuation: the first words of the object (at most 3,
    no dangling conjunction/article), without trailing punctuation."""
    words = obj.split()[:3]
    while len(words) > 1 and words[-1].lower() in _STOP_END:
        words.pop()
    return " ".join(words).rstrip(".,;:")


def _clash(a: str, b: str) -> bool:
    """True when one answer is a case-insensitive prefix of the other (indistinguishable)."""
    a, b = a.lower(), b.lower()
    return a.startswith(b) or b.startswith(a)


def _possessive(x: str) -> str:
    return x + ("'" if x.endswith("s") else "'s")


def _text(value: object) -> str:
    """A package field as one clean string ('' when missing; a one-item list is unwrapped)."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else ""
    return value.strip() if isinstance(value, str) else ""


# ------------------------------------------------------------------------ geography

GEO = {r.name: r for r in [
    Relation("capital", "The capital of {s} is {o}.", (
        "The capital of {s} is", "{Sp} capital city is", "The capital city of {s} is called")),
    Relation("region", "According to the UN geoscheme, {s} belongs to the region of {o}.", (
        "According to the UN geoscheme, {s} belongs to the region of",
        "The UN geoscheme region of {s} is")),
    Relation("subregion", "According to the UN geoscheme, {s} belongs to the subregion of {o}.", (
        "According to the UN geoscheme, {s} belongs to the subregion of",
        "The UN geoscheme subregion of {s} is",
        "In the UN geoscheme, {s} is part of the subregion of")),
    Relation("intermediate_region",
             "According to the UN geoscheme, {s} belongs to the intermediate region of {o}.", (
                 "According to the UN geoscheme, {s} belongs to the intermediate region of",
                 "The UN geoscheme intermediate region of {s} is")),
    Relation("demonym", "The demonym for people from {s} is {o}.", (
        "The demonym for people from {s} is", "The demonym of {s} is",
        "A person from {s} is described by the demonym")),
    Relation("calling_code", "The international calling code of {s} is {o}.", (
        "The international calling code of {s} is", "{Sp} international dialling code is",
        "To phone {s} from abroad, you dial the country code")),
    Relation("calling_codes", "The international calling codes of {s} are {o}."),
    Relation("tld", "The country code top-level domain of {s} is {o}.", (
        "The country code top-level domain of {s} is", "{Sp} internet top-level domain is",
        "Websites registered in {s} use the top-level domain")),
    Relation("iso_alpha2", "The ISO 3166-1 alpha-2 code of {s} is {o}.", (
        "The ISO 3166-1 alpha-2 code of {s} is", "{Sp} two-letter ISO country code is",
        "In ISO 3166-1, the two-letter code for {s} is")),
    Relation("currency_code", "The ISO 4217 code of the currency of {s} is {o}.", (
        "The ISO 4217 code of the currency of {s} is", "{Sp} currency has the ISO 4217 code",
        "The currency code used in {s} is")),
    Relation("currency_codes", "{S} uses currencies with the ISO 4217 codes {o}."),
    Relation("only_land_neighbour", "{S} shares a land border with only one country, {o}.", (
        "The only country that shares a land border with {s} is",
        "{Sp} only land neighbour is",
        "{S} has a land border with just one country, which is")),
    Relation("borders", "{S} shares a land border with {o}."),
    Relation("name_in_french", "In French, {s} is called {o}.", (
        "In French, {s} is called", "The French name for {s} is", "{S} is known in French as")),
    Relation("name_in_german", "In German, {s} is called {o}.", (
        "In German, {s} is called", "The German name for {s} is", "{S} is known in German as")),
    Relation("timezone", "{S} uses the time zone {o}.", (
        "The time zone of {s} is", "{S} uses the time zone", "Clocks in {s} are set to")),
    Relation("timezones", "{S} spans the time zones {o}."),
    Relation("population", "{S} has a population of {o}."),
]}

#: Package entries that duplicate another entry or no longer exist as a territory.
GEO_SKIP = {"Holy See (Vatican City State)", "Palestine, State of", "Antilles néerlandaises",
            "Serbia and Montenegro"}
#: Package names rewritten so they read naturally in a sentence.
GEO_RENAME = {"Virgin Islands, British": "British Virgin Islands",
              "Virgin Islands, U.S.": "United States Virgin Islands",
              "Saint Martin (French part)": "Saint Martin",
              "Sint Maarten (Dutch part)": "Sint Maarten"}
_THE = re.compile(r"^(United |Republic of |Democratic Republic|Federated States|Isle of )|"
                  r"(Islands|Republic|Kingdom|Emirates|Netherlands|Philippines|Maldives|"
                  r"Comoros|Seychelles|Territory|Lands)$")
#: Translations kept (Spanish and Italian are left out to keep the files small).
TRANSLATIONS = {"fr": "name_in_french", "de": "name_in_german"}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _country_forms(name: str) -> tuple[str, str]:
    """(mid-sentence form, sentence-start form): 'The Bahamas' -> ('the Bahamas', 'The Bahamas')."""
    if name.startswith("The "):
        return "the " + name[4:], name
    if _THE.search(name):
        return "the " + name, "The " + name
    return name, name


def countryinfo_dir() -> Path:
    spec = importlib.util.find_spec("countryinfo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("countryinfo is not installed: pip install '.[demo-data]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def geography_facts() -> list[Fact]:
    version = importlib.metadata.version("countryinfo")
    records: dict[str, dict] = {}
    for path in sorted(countryinfo_dir().glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        name = GEO_RENAME.get(d["name"], d["name"])
        if d["name"] in GEO_SKIP or name in records:
            continue
        records[name] = d
    by_code: dict[str, str] = {}
    for name, d in records.items():
        for k in ("alpha3", "alpha2"):
            code = (d.get("ISO") or {}).get(k)
            if code:
                by_code.setdefault(code, name)
    # Alternative names; bare ISO codes are left out (they are facts of their own).
    aliases = {name: sorted({a for a in d.get("altSpellings", [])
                             if a and a != name and not re.fullmatch(r"[A-Z]{2,3}", a)})
               for name, d in records.items()}

    facts: list[Fact] = []
    for name in sorted(records):
        d = records[name]
        s, S = _country_forms(name)
        ctx = {"s": s, "S": S, "sp": _possessive(s), "Sp": _possessive(S),
               "source": f"countryinfo {version}", "head_aliases": aliases[name]}

        def add(rel: str, obj: str, fld: str, tail: str = "", tail_aliases=None) -> None:
            facts.append(_fact(name, GEO[rel], obj, fld, ctx, tail, tail_aliases))

        if (cap := _text(d.get("capital"))):
            add("capital", cap, "capital")
        if (reg := _text(d.get("region"))):
            add("region", "the Americas" if reg == "Americas" else reg, "region", reg)
        if (sub := _text(d.get("subregion"))):
            add("subregion", sub, "subregion")
        if (mid := _text(d.get("intermediateregion"))):
            add("intermediate_region", "the Caribbean" if mid == "Caribbean" else mid,
                "intermediateregion", mid)
        dem = _text(d.get("demonym"))
        if dem and "," not in dem:
            add("demonym", dem, "demonym")
        codes = [c.strip() for c in d.get("callingCodes") or [] if c and c.strip()]
        if len(codes) == 1:
            add("calling_code", "+" + codes[0], "callingCodes")
        elif codes:
            add("calling_codes", _join(["+" + c for c in codes]), "callingCodes")
        tlds = [t for t in d.get("tld") or [] if t]
        if len(tlds) == 1:
            add("tld", tlds[0], "tld")
        iso = d.get("ISO") or {}
        if iso.get("alpha2"):
            add("iso_alpha2", iso["alpha2"], "ISO")
        cur = [c for c in d.get("currencies") or [] if c]
        if len(cur) == 1:
            add("currency_code", cur[0], "currencies")
        elif cur:
            add("currency_codes", _join(cur), "currencies")
        neighbours = sorted({by_code[b] for b in d.get("borders") or [] if b in by_code} - {name})
        for nb in neighbours:
            rel = "only_land_neighbour" if len(neighbours) == 1 else "borders"
            add(rel, _country_forms(nb)[0], "borders", nb, aliases[nb])
        english = {name.lower(), s.lower()}
        for lang, rel in TRANSLATIONS.items():
            tr = _text((d.get("translations") or {}).get(lang))
            if tr and tr.lower() not in english:
                add(rel, tr, "translations")
        zones = [z.replace("\u2212", "-") for z in d.get("timezones") or [] if z]
        if len(zones) == 1:
            add("timezone", zones[0], "timezones")
        elif zones:
            add("timezones", _join(zones), "timezones")
        if d.get("population"):
            add("population", f"{int(d['population']):,}", "population")
    return facts


# ------------------------------------------------------------------------ chemistry

CHEM = {r.name: r for r in [
    Relation("symbol", "The chemical symbol of {s} is {o}.", (
        "The chemical symbol of {s} is", "{Sp} chemical symbol is",
        "The element {s} is represented by the symbol")),
    Relation("atomic_number", "{S} has the atomic number {o}.", (
        "The atomic number of {s} is", "{S} has the atomic number", "{Sp} atomic number is")),
    Relation("element_with_symbol", "The element with the chemical symbol {sym} is {o}.", (
        "The element with the chemical symbol {sym} is",
        "The chemical element whose symbol is {sym} is called")),
    Relation("element_with_number", "The element with atomic number {Z} is {o}.", (
        "The element with atomic number {Z} is",
        "The chemical element whose atomic number is {Z} is called")),
    Relation("period", "{S} is in period {o} of the periodic table.", (
        "{S} is in period", "In the periodic table, {s} sits in period", "{S} belongs to period")),
    Relation("group", "{S} is in group {o} of the periodic table.", (
        "{S} is in group", "In the periodic table, {s} sits in group", "{S} belongs to group")),
    Relation("block", "{S} is in the {o} of the periodic table.", (
        "The periodic table block of {s} is the", "{S} belongs to the periodic table's",
        "{S} is an element of the periodic table's")),
    Relation("series", "{S} belongs to the {o}.", (
        "The chemical series of {s} is the", "{S} is classified among the",
        "In the periodic table, {s} is grouped with the")),
    Relation("discoverer", "{S} was discovered by {o}.", (
        "{S} was discovered by", "The discoverer of {s} was",
        "The element {s} was first identified by")),
    Relation("discoverers", "{S} was discovered by {o}."),
    Relation("known_since_antiquity", "{S} has been known since ancient times."),
    Relation("discovery_year", "{S} was discovered in {o}.", (
        "{S} was discovered in the year", "The year in which {s} was discovered is",
        "{S} was first identified in the year")),
    Relation("discovery_location", "{S} was discovered in {o}.", (
        "The country where {s} was discovered is", "{S} was discovered in the country of")),
    Relation("goldschmidt_class", "The Goldschmidt class of {s} is {o}.", (
        "The Goldschmidt class of {s} is", "In the Goldschmidt classification, {s} is classed as",
        "Geochemists classify {s} in the Goldschmidt class")),
    Relation("crystal_structure", "The crystal structure of {s} is {o}.", (
        "The crystal structure of {s} is", "{S} crystallizes in a lattice that is",
        "The lattice structure of {s} is")),
    Relation("top_producer", "The largest producer of {s} is {o}.", (
        "The largest producer of {s} is", "The world's largest producer of {s} is",
        "The country that produces the most {s} is")),
    Relation("second_producer", "The second-largest producer of {s} is {o}."),
    Relation("third_producer", "The third-largest producer of {s} is {o}."),
    Relation("cas_number", "The CAS registry number of {s} is {o}.", (
        "The CAS registry number of {s} is", "{Sp} CAS number is",
        "In the CAS registry, {s} has the number")),
    Relation("atomic_weight", "The standard atomic weight of {s} is {o}."),
    Relation("melting_point", "{S} melts at {o} kelvin."),
    Relation("boiling_point", "{S} boils at {o} kelvin."),
    Relation("density", "The density of {s} is {o} grams per cubic centimetre."),
    Relation("electron_configuration", "The electron configuration of {s} is {o}."),
    Relation("radioactive", "{S} is radioactive."),
]}

LATTICE = {"HEX": "hexagonal", "BCC": "body-centered cubic", "FCC": "face-centered cubic",
           "TET": "tetragonal", "DIA": "diamond cubic", "CUB": "cubic", "SC": "simple cubic",
           "MCL": "monoclinic", "ORC": "orthorhombic", "RHL": "rhombohedral"}
#: Spelling fixes and articles for mendeleev's free-text country names.
PLACE = {"USA": "the USA", "DRC": "the DRC", "Republic of Korea": "the Republic of Korea",
         "United States": "the United States", "USSR": "the USSR", "Kyrgzstan": "Kyrgyzstan"}
GOLDSCHMIDT = {"litophile": "lithophile"}  # the database's spelling of lithophile


def mendeleev_db() -> Path:
    spec = importlib.util.find_spec("mendeleev")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mendeleev is not installed: pip install '.[demo-data]'")
    return Path(list(spec.submodule_search_locations)[0]) / "elements.db"


def _num(x: float, significant: int) -> str:
    return f"{x:.{significant}g}"


def chemistry_facts() -> list[Fact]:
    version = importlib.metadata.version("mendeleev")
    con = sqlite3.connect(f"file:{mendeleev_db()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        series = {r["id"]: r["name"] for r in con.execute("SELECT id, name FROM series")}
        phase = {r["atomic_number"]: r for r in con.execute(
            "SELECT atomic_number, melting_point, boiling_point FROM phasetransitions "
            "WHERE allotrope IS NULL OR allotrope = '' ORDER BY id")}
        rows = list(con.execute("SELECT * FROM elements ORDER BY atomic_number"))
    finally:
        con.close()

    facts: list[Fact] = []
    for r in rows:
        name = r["name"]
        s = name.lower()
        ctx = {"s": s, "S": name, "sp": _possessive(s), "Sp": _possessive(name),
               "sym": r["symbol"], "Z": str(r["atomic_number"]), "source": f"mendeleev {version}",
               "head_aliases": [r["symbol"]]}

        def add(rel: str, obj: str, fld: str, tail: str = "", tail_aliases=None) -> None:
            facts.append(_fact(name, CHEM[rel], obj, fld, ctx, tail, tail_aliases))

        add("symbol", r["symbol"], "symbol")
        add("atomic_number", str(r["atomic_number"]), "atomic_number")
        add("element_with_symbol", s, "symbol", name, [r["symbol"]])
        add("element_with_number", s, "atomic_number", name, [r["symbol"]])
        if r["period"]:
            add("period", str(r["period"]), "period")
        if r["group_id"]:
            add("group", str(r["group_id"]), "group_id")
        if r["block"]:
            add("block", f"{r['block']}-block", "block")
        if r["series_id"] in series:
            add("series", series[r["series_id"]].lower(), "series")
        disc = (r["discoverers"] or "").strip().rstrip(".")
        if disc.lower() == "known to the ancients":
            add("known_since_antiquity", "", "discoverers", "antiquity")
        elif disc:
            if re.search(r"Institute|Centre|Laboratory|Research", disc):
                disc = "the " + disc  # an institution, not a person
            multi = bool(re.search(r"[,;/]| and |et al|^the ", disc))
            add("discoverers" if multi else "discoverer", disc, "discoverers")
        if r["discovery_year"]:
            add("discovery_year", str(r["discovery_year"]), "discovery_year")
        loc = (r["discovery_location"] or "").strip()
        if loc:
            places = [PLACE.get(p.strip(), p.strip()) for p in loc.split("/")]
            add("discovery_location", _join(places), "discovery_location")
        gc = (r["goldschmidt_class"] or "").strip()
        if gc and gc != "synthetic":
            add("goldschmidt_class", GOLDSCHMIDT.get(gc, gc), "goldschmidt_class")
        if r["lattice_structure"] in LATTICE:
            add("crystal_structure", LATTICE[r["lattice_structure"]], "lattice_structure")
        prod = r["top_3_producers"] or ""
        for rank, place in re.findall(r"(\d)\)\s*([^)]+?)\s*(?=\d\)|$)", prod):
            if "(" in place or not place:
                continue
            rel = {"1": "top_producer", "2": "second_producer", "3": "third_producer"}[rank]
            add(rel, PLACE.get(place, place), "top_3_producers", PLACE.get(place, place).removeprefix("the "))
        if r["cas"]:
            add("cas_number", r["cas"], "cas")
        if r["atomic_weight"]:
            add("atomic_weight", _num(r["atomic_weight"], 7), "atomic_weight")
        ph = phase.get(r["atomic_number"])
        if ph is not None and ph["melting_point"]:
            add("melting_point", _num(ph["melting_point"], 6), "phasetransitions.melting_point")
        if ph is not None and ph["boiling_point"]:
            add("boiling_point", _num(ph["boiling_point"], 6), "phasetransitions.boiling_point")
        if r["density"]:
            add("density", _num(r["density"], 4), "density")
        if r["electronic_configuration"]:
            add("electron_configuration", r["electronic_configuration"], "electronic_configuration")
        if r["is_radioactive"]:
            add("radioactive", "", "is_radioactive", "radioactive")
    return facts


# ------------------------------------------------------------------------- assembly


@dataclass
class DomainOutput:
    files: dict[str, list[dict]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _dedupe(facts: list[Fact]) -> list[Fact]:
    seen: set[tuple[str, str]] = set()
    out = []
    for f in facts:
        key = (f.subject, f.text())
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _probe(f: Fact, domain: str) -> dict:
    prompts = [p.format(**f.ctx) for p in f.relation.prompts]
    return {"prompt": prompts[0], "answer": answer_of(f.obj), "paraphrases": prompts[1:],
            "relation": f.relation.name, "subject": f.subject, "domain": domain}


def _alternatives(f: Fact, pool: dict[str, list[str]]) -> list[str]:
    """Objects of the same relation whose answers cannot be confused with this fact's."""
    mine = answer_of(f.obj)
    return [o for o in pool[f.relation.name] if o != f.obj and not _clash(answer_of(o), mine)]


def build_domain(domain: str, facts: list[Fact]) -> DomainOutput:
    facts = _dedupe(facts)
    out = DomainOutput()
    by_subject: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        by_subject[f.subject].append(f.text())

    out.files["facts.jsonl"] = [
        {"text": f.text(), "title": f.subject,
         "source": f"{f.ctx['source']}: {f.subject} / {f.field}",
         "tags": [f.relation.name, domain]} for f in facts]
    out.files["triples.jsonl"] = [
        {"head": f.subject, "relation": f.relation.name, "tail": f.tail,
         "head_aliases": list(f.ctx["head_aliases"]), "tail_aliases": f.tail_aliases}
        for f in facts]

    # Probe candidates: single-valued relations; a prompt must determine one answer.
    cands = [f for f in facts if f.relation.probe and answer_of(f.obj)]
    answers_by_prompt: dict[str, set[str]] = defaultdict(set)
    for f in cands:
        for p in f.relation.prompts:
            answers_by_prompt[p.format(**f.ctx).lower()].add(answer_of(f.obj).lower())
    cands = [f for f in cands
             if all(len(answers_by_prompt[p.format(**f.ctx).lower()]) == 1 for p in f.relation.prompts)]
    pool: dict[str, list[str]] = defaultdict(list)
    for f in cands:
        if f.obj not in pool[f.relation.name]:
            pool[f.relation.name].append(f.obj)

    entities = sorted({f.subject for f in facts})
    rng = random.Random(f"{SEED}:{domain}:entities")
    shuffled = entities[:]
    rng.shuffle(shuffled)
    held_entities = set(shuffled[: round(len(entities) * HELDOUT_ENTITY_FRACTION)])
    held_relations = set(HELDOUT_RELATIONS[domain])

    train, heldout = [], []
    for f in cands:
        p = _probe(f, domain)
        he, hr = f.subject in held_entities, f.relation.name in held_relations
        if not he and not hr:
            train.append(p)
        else:
            p["split"] = "heldout_both" if he and hr else (
                "heldout_entity" if he else "heldout_relation")
            heldout.append(p)
    out.files["probes_train.jsonl"] = train
    out.files["probes_heldout.jsonl"] = heldout

    # Counterfactual edits on held-out entities: spread over relations, then subjects.
    rng = random.Random(f"{SEED}:{domain}:edits")
    edit_cands = [f for f in cands if f.subject in held_entities and _alternatives(f, pool)]
    by_rel: dict[str, list[Fact]] = defaultdict(list)
    for f in edit_cands:
        by_rel[f.relation.name].append(f)
    for lst in by_rel.values():
        rng.shuffle(lst)
    chosen: list[Fact] = []
    while len(chosen) < EDITS_PER_DOMAIN and any(by_rel.values()):
        for rel in sorted(by_rel):
            if by_rel[rel] and len(chosen) < EDITS_PER_DOMAIN:
                chosen.append(by_rel[rel].pop())
    edits = []
    for f in chosen:
        new = rng.choice(_alternatives(f, pool))
        prompts = [p.format(**f.ctx) for p in f.relation.prompts]
        edits.append({"old_text": f.text(), "new_text": f.text(new), "prompt": prompts[0],
                      "new": answer_of(new), "old": answer_of(f.obj),
                      "paraphrase": prompts[1 + rng.randrange(len(prompts) - 1)],
                      "relation": f.relation.name, "subject": f.subject})
    out.files["edits.jsonl"] = edits

    # Counterfactual training facts: train entities and relations only.
    rng = random.Random(f"{SEED}:{domain}:counterfactual")
    cf = []
    for f in cands:
        if f.subject in held_entities or f.relation.name in held_relations:
            continue
        alts = _alternatives(f, pool)
        if not alts:
            continue
        for new in rng.sample(alts, min(COUNTERFACTUALS_PER_PROBE, len(alts))):
            prompt = rng.choice(f.relation.prompts).format(**f.ctx)
            cf.append({"text": f.text(new), "prompt": prompt, "answer": answer_of(new),
                       "relation": f.relation.name, "subject": f.subject})
    out.files["counterfactual_train.jsonl"] = cf

    out.counts = {
        "entities": len(entities), "heldout_entities": len(held_entities),
        "facts": len(facts), "relations": len({f.relation.name for f in facts}),
        "probe_relations": sorted({f.relation.name for f in cands}),
        "heldout_relations": sorted(held_relations),
        "probes_train": len(train), "probes_heldout": len(heldout),
        "edits": len(edits), "counterfactual_train": len(cf)}
    _check(domain, out, by_subject)
    return out


def _check(domain: str, out: DomainOutput, by_subject: dict[str, list[str]]) -> None:
    """Refuse to write a probe that no fact backs (guards template/answer drift)."""
    for name in ("probes_train.jsonl", "probes_heldout.jsonl"):
        for p in out.files[name]:
            texts = " ".join(by_subject[p["subject"]]).lower()
            if not p["answer"] or p["answer"].lower() not in texts:
                raise AssertionError(f"{domain}/{name}: no fact backs {p}")


# --------------------------------------------------------------------------- output


def _dump(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode("utf-8")


def _readme(manifest: dict) -> str:
    g, c = manifest["domains"]["geography"], manifest["domains"]["chemistry"]
    pk = manifest["packages"]

    def row(name: str) -> str:
        return f"| {name} | {g[name]} | {c[name]} |"

    return f"""# Demo data

Generated by `resources/make_demo_data.py` -- do not edit by hand (the test
`tests/engine/test_demo_data.py` compares every file with `manifest.json`).

Regenerate (needs the optional extra `demo-data`):

    .venv/bin/pip install "countryinfo=={pk['countryinfo']}" "mendeleev=={pk['mendeleev']}" torch==2.13.0
    .venv/bin/python resources/make_demo_data.py

Output is deterministic (sorted iteration, seed {manifest['seed']}): the same package
versions give byte-identical files.

## Sources and licences

* `geography/` -- from **countryinfo {pk['countryinfo']}** (MIT licence), its bundled
  per-country JSON files. Its README says: "Data is sourced primarily from Wikipedia".
  Region/subregion are the UN M49 geoscheme names as the package records them.
* `chemistry/` -- from **mendeleev {pk['mendeleev']}** (MIT licence), read from its bundled
  SQLite database `elements.db`, whose `propertymetadata` table names a source per
  property: e.g. melting/boiling points `haynes2016crc` (CRC Handbook), density
  `haynes2014crc`, atomic weights `Meija2016,iupac-weights`, Goldschmidt class
  `white2013geochemistry`, top producers `RSC_periodic_table` (Royal Society of
  Chemistry); discoverers and locations carry no citation there.

The sentences are true to the package data, which has known errors and oddities
(e.g. spelling "Ramsey" for Ramsay, "poor metals" for post-transition metals, a few
debatable land borders). Only these were normalised: `litophile` -> `lithophile`,
Unicode minus in time zones -> `-`, a few country names (`Virgin Islands, British` ->
`British Virgin Islands`, ...), and duplicate or defunct entries were dropped
(`Holy See (Vatican City State)`, `Palestine, State of`, `Antilles néerlandaises`,
`Serbia and Montenegro`). Lattice codes (`FCC`, ...) are spelled out.

## Files (per domain folder)

| file | geography | chemistry |
|---|---|---|
{row('entities')}
{row('facts')}
{row('probes_train')}
{row('probes_heldout')}
{row('edits')}
{row('counterfactual_train')}

* `facts.jsonl` -- one sentence per line: `text`, `title` (the entity), `source`
  (`<package> <version>: <entity> / <field>`), `tags` (`[relation, domain]`).
* `triples.jsonl` -- the same facts as `head`, `relation`, `tail`, `head_aliases`, `tail_aliases`.
* `probes_train.jsonl`, `probes_heldout.jsonl` -- `prompt` (a sentence prefix),
  `answer` (the expected start of the greedy continuation: compare case-insensitively as
  a prefix after stripping leading whitespace), `paraphrases` (other prompts for the
  same fact), `relation`, `subject`, `domain`; held-out probes also have `split`:
  `heldout_entity`, `heldout_relation` or `heldout_both`.
* `edits.jsonl` -- counterfactual edits on held-out entities: `old_text` (a sentence of
  `facts.jsonl`, verbatim), `new_text` (the same sentence with another object of the same
  relation), `prompt`, `old`, `new`, `paraphrase`, `relation`, `subject`.
* `counterfactual_train.jsonl` -- training facts whose object is replaced by another
  object of the same relation (`text`, `prompt`, `answer`, `relation`, `subject`), from train
  entities and train relations only, for teaching a reader to follow its memory.

## Split

A fixed {int(HELDOUT_ENTITY_FRACTION * 100)}% of the entities (seeded shuffle) are held out: they never appear in
train probes or counterfactual training facts. Held-out relations appear only in
`probes_heldout.jsonl`: geography {', '.join(g['heldout_relations'])}; chemistry
{', '.join(c['heldout_relations'])}. Probe relations: geography
{', '.join(g['probe_relations'])}; chemistry {', '.join(c['probe_relations'])}.
Relations with several objects (borders, several currencies, ...) and long numeric
objects (population, melting point, ...) are facts only. A prompt that would allow two
answers is not used.
"""


def build_all(out_dir: Path) -> dict:
    """Write every demo file under ``out_dir`` and return the manifest."""
    out_dir = Path(out_dir)
    domains = {"geography": build_domain("geography", geography_facts()),
               "chemistry": build_domain("chemistry", chemistry_facts())}
    blobs: dict[str, bytes] = {}
    for domain, out in domains.items():
        for name, rows in out.files.items():
            blobs[f"{domain}/{name}"] = _dump(rows)
    manifest = {
        "generator": "resources/make_demo_data.py",
        "seed": SEED,
        "packages": {p: importlib.metadata.version(p) for p in ("countryinfo", "mendeleev")},
        "domains": {d: o.counts for d, o in domains.items()},
        "files": {},
    }
    blobs["README.md"] = _readme(manifest).encode("utf-8")
    for rel, data in sorted(blobs.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(),
                                  "lines": data.count(b"\n")}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    log.info("wrote %d files to %s", len(blobs) + 1, out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_all(args.out)
    for d, c in manifest["domains"].items():
        log.info("%s: %s", d, {k: v for k, v in c.items() if isinstance(v, int)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
