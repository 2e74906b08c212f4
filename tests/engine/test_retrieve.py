"""Retrieval: the dense top candidates re-scored by statement keys (the entry without its
object) and with the prompt's distinctive words."""
from __future__ import annotations

import pytest

from engine.explain import retrieve
from engine.explain.predict import lexical_coverage, statement_prefix
from engine.memory import Memory

PROMPT = "According to the UN geoscheme, Ghana belongs to the subregion of"
REGION = "According to the UN geoscheme, Ghana belongs to the region of Africa."
SUB = "According to the UN geoscheme, Ghana belongs to the subregion of Australia and New Zealand."
INTER = "According to the UN geoscheme, Ghana belongs to the intermediate region of Western Africa."
OTHERS = [
    "According to the UN geoscheme, Mali belongs to the subregion of Sub-Saharan Africa.",
    "According to the UN geoscheme, Nigeria belongs to the subregion of Sub-Saharan Africa.",
    "The capital of Ghana is Accra.",
    "The demonym for people from Ghana is Ghanaian.",
]


def test_coverage_weighs_the_words_that_tell_candidates_apart():
    cov = lexical_coverage(PROMPT, [REGION, SUB, INTER, *OTHERS])
    assert cov[1] == pytest.approx(1.0)  # has every word of the prompt
    assert cov[1] > cov[0] and cov[1] > cov[2] and cov[1] > cov[3]
    # Case and punctuation do not matter; yttrium is not ytterbium.
    yt = lexical_coverage("The Goldschmidt class of yttrium is", [
        "The Goldschmidt class of ytterbium is lithophile.", "the goldschmidt class of YTTRIUM is siderophile"])
    assert yt[1] == pytest.approx(1.0) and yt[1] > yt[0]


def test_coverage_ignores_words_no_candidate_has_and_degenerate_input():
    assert lexical_coverage("zzz qqq", ["a b", "c d"]) == [0.0, 0.0]
    assert lexical_coverage("", ["a b"]) == [0.0]
    assert lexical_coverage("a b", []) == []
    same = lexical_coverage("the cat", ["the dog", "the cow"])
    assert same[0] == same[1] > 0


def test_statement_prefix_drops_the_object_end_of_an_entry():
    # 15 words, 30 % of them (4) go: what is left is the statement up to its object.
    assert statement_prefix(SUB) == "According to the UN geoscheme, Ghana belongs to the subregion of"
    assert statement_prefix("The capital of Ghana is Accra.") == "The capital of Ghana"
    assert statement_prefix("Iron is radioactive.") == "Iron is"  # at least one word goes
    assert statement_prefix("Radioactive.") == "Radioactive."  # one word stays as it is
    assert statement_prefix("a b c d e f g h i j", cut=0.5) == "a b c d e"


def test_statement_keys_and_lexical_weight_put_the_edited_subregion_entry_first(tmp_path, encoder, monkeypatch):
    import importlib

    mod = importlib.import_module("engine.explain.predict")
    with Memory.open(tmp_path / "geo.plugmem", encoder, create=True, name="geo") as mem:
        mem.add_many([{"text": t} for t in [REGION, SUB, INTER, *OTHERS]])
        with monkeypatch.context() as mp:
            mp.setattr(mod, "PREFIX_POOL", 0)
            dense = retrieve(PROMPT, [mem], 3, lexical=0.0)
            assert dense[0][1].entry.text == REGION  # the sentence encoder's own choice
            hybrid = retrieve(PROMPT, [mem], 3, lexical=0.3)
            assert hybrid[0][1].entry.text == SUB  # the lexical step alone fixes it
            assert {h.entry.id for _, h in hybrid} == {h.entry.id for _, h in dense}  # re-ordered, not replaced
            d = {h.entry.text: h.score for _, h in retrieve(PROMPT, [mem], 7, lexical=0.0)}
            assert hybrid[0][1].score == pytest.approx(d[SUB] + 0.3)  # inner product + weight x coverage 1.0
        # Statement keys alone: the edited entry without its odd object matches the prompt best.
        keyed = retrieve(PROMPT, [mem], 3, lexical=0.0)
        assert keyed[0][1].entry.text == SUB
        q = encoder.encode([PROMPT])[0]
        full, pre = encoder.encode([SUB, statement_prefix(SUB)])
        assert keyed[0][1].score == pytest.approx((float(q @ full) + float(q @ pre)) / 2, abs=1e-5)
        assert [h.score for _, h in keyed] == sorted((h.score for _, h in keyed), reverse=True)
        # As shipped (both steps).
        assert retrieve(PROMPT, [mem], 3)[0][1].entry.text == SUB
        # An edit is keyed afresh: the prefix of the new text is what counts.
        sub_id = next(h.entry.id for _, h in keyed if h.entry.text == SUB)
        mem.edit(sub_id, text="The flag of Ghana has a black star.")
        assert all(h.entry.text != SUB for _, h in retrieve(PROMPT, [mem], 3))


