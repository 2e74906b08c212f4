"""Worked examples in a pack (PlugLM's "knowledge prompting"): question → answer pairs kept
beside the facts, retrieved like entries and read by the DPM branch and the context mode.

An example is an ordinary entry carrying the reserved tag :data:`EXAMPLE_TAG`. A tag, not a
``kind`` column: tags already travel through export and import, undo, history, the full-text
and tag filters and every pack reader, so a pack with examples needs no schema migration and
still opens in an older PlugMem (which shows them as tagged facts).

The text the branch and the context read is the question followed by its answer, ended like
a fact sentence ("The capital of Albania is Tirana."): the branch was trained to copy what
follows a matched prefix, and a probe prompt is exactly such a prefix (bench/RESULTS.md,
"Knowledge prompting").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from engine.jsonl import JsonlError
from engine.probe_files import EvalDataError, probe_from_record

EXAMPLE_TAG = "example"
_ENDS = ".!?…)\"'”’]"


def example_text(prompt: str, answer: str) -> str:
    """The entry text of a worked example: the question, then its answer, as one sentence."""
    q, a = " ".join(prompt.split()), " ".join(answer.split())
    text = f"{q} {a}"
    return text if text.endswith(tuple(_ENDS)) else text + "."


def is_example(entry: Any) -> bool:
    """Whether an entry (anything with ``tags``) is a worked example."""
    return EXAMPLE_TAG in (getattr(entry, "tags", None) or [])


def example_records(objects: Iterator[tuple[int, dict[str, Any]]], path: Path, name: str,
                    error: Callable[[Path, int | None, str], JsonlError]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, entry record) from a probe file's (line, object) pairs: one per prompt and one per paraphrase.

    The probe rule is ``eval``'s (:func:`engine.probe_files.probe_from_record`: a prompt and a
    non-empty answer); a bad line raises ``error(path, line, reason)``. Each wording becomes its
    own example because wordings unlike the entries are what the branch misses (issue 20).
    """
    for line, obj in objects:
        where = f"{name}:{line}"
        try:
            probe = probe_from_record(obj, where)
        except EvalDataError as exc:
            raise error(path, line, str(exc).removeprefix(f"{where}: ")) from None
        tags = [EXAMPLE_TAG] + ([probe.relation.strip()] if probe.relation.strip() else [])
        for n, prompt in enumerate([probe.prompt, *probe.paraphrases]):
            yield line, {"text": example_text(prompt, probe.answer), "title": probe.subject.strip(),
                         "source": where if n == 0 else f"{where} (paraphrase {n})", "tags": tags}
