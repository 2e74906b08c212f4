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
mode simply injects into the context-prefixed input.

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


def prompt_row(prompt: str, texts: Sequence[str], mode: str, style: str = "facts") -> Row:
    """The reader's input for ``prompt`` in ``mode``: context mode puts ``texts`` before it."""
    if mode != "context" or not texts:
        return Row(prompt, 0)
    from engine.mechanisms.context import context_prompt

    full = context_prompt(prompt, list(texts), style)
    if not full.endswith(prompt):  # every template ends with the prompt
        raise ValueError(f"context style {style!r} does not end with the prompt")
    return Row(full, len(full) - len(prompt))


class PluginFusion:
    """Answers and leave-one-out effects with knowledge plugins AND a memory mode on.

    ``injector``: a :class:`engine.mechanisms.plugins.attach.PluginInjector` for the reader.
    ``mode`` is 'dpm' (``fusion``: a ``DPMFusion``), 'context' (``fusion``: a
    ``ContextFusion``) or 'none' (the plugins alone).
    """

    def __init__(self, reader, injector) -> None:
        self.reader, self.injector = reader, injector

    # ---------------------------------------------------------------- inputs
    def links(self, row: Row) -> list:
        """The injections of the prompt part of ``row``, in ``row.text``'s characters."""
        return [replace(x, start=x.start + row.offset, end=x.end + row.offset)
                for x in self.injector.link(row.text[row.offset:])]

    def injected(self, prompt: str, mode: str, fusion=None, texts: Sequence[str] = ()) -> list[InjectedEntity]:
        """What would be injected for ``prompt`` (no forward pass; loo_delta None)."""
        row = prompt_row(prompt, texts, mode, getattr(fusion, "style", "facts"))
        with torch.no_grad():
            kept = self.injector.build([row.text], links=[self.links(row)]).injected[0]
        return [self._entity(x, row) for x in kept]

    @staticmethod
    def _entity(x, row: Row, loo: float | None = None) -> InjectedEntity:
        return InjectedEntity(x.plugin, x.mention, x.entity, int(x.entity_id), loo, x.start - row.offset,
                              x.end - row.offset)

    def _dpm_scope(self, stack: ExitStack, fusion, mem, scores: torch.Tensor, record_at: int = -1) -> None:
        from engine.mechanisms.dpm import attach

        stack.enter_context(attach(self.reader, fusion.branch))
        stack.enter_context(fusion.branch.memory(mem, scores, record_at=record_at))

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        *,
        mode: str = "none",
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
        has_memory = fusion is not None and mode in ("dpm", "context") and any(texts)
        style = getattr(fusion, "style", "facts")
        rows = [prompt_row(p, t, mode if has_memory else "none", style) for p, t in zip(prompts, texts)]
        with torch.no_grad():
            b = self.injector.build([r.text for r in rows], links=[self.links(r) for r in rows]).inputs
        with ExitStack() as stack:
            if has_memory and mode == "dpm":
                k = max(len(t) for t in texts)
                sc = torch.zeros((len(prompts), k), dtype=torch.float32)  # [b, k]; missing entries are masked
                for i, row in enumerate(scores or []):
                    sc[i, : len(row)] = torch.tensor([float(x) for x in row], dtype=torch.float32)
                self._dpm_scope(stack, fusion, fusion.memory_for(texts), sc)  # memory [b, k, L]
            # The prompt goes in as vectors, so drafts come from the entries' texts (both modes).
            lookup = [lookup_sources(self.reader.tokenizer, t) for t in texts] if has_memory else None
            return greedy_generate(self.reader, inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask,
                                   max_new_tokens=max_new_tokens, lookup=lookup)

    # ---------------------------------------------------------------- leave-one-out
    def leave_one_out(
        self,
        prompt: str,
        answer_ids: Sequence[int],
        *,
        mode: str = "none",
        fusion=None,
        texts: Sequence[str] = (),
        scores: Sequence[float] = (),
    ) -> PluggedLeaveOneOut:
        """log p(answer) with everything, without each entry, without each vector: one forward."""
        inj = self.injector
        texts = list(texts) if (fusion is not None and mode in ("dpm", "context")) else []
        k = len(texts)
        style = getattr(fusion, "style", "facts")
        base = prompt_row(prompt, texts, mode, style)
        links0 = self.links(base)
        with torch.no_grad():  # where the vectors land (dropped ones excluded), before the real batch
            kept = inj.build([base.text], links=[links0]).injected[0]
        kept_idx = [next(i for i, x in enumerate(links0) if x.start == y.start) for y in kept]
        m = len(kept)
        n = 1 + k + m
        if mode == "context":
            rows = [base] + [prompt_row(prompt, texts[:i] + texts[i + 1:], mode, style) for i in range(k)] + [base] * m
        else:
            rows = [base] * n
        links = [links0 if r is base else self.links(r) for r in rows]
        drops = [set() for _ in range(1 + k)] + [{j} for j in kept_idx]
        a = [list(answer_ids)] * n
        la = len(answer_ids)
        weights = None
        # entry states are cached by the fusion: read them outside inference mode, as its own passes do
        mem = fusion.memory_for([texts]) if (k and mode == "dpm") else None  # [1, k, L]
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            batch = inj.build([r.text for r in rows], a, drop=drops, links=links)  # [n, W, d]
            if mem is not None:
                mask = mem.mask.expand(n, *mem.mask.shape[1:]).clone()  # [n, k, L]
                for i in range(k):
                    mask[1 + i, i] = False
                sc = torch.tensor([[float(s) for s in scores]], dtype=torch.float32)  # [1, k]
                # every row ends with the answer (left padding): its last prompt token is at -(la+1)
                self._dpm_scope(stack, fusion, mem.with_mask(mask), sc, record_at=-(la + 1))
                lp, _ = inj.logprob_rows_output(batch, a)
                weights = [float(w) for w in fusion.branch.last_weights[0].float().cpu()]
            elif k and mode == "context":
                lp, weights = self._context_logprob(batch, a, prompt, texts, base, fusion)
            else:
                lp, _ = inj.logprob_rows_output(batch, a)
        lp = [float(x) for x in lp]
        injected = [self._entity(x, base, lp[0] - lp[1 + k + j]) for j, x in enumerate(batch.injected[0])]
        return PluggedLeaveOneOut(lp[0], lp[1:1 + k], weights, injected)

    def _context_logprob(self, batch, a, prompt: str, texts: list[str], base: Row, fusion):
        """Log-probs of the rows and, from row 0's attention (eager, this pass only), each entry's weight:
        the attention mass the last prompt token puts on the entry's tokens, averaged over heads and layers."""
        r = self.reader
        ids0 = r.tokenizer([base.text])["input_ids"][0]
        spans = fusion._entry_spans(prompt, texts, list(ids0))
        model = r.model
        old = model.config._attn_implementation
        try:
            if spans is not None and old != "eager":
                model.set_attn_implementation("eager")
            lp, out = self.injector.logprob_rows_output(batch, a, output_attentions=spans is not None)
        finally:
            if model.config._attn_implementation != old:
                model.set_attn_implementation(old)
        attentions = getattr(out, "attentions", None)
        if spans is None or not attentions:
            return lp, None
        cols = batch.inputs.token_col[0]  # [L]: column of each token of row 0
        q = int(cols[batch.prompt_lens[0] - 1])  # the last prompt token
        att = torch.stack([x[0, :, q].float() for x in attentions]).mean((0, 1)).cpu()  # [W]
        weights = [float(att[cols[s:e]].sum()) if e > s else 0.0 for s, e in spans]
        return lp, weights
