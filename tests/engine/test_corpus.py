"""Corpus parsers: formats, sources, passage splitting and errors that name file and line."""
from __future__ import annotations

import json
import re

import pytest

from engine.jobs.corpus import (MAX_PASSAGE_CHARS, CorpusError, corpus_files, count_records, file_key, parse_file,
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
    ('{"text": broken', "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"title": "no text"}', "missing 'text'"),
    ('{"text": "   "}', "empty 'text'"),
    ('{"text": 42}', "'text' must be a string"),
    ('{"text": "ok", "tags": [1, 2]}', "'tags' must be a list of strings"),
    ('{"text": "ok", "lang": "en", "author": "me"}', "unknown field(s) 'author', 'lang'"),
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
