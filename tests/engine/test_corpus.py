"""Corpus parsers: formats, sources, passage splitting and errors that name file and line."""
from __future__ import annotations

import json
import re

import pytest

from engine.store.corpus import (MAX_PASSAGE_CHARS, CorpusError, corpus_files, count_records, file_key, parse_file,
                                 split_passage)


def write(path, text: str, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def error_of(path) -> CorpusError:
    with pytest.raises(CorpusError) as info:
        parse_file(path)
    return info.value


# ---------------------------------------------------------------------------- JSONL
def test_jsonl_records_with_sources_tags_and_blank_lines_skipped(tmp_path):
    p = write(tmp_path / "facts.jsonl", "\n".join([
        json.dumps({"text": "Paris is the capital of France.", "title": "France", "tags": ["geo", "capital"]}),
        "",
        "   ",
        json.dumps({"text": "  Gold is Au. ", "source": "wiki/Gold", "tags": "chem, element ,"}),
        json.dumps({"text": "Zürich liegt am Zürichsee — 東京 is Tokyo.", "title": None}),
    ]) + "\n")
    recs = parse_file(p)
    assert recs == [
        {"text": "Paris is the capital of France.", "title": "France", "source": "facts.jsonl:1", "tags": ["geo", "capital"]},
        {"text": "Gold is Au.", "title": None, "source": "wiki/Gold (facts.jsonl:4)", "tags": ["chem", "element"]},
        {"text": "Zürich liegt am Zürichsee — 東京 is Tokyo.", "title": None, "source": "facts.jsonl:5", "tags": []},
    ]
    assert count_records(p) == 3


def test_jsonl_with_bom_and_crlf_line_endings(tmp_path):
    p = write(tmp_path / "win.jsonl", "\r\n".join(json.dumps({"text": f"Fact {i}."}) for i in range(3)) + "\r\n", "utf-8-sig")
    assert [(r["text"], r["source"]) for r in parse_file(p)] == [(f"Fact {i}.", f"win.jsonl:{i + 1}") for i in range(3)]


def test_jsonl_keeps_a_line_separator_inside_a_string(tmp_path):
    p = write(tmp_path / "sep.jsonl", '{"text": "one\u2028two"}\n{"text": "three"}\n')
    assert [r["text"] for r in parse_file(p)] == ["one\u2028two", "three"]


@pytest.mark.parametrize("line, reason", [
    ('{"text": broken', "not valid JSON: Expecting value (column 10)"),
    ('["a list"]', "expected a JSON object"),
    ('{"title": "no text"}', "missing 'text'"),
    ('{"text": "   "}', "empty 'text'"),
    ('{"text": 42}', "'text' must be a string"),
    ('{"text": "ok", "tags": [1, 2]}', "'tags' must be a list of strings"),
    ('{"text": "ok", "lang": "en", "author": "me"}', "unknown field(s) 'author', 'lang'"),
    # the pack's limits, checked while parsing (they used to fail the import after earlier chunks were in)
    (json.dumps({"text": "x" * 4001}), "'text' has 4,001 characters; the limit is 4,000"),
    (json.dumps({"text": "ok", "title": "t" * 301}), "'title' has 301 characters"),
    (json.dumps({"text": "ok", "source": "s" * 1001}), "'source' has 1,0"),
    (json.dumps({"text": "ok", "tags": ["t" * 65]}), "at most 64 characters"),
    (json.dumps({"text": "ok", "tags": [f"t{i}" for i in range(33)]}), "33 tags; the limit is 32"),
    (json.dumps({"text": "ok", "status": "deleted"}), "'status' must be active or disabled"),
    # hostile or broken input that used to end in a traceback
    ('{"text": "ok", "tags": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
    ('{"text": "a lone \\ud800 surrogate"}', "'text' is not valid Unicode: a lone surrogate U+D800 at character 8"),
    ('{"text": "ok", "title": "\\udcff"}', "'title' is not valid Unicode"),
    ('{"text": "ok", "tags": ["\\udfff"]}', "is not valid Unicode"),
    (json.dumps({"text": "word " * 300_000}), "line has 1,500,012 characters"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, reason):
    p = write(tmp_path / "bad.jsonl", '{"text": "A good line."}\n\n' + line + '\n{"text": "after"}\n')
    err = error_of(p)
    assert str(err).startswith(f"{p}:3: ") and reason in str(err)
    assert (err.line, err.path) == (3, str(p))


def test_bad_utf8_is_reported_with_its_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    err = error_of(p)
    assert f"{p}:2:" in str(err) and "UTF-8" in str(err) and "0xe9" in str(err)


# ---------------------------------------------------------------------------- CSV
def test_csv_rows_numbered_like_a_spreadsheet_with_quoted_newlines_and_crlf(tmp_path):
    p = write(tmp_path / "table.csv", 'Title,text,tags\r\nOxygen,"Oxygen has the atomic number 8.",element\r\n'
                                      ',"A fact\r\nover two lines, with a comma.","a,b"\r\n\r\nIron,Iron is Fe.,\r\n', "utf-8-sig")
    recs = parse_file(p)
    assert recs == [
        {"text": "Oxygen has the atomic number 8.", "title": "Oxygen", "source": "table.csv:row 2", "tags": ["element"]},
        {"text": "A fact\nover two lines, with a comma.", "title": None, "source": "table.csv:row 3", "tags": ["a", "b"]},
        {"text": "Iron is Fe.", "title": "Iron", "source": "table.csv:row 5", "tags": []},
    ]
    assert count_records(p) == 3


@pytest.mark.parametrize("body, line, reason", [
    ('title,fact\nA,b\n', 1, "no 'text' column"),
    ('text,colour\nA,b\n', 1, "unknown column(s) 'colour'"),
    ('text,title\nfine,ok\n"broken"quote,x\n', 3, "broken CSV quoting"),
    ('text,title\nfine,ok\nalso fine,ok\n"never closed,x\nmore\n', 4, "broken CSV quoting"),
    ('text,title\nfine,ok\n,no text here\n', 3, "empty 'text'"),
    ('text,title\nfine,ok\na,b,c\n', 3, "3 fields but the header has 2"),
    ('', 1, "empty file"),
    ('text,title\nfine,ok\n' + "x" * 4001 + ',ok\n', 3, "'text' has 4,001 characters"),
    ('text,title\nfine,ok\n"' + "x" * 200_000 + '",ok\n', 3, "a field longer than 131,072 characters"),
])
def test_csv_errors_name_file_and_line(tmp_path, body, line, reason):
    p = write(tmp_path / "facts.csv", body)
    err = error_of(p)
    assert str(err).startswith(f"{p}:{line}: ") and reason in str(err), str(err)


# ---------------------------------------------------------------------------- text and Markdown
def test_markdown_headings_become_titles_and_sources_give_line_ranges(tmp_path):
    p = write(tmp_path / "notes" / "chem.md", "\n".join([
        "Intro line without heading.",  # 1
        "",
        "# Metals",                     # 3
        "",
        "Iron is a metal.",             # 5
        "It rusts in moist air.",       # 6
        "",
        "## Noble gases ##",            # 8
        "Helium is inert.",             # 9
        "",
        "---",                          # 11 (a rule, not text)
        "",
        "```",                          # 13
        "# a shell comment, not a heading",
        "",
        "echo hi",
        "```",                          # 17
    ]) + "\n")
    recs = parse_file(p, name="notes/chem.md")
    assert [(r["title"], r["source"], r["text"]) for r in recs] == [
        (None, "notes/chem.md:1", "Intro line without heading."),
        ("Metals", "notes/chem.md:5-6", "Iron is a metal.\nIt rusts in moist air."),
        ("Noble gases", "notes/chem.md:9", "Helium is inert."),
        ("Noble gases", "notes/chem.md:13-17", "```\n# a shell comment, not a heading\n\necho hi\n```"),
    ]


def test_plain_text_paragraphs_with_crlf_and_bom_have_no_titles(tmp_path):
    p = write(tmp_path / "a.txt", "# not a heading in .txt\r\nstill the same paragraph\r\n\r\n\r\nSecond one.\r\n", "utf-8-sig")
    assert [(r["title"], r["source"], r["text"]) for r in parse_file(p)] == [
        (None, "a.txt:1-2", "# not a heading in .txt\nstill the same paragraph"),
        (None, "a.txt:5", "Second one."),
    ]


def test_a_long_paragraph_is_split_at_sentences_below_the_limit_without_losing_words(tmp_path):
    sentences = [f"Sentence number {i} says that élément {i} weighs {i * 3.5} units, more or less." for i in range(60)]
    words_line = " ".join("word%d" % i for i in range(400))  # one 'sentence' longer than the limit
    para = " ".join(sentences[:30]) + "\n" + words_line + " " + " ".join(sentences[30:])
    p = write(tmp_path / "long.md", "# Long\n\n" + para + "\n")
    recs = parse_file(p)
    assert len(recs) > 3
    assert all(len(r["text"]) <= MAX_PASSAGE_CHARS for r in recs)
    assert " ".join(r["text"] for r in recs).split() == para.split()  # nothing lost, order kept
    assert all(r["title"] == "Long" for r in recs)
    assert recs[0]["text"].endswith("more or less.")  # cut after a sentence, not mid-sentence
    assert recs[0]["source"] == "long.md:3" and recs[-1]["source"] == "long.md:4"


def test_split_passage_offsets_point_into_the_text_and_hard_split_is_the_last_resort():
    text = "a" * 2500
    pieces = split_passage(text, limit=1000)
    assert [len(p) for _, p in pieces] == [1000, 1000, 500]
    assert all(text[o : o + len(p)] == p for o, p in pieces)
    assert split_passage("Short. Text.") == [(0, "Short. Text.")]


class _CountingText(str):
    """A text that adds up how many characters its slices and ``count`` calls look at."""

    scanned = 0

    def __getitem__(self, key):
        got = str.__getitem__(self, key)
        _CountingText.scanned += len(got)
        return got

    def count(self, sub, start=0, end=None):
        end = len(self) if end is None else min(end, len(self))
        _CountingText.scanned += max(0, end - start)
        return str.count(self, sub, start, end)


def test_splitting_a_long_paragraph_looks_at_each_character_a_bounded_number_of_times(tmp_path):
    # a 1 / 2 / 4 MB paragraph took 0.4 / 1.2 / 3.4 s (16 MB: 35 s): every piece rescanned the text
    # before it. The work is counted, not timed: a rescan from the start makes it grow with n**2.
    from engine.store.corpus import _passages

    lines = [" ".join(f"Item {i}.{j} is short." for j in range(4)) for i in range(8000)]
    body = "\n".join(lines)  # one paragraph of 8,000 lines, ~700 KB
    _CountingText.scanned = 0
    pieces = split_passage(_CountingText(body))
    assert len(pieces) > 500 and _CountingText.scanned <= 3 * len(body), _CountingText.scanned / len(body)
    _CountingText.scanned = 0
    recs = list(_passages(tmp_path / "p.txt", "p.txt", 1, _CountingText(body), None, lambda off: None))
    assert _CountingText.scanned <= 4 * len(body), _CountingText.scanned / len(body)
    for (offset, piece), rec in zip(pieces, recs):  # line numbers are still exact
        first = body.count("\n", 0, offset) + 1
        last = first + piece.count("\n")
        assert rec["source"] == (f"p.txt:{first}" if first == last else f"p.txt:{first}-{last}")


def test_parsing_reports_progress_through_a_long_file(tmp_path):
    p = write(tmp_path / "long.txt", "A sentence of the long paragraph. " * 60_000 + "\n\nShort.\n")
    seen: list[float] = []
    recs = parse_file(p, progress=lambda f, m="": seen.append(f))
    assert len(recs) > 2000 and recs[-1]["text"] == "Short."
    assert len(seen) >= 50 and seen == sorted(seen) and seen[-1] == 1.0


# ---------------------------------------------------------------------------- files and keys
def test_folder_recursion_is_sorted_skips_hidden_and_unknown_files(tmp_path):
    root = tmp_path / "corpus"
    for rel in ["b.md", "A/z.txt", "A/b/c.jsonl", "a.csv", ".hidden/x.md", ".x.md", "image.png", "C.TXT"]:
        write(root / rel, "x\n")
    assert [f.relative_to(root).as_posix() for f in corpus_files(root)] == ["A/b/c.jsonl", "A/z.txt", "a.csv", "b.md", "C.TXT"]
    assert corpus_files(root / "b.md") == [root / "b.md"]


def test_unknown_file_type_and_missing_file_are_errors(tmp_path):
    err = error_of(write(tmp_path / "facts.xlsx", "x"))
    assert "facts.xlsx" in str(err) and "unknown file type '.xlsx'" in str(err)
    assert "no such file" in str(error_of(tmp_path / "gone.jsonl"))


def test_file_key_changes_with_content_not_with_the_spelling_of_the_path(tmp_path, monkeypatch):
    p = write(tmp_path / "f.jsonl", '{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    key = file_key(p)
    assert key == file_key("f.jsonl") == file_key(tmp_path / "." / "f.jsonl")
    assert re.fullmatch(r"f\.jsonl#sha256:[0-9a-f]{64}", key)
    moved = tmp_path / "elsewhere" / "f.jsonl"  # the same file in another place: the same import
    moved.parent.mkdir()
    moved.write_bytes(p.read_bytes())
    assert file_key(moved) == key
    p.write_text('{"text": "b"}\n')
    assert file_key(p) != key
