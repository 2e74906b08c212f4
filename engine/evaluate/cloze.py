"""Cloze probes made from a pack's own entries, so a pack can be evaluated without writing
a probe file: each entry's text with its object cut off is the prompt, the object the answer.

Where the pack has triples (engine.mechanisms.plugins.entities), the object is the tail of one of
the triples whose head is the entry's title, found as a whole word in the text: the
triple whose relation is one of the entry's tags first, then the one found latest in the
text (objects tend to end a sentence), then the longest tail. Otherwise the sentence is
split after its last linking word ("is", "of", "in", "with", ...; a leading article
stays in the prompt; "of"/"and" inside a name like "Republic of Korea" is no cut) when at
most five words follow it, else before its last word; a number in that answer is the answer.

A probe cut at a triple also gets the paraphrase "The <relation> of <subject> is" when the
prompt names the relation in those words (the template would guess otherwise).

Right on the demo packs (answer = the tail of the triple the fact was written from;
bench/bench_cloze_split.py): with their triples, geography 3,411/3,411 (100 %) and
chemistry 2,300/2,313 (99.4 %: "known since ancient times" does not contain its tail
"antiquity"); from the sentence alone, 97.7 % and 83.7 % ("in period 1 of the periodic
table" gives "periodic table").
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

LINK_WORDS = frozenset("is are was were has have had of in at by to from as on with for into than called named".split())
ARTICLES = frozenset(("the", "a", "an"))
NAME_JOINERS = frozenset(("of", "and"))  # between two capitalised words: part of a name
MAX_ANSWER_WORDS = 5
MIN_PROMPT_WORDS = 2
_END = re.compile(r"(?<!\.[A-Za-z])[.!?;:]+\s*$")  # "Washington D.C." keeps its last dot
_NUMBER = re.compile(r"^[+-]?\d[\d,.]*(e[+-]?\d+)?$", re.IGNORECASE)


@dataclass
class Cloze:
    """One probe made from one entry (the probe file's fields plus where it came from)."""

    prompt: str
    answer: str
    subject: str = ""
    relation: str = ""
    entry_id: int = 0
    split_by: str = ""  # "triple" | "sentence"
    paraphrases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        return d


def _strip_end(text: str) -> str:
    return _END.sub("", text.strip())


def split_by_triples(text: str, triples: Iterable[tuple[str, str]], tags: Sequence[str] = ()) -> tuple[str, str, str] | None:
    """(prompt, answer, relation) cutting ``text`` before one triple's tail; None when no
    tail of ``triples`` ((relation, tail) pairs) is in the text after a long enough prompt."""
    body = _strip_end(text)
    tagset = {t.lower() for t in tags}
    best, best_key = None, None
    for relation, tail in triples:
        tail = (tail or "").strip()
        if not tail:
            continue
        found = list(re.finditer(r"(?<!\w)" + re.escape(tail) + r"(?!\w)", body, flags=re.IGNORECASE))
        if not found:
            continue
        m = found[-1]
        prompt = body[: m.start()].rstrip()
        if len(prompt.split()) < MIN_PROMPT_WORDS:
            continue
        key = (relation.lower() in tagset, m.start(), len(tail))
        if best_key is None or key > best_key:
            best, best_key = (prompt, body[m.start(): m.end()], relation), key
    return best


def split_sentence(text: str) -> tuple[str, str] | None:
    """(prompt, answer) from the sentence alone: after the last linking word with at most
    ``MAX_ANSWER_WORDS`` words after it (not one inside a name, like "Republic of Korea";
    an article after it stays in the prompt), else before the last word. When that answer
    holds a number, the number alone is the answer ("13.99" of "13.99 kelvin"). None for
    a text too short to cut."""
    body = _strip_end(text)
    words = list(re.finditer(r"\S+", body))
    if len(words) < MIN_PROMPT_WORDS + 1:
        return None

    def capital(j: int) -> bool:
        return 0 <= j < len(words) and words[j].group()[:1].isupper()

    cut = len(words) - 1  # index of the answer's first word
    for i in range(len(words) - 2, MIN_PROMPT_WORDS - 2, -1):
        if len(words) - 1 - i > MAX_ANSWER_WORDS:
            break
        w = words[i].group().lower().strip(",")
        if w in LINK_WORDS and not (w in NAME_JOINERS and capital(i - 1) and capital(i + 1)):
            cut = i + 1
            break
    if cut < len(words) - 1 and words[cut].group().lower() in ARTICLES:
        cut += 1
    number = next((j for j in range(cut, len(words)) if _NUMBER.search(words[j].group())), None)
    if number is not None:
        cut = number
        start, end = words[number].start(), words[number].end()
        return (body[:start].rstrip(), body[start:end].rstrip(",")) if cut >= MIN_PROMPT_WORDS else None
    if cut < MIN_PROMPT_WORDS:
        return None
    start = words[cut].start()
    return body[:start].rstrip(), body[start:].strip()


def paraphrase(prompt: str, subject: str, relation: str) -> str | None:
    """"The <relation> of <subject> is" when the prompt says the relation in other words
    ("Hydrogen has the atomic number" → "The atomic number of Hydrogen is"); None when the
    relation's words are not in the prompt as they are (then the template would guess) or
    the prompt already has that form."""
    words = relation.replace("_", " ").replace("-", " ").strip().lower()
    if not words or not subject or not re.search(r"(?<!\w)" + re.escape(words) + r"(?!\w)", prompt.lower()):
        return None
    if prompt.lower().startswith(f"the {words} of "):
        return None  # already that form (perhaps with "the" before the subject)
    verb = "are" if words.endswith("s") and not words.endswith("ss") else "is"
    return f"The {words} of {subject} {verb}"


def triples_of(pack, names: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """(relation, tail) of the triples whose head is each name (case-insensitive); {} without triples."""
    out: dict[str, list[tuple[str, str]]] = {}
    names = sorted({n for n in names if n})
    try:
        for i in range(0, len(names), 500):
            chunk = names[i: i + 500]
            q = ("SELECT lower(e.name), t.relation, t.tail FROM triples t JOIN entities e ON e.id = t.head "
                 f"WHERE lower(e.name) IN ({','.join('?' * len(chunk))})")
            for name, relation, tail in pack.conn.execute(q, [n.lower() for n in chunk]):
                out.setdefault(name, []).append((relation, tail))
    except Exception as exc:  # a pack made before triples existed has no such tables
        log.info("no triples in %s: %s", getattr(pack, "path", pack), exc)
        return {}
    return out


def make_cloze(entries: Sequence[Any], triples: dict[str, list[tuple[str, str]]]) -> list[Cloze]:
    """One probe per entry that can be cut (others are skipped)."""
    out = []
    for e in entries:
        subject = (e.title or "").strip()
        got = split_by_triples(e.text, triples.get(subject.lower(), ()), e.tags) if subject else None
        if got is not None:
            prompt, answer, relation = got
            # the relation names the fact for hit@k only when the entry is tagged with it
            rel = relation if relation.lower() in {t.lower() for t in e.tags} else ""
            para = paraphrase(prompt, subject, relation)
            out.append(Cloze(prompt, answer, subject, rel, int(e.id), "triple", (para,) if para else ()))
            continue
        cut = split_sentence(e.text)
        if cut is not None:
            out.append(Cloze(cut[0], cut[1], subject, "", int(e.id), "sentence"))
    return out


def make_probes(pack, *, ids: Sequence[int] | None = None, sample: int | None = None, seed: int = 0) -> list[Cloze]:
    """Cloze probes from ``pack`` (a Pack), in entry order: one per entry of ``ids``, else
    ``sample`` probes from a reproducible random order of the active entries (entries
    that cannot be cut are passed over), else one per active entry that can be cut."""
    if ids is not None:
        order = [int(i) for i in ids]
    else:
        order = [int(i) for i in pack.all_ids_array("active")]
        if sample is not None:
            random.Random(seed).shuffle(order)
    want = sample if ids is None and sample is not None else None
    out: list[Cloze] = []
    for i in range(0, len(order), 500):
        entries = [e for e in pack.get_many(order[i: i + 500]) if e.status == "active"]
        out += make_cloze(entries, triples_of(pack, (e.title for e in entries)))
        if want is not None and len(out) >= want:
            out = out[:want]
            break
    return sorted(out, key=lambda c: c.entry_id)


def default_probe_path(pack_path: str | Path) -> Path:
    """Where probes made from a pack are saved: beside it, ``NAME.probes.jsonl``."""
    p = Path(pack_path)
    return p.with_name(p.stem + ".probes.jsonl")


def write_probes(probes: Sequence[Cloze | dict[str, Any]], out: str | Path) -> Path:
    """Write probes as JSONL (the format ``plugmem eval`` and the Evaluation tab read)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in probes:
            d = p.to_dict() if isinstance(p, Cloze) else dict(p)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out
