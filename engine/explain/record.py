"""The explanation record of one prediction (the same whatever the mechanism)."""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RetrievedEntry:
    """One retrieved entry and its part in the answer.

    ``score``: retrieval score (the mean of the inner products with the entry's key and
    its statement prefix's key, plus the lexical term: ``engine.explain.predict.retrieve_many``). ``weight``: fusion weight (attention mass the
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
class InjectedEntity:
    """One knowledge-plugin vector inserted before a linked mention of the prompt.

    ``loo_delta``: log p(answer | every injected vector) minus log p(answer | all but
    this one), with the memory of the mode on in both; positive = the vector supported
    the answer. ``start``/``end``: the mention's characters in the prompt.
    """

    plugin: str
    mention: str
    entity: str
    entity_id: int
    loo_delta: float | None = None
    start: int | None = None
    end: int | None = None
    kind: str = "mention"  # "slot": the answer-slot vector, placed right after the prompt (mention "")


@dataclass
class SlotRead:
    """One slot of a plugged product-key memory and its part in the answer (engine.explain.pkm):
    ``weight`` is the summed softmax weight over the answer's positions and the heads (at most
    positions x heads); ``tokens`` what its value row pushes the output towards (its top tokens
    through the unembedding)."""

    slot: int
    weight: float
    tokens: list[str] = field(default_factory=list)


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
    plugins: list[str] = field(default_factory=list)  # knowledge plugins on (their names)
    injected: list[InjectedEntity] = field(default_factory=list)  # in prompt order
    answer_without_plugins: str | None = None  # the memory alone (None when no plugin is on)
    # The mechanisms active for ``answer``, in the composition order (engine.mechanisms.base);
    # None: derived from ``mode`` and ``plugins``, as for records saved before the field existed.
    mechanisms: list[str] | None = None
    # Weight patches applied to the reader for both answers, in their order (names), and, when
    # asked for, both answers with each one left out: {patch name: {answer, answer_without_memory}}.
    weight_patches: list[str] = field(default_factory=list)
    answers_without_patch: dict[str, dict[str, str]] = field(default_factory=dict)
    # The product-key memory plugged into the reader for both answers ({folder, layer, slots,
    # placement}; None: none), the slots it read most for the answer (engine.explain.pkm), and,
    # when asked for, both answers with it taken off: {answer, answer_without_memory}.
    pkm_layer: dict[str, Any] | None = None
    pkm_slots: list[SlotRead] = field(default_factory=list)
    answers_without_pkm: dict[str, str] = field(default_factory=dict)
    # Per plugin with a relation gate (engine.mechanisms.plugins.gate): applied or not, the nearest
    # trained relation, its similarity, the threshold and a sentence saying so.
    plugin_gates: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanisms is None:
            from engine.mechanisms.base import active_names

            self.mechanisms = active_names(self.mode, self.plugins)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for r in d["retrieved"]:
            for key in ("score", "weight", "loo_delta"):
                if r[key] is not None:
                    r[key] = round(float(r[key]), 6)
        for r in d["injected"]:
            if r["loo_delta"] is not None:
                r["loo_delta"] = round(float(r["loo_delta"]), 6)
        for r in d["pkm_slots"]:
            r["weight"] = round(float(r["weight"]), 6)
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Explanation":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        d["retrieved"] = [RetrievedEntry(**r) for r in d.get("retrieved", [])]
        d["injected"] = [InjectedEntity(**r) for r in d.get("injected", [])]
        d["pkm_slots"] = [SlotRead(**r) for r in d.get("pkm_slots", [])]
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
        if self.weight_patches:
            left = "".join(f"<li>without {e(n)}: {e(a.get('answer', ''))} (without memory: "
                           f"{e(a.get('answer_without_memory', ''))})</li>" for n, a in self.answers_without_patch.items())
            plugged_patches = (f"<p><b>Weight patches:</b> {', '.join(e(p) for p in self.weight_patches)}</p>"
                               + (f"<ul>{left}</ul>" if left else ""))
        else:
            plugged_patches = ""
        layer = ""
        if self.pkm_layer:
            slots = "".join(f"<tr><td>{s.slot}</td><td>{s.weight:.3f}</td><td>{e(' · '.join(s.tokens))}</td></tr>"
                            for s in self.pkm_slots)
            wo = self.answers_without_pkm
            layer = (f"<p><b>Product-key memory:</b> {e(str(self.pkm_layer.get('folder') or ''))} (layer {self.pkm_layer.get('layer')}, "
                     f"{int(self.pkm_layer.get('slots') or 0):,} slots; both answers read it)</p>"
                     + (f"<p><b>Answer without the product-key memory:</b> {e(wo.get('answer', ''))} (without memory: "
                        f"{e(wo.get('answer_without_memory', ''))})</p>" if wo else "")
                     + (f"<table><tr><th>slot</th><th>weight</th><th>top tokens</th></tr>{slots}</table>" if slots else ""))
        plugged = ""
        if self.plugins:
            inj = "".join(
                f"<tr><td>{e(i.plugin)}</td><td>{e(i.mention) if i.kind == 'mention' else '<i>answer slot</i>'}</td>"
                f"<td>{e(i.entity)}</td><td>{i.entity_id}</td>"
                f"<td>{num(i.loo_delta, '+.3f')}</td></tr>"
                for i in self.injected
            )
            plugged = (
                f"<p><b>Knowledge plugins:</b> {', '.join(e(p) for p in self.plugins)}</p>"
                f"<p><b>Answer without plugins:</b> {e(self.answer_without_plugins or '')}</p>"
                + "".join(f"<p>{e(str(g.get('message', '')))}</p>" for g in self.plugin_gates)
                + (f"<table><tr><th>plugin</th><th>mention</th><th>entity</th><th>id</th>"
                   f"<th>leave-one-out Δ log p</th></tr>{inj}</table>" if self.injected
                   else "<p><i>No entity of the plugins is mentioned in the prompt.</i></p>")
            )
        return (
            f"<div class='explanation'><p><b>Prompt:</b> {e(self.prompt)}</p>"
            f"<p><b>Answer with memory ({e(self.mode)}; packs: {packs}):</b> {e(self.answer)}</p>"
            f"<p><b>Answer without memory:</b> {e(self.answer_without_memory)}</p>{plugged_patches}{layer}{plugged}{table}</div>"
        )
