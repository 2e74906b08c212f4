"""One registry of mechanisms and modes: every list of modes reads it, and one fallback rule."""
from __future__ import annotations

import pytest

from engine.mechanisms import MECHANISMS, MODES, choose_mode, mechanism, mode_names


def test_modes_are_the_entry_carrying_mechanisms_then_none():
    assert mode_names() == MODES == ("dpm", "context", "none")
    assert {m.kind for m in MECHANISMS} <= {"retrieval-fused", "context", "input injection", "added layer",
                                             "weight change"}
    assert len({m.name for m in MECHANISMS}) == len(MECHANISMS)


def test_a_missing_branch_falls_back_to_the_context_and_says_so():
    assert choose_mode("dpm", has_branch=True).used == "dpm"
    used, note = choose_mode("dpm", has_branch=False)  # unpacked where it is used
    assert used == "context" and note == "No memory branch for this reader: answered with the entries in the context."
    assert choose_mode("dpm", has_branch=False, doing="evaluated").note.endswith("evaluated with the entries in the context.")
    assert choose_mode("context", has_branch=False) == choose_mode("context", has_branch=True)
    assert choose_mode("none", has_branch=False).used == "none"
    with pytest.raises(KeyError, match="unknown mechanism 'magic'"):
        mechanism("magic")


def test_the_engine_and_the_cli_take_their_modes_from_the_registry(capsys):
    from engine.cli import main
    from engine.explain import MODES as EXPLAIN_MODES

    assert EXPLAIN_MODES is MODES
    assert main(["predict", "Q", "--mode", "magic"]) == 2
    assert "choose from dpm, context, none" in capsys.readouterr().err
