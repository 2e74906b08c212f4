"""Training-free baseline: the retrieved entries are written into the prompt.

``"Facts:\\n- <entry>\\n- <entry>\\n\\n<prompt>"``: the reader reads the entries as
context. No training, works with any reader, but a small reader follows a
counterfactual fact in its context only about half the time (docs/FACTS). Offers the
same interface as ``engine.mechanisms.dpm.DPMFusion`` so explanations are built the same
way whatever the mode.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from engine.mechanisms.base import LeaveOneOut
from engine.reader.batching import answer_logprob_rows

log = logging.getLogger(__name__)

#: Prompt layouts; ``{facts}`` is the bullet list, ``{prompt}`` the user's prompt.
TEMPLATES: dict[str, str] = {
    "facts": "Facts:\n{facts}\n\n{prompt}",
    "plain": "{facts}\n{prompt}",
}


def format_facts(texts: Sequence[str], style: str = "facts") -> str:
    """The entries as the context block of ``style`` ('facts': bullets; 'plain': one per line)."""
    if style == "facts":
        return "\n".join(f"- {' '.join(t.split())}" for t in texts)
    return "\n".join(" ".join(t.split()) for t in texts)


def context_prompt(prompt: str, texts: Sequence[str], style: str = "facts") -> str:
    """``prompt`` preceded by the entries (unchanged when there are none)."""
    if style not in TEMPLATES:
        raise ValueError(f"unknown context style {style!r}; known: {', '.join(TEMPLATES)}")
    if not texts:
        return prompt
    return TEMPLATES[style].format(facts=format_facts(texts, style), prompt=prompt)


class ContextFusion:
    """Context mode: the top-k entries are placed before the prompt."""

    mode = "context"

    def __init__(self, reader, style: str = "facts") -> None:
        if style not in TEMPLATES:
            raise ValueError(f"unknown context style {style!r}; known: {', '.join(TEMPLATES)}")
        self.reader, self.style = reader, style

    def generate(
        self, prompt: str, texts: Sequence[str], scores: Sequence[float], max_new_tokens: int, plain: str | None = None
    ) -> tuple[str, str]:
        """(answer with the entries in the context, answer of the bare prompt), batched.

        Pass ``plain`` (the bare reader's answer, known from before) to skip computing it.
        """
        if not texts:
            plain = self.reader.generate(prompt, max_new_tokens=max_new_tokens) if plain is None else plain
            return plain, plain
        if plain is not None:
            return self.reader.generate(context_prompt(prompt, texts, self.style), max_new_tokens=max_new_tokens,
                                        spans=[list(texts)]), plain
        with_ctx, plain = self.reader.generate([context_prompt(prompt, texts, self.style), prompt],
                                               max_new_tokens=max_new_tokens, spans=[list(texts), []])
        return with_ctx, plain

    def leave_one_out(self, prompt: str, texts: Sequence[str], scores: Sequence[float], answer_ids: Sequence[int]) -> LeaveOneOut:
        """k+1 context variants in one forward: all entries, then all but entry i.

        An entry's weight is the attention mass the last prompt token puts on the
        entry's tokens in the full-context row, averaged over heads and layers (the
        reader runs with eager attention for this one pass, as sdpa gives no weights).
        """
        r = self.reader
        texts = list(texts)
        k = len(texts)
        variants = [texts] + [texts[:i] + texts[i + 1:] for i in range(k)]
        rows = [r.tokenizer([context_prompt(prompt, v, self.style)])["input_ids"][0] for v in variants]
        spans = self._entry_spans(prompt, texts, rows[0])
        model = r.model
        old = model.config._attn_implementation
        try:
            if spans is not None and old != "eager":
                model.set_attn_implementation("eager")
            with torch.inference_mode():
                sums, out = answer_logprob_rows(r, rows, answer_ids, output_attentions=spans is not None)
        finally:
            if model.config._attn_implementation != old:
                model.set_attn_implementation(old)
        weights = None
        if spans is not None and out.attentions:
            width = max(len(x) for x in rows) + len(answer_ids)
            offset = width - len(answer_ids) - len(rows[0])  # left padding of row 0
            q = width - len(answer_ids) - 1  # last prompt token
            att = torch.stack([a[0, :, q].float() for a in out.attentions]).mean((0, 1))  # [T]
            weights = [float(att[offset + s: offset + e].sum()) for s, e in spans]
        return LeaveOneOut(float(sums[0]), [float(x) for x in sums[1:]], weights)

    # ---------------------------------------------------------------- the answer mode's common methods
    # What ``engine.evaluate`` and ``engine.explain.plugged`` call on any mode's fusion
    # (``DPMFusion`` has the same), so that they never ask which mode it is.
    def generate_many(self, prompts: Sequence[str], texts: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                      max_new_tokens: int) -> list[str]:
        """Greedy answers of several prompts, each with its own entries before it (one batch)."""
        ctx = [context_prompt(p, t, self.style) for p, t in zip(prompts, texts)]
        return self.reader.generate(ctx, max_new_tokens=max_new_tokens, batch_size=max(1, len(ctx)),
                                    spans=[list(t) for t in texts])

    def reader_input(self, prompt: str, texts: Sequence[str]) -> tuple[str, int]:
        """The text the reader reads for ``prompt`` with ``texts``, and where the prompt starts in it."""
        if not texts:
            return prompt, 0
        full = context_prompt(prompt, list(texts), self.style)
        if not full.endswith(prompt):  # every template ends with the prompt
            raise ValueError(f"context style {self.style!r} does not end with the prompt")
        return full, len(full) - len(prompt)

    def leave_one_out_inputs(self, prompt: str, texts: Sequence[str]) -> list[tuple[str, int]]:
        """The reader inputs without entry i, for each i."""
        texts = list(texts)
        return [self.reader_input(prompt, texts[:i] + texts[i + 1:]) for i in range(len(texts))]

    @contextmanager
    def entries_on(self, texts: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> Iterator[None]:
        """Nothing to switch on: the entries are in the reader's input text."""
        yield

    def leave_one_out_with(self, prompt: str, texts: Sequence[str], scores: Sequence[float],
                           answer_len: int) -> Callable[[Callable[..., Any], Any], tuple[Any, list[float] | None]]:
        """``run(forward, batch) -> (log p per row, entry weights)`` for a batch built by another
        mechanism (``batch``: a plugin injector's; ``forward(**kw)`` its forward) whose rows are
        ``reader_input`` (all entries), then ``leave_one_out_inputs``: each weight is the attention
        mass the last prompt token of row 0 puts on the entry's tokens (eager attention, this pass)."""
        texts = list(texts)

        def run(forward: Callable[..., Any], batch: Any) -> tuple[Any, list[float] | None]:
            r = self.reader
            ids0 = r.tokenizer([self.reader_input(prompt, texts)[0]])["input_ids"][0]
            spans = self._entry_spans(prompt, texts, list(ids0))
            model = r.model
            old = model.config._attn_implementation
            try:
                if spans is not None and old != "eager":
                    model.set_attn_implementation("eager")
                lp, out = forward(output_attentions=spans is not None)
            finally:
                if model.config._attn_implementation != old:
                    model.set_attn_implementation(old)
            attentions = getattr(out, "attentions", None)
            if spans is None or not attentions:
                return lp, None
            cols = batch.inputs.token_col[0]  # [L]: column of each token of row 0
            q = int(cols[batch.prompt_lens[0] - 1])  # the last prompt token
            att = torch.stack([x[0, :, q].float() for x in attentions]).mean((0, 1)).cpu()  # [W]
            return lp, [float(att[cols[s:e]].sum()) if e > s else 0.0 for s, e in spans]

        return run

    def _entry_spans(self, prompt: str, texts: list[str], ids: list[int]) -> list[tuple[int, int]] | None:
        """Token span [start, end) of each entry inside the full-context prompt, via offsets."""
        tok = self.reader.tokenizer
        full = context_prompt(prompt, texts, self.style)
        try:
            enc = tok([full], return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):
            return None
        offsets = enc["offset_mapping"][0]
        if list(enc["input_ids"][0]) != list(ids):
            return None
        spans, pos = [], 0
        for t in texts:
            piece = " ".join(t.split())
            start = full.find(piece, pos)
            if start < 0:
                return None
            end = start + len(piece)
            pos = end
            toks = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
            spans.append((toks[0], toks[-1] + 1) if toks else (0, 0))
        return spans
