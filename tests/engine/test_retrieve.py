"""Hybrid retrieval: the dense top candidates re-scored with the prompt's distinctive words."""
from __future__ import annotations

import pytest

from engine.explain import retrieve
from engine.explain.predict import lexical_coverage
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


def test_hybrid_retrieval_puts_the_entry_with_the_distinctive_word_first(tmp_path, encoder):
    with Memory.open(tmp_path / "geo.plugmem", encoder, create=True, name="geo") as mem:
        mem.add_many([{"text": t} for t in [REGION, SUB, INTER, *OTHERS]])
        dense = retrieve(PROMPT, [mem], 3, lexical=0.0)
        hybrid = retrieve(PROMPT, [mem], 3, lexical=0.3)
        assert dense[0][1].entry.text == REGION  # the sentence encoder's choice
        assert hybrid[0][1].entry.text == SUB
        assert [h.score for _, h in hybrid] == sorted((h.score for _, h in hybrid), reverse=True)
        assert {h.entry.id for _, h in hybrid} == {h.entry.id for _, h in dense}  # re-ordered, not replaced
        d = {h.entry.text: h.score for _, h in retrieve(PROMPT, [mem], 7, lexical=0.0)}
        assert hybrid[0][1].score == pytest.approx(d[SUB] + 0.3)  # inner product + weight x coverage 1.0
        assert retrieve(PROMPT, [mem], 3)[0][1].entry.text == SUB  # the shipped weight does it too
