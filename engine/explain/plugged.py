"""Knowledge plugins together with a memory mode: generation and leave-one-out with both on.

Where the plugin vectors go: before the linked mentions of the PROMPT only, in every
mode. In the DPM mode the entries reach the reader through the branch from their
cached reader states, which never carried plugin vectors; linking the prompt alone in
the context mode too keeps the two modes comparable (the same entities are injected
for the same question) and keeps the injected list about what the user asked, not
about whichever entries happened to be retrieved. In the context mode the reader's
input is ``entries + prompt``; the prompt's mentions are linked in the prompt and
placed in that input (:class:`Row` records where the prompt starts).

Memory and plugin act together in one forward: the DPM branch's hooks sit on the
reader's layers while the reader reads the injected ``inputs_embeds``; the context
mode simply injects into the context-prefixed input. What differs between the modes is
asked of the mode's fusion (``reader_input``, ``leave_one_out_inputs``, ``entries_on``,
``leave_one_out_with``), never decided here by the mode's name.

Leave-one-out is ONE batched forward of ``1 + k + m`` rows: every entry and every
vector; all but entry i (k rows); all but vector j (m rows).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from engine.explain.record import InjectedEntity

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One reader input: ``text`` (the prompt, or the entries then the prompt) and where the prompt starts."""

    text: str
    offset: int = 0


@dataclass
class PluggedLeaveOneOut:
    logp_all: float  # log p(answer | every entry and every vector)
    logp_without_entry: list[float]  # [k]
    weights: list[float] | None  # [k] fusion weight per entry (None when the mode cannot tell)
    injected: list[InjectedEntity]  # with loo_delta filled


def prompt_row(prompt: str, texts: Sequence[str], fusion=None) -> Row:
    """The reader's input for ``prompt`` with ``texts`` as the answer mode's ``fusion`` lays it
    out (the context mode puts them before it); without a fusion, the prompt alone."""
    if fusion is None:
        return Row(prompt, 0)
    return Row(*fusion.reader_input(prompt, list(texts)))


class PluginFusion:
    """Answers and leave-one-out effects with knowledge plugins AND an answer mode on.

    ``injector``: a :class:`engine.mechanisms.plugins.attach.PluginInjector` for the reader.
    ``fusion``: the answer mode's fusion (``DPMFusion``, ``ContextFusion``: anything with
    ``reader_input``, ``leave_one_out_inputs``, ``entries_on`` and ``leave_one_out_with``),
    or None for the plugins alone. No method asks which mode it is.
    """

    def __init__(self, reader, injector) -> None:
        self.reader, self.injector = reader, injector

    # ---------------------------------------------------------------- inputs
    def links(self, row: Row) -> list:
        """The injections of the prompt part of ``row``, in ``row.text``'s characters."""
        return [replace(x, start=x.start + row.offset, end=x.end + row.offset)
                for x in self.injector.link(row.text[row.offset:])]

    def injected(self, prompt: str, fusion=None, texts: Sequence[str] = ()) -> list[InjectedEntity]:
        """What would be injected for ``prompt`` (no forward pass; loo_delta None)."""
        row = prompt_row(prompt, texts, fusion)
        with torch.no_grad():
            kept = self.injector.build([row.text], links=[self.links(row)]).injected[0]
        return [self._entity(x, row) for x in kept]

    @staticmethod
    def _entity(x, row: Row, loo: float | None = None) -> InjectedEntity:
        return InjectedEntity(x.plugin, x.mention, x.entity, int(x.entity_id), loo, x.start - row.offset,
                              x.end - row.offset, x.kind)

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        *,
        fusion=None,
        texts: Sequence[Sequence[str]] | None = None,
        scores: Sequence[Sequence[float]] | None = None,
    ) -> list[str]:
        """Greedy answers of ``prompts`` (one left-padded batch), each with its own entries."""
        from engine.reader.generation import greedy_generate, lookup_sources

        prompts = list(prompts)
        if not prompts:
            return []
        texts = [list(t) for t in texts] if texts is not None else [[] for _ in prompts]
        has_memory = fusion is not None and any(texts)
        rows = [prompt_row(p, t, fusion if has_memory else None) for p, t in zip(prompts, texts)]
        with torch.no_grad():
            b = self.injector.build([r.text for r in rows], links=[self.links(r) for r in rows]).inputs
        with ExitStack() as stack:
            if has_memory:
                stack.enter_context(fusion.entries_on(texts, scores or [[] for _ in prompts]))
            # The prompt goes in as vectors, so drafts come from the entries' texts (every mode).
            lookup = [lookup_sources(self.reader.tokenizer, t) for t in texts] if has_memory else None
            return greedy_generate(self.reader, inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask,
                                   max_new_tokens=max_new_tokens, lookup=lookup,
                                   spans=texts if has_memory else None)

    # ---------------------------------------------------------------- leave-one-out
    def leave_one_out(
        self,
        prompt: str,
        answer_ids: Sequence[int],
        *,
        fusion=None,
        texts: Sequence[str] = (),
        scores: Sequence[float] = (),
    ) -> PluggedLeaveOneOut:
        """log p(answer) with everything, without each entry, without each vector: one forward."""
        inj = self.injector
        texts = list(texts) if fusion is not None else []
        k = len(texts)
        base = prompt_row(prompt, texts, fusion)
        links0 = self.links(base)
        with torch.no_grad():  # where the vectors land (dropped ones excluded), before the real batch
            kept = inj.build([base.text], links=[links0]).injected[0]
        kept_idx = [next(i for i, x in enumerate(links0) if x.start == y.start) for y in kept]
        m = len(kept)
        without = [Row(*x) for x in fusion.leave_one_out_inputs(prompt, texts)] if k else []
        rows = [base] + without + [base] * m
        links = [links0 if r == base else self.links(r) for r in rows]
        drops = [set() for _ in range(1 + k)] + [{j} for j in kept_idx]
        a = [list(answer_ids)] * len(rows)
        # the fusion reads what it needs (entry states) here, outside inference mode, as its own passes do
        entries = fusion.leave_one_out_with(prompt, texts, scores, len(answer_ids)) if k else None
        with torch.inference_mode():
            batch = inj.build([r.text for r in rows], a, drop=drops, links=links)  # [n, W, d]

            def forward(**kw):
                return inj.logprob_rows_output(batch, a, **kw)

            if entries is not None:
                lp, weights = entries(forward, batch)
            else:
                (lp, _), weights = forward(), None
        lp = [float(x) for x in lp]
        injected = [self._entity(x, base, lp[0] - lp[1 + k + j]) for j, x in enumerate(batch.injected[0])]
        return PluggedLeaveOneOut(lp[0], lp[1:1 + k], weights, injected)
