"""Entities and triples: validated import into a pack, browsing, exact alias linking."""
from __future__ import annotations

import pytest

from engine.mechanisms.plugins.entities import EntityLinker, entity_facts, entity_rows, import_triples
from engine.mechanisms.plugins.errors import TriplesError
from engine.store import Pack, PackError
from tests.engine.test_plugins_fixtures import triples, write_jsonl


@pytest.fixture
def pack(tmp_path):
    with Pack.create(tmp_path / "p.plugmem") as p:
        yield p


def _counts(pack):
    c = pack.conn
    return c.execute("SELECT count(*) FROM entities").fetchone()[0], c.execute("SELECT count(*) FROM triples").fetchone()[0]


def test_import_creates_entities_links_entity_tails_and_skips_duplicates(pack, tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", triples())
    res = import_triples(pack, [f])
    assert res.entities_added == 10
    assert res.triples_added == len(triples())
    by_name = {e["name"]: e for e in pack.entities()}
    assert by_name["France"]["aliases"] == ["French Republic"]
    france = entity_facts(pack, "French Republic")  # found by alias
    rels = {(t["relation"], t["tail"], t["tail_id"] is not None) for t in france["triples"]}
    assert ("capital", "Paris", False) in rels  # literal tail
    assert ("borders", "Spain", True) in rels  # entity tail
    assert {t["head_name"] for t in france["mentioned_by"]} == {"Spain", "Germany"}
    assert pack.triples()[0]["source"] == "t.jsonl:1"  # the file's name and line, as entries give theirs
    assert pack.entities_version == 1
    again = import_triples(pack, [f])
    assert again.triples_added == 0 and again.duplicates_skipped == len(triples())
    assert _counts(pack) == (10, len(triples()))
    assert pack.entities_version == 1  # nothing a plugin links with changed
    alias = write_jsonl(tmp_path / "a.jsonl", [{"head": "Japan", "relation": "capital", "tail": "Tokyo",
                                                "head_aliases": ["Yamato"]}])
    assert import_triples(pack, [alias]).entities_updated == 1 and pack.entities_version == 2


def test_tail_given_by_alias_resolves_to_the_entity(pack, tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [
        {"head": "China", "relation": "capital", "tail": "Beijing", "head_aliases": ["People's Republic of China"]},
        {"head": "India", "relation": "borders", "tail": "People's Republic of China"},
    ])
    import_triples(pack, [f])
    china = entity_facts(pack, "China")
    assert [t["head_name"] for t in china["mentioned_by"]] == ["India"]


def test_csv_with_pipe_separated_aliases_and_entity_records(pack, tmp_path):
    (tmp_path / "t.csv").write_text(
        "head,relation,tail,head_aliases,tail_aliases\n"
        "Japan,capital,Tokyo,Nippon|Nihon,\n"
        "Japan,rival,Korea,,Republic of Korea\n", encoding="utf-8")
    write_jsonl(tmp_path / "e.jsonl", [{"name": "Kenya", "aliases": ["Republic of Kenya"], "description": "a country"}])
    res = import_triples(pack, [tmp_path / "t.csv", tmp_path / "e.jsonl"])
    assert res.entities_added == 3 and res.entity_tails == 1 and res.literal_tails == 1
    rows = {r["name"]: r for r in entity_rows(pack)}
    assert rows["Japan"]["aliases"] == ["Nippon", "Nihon"] and rows["Japan"]["triples"] == 2
    assert rows["Korea"]["as_tail"] == 1
    assert rows["Kenya"]["description"] == "a country"
    assert [r["name"] for r in entity_rows(pack, query="ap")] == ["Japan"]


@pytest.mark.parametrize("records, message", [
    ([{"head": "A", "relation": "r", "tail": "x", "head_aliases": ["Shared"]},
      {"head": "B", "relation": "r", "tail": "y", "head_aliases": ["Shared"]}], "duplicate alias 'Shared'"),
    ([{"head": "A", "relation": "r", "tail": "x", "head_aliases": ["B"]},
      {"head": "B", "relation": "r", "tail": "y"}], "'B'"),
    ([{"head": "A", "relation": "r"}], "t.jsonl:1: missing tail"),
    ([{"head": "A", "relation": "r", "tail": "x", "taill": 1}], "unknown field(s) taill"),
    ([{"head": "A", "relation": "", "tail": "x"}], "relation is empty"),
    ([{"head": "A", "relation": "r", "tail": "x", "head_aliases": 3}], "head_aliases must be a list"),
])
def test_bad_triples_are_refused_with_file_and_line_and_nothing_is_written(pack, tmp_path, records, message):
    import_triples(pack, [write_jsonl(tmp_path / "ok.jsonl", [{"head": "Z", "relation": "r", "tail": "z"}])])
    before = _counts(pack)
    f = write_jsonl(tmp_path / "t.jsonl", records)
    with pytest.raises(TriplesError) as err:
        import_triples(pack, [f])
    assert message in str(err.value)
    assert "t.jsonl" in str(err.value)
    assert _counts(pack) == before


def test_alias_clashing_with_an_entity_already_in_the_pack_is_refused(pack, tmp_path):
    import_triples(pack, [write_jsonl(tmp_path / "a.jsonl", [{"head": "Congo", "relation": "r", "tail": "x"}])])
    f = write_jsonl(tmp_path / "b.jsonl", [{"head": "Republic of the Congo", "relation": "r", "tail": "y",
                                            "head_aliases": ["Congo"]}])
    with pytest.raises(TriplesError, match=r"b\.jsonl:1: duplicate .*'Congo'.*the pack"):
        import_triples(pack, [f])
    assert _counts(pack) == (1, 1)


def test_unknown_entities_are_refused_when_new_entities_are_not_allowed(pack, tmp_path):
    import_triples(pack, [write_jsonl(tmp_path / "a.jsonl", [{"head": "France", "relation": "r", "tail": "x"}])])
    f = write_jsonl(tmp_path / "b.jsonl", [{"head": "France", "relation": "capital", "tail": "Paris"},
                                           {"head": "Atlantis", "relation": "capital", "tail": "Poseidonia"}])
    with pytest.raises(TriplesError, match=r"b\.jsonl:2: unknown entity 'Atlantis'"):
        import_triples(pack, [f], create_entities=False)
    assert _counts(pack) == (1, 1)
    assert import_triples(pack, [f], create_entities=True).entities_added == 1


def test_malformed_files(pack, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"head": "A", "relation": "r", "tail": "x"}\n{not json\n', encoding="utf-8")
    with pytest.raises(TriplesError, match=r"bad\.jsonl:2: not valid JSON"):
        import_triples(pack, [tmp_path / "bad.jsonl"])
    (tmp_path / "bad.csv").write_text("subject,predicate,object\nA,r,x\n", encoding="utf-8")
    with pytest.raises(TriplesError, match=r"bad\.csv:1: the header must name"):
        import_triples(pack, [tmp_path / "bad.csv"])
    (tmp_path / "bad.txt").write_text("A r x\n", encoding="utf-8")
    with pytest.raises(TriplesError, match="unsupported triples format .txt"):
        import_triples(pack, [tmp_path / "bad.txt"])
    (tmp_path / "latin.jsonl").write_bytes('{"head": "Z\xfcrich"}'.encode("latin-1"))
    with pytest.raises(TriplesError, match=r"latin\.jsonl:1: not valid UTF-8"):
        import_triples(pack, [tmp_path / "latin.jsonl"])
    with pytest.raises(TriplesError, match="no such file"):
        import_triples(pack, [tmp_path / "missing.jsonl"])
    assert _counts(pack) == (0, 0)


def test_linker_longest_match_at_word_boundaries():
    linker = EntityLinker([
        (1, "Niger", []), (2, "Nigeria", ["Federal Republic of Nigeria"]), (3, "Guinea", []),
        (4, "Equatorial Guinea", []), (5, "Papua New Guinea", []), (6, "China", ["People's Republic of China"]),
        (7, "Congo", ["Republic of the Congo"]), (8, "X", []),  # one-letter alias: ignored
    ])
    text = ("The Federal Republic of Nigeria borders Niger; Equatorial Guinea, Guinea and Papua New Guinea are far "
            "from Chinatown and from People's Republic of China, but not from the Republic of the Congo. X marks it.")
    found = [(m.text, m.entity_id) for m in linker.link(text)]
    assert found == [("Federal Republic of Nigeria", 2), ("Niger", 1), ("Equatorial Guinea", 4), ("Guinea", 3),
                     ("Papua New Guinea", 5), ("People's Republic of China", 6), ("Republic of the Congo", 7)]
    m = linker.link(text)[0]
    assert text[m.start:m.end] == m.text
    assert [(m.start, m.end, m.entity_id) for m in linker.link("Nigerian food and Nigeria's capital")] == [(18, 25, 2)]
    assert linker.link("") == [] and EntityLinker([]).link("Niger") == []


def test_ambiguous_alias_in_an_existing_pack_is_not_linked(caplog):
    linker = EntityLinker([(1, "Georgia", ["GA"]), (2, "Georgia (state)", ["GA"])])
    assert [m.entity_id for m in linker.link("GA and Georgia")] == [1]
    assert "names several entities" in caplog.text


def test_linker_scales_to_many_aliases():
    ents = [(i, f"Entity{i:05d} Name", [f"Alias {i:05d}"]) for i in range(5000)]
    linker = EntityLinker(ents)
    text = " ".join(f"about Entity{i:05d} Name and Alias {i:05d}." for i in range(0, 5000, 97))
    found = linker.link(text)
    assert len(found) == 2 * len(range(0, 5000, 97))
    assert all(m.entity_id == int(m.text.split()[0][-5:] if m.text.startswith("Entity") else m.text[-5:]) for m in found)


def _refusal(write) -> str:
    with pytest.raises(PackError) as err:
        write()
    return str(err.value)


def test_a_triples_import_is_refused_like_an_entry_edit_and_writes_nothing(tmp_path, evaluating_elsewhere):
    """Entities and triples go through the pack's one write path: a read-only pack and a pack
    under another process's edit evaluation refuse them with an entry edit's message."""
    path = tmp_path / "p.plugmem"
    f = write_jsonl(tmp_path / "t.jsonl", triples())
    Pack.create(path).close()

    def nothing_written() -> None:
        with Pack.open(path, readonly=True) as p:
            assert (_counts(p), p.entities_version) == ((0, 0), 0)

    with Pack.open(path, readonly=True) as p:
        edit = _refusal(lambda: p.add("An entry."))
        assert "read-only" in edit and _refusal(lambda: import_triples(p, [f])) == edit
    nothing_written()
    with Pack.open(path) as p, evaluating_elsewhere(path):
        edit = _refusal(lambda: p.add("An entry."))
        assert "edit evaluation is running" in edit and _refusal(lambda: import_triples(p, [f])) == edit
    nothing_written()
    with Pack.open(path) as p:  # once the evaluation has ended the same import goes in
        assert import_triples(p, [f]).triples_added == len(triples())


def test_demo_packs_get_their_domains_entities_once(tmp_path):
    """The demo workspace's packs come with the entities of their domain (bundled triples),
    so the Entities tab and map-tuning work on the demo; a pack that has entities is left as it is."""
    from engine.demo import _import_demo_triples
    from engine.mechanisms.plugins.entities import find_entity

    path = tmp_path / "geography.plugmem"
    Pack.create(path).close()
    assert _import_demo_triples("geography", path) == 3411
    with Pack.open(path, readonly=True) as p:
        japan = find_entity(p, "Nihon")  # by alias
        assert japan["name"] == "Japan" and len(p.entities()) == 249
        version = p.entities_version
    assert _import_demo_triples("geography", path) == 0  # the next start imports nothing
    with Pack.open(path, readonly=True) as p:
        assert p.entities_version == version
    assert _import_demo_triples("no-such-domain", path) == 0


def test_a_damaged_demo_triples_file_leaves_the_demo_pack_usable(tmp_path, monkeypatch, caplog):
    import engine.demo as demo

    (tmp_path / "demo" / "geography").mkdir(parents=True)
    (tmp_path / "demo" / "geography" / "triples.jsonl").write_text('{"head": "Japan"}\n', encoding="utf-8")
    monkeypatch.setattr(demo, "demo_dir", lambda: tmp_path / "demo")
    path = tmp_path / "geography.plugmem"
    Pack.create(path).close()
    assert demo._import_demo_triples("geography", path) == 0
    assert "its entities were not imported" in caplog.text and "triples.jsonl:1" in caplog.text
    with Pack.open(path, readonly=True) as p:
        assert p.entities() == []
