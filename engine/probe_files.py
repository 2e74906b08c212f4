"""Probe and edit files (JSONL), read strictly: a bad line names its file and line.

The one reader of probes and edits, with one rule (a prompt and a non-empty answer),
for the evaluations and for the map-tuning job's held-out entities alike; so it sits
below every layer that reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from engine.jsonl import JsonlError, read_jsonl


class EvalDataError(ValueError):
    """An evaluation file is missing or malformed (the message names file and line)."""


@dataclass
class Probe:
    """A fact probe: ``prompt`` should be continued by ``answer`` (see :func:`is_correct`)."""

    prompt: str
    answer: str
    paraphrases: list[str] = field(default_factory=list)
    relation: str = ""
    subject: str = ""
    split: str = ""
    where: str = ""  # file:line, for messages


@dataclass
class Edit:
    """Replace the entry whose text is ``old_text`` by ``new_text``; then ``prompt`` should give ``new``."""

    old_text: str
    new_text: str
    prompt: str
    new: str
    paraphrase: str = ""
    old: str = ""
    relation: str = ""
    subject: str = ""
    where: str = ""


def is_correct(continuation: str, answer: str) -> bool:
    """The probe rule: the continuation, leading white space stripped, starts with the answer (case-insensitive)."""
    ans = answer.strip().lower()
    return bool(ans) and continuation.lstrip().lower().startswith(ans)


def _records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        for n, rec in read_jsonl(path):
            yield f"{path}:{n}", rec
    except JsonlError as exc:
        raise EvalDataError(str(exc)) from None


def _text(rec: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    v = rec.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise EvalDataError(f"{where}: field {key!r} must be a non-empty string")
    return v


def probe_from_record(rec: dict[str, Any], where: str, *, require: Sequence[str] = ()) -> Probe:
    """One probe from its JSON object (the rule of :func:`read_probes`); EvalDataError names ``where``."""
    for key in require:
        _text(rec, key, where, required=True)
    paras = rec.get("paraphrases") or []
    if not isinstance(paras, list) or not all(isinstance(x, str) and x.strip() for x in paras):
        raise EvalDataError(f"{where}: 'paraphrases' must be a list of non-empty strings")
    return Probe(
        prompt=_text(rec, "prompt", where, required=True),
        answer=_text(rec, "answer", where, required=True),
        paraphrases=list(paras),
        relation=_text(rec, "relation", where, required=False),
        subject=_text(rec, "subject", where, required=False),
        split=_text(rec, "split", where, required=False),
        where=where,
    )


def read_probes(path: str | Path, *, require: Sequence[str] = ()) -> list[Probe]:
    """Probes from JSONL: ``prompt``, ``answer``, optional ``paraphrases`` (list), ``relation``, ``subject``, ``split``.

    ``require`` names optional fields a caller cannot do without (entity probes need
    ``subject``): they must then be non-empty strings too.
    """
    out = [probe_from_record(rec, where, require=require) for where, rec in _records(path)]
    if not out:
        raise EvalDataError(f"{path}: no probes in the file")
    return out


def read_edits(path: str | Path) -> list[Edit]:
    """Edits from JSONL: ``old_text``, ``new_text``, ``prompt``, ``new``, ``paraphrase``, optional ``old``."""
    out: list[Edit] = []
    for where, rec in _records(path):
        out.append(Edit(
            old_text=_text(rec, "old_text", where, required=True),
            new_text=_text(rec, "new_text", where, required=True),
            prompt=_text(rec, "prompt", where, required=True),
            new=_text(rec, "new", where, required=True),
            paraphrase=_text(rec, "paraphrase", where, required=False),
            old=_text(rec, "old", where, required=False),
            relation=_text(rec, "relation", where, required=False),
            subject=_text(rec, "subject", where, required=False),
            where=where,
        ))
    if not out:
        raise EvalDataError(f"{path}: no edits in the file")
    return out
