"""The explanation record of one prediction (the same whatever the mechanism)."""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RetrievedEntry:
    """One retrieved entry and its part in the answer.

    ``score``: retrieval inner product. ``weight``: fusion weight (attention mass the
    last prompt position gave the entry, averaged over heads and layers; None when
    the mode cannot tell). ``loo_delta``: log p(answer | all entries) minus
    log p(answer | all but this one); positive = the entry supported the answer.
    """

    pack: str
    id: int
    title: str | None
    text: str
    source: str | None
    score: float
    weight: float | None = None
    loo_delta: float | None = None


@dataclass
class Explanation:
    """One prediction: the answer with and without memory and the entries that explain it.

    ``to_dict()`` / ``to_json()`` give the record the CLI prints and the GUI shows;
    ``from_dict()`` reads it back.
    """

    prompt: str
    answer: str
    answer_without_memory: str
    mode: str
    packs: list[str] = field(default_factory=list)
    retrieved: list[RetrievedEntry] = field(default_factory=list)
    answer_logprob: float | None = None  # log p(answer | all entries), summed over its tokens
    seconds: float | None = None
    k: int | None = None  # entries asked for (fewer may be retrieved)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for r in d["retrieved"]:
            for key in ("score", "weight", "loo_delta"):
                if r[key] is not None:
                    r[key] = round(float(r[key]), 6)
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Explanation":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        d["retrieved"] = [RetrievedEntry(**r) for r in d.get("retrieved", [])]
        return cls(**{key: v for key, v in d.items() if key in known})

    def to_html(self) -> str:
        """A small self-contained HTML fragment; every user string is escaped."""
        e = html.escape

        def num(x: float | None, fmt: str) -> str:
            return "–" if x is None else format(x, fmt)

        rows = "".join(
            f"<tr><td>{e(r.pack)}</td><td>{r.id}</td><td>{e(r.title or '')}</td><td>{e(r.text)}</td>"
            f"<td>{num(r.score, '.3f')}</td><td>{num(r.weight, '.3f')}</td><td>{num(r.loo_delta, '+.3f')}</td></tr>"
            for r in self.retrieved
        )
        table = (
            "<table><tr><th>pack</th><th>id</th><th>title</th><th>text</th><th>score</th>"
            f"<th>weight</th><th>leave-one-out Δ log p</th></tr>{rows}</table>"
            if self.retrieved
            else "<p><i>No entries retrieved.</i></p>"
        )
        packs = ", ".join(e(p) for p in self.packs) or "none"
        return (
            f"<div class='explanation'><p><b>Prompt:</b> {e(self.prompt)}</p>"
            f"<p><b>Answer with memory ({e(self.mode)}; packs: {packs}):</b> {e(self.answer)}</p>"
            f"<p><b>Answer without memory:</b> {e(self.answer_without_memory)}</p>{table}</div>"
        )
