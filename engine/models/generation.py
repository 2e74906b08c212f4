"""Greedy decoding shared by every answer path (bare reader, DPM branch, context, plugins).

A fact prompt is answered by its first sentence: "The capital of Japan is" -> " Tokyo.".
Decoding on past it ("Tokyo. Japan is a country in") costs a full forward per token
(~65 ms for SmolLM2-135M on two CPU cores, memory-bound) for text that no view shows and
no metric reads. So each row stops at the end of its answer (``answer_end``) or after
``max_new_tokens``, whichever comes first, and the text returned is cut there.

Rows of a batch stop independently (a stopped row is padded while the others go on), so
a prompt's answer does not depend on the batch it is decoded in.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

#: Words after which a full stop does not end the sentence ("St. John's", "Mt. Everest").
ABBREVIATIONS = frozenset({
    "st", "ste", "mt", "ft", "pt", "mr", "mrs", "ms", "dr", "prof", "jr", "sr", "no", "nos",
    "vs", "etc", "approx", "ca", "co", "corp", "inc", "ltd", "gen", "lt", "col", "sgt", "capt",
    "rev", "fr", "jan", "feb", "mar", "apr", "aug", "sept", "sep", "oct", "nov", "dec", "fig",
})

_END = re.compile(r"[.!?](?=\s)|\n")
_LAST_WORD = re.compile(r"[\w.'-]*$")


def answer_end(text: str) -> int | None:
    """Where the first sentence of a continuation ends (an index into ``text``), or None
    while it is still open.

    The end is a line break after some text, or ``.``/``!``/``?`` followed by white
    space; a full stop after an abbreviation ("St."), an initial ("J.") or a dotted
    abbreviation ("U.S.") does not end it. Leading white space is skipped. The index
    is just past the punctuation (at the line break).
    """
    start = len(text) - len(text.lstrip())
    for m in _END.finditer(text, start):
        if m.group() == "\n":
            return m.start()
        if m.group() == ".":
            word = _LAST_WORD.search(text, start, m.start()).group().strip("'-")
            if len(word) <= 1 or "." in word or word.lower() in ABBREVIATIONS:
                continue
        return m.end()
    return None


def cut_answer(text: str) -> str:
    """``text`` up to the end of its first sentence (all of it while the sentence is open)."""
    end = answer_end(text)
    return text if end is None else text[:end]


def _stopping_criteria(tokenizer, start: int):
    """A transformers stopping criterion that is True for each row whose new text (the
    columns of ``input_ids`` from ``start`` on) has ended."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAtAnswerEnd(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([answer_end(t) is not None for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return StoppingCriteriaList([StopAtAnswerEnd()])


def greedy_generate(
    reader,
    *,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    stop_at_answer_end: bool = True,
) -> list[str]:
    """Greedy continuations of a left-padded batch given as ``input_ids`` or
    ``inputs_embeds`` (only the new text, special tokens dropped, each cut at the end
    of its answer unless ``stop_at_answer_end`` is False)."""
    from transformers import GenerationConfig

    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("greedy_generate: give exactly one of input_ids and inputs_embeds")
    tok = reader.tokenizer
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    # With input_ids the output repeats the prompt; with inputs_embeds it holds only new tokens.
    start = 0 if input_ids is None else input_ids.shape[1]
    criteria = _stopping_criteria(tok, start) if stop_at_answer_end else None
    kw = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
    with torch.no_grad():
        seq = reader.model.generate(**kw, attention_mask=attention_mask, generation_config=cfg,
                                    stopping_criteria=criteria)
    texts = tok.batch_decode(seq[:, start:], skip_special_tokens=True)
    return [cut_answer(t) for t in texts] if stop_at_answer_end else texts
