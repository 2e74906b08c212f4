"""The one JSONL reader: its rules and errors, and the readers built on it keeping 'FILE:LINE: reason'."""
from __future__ import annotations

import json

import pytest

from engine.jsonl import MAX_LINE_CHARS, JsonlError, read_jsonl


def write(path, text: str | bytes):
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def error_of(path, **kw) -> JsonlError:
    with pytest.raises(JsonlError) as info:
        list(read_jsonl(path, **kw))
    return info.value


def test_records_with_their_line_numbers_bom_crlf_blank_lines_and_a_line_separator(tmp_path):
    p = write(tmp_path / "r.jsonl", b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"b": "one\xe2\x80\xa8two"}\n')
    assert list(read_jsonl(p)) == [(1, {"a": 1}), (4, {"b": "one\u2028two"})]


@pytest.mark.parametrize("line, reason", [
    ("{broken", "not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"text"', "expected a JSON object, got str"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    (json.dumps({"t": "x" * MAX_LINE_CHARS}), f"line has {MAX_LINE_CHARS + 9:,} characters, more than the"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, reason):
    p = write(tmp_path / "bad.jsonl", '{"ok": 1}\n\n' + line + '\n{"after": 1}\n')
    err = error_of(p)
    assert (err.path, err.line) == (str(p), 3) and str(err).startswith(f"{p}:3: {reason}")


def test_bad_bytes_are_named_by_line_and_column(tmp_path):
    p = write(tmp_path / "latin1.jsonl", b'{"a": "fine"}\n{"a": "caf\xe9"}\n')
    assert str(error_of(p)) == f"{p}:2: not valid UTF-8 (byte 0xe9 at column 11); save the file as UTF-8"


def test_missing_file_folder_and_what_the_caller_expects(tmp_path):
    assert str(error_of(tmp_path / "gone.jsonl")) == f"{tmp_path / 'gone.jsonl'}: no such file"
    assert error_of(tmp_path).reason == "is a folder, not a file"
    p = write(tmp_path / "l.jsonl", "[1]\n")
    assert error_of(p, expect="a triple").reason == "expected a triple, got list"


def test_the_first_problem_is_reported_and_records_before_it_were_read(tmp_path):
    p = write(tmp_path / "r.jsonl", '{"a": 1}\n{bad\n{bad again\n')
    seen = []
    with pytest.raises(JsonlError, match=r"r\.jsonl:2: "):
        for n, rec in read_jsonl(p):
            seen.append(n)
    assert seen == [1]


def test_a_callers_error_class_is_raised():
    from engine.store.corpus import CorpusError

    with pytest.raises(CorpusError) as info:
        list(read_jsonl("/no/such/dir/x.jsonl", error=CorpusError))
    assert info.value.line is None and str(info.value) == "/no/such/dir/x.jsonl: no such file"


# ---------------------------------------------------------------------------- the readers on top of it
def _readers():
    """(name, read(path), its error class, a good record) for every reader of JSONL files."""
    from engine.evaluate.plugins import load_probes
    from engine.mechanisms.dpm.train_branch import TrainDataError, read_examples
    from engine.mechanisms.plugins.entities import read_triples
    from engine.mechanisms.plugins.errors import PluginError, TriplesError
    from engine.mechanisms.plugins.map_tune import read_holdout
    from engine.probe_files import EvalDataError, read_edits, read_probes
    from engine.store.corpus import CorpusError, parse_file

    probe = {"prompt": "p", "answer": "a", "relation": "r", "subject": "s"}
    return [
        ("probes", read_probes, EvalDataError, probe),
        ("edits", read_edits, EvalDataError, {"old_text": "o", "new_text": "n", "prompt": "p", "new": "n"}),
        ("plugin probes", load_probes, EvalDataError, probe),
        ("held-out entities", lambda p: read_holdout(None, [], [p]), PluginError, probe),  # the pack is read after
        ("training data", lambda p: read_examples([p]), TrainDataError, {"text": "t", "prompt": "p", "answer": "a"}),
        ("triples", lambda p: read_triples([p]), TriplesError, {"head": "h", "relation": "r", "tail": "t"}),
        ("corpus", parse_file, CorpusError, {"text": "t"}),
    ]


@pytest.mark.parametrize("case", range(7))
@pytest.mark.parametrize("bad, reason", [
    (b"{oops", "not valid JSON: "),
    (b'["a list"]', "expected a JSON object"),
    (b'{"x": "caf\xe9"}', "not valid UTF-8 (byte 0xe9"),
])
def test_every_reader_names_file_and_line_in_its_own_error(tmp_path, case, bad, reason):
    name, read, error, good = _readers()[case]
    p = write(tmp_path / "data.jsonl", json.dumps(good).encode() + b"\n\n" + bad + b"\n")
    with pytest.raises(error) as info:
        read(p)
    assert str(info.value).startswith(f"{p}:3: {reason}"), (name, str(info.value))


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("answer", ["", "   ", None])
def test_every_probe_reader_refuses_an_empty_answer_with_file_and_line(tmp_path, case, answer):
    """One rule for probes: the evaluations and map-tuning's held-out entities read them alike."""
    name, read, error, good = _readers()[case]
    rec = {**good, "answer": answer} if name != "edits" else {**good, "new": answer}
    p = write(tmp_path / "p.jsonl", json.dumps(good) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(error) as info:
        read(p)
    field = "new" if name == "edits" else "answer"
    assert str(info.value) == f"{p}:2: field {field!r} must be a non-empty string", name


def test_skip_passes_bad_lines_over_and_names_each_by_file_and_line(tmp_path):
    from engine.jsonl import json_lines

    p = tmp_path / "h.jsonl"
    text = '{"a": 1}\n{"a": \n[1]\n' + "[" * 100_000 + "\n" + '{"a": 2}\n'
    bad: list[JsonlError] = []
    got = list(json_lines(p, text, expect="a record", skip=bad.append))
    assert got == [(1, {"a": 1}), (5, {"a": 2})]
    assert [(e.line, e.reason.split(":")[0].split(" (")[0]) for e in bad] == [
        (2, "not valid JSON"), (3, "expected a record, got list"), (4, "JSON nested too deeply to read")]
    assert all(str(e).startswith(f"{p}:") for e in bad)