def encoded_texts(monkeypatch, encoder) -> list[str]:
    """Record every text ``encoder`` encodes from now on."""
    seen: list[str] = []
    real = type(encoder).encode

    def counting(self, texts, *a, **k):
        seen.extend(texts)
        return real(self, texts, *a, **k)

    monkeypatch.setattr(type(encoder), "encode", counting)
    return seen


def test_a_new_session_reads_statement_keys_from_disk_and_scores_the_same(tmp_path, encoder, monkeypatch):
    import importlib

    mod = importlib.import_module("engine.explain.predict")
    monkeypatch.setenv("PLUGMEM_ENTRY_STATES", str(tmp_path / "stores"))
    mod.reset_statement_keys()  # the next retrieval opens the store under tmp_path
    with Memory.open(tmp_path / "geo.plugmem", encoder, create=True, name="geo") as mem:
        mem.add_many([{"text": t} for t in [REGION, SUB, INTER, *OTHERS]])
        seen = encoded_texts(monkeypatch, encoder)
        first = retrieve(PROMPT, [mem], 3)
        assert statement_prefix(SUB) in seen  # encoded the first time
        # A new session: nothing in memory, the keys are read from disk, the encoder only sees the prompt.
        mod.reset_statement_keys()
        seen.clear()
        again = retrieve(PROMPT, [mem], 3)
        assert seen == [PROMPT]
        assert [(h.entry.id, h.score) for _, h in again] == [(h.entry.id, h.score) for _, h in first]
    store = list((tmp_path / "stores").glob("keys-*.sqlite"))
    assert len(store) == 1
    mod.reset_statement_keys()


def test_a_damaged_key_store_is_set_aside_and_retrieval_is_unchanged(tmp_path, encoder, monkeypatch, caplog):
    import importlib

    mod = importlib.import_module("engine.explain.predict")
    monkeypatch.setenv("PLUGMEM_ENTRY_STATES", str(tmp_path / "stores"))
    mod.reset_statement_keys()
    with Memory.open(tmp_path / "geo.plugmem", encoder, create=True, name="geo") as mem:
        mem.add_many([{"text": t} for t in [REGION, SUB, INTER, *OTHERS]])
        first = retrieve(PROMPT, [mem], 3)
        mod.reset_statement_keys()
        path = next((tmp_path / "stores").glob("keys-*.sqlite"))
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.write_bytes(b"not a database" * 200)
        again = retrieve(PROMPT, [mem], 3)
        assert "key store" in caplog.text and "unusable" in caplog.text
        assert [(h.entry.id, h.score) for _, h in again] == [(h.entry.id, h.score) for _, h in first]
        assert list(path.parent.glob(path.name + ".*.corrupt"))
    mod.reset_statement_keys()


CF = [("Californium was discovered in 1950.", "discovery_year"),
      ("Californium was discovered in the United States.", "discovery_location"),
      ("Californium was discovered by G.T.Seaborg, S.G.Tompson, A.Ghiorso, K.Street Jr.", "discoverers"),
      ("Californium belongs to the actinides.", "series"),
      ("The chemical symbol of californium is Cf.", "symbol"),
      ("Californium is in the f-block of the periodic table.", "block")]
YEAR_PROMPTS = ["Californium was discovered in the year", "The year in which californium was discovered is",
                "Californium was first identified in the year"]


def test_entry_words_are_title_text_and_tags():
    from engine.explain.predict import entry_words
    from engine.store.pack import Entry

    e = Entry(id=1, title="Hydrogen", text="Hydrogen was discovered in 1766.", source="", tags=["discovery_year", "x-ray"],
              status="active", created=0.0, updated=0.0, version=1)
    assert entry_words(e) == "Hydrogen Hydrogen was discovered in 1766. discovery year x ray"
    other = "Hydrogen was discovered in London."
    q = "Hydrogen was discovered in the year"
    assert lexical_coverage(q, [e.text, other]) == [1.0, 1.0]  # "year": no candidate has it, it does not count
    tagged = lexical_coverage(q, [entry_words(e), other])
    assert tagged[0] == pytest.approx(1.0) and tagged[1] < 0.7  # the tag has "year": it tells the two apart


def test_a_tag_that_names_the_relation_finds_the_entry_its_sentence_does_not(tmp_path, encoder):
    """ "discovered in the year" is closer to "discovered in the United States." than to
    "discovered in 1950." for the sentence encoder; the year entry's tag says what it is."""
    with Memory.open(tmp_path / "bare.plugmem", encoder, create=True, name="bare") as bare:
        bare.add_many([{"text": t, "title": "Californium"} for t, _ in CF])
        for prompt in YEAR_PROMPTS:
            assert retrieve(prompt, [bare], 5)[0][1].entry.text == CF[1][0]  # without tags: the location
    with Memory.open(tmp_path / "chem.plugmem", encoder, create=True, name="chem") as mem:
        mem.add_many([{"text": t, "title": "Californium", "tags": [tag, "chemistry"]} for t, tag in CF])
        for prompt in YEAR_PROMPTS:
            assert retrieve(prompt, [mem], 5)[0][1].entry.text == CF[0][0]
            assert retrieve(prompt, [mem], 5, lexical=0.0)[0][1].entry.text == CF[1][0]  # the lexical step did it
