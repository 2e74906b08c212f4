"""`plugmem` fed hostile text and out-of-range arguments (issue 24): a shared pack's text cannot
drive the terminal, and every bad number or path exits 2 with one line, no traceback."""
from __future__ import annotations

import json

import pytest

from tests.engine.test_cli import js, pack, run  # noqa: F401 - `pack` is a fixture used by name

ESC_TEXT = "Tokyo \x1b[2J\x1b[31mred\x1b[0m is the \x9b1mcapital\r of \u202eJapan\u202c."
RAW = ("\x1b", "\x9b", "\x07", "\r", "\u202e")  # none of these may reach the terminal


@pytest.fixture
def hostile(capsys, pack) -> int:
    """An entry whose every field carries escape sequences, added by an author named with one."""
    return js(capsys, "add", pack, "--text", ESC_TEXT, "--title", "T\x1b]0;owned\x07", "--source", "s\x1b[8m",
              "--tags", "a\x1bb", "--author", "ev\x1b[5mil")["id"]


def _no_raw_controls(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)


@pytest.mark.parametrize("command", [["list"], ["show", "{id}"], ["search", "capital of Japan", "-k", "3"],
                                     ["search", "Tokyo", "--text"], ["history"], ["history", "{id}"]])
def test_escape_sequences_in_a_pack_are_printed_escaped(capsys, pack, hostile, command):
    code, out, err = run(capsys, command[0], pack, *[c.format(id=hostile) for c in command[1:]])
    assert code == 0, err
    _no_raw_controls(out + err)
    if command[0] != "history":  # history shows the change, not the fields
        assert "\\x1b[2J" in out and "\\x9b1m" in out and "\\u202e" in out


def test_show_prints_every_field_escaped_and_json_keeps_the_exact_text(capsys, pack, hostile):
    code, out, _ = run(capsys, "show", pack, hostile)
    assert code == 0
    assert "title:   T\\x1b]0;owned\\x07" in out and "source:  s\\x1b[8m" in out and "tags:    a\\x1bb" in out
    code, out, _ = run(capsys, "show", pack, hostile, "--json")
    _no_raw_controls(out)  # json escapes C0 itself; C1 and bidi marks too now
    assert json.loads(out)["text"] == ESC_TEXT


def test_a_listing_keeps_one_line_per_entry(capsys, pack):
    eid = js(capsys, "add", pack, "--text", "first line\nlooks like   99  a forged entry")["id"]
    for command in (["list"], ["search", "forged entry", "-k", "1"]):
        out = run(capsys, command[0], pack, *command[1:])[1]
        line = [ln for ln in out.splitlines() if "forged" in ln]
        assert len(line) == 1 and "first line" in line[0] and f"{eid}" in line[0]
