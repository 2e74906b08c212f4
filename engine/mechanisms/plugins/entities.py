"""The domain's entities and triples: import (validated) and mention linking.

**Import** (:func:`import_triples`) reads JSONL or CSV files of triples ``head,
relation, tail`` with optional ``head_aliases``/``tail_aliases`` (a JSON list, or a
``|``-separated string), ``tail_is_entity`` and ``source``; a record with ``name``
(and no ``head``) declares an entity (``name, aliases, description``). Heads are
entities; a tail becomes an entity when it is declared one (``tail_is_entity``,
aliases, or it is the name or an alias of a known entity), else it stays a literal
(``tail_id`` NULL). Everything is checked before anything is written, and the whole
import is one transaction: a bad file changes nothing. Re-importing the same triples
adds nothing (exact duplicates are skipped).

**Linking** (:class:`EntityLinker`) finds entity mentions in text by exact alias match,
longest match first, at word boundaries. All aliases are compiled into ONE regular
expression shaped like a trie (``Al(?:bania|geria)``), so a text is scanned once in
C whatever the number of aliases, instead of testing aliases one by one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from engine.jsonl import JsonlError, json_lines, read_text
from engine.mechanisms.plugins.errors import TriplesError

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 300
MAX_RELATION_CHARS = 200
MAX_TAIL_CHARS = 2000
MIN_ALIAS_CHARS = 2  # shorter aliases would link inside ordinary words' neighbourhoods everywhere

_TRIPLE_KEYS = {"head", "relation", "tail", "head_aliases", "tail_aliases", "tail_is_entity", "source",
                "head_description"}
_ENTITY_KEYS = {"name", "aliases", "description", "source"}
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n", ""}


# --------------------------------------------------------------------------- records
@dataclass
class EntityRecord:
    name: str
    aliases: list[str]
    description: str
    where: str  # "file:line"


@dataclass
class TripleRecord:
    head: str
    relation: str
    tail: str
    head_aliases: list[str]
    tail_aliases: list[str]
    tail_is_entity: bool | None
    source: str
    where: str
    head_description: str = ""


@dataclass
class TriplesImportResult:
    files: list[str]
    entities_added: int = 0
    entities_updated: int = 0  # existing entities that gained aliases
    triples_added: int = 0
    duplicates_skipped: int = 0
    entity_tails: int = 0  # added triples whose tail is an entity
    literal_tails: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any, what: str, where: str, limit: int, *, required: bool = True) -> str:
    if value is None:
        if required:
            raise TriplesError(f"{where}: missing {what}")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise TriplesError(f"{where}: {what} must be a string, got {type(value).__name__}")
    s = str(value).strip()
    if required and not s:
        raise TriplesError(f"{where}: {what} is empty")
    if len(s) > limit:
        raise TriplesError(f"{where}: {what} is {len(s)} characters long (at most {limit})")
    if "\n" in s or "\r" in s:
        raise TriplesError(f"{where}: {what} contains a line break")
    return s


def _aliases(value: Any, what: str, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        items: list[Any] = value.split("|")
    elif isinstance(value, list):
        items = value
    else:
        raise TriplesError(f"{where}: {what} must be a list of strings or a '|'-separated string")
    out: list[str] = []
    for i, a in enumerate(items):
        if not isinstance(a, str):
            raise TriplesError(f"{where}: {what}[{i}] must be a string, got {type(a).__name__}")
        s = _text(a, f"{what}[{i}]", where, MAX_NAME_CHARS, required=False)
        if s and s not in out:
            out.append(s)
    return out


def _flag(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        v = value.strip().lower()
        return None if v == "" else v in _TRUE
    raise TriplesError(f"{where}: tail_is_entity must be true or false, got {value!r}")


def _record(obj: dict[str, Any], where: str, out_e: list[EntityRecord], out_t: list[TripleRecord],
            origin: str = "") -> None:
    """Validate one record into ``out_e`` / ``out_t``. ``where`` (file path:line) names it in
    errors; ``origin`` (file name:line, as entries name theirs) is a triple's source when the
    record gives none."""
    if "head" not in obj and "name" in obj:
        unknown = set(obj) - _ENTITY_KEYS
        if unknown:
            raise TriplesError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} in an entity record "
                               f"(known: {', '.join(sorted(_ENTITY_KEYS))})")
        name = _text(obj.get("name"), "name", where, MAX_NAME_CHARS)
        out_e.append(EntityRecord(name, _aliases(obj.get("aliases"), "aliases", where),
                                  _text(obj.get("description"), "description", where, MAX_TAIL_CHARS, required=False),
                                  where))
        return
    unknown = set(obj) - _TRIPLE_KEYS
    if unknown:
        raise TriplesError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} "
                           f"(a triple has {', '.join(sorted(_TRIPLE_KEYS))}; an entity has name, aliases, description)")
    out_t.append(TripleRecord(
        head=_text(obj.get("head"), "head", where, MAX_NAME_CHARS),
        relation=_text(obj.get("relation"), "relation", where, MAX_RELATION_CHARS),
        tail=_text(obj.get("tail"), "tail", where, MAX_TAIL_CHARS),
        head_aliases=_aliases(obj.get("head_aliases"), "head_aliases", where),
        tail_aliases=_aliases(obj.get("tail_aliases"), "tail_aliases", where),
        tail_is_entity=_flag(obj.get("tail_is_entity"), where),
        source=_text(obj.get("source"), "source", where, MAX_TAIL_CHARS, required=False) or origin,
        where=where,
        head_description=_text(obj.get("head_description"), "head_description", where, MAX_TAIL_CHARS, required=False),
    ))


def read_triples(paths: Sequence[str | Path]) -> tuple[list[EntityRecord], list[TripleRecord]]:
    """Parse every file (``.jsonl``/``.json`` lines or ``.csv``); any bad record fails the whole read."""
    if not paths:
        raise TriplesError("no triples file given")
    entities: list[EntityRecord] = []
    triples: list[TripleRecord] = []
    for raw in paths:
        p = Path(raw)
        suffix = p.suffix.lower()
        try:
            text = read_text(p)
            if suffix in (".jsonl", ".json", ".ndjson"):
                for n, obj in json_lines(p, text, expect="a JSON object with head, relation, tail"):
                    _record(obj, f"{p}:{n}", entities, triples, f"{p.name}:{n}")
                continue
        except JsonlError as exc:
            raise TriplesError(str(exc)) from None
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            header = reader.fieldnames or []
            if not ({"head", "relation", "tail"} <= set(header) or "name" in header):
                raise TriplesError(f"{p}:1: the header must name the columns head, relation, tail "
                                   f"(or name, aliases, description for entities); found {', '.join(header) or 'nothing'}")
            try:
                for n, row in enumerate(reader, 2):
                    if None in row:
                        raise TriplesError(f"{p}:{n}: more fields than header columns")
                    obj = {k: v for k, v in row.items() if v is not None and v != ""}
                    if obj:
                        _record(obj, f"{p}:{n}", entities, triples, f"{p.name}:{n}")
            except csv.Error as exc:
                raise TriplesError(f"{p}:{reader.line_num}: broken CSV ({exc})") from None
        else:
            raise TriplesError(f"{p}: unsupported triples format {suffix or '(no suffix)'}; use .jsonl or .csv")
    if not triples and not entities:
        raise TriplesError(f"{', '.join(map(str, paths))}: no triples or entities found")
    return entities, triples


# --------------------------------------------------------------------------- import
@dataclass
class _Ent:
    name: str
    aliases: list[str]
    description: str
    where: str
    id: int | None = None  # pack id when it exists already
    new_aliases: bool = False
    alias_where: dict[str, str] = field(default_factory=dict)


def import_triples(pack, paths: Sequence[str | Path], *, create_entities: bool = True) -> TriplesImportResult:
    """Import triples (and entity declarations) into ``pack`` in one transaction.

    ``create_entities=False`` refuses triples that name an entity the pack does not
    have yet (heads, and tails declared as entities). Raises :class:`TriplesError`
    naming the file and line of the first problem; the pack is then unchanged. A pack that
    refuses writes (read-only, or another process's edit evaluation) raises its
    :class:`~engine.store.PackError`, as an entry edit would.
    """
    ent_recs, trip_recs = read_triples(paths)
    result = TriplesImportResult(files=[str(p) for p in paths])

    ents: dict[str, _Ent] = {}
    for e in pack.entities():
        ents[e["name"]] = _Ent(e["name"], list(e["aliases"]), e["description"], "the pack", id=int(e["id"]),
                               alias_where={a: "the pack" for a in e["aliases"]})
    existing = set(ents)

    def declare(name: str, aliases: list[str], where: str, description: str = "") -> None:
        if name not in ents:
            if not create_entities:
                raise TriplesError(f"{where}: unknown entity {name!r}: the pack has no entity of that name "
                                   "(import it first, or allow new entities)")
            ents[name] = _Ent(name, [], description, where)
        e = ents[name]
        if description and not e.description:
            e.description = description
            e.new_aliases = e.new_aliases or e.id is not None
        for a in aliases:
            if a != name and a not in e.aliases:
                e.aliases.append(a)
                e.alias_where[a] = where
                e.new_aliases = e.new_aliases or e.id is not None

    for r in ent_recs:
        declare(r.name, r.aliases, r.where, r.description)
    for t in trip_recs:
        declare(t.head, t.head_aliases, t.where, t.head_description)
    for t in trip_recs:
        if t.tail_is_entity or t.tail_aliases:
            declare(t.tail, t.tail_aliases, t.where)

    # Every surface form (name or alias) must point at one entity.
    owner: dict[str, tuple[str, str]] = {}
    for e in ents.values():
        for form, where in [(e.name, e.where)] + [(a, e.alias_where.get(a, e.where)) for a in e.aliases]:
            prev = owner.get(form)
            if prev is not None and prev[0] != e.name:
                kind = "name" if form == e.name or form == prev[0] else "alias"
                raise TriplesError(
                    f"{where}: duplicate {kind} {form!r}: it names both {prev[0]!r} ({prev[1]}) and {e.name!r}; "
                    "an alias must identify one entity")
            owner[form] = (e.name, where)

    def resolve_tail(t: TripleRecord) -> str | None:
        if t.tail_is_entity is False:
            return None
        hit = owner.get(t.tail)
        return hit[0] if hit else None

    # the pack's write path: refused on a read-only pack or during another process's edit
    # evaluation with the message an entry edit gets; nothing is written then
    with pack.entity_writes() as con:
        existing_triples = {(int(h), r, tl) for h, r, tl in con.execute("SELECT head, relation, tail FROM triples")}
        for e in ents.values():
            if e.id is None:
                cur = con.execute("INSERT INTO entities(name, aliases, description) VALUES (?,?,?)",
                                  (e.name, json.dumps(e.aliases, ensure_ascii=False), e.description))
                e.id = int(cur.lastrowid)
                result.entities_added += 1
            elif e.new_aliases:
                con.execute("UPDATE entities SET aliases=?, description=? WHERE id=?",
                            (json.dumps(e.aliases, ensure_ascii=False), e.description, e.id))
                result.entities_updated += 1
        rows = []
        for t in trip_recs:
            head_id = ents[t.head].id
            tail_name = resolve_tail(t)
            tail_id = ents[tail_name].id if tail_name else None
            key = (head_id, t.relation, t.tail)
            if key in existing_triples:
                result.duplicates_skipped += 1
                continue
            existing_triples.add(key)
            rows.append((head_id, t.relation, t.tail, tail_id, t.source or t.where))
            if tail_id is None:
                result.literal_tails += 1
            else:
                result.entity_tails += 1
        con.executemany("INSERT INTO triples(head, relation, tail, tail_id, source) VALUES (?,?,?,?,?)", rows)
        result.triples_added = len(rows)
        if result.entities_added or result.entities_updated:  # what a loaded plugin links with changed
            con.execute("INSERT INTO meta(key, value) VALUES ('entities_version', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
    log.info("imported %d triples, %d new entities (%d existed)", result.triples_added, result.entities_added,
             len(existing))
    return result


# --------------------------------------------------------------------------- browsing
def entity_rows(pack, query: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Entities with their number of triples (as head and as tail); ``query`` filters names (substring)."""
    sql = ("SELECT e.id, e.name, e.aliases, e.description, "
           "(SELECT count(*) FROM triples t WHERE t.head = e.id), "
           "(SELECT count(*) FROM triples t WHERE t.tail_id = e.id) FROM entities e")
    args: list[Any] = []
    if query:
        sql += " WHERE e.name LIKE ? ESCAPE '\\'"
        args.append("%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    sql += " ORDER BY e.name"
    if limit:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [{"id": r[0], "name": r[1], "aliases": pack.read_aliases(r[0], r[2]), "description": r[3], "triples": r[4],
             "as_tail": r[5]} for r in pack.conn.execute(sql, args)]


def find_entity(pack, name_or_id: str | int) -> dict[str, Any]:
    """One entity by id, name or alias (raises :class:`TriplesError` when there is none)."""
    ents = pack.entities()
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        for e in ents:
            if e["id"] == int(name_or_id):
                return e
    for e in ents:
        if e["name"] == name_or_id:
            return e
    for e in ents:
        if name_or_id in e["aliases"]:
            return e
    raise TriplesError(f"{pack.path}: no entity named {name_or_id!r}")


def entity_facts(pack, name_or_id: str | int) -> dict[str, Any]:
    """An entity with its triples as head (``triples``) and as tail (``mentioned_by``)."""
    e = find_entity(pack, name_or_id)
    names = {x["id"]: x["name"] for x in pack.entities()}
    out = dict(e)
    out["triples"] = pack.triples(head=e["id"])
    out["mentioned_by"] = [
        {"id": r[0], "head": r[1], "head_name": names.get(r[1], "?"), "relation": r[2], "tail": r[3], "source": r[4]}
        for r in pack.conn.execute("SELECT id, head, relation, tail, source FROM triples WHERE tail_id=? ORDER BY id",
                                   (e["id"],))
    ]
    return out


# --------------------------------------------------------------------------- linking
@dataclass(frozen=True)
class Mention:
    """A linked mention: characters ``[start, end)`` of the text name ``entity_id``."""

    start: int
    end: int
    text: str
    entity_id: int


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching any of ``words``, shaped like their trie; longer matches are tried first."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True

    def build(node: dict) -> str:
        end = "" in node
        branches = []
        for ch in sorted(k for k in node if k):
            child, chain = node[ch], ch
            while len(child) == 1 and "" not in child:  # compress single-child chains
                (nxt, child), = child.items()
                chain += nxt
            branches.append(re.escape(chain) + build(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if end:  # this node ends a word: the longer continuations are optional (greedy: tried first)
            return "(?:" + body + ")?" if len(branches) == 1 else body + "?"
        return body

    return build(trie)


class EntityLinker:
    """Exact alias matching: longest match first, at word boundaries, non-overlapping, left to right.

    ``entities``: ``(id, name, aliases)`` triples. Names are aliases too. Aliases
    shorter than ``min_length`` characters are ignored; an alias shared by two
    entities (possible only in packs not filled through :func:`import_triples`) is
    ambiguous and ignored, with a warning.
    """

    def __init__(self, entities: Iterable[tuple[int, str, Sequence[str]]], *, min_length: int = MIN_ALIAS_CHARS) -> None:
        forms: dict[str, int] = {}
        ambiguous: set[str] = set()
        self.names: dict[int, str] = {}
        for eid, name, aliases in entities:
            self.names[int(eid)] = name
            for form in [name, *aliases]:
                form = form.strip()
                if len(form) < min_length:
                    continue
                if form in forms and forms[form] != int(eid):
                    ambiguous.add(form)
                forms.setdefault(form, int(eid))
        for form in ambiguous:
            log.warning("alias %r names several entities; it is not linked", form)
            forms.pop(form)
        self.forms = forms
        self._re = re.compile(r"(?<!\w)(?:" + _trie_pattern(forms) + r")(?!\w)") if forms else None

    @classmethod
    def from_pack(cls, pack, **kw: Any) -> "EntityLinker":
        return cls(((e["id"], e["name"], e["aliases"]) for e in pack.entities()), **kw)

    def __len__(self) -> int:
        return len(self.forms)

    def link(self, text: str) -> list[Mention]:
        if self._re is None or not text:
            return []
        forms = self.forms
        return [Mention(m.start(), m.end(), m.group(0), forms[m.group(0)]) for m in self._re.finditer(text)]

    def link_many(self, texts: Sequence[str]) -> list[list[Mention]]:
        return [self.link(t) for t in texts]
