"""Probes and edits worded unlike the entries, shared by the wording split and the third domain.

A *wording* is a ``str.format`` template over a subject's context (``s``: the subject as
it reads mid-sentence, ``S``: at a sentence start, ``sp``/``Sp``: their possessives).
Held-out wordings come in three kinds, the shapes issue 20 found the branch misses:
``type_first`` ("The country in which X lies is"), ``interrogative`` ("Question: Which
country is X in? Answer:") and ``reordered`` (the subject and the relation's words moved).

Only the standard library is used, so the generators run without the app's dependencies.
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("type_first", "interrogative", "reordered")


def demo_generator():
    """``resources/make_demo_data.py`` as a module (its relations, answer rule and split), standard library only."""
    name = "make_demo_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "resources" / "make_demo_data.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # its dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


_demo = demo_generator()
#: The demo's rules, so every domain's answers are cut alike: the object's first words
#: (at most 3, no dangling article), whether two answers clash as prefixes, possessives.
answer_of, clash, possessive = _demo.answer_of, _demo._clash, _demo._possessive


def fact_pattern(template: str) -> re.Pattern:
    """A regex reading ``s``/``S`` and ``o`` back out of a fact sentence written from ``template``."""
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        name = m.group(1)
        out.append(f"(?P<{name}>.+)" if name == "o" else f"(?P<{name}>.+?)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def parse_facts(facts: list[dict], templates: dict[str, str]) -> tuple[dict[str, dict], list[dict]]:
    """Subject contexts and parsed facts from fact sentences and their relations' templates.

    ``facts``: records with ``text``, ``title`` and ``tags`` (the relation first, as in the
    demo packs). Returns ``({subject: {s, S, sp, Sp}}, [{subject, relation, obj, text}])``;
    a subject's ``s`` comes from any fact written with ``{s}`` and ``S`` from one written
    with ``{S}``, each derived from the other when only one is seen.
    """
    pats = {r: fact_pattern(t) for r, t in templates.items() if "{o}" in t}  # "X is radioactive." has no object
    ctx: dict[str, dict] = defaultdict(dict)
    parsed = []
    for f in facts:
        rel = (f.get("tags") or [""])[0]
        if rel not in pats:
            continue
        m = pats[rel].match(f["text"])
        if not m:
            raise ValueError(f"fact {f['text']!r} does not read as its relation {rel!r}: {templates[rel]!r}")
        g = m.groupdict()
        for key in ("s", "S"):
            if key in g:
                ctx[f["title"]].setdefault(key, g[key])
        parsed.append({"subject": f["title"], "relation": rel, "obj": g["o"], "text": f["text"]})
    for c in ctx.values():
        if "s" not in c:
            c["s"] = c["S"][0].lower() + c["S"][1:] if c["S"].startswith("The ") else c["S"]
        if "S" not in c:
            c["S"] = c["s"][0].upper() + c["s"][1:]
        c["sp"], c["Sp"] = possessive(c["s"]), possessive(c["S"])
    return dict(ctx), parsed


def unambiguous(parsed: list[dict]) -> list[dict]:
    """Facts whose subject has one object for the relation (a prompt with two answers is not a probe)."""
    count = defaultdict(int)
    for p in parsed:
        count[(p["subject"], p["relation"])] += 1
    return [p for p in parsed if count[(p["subject"], p["relation"])] == 1 and answer_of(p["obj"])]


def probe_rows(parsed: list[dict], ctx: dict[str, dict], wordings: dict[str, dict[str, str]],
               entry_prompts: dict[str, str], domain: str, split: str) -> list[dict]:
    """One probe per fact: ``prompt`` in the entry's own wording, ``paraphrases`` the held-out
    wordings (in :data:`KINDS` order, ``kinds`` names each)."""
    rows = []
    for p in parsed:
        w = wordings[p["relation"]]
        c = ctx[p["subject"]]
        kinds = [k for k in KINDS if k in w]
        rows.append({
            "prompt": entry_prompts[p["relation"]].format(**c),
            "answer": answer_of(p["obj"]),
            "paraphrases": [w[k].format(**c) for k in kinds],
            "kinds": kinds,
            "relation": p["relation"], "subject": p["subject"], "domain": domain, "split": split,
        })
    return rows


def edit_rows(parsed: list[dict], ctx: dict[str, dict], wordings: dict[str, dict[str, str]],
              entry_prompts: dict[str, str], n: int, seed: int) -> list[dict]:
    """Up to ``n`` counterfactual edits (another object of the same relation), one per subject.

    ``prompt`` is the entry's wording (efficacy as the demo measures it); ``paraphrase`` is
    one held-out wording, the kinds taken in turn (``paraphrase_kind`` names it).
    """
    rng = random.Random(seed)
    pool = defaultdict(list)
    for p in parsed:
        if p["obj"] not in pool[p["relation"]]:
            pool[p["relation"]].append(p["obj"])
    shuffled = list(parsed)
    rng.shuffle(shuffled)
    by_rel = defaultdict(list)
    for p in shuffled:
        by_rel[p["relation"]].append(p)
    # relations in turn, so every relation gets edits
    cands = [p for group in zip(*(by_rel[r] + [None] * (len(shuffled) - len(by_rel[r])) for r in sorted(by_rel)))
             for p in group if p is not None]
    rows, used = [], set()
    for p in cands:
        if len(rows) >= n:
            break
        if p["subject"] in used:
            continue
        mine = answer_of(p["obj"])
        others = [o for o in pool[p["relation"]] if o != p["obj"] and not clash(answer_of(o), mine)]
        if not others or not p["text"].endswith(p["obj"] + "."):
            continue
        new = rng.choice(others)
        w = wordings[p["relation"]]
        kinds = [k for k in KINDS if k in w]
        kind = kinds[len(rows) % len(kinds)]
        c = ctx[p["subject"]]
        used.add(p["subject"])
        rows.append({
            "old_text": p["text"], "new_text": p["text"][: -len(p["obj"]) - 1] + new + ".",
            "prompt": entry_prompts[p["relation"]].format(**c), "new": answer_of(new), "old": mine,
            "paraphrase": w[kind].format(**c), "paraphrase_kind": kind,
            "relation": p["relation"], "subject": p["subject"],
        })
    return rows
