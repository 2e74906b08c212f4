"""Greedy decoding shared by every answer path (bare reader, DPM branch, context, plugins).

A fact prompt is answered by its first sentence: "The capital of Japan is" -> " Tokyo.",
and an answer that starts repeating itself stops there (" France, in France" -> " France").
Decoding on past it ("Tokyo. Japan is a country in") costs a full forward per token
(~60 ms for SmolLM2-135M on two CPU cores, memory-bound) for text that no view shows and
no metric reads. So each row stops at the end of its answer (``answer_end``) or after
``max_new_tokens``, whichever comes first, and the text returned is cut there.

Rows of a batch stop independently (a stopped row is padded while the others go on), so
a prompt's answer does not depend on the batch it is decoded in.

Two things make an answer cheaper without changing it:

* draft verification: an answer read from memory mostly copies an entry ("... is the
  Kenyan shilling"), so each step also feeds the tokens that followed the answer's last
  words in the retrieved entries or the prompt (``propose``) and keeps those the model
  itself predicts. A step of 5 positions costs ~80 ms against ~60 ms for one (with
  ``engine.reader.narrow``), so a copied answer takes 2-3 steps instead of 5-8;
* ``PromptStates``: below a memory branch, a prompt's states do not depend on the
  memory, so a prompt asked again (after an edit) runs only the branch layers in its
  prefill.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from engine.reader.lru import LRU

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


_WORD = re.compile(r"\w+")
#: What may dangle before a repetition and is dropped with it (" France, in France" -> " France").
_DANGLING = re.compile(r"(?:[^\w.!?)\]\"']+|\s+(?:in|of|and|or|the|a|an|at|on|to|by|for|from|with)\b)+$",
                       re.IGNORECASE)


def repeat_end(text: str) -> int | None:
    """Where a continuation starts repeating itself (an index into ``text``), or None.

    A repetition is a pair of consecutive words (case-insensitive, punctuation ignored)
    that occurred earlier in the text: " France, in France, in France." is cut before its
    second " France, in" and what dangles there (", in") is dropped, giving " France".
    The pair's second word must be complete (followed by something), so a word still
    being decoded never triggers it. Overlapping pairs count (" rw.rw.rw" -> " rw").
    """
    words = list(_WORD.finditer(text))
    seen: set[tuple[str, str]] = set()
    for a, b in zip(words, words[1:]):
        if b.end() == len(text):
            return None
        pair = (a.group().lower(), b.group().lower())
        if pair in seen:
            start = a.start()
            while start > 0 and not text[start - 1].isspace() and not _WORD.match(text[start - 1]):
                start -= 1  # an opening quote or bracket goes with the repeated word
            cut = _DANGLING.sub("", text[:start])
            return len(cut) if cut.strip() else None
        seen.add(pair)
    return None


def sentence_ends(entry: str) -> list[tuple[int, int]]:
    """``(bare, full)`` ends of each sentence of an entry: ``full`` is just past its final
    punctuation (as :func:`answer_end` finds it; the entry's end for its last sentence),
    ``bare`` is before that punctuation ("Al Ain." -> the index after "Ain")."""
    ends, start = [], 0
    stop = len(entry.rstrip())
    while start < stop:
        e = answer_end(entry[start:stop])
        full = stop if e is None else start + e
        bare = full
        while bare > start and entry[bare - 1] in ".!?":
            bare -= 1
        ends.append((bare, full))
        start = full
    return ends


def _common(a: str, b: str, start: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start:]``."""
    n = 0
    for x, y in zip(a, b[start:] if start else b):
        if x != y:
            break
        n += 1
    return n


_TOKEN = re.compile(r"(?<!\S)\S")


def span_end(text: str, entries: Sequence[str]) -> int | None:
    """Where an answer that copies an entry has reached that entry's sentence end (an index
    into ``text``), or None.

    The entry copied is the one sharing the longest prefix with the answer (starting after a
    space of the entry or at its start, and holding a word; every such place is tried, best-ranked entry first). The answer stops

    * with the entry's final punctuation when it has copied the span up to it
      (" Al Ain." of "… is Al Ain."; " Washington, D.C." keeps its dot), or
    * before what it wrote instead of that punctuation once it leaves the entry there
      (" Al Ain, the city" -> " Al Ain").

    It only stops at an entry's sentence end, never inside the copied span, so an object
    copied whole ("Washington, D.C.", "Al Ain") is never cut short; an answer that does not
    copy an entry gets None (the sentence and repeat stops still apply).
    """
    s = text.lstrip()
    lead = len(text) - len(s)
    if not s:
        return None
    copies = []  # (copied length, entry, start in the entry), best-ranked entry first
    for entry in entries:
        for m in _TOKEN.finditer(entry):  # an answer starts where a word of the entry does (".ke", "+385")
            c = _common(s, entry, m.start())
            if c and _WORD.search(s, 0, c):
                copies.append((c, entry, m.start()))
    if not copies:
        return None
    longest = max(c for c, _, _ in copies)
    for c, entry, p in copies:  # every place the answer copies that much (" Al Ain" is a subject too)
        if c != longest:
            continue
        for bare, full in sentence_ends(entry):
            if full <= p:
                continue
            if full <= p + c:
                return lead + full - p  # copied up to the sentence's final punctuation (or the entry's end)
            if c < len(s) and p < bare == p + c and not _WORD.match(s[c]):
                # Left the entry where its punctuation comes: keep the reader's own full stop,
                # drop anything else (", the city").
                return lead + c + (s[c] in ".!?")
            break
    return None


def answer_stop(text: str, entries: Sequence[str] = ()) -> int | None:
    """Where an answer ends: its first sentence's end, where it starts repeating, or (with
    the retrieved ``entries``) where it has copied an entry up to its sentence end
    (:func:`span_end`), whichever is first."""
    ends = [e for e in (answer_end(text), repeat_end(text), span_end(text, entries) if entries else None)
            if e is not None]
    return min(ends) if ends else None


def cut_answer(text: str, entries: Sequence[str] = ()) -> str:
    """``text`` up to the end of its answer (:func:`answer_stop`; all of it while it is open)."""
    end = answer_stop(text, entries)
    if end is None and text and _WORD.search(text[-1]):  # a decoded answer's last word is complete
        end = repeat_end(text + " ")
    return text if end is None else text[:end]


#: Draft tokens verified per row in one decoding step (see ``greedy_generate``).
DRAFT_TOKENS = 4
#: Draft only while a step stays this narrow (rows x positions): wider steps cost more than they save.
DRAFT_BUDGET = 8
_NGRAM = 3


def propose(history: Sequence[int], sources: Sequence[Sequence[int]], n: int) -> list[int]:
    """Up to ``n`` tokens likely to follow ``history``: what followed the longest recent
    n-gram of ``history`` (3 tokens down to 1) where it occurs in ``sources`` (searched in
    order) or earlier in ``history`` itself ("prompt lookup", from 2 tokens: a lone
    common token of the prompt such as " the" mostly proposes what the model will not
    say, and a rejected draft costs ~20 ms). Empty when nothing matches.
    """
    if n <= 0 or not history:
        return []
    hist = list(history)
    for size in range(min(_NGRAM, len(hist)), 0, -1):
        tail = hist[-size:]
        for src in [*sources, hist[:-1]] if size > 1 else sources:
            src = list(src)
            for i in range(len(src) - size - 1, -1, -1):  # the most recent occurrence first
                if src[i:i + size] == tail:
                    return src[i + size:i + size + n]
    return []


def lookup_sources(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of retrieved entries' texts as they would read inside an answer (with a
    leading space), for ``greedy_generate(lookup=...)``."""
    texts = [t for t in texts if t]
    if not texts:
        return []
    return [list(ids) for ids in tokenizer([" " + t.strip() for t in texts], add_special_tokens=False)["input_ids"]]


class PromptStates(LRU):
    """The reader's states of recent prompts below layer ``first`` (LRU, keyed by token ids).

    Under the layers a memory branch hooks, a prompt's states do not depend on the
    memory: asked again (after an edit, with other packs), its prefill only runs the
    layers from ``first`` on. Holds per prompt the hidden states entering layer
    ``first`` and the key/value cache of the layers below (~40 KB per token for
    SmolLM2 with a 4-layer branch).
    """

    def __init__(self, first: int, size: int = 32) -> None:
        if first < 1:
            raise ValueError(f"PromptStates: first must be >= 1, got {first}")
        super().__init__(size)
        self.first = first

    def get(self, ids: Sequence[int]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """(hidden states entering ``first`` [T, d], [(keys, values) per lower layer]) of a prompt."""
        return super().get(tuple(ids))

    def put(self, ids: Sequence[int], value: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        super().put(tuple(ids), value)


def _right_align(rows: Sequence[torch.Tensor], width: int, dim: int) -> torch.Tensor:
    """Stack unpadded tensors into a batch, left-padded with zeros along ``dim`` to ``width``."""
    out = []
    for t in rows:
        pad = list(t.shape)
        pad[dim] = width - t.shape[dim]
        out.append(torch.cat([t.new_zeros(pad), t], dim=dim))
    return torch.stack(out)


def _prefill(reader, cache, mask: torch.Tensor, pos: torch.Tensor, input_ids, inputs_embeds,
             history: list[list[int]], states: PromptStates | None) -> torch.Tensor:
    """The prompts' forward pass into ``cache``; the last position's logits ``[b, V]``.

    With ``states``: when every row's prompt is known, only the layers from
    ``states.first`` on run (the lower layers' cache and output come from ``states``);
    otherwise the full pass runs and records each row's lower states.
    """
    model = reader.model
    if states is None or input_ids is None:
        kw = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
        out = model(**kw, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]
    first, width = states.first, mask.shape[1]
    known = [states.get(h) for h in history]
    if all(k is not None for k in known):
        hidden = _right_align([k[0] for k in known], width, 0)  # [b, W, d]
        last = reader.run_from(first, hidden, mask, pos, cache=cache)
        for i in range(first):
            cache.update(_right_align([k[1][i][0] for k in known], width, 1),
                         _right_align([k[1][i][1] for k in known], width, 1), i)
        return model.lm_head(last[:, -1])
    grabbed: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        grabbed.append(args[0] if args else kwargs["hidden_states"])

    handle = reader.layers[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    logits_to_keep=1)
    finally:
        handle.remove()
    if any(getattr(cache.layers[i], "is_sliding", False) for i in range(first)):
        return out.logits[:, -1]  # a sliding-window cache may not hold whole prompts: keep nothing
    for r, h in enumerate(history):
        t = len(h)
        kv = [(cache.layers[i].keys[r, :, width - t:].clone(), cache.layers[i].values[r, :, width - t:].clone())
              for i in range(first)]
        states.put(h, (grabbed[0][r, width - t:].clone(), kv))
    return out.logits[:, -1]


def greedy_generate(
    reader,
    *,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    stop_at_answer_end: bool = True,
    lookup: Sequence[Sequence[Sequence[int]]] | None = None,
    prompt_states: PromptStates | None = None,
    spans: Sequence[Sequence[str]] | None = None,
) -> list[str]:
    """Greedy continuations of a left-padded batch given as ``input_ids`` or
    ``inputs_embeds`` (only the new text, special tokens dropped, each cut at the end
    of its answer unless ``stop_at_answer_end`` is False).

    Decoding verifies drafts: each step feeds a row's last token followed by up to
    ``DRAFT_TOKENS`` tokens that ``propose`` expects next (from the row's own tokens and
    its ``lookup`` sequences, e.g. the retrieved entries' tokens), and keeps the drafts
    the model itself predicts plus its own next token. The text is the plain greedy
    continuation (up to float rounding: a step of several positions sums in another
    order); a step of a few positions costs little more than a one-token step (the
    weights are read once), so an answer copied from an entry takes fewer steps.
    Rejected positions stay in the key/value cache with their attention mask off.

    ``prompt_states`` (with ``input_ids``): prompts asked before skip the layers below
    ``prompt_states.first`` in their prefill (see :class:`PromptStates`); only valid
    while nothing acts on those layers.
    ``spans``: each row's retrieved entry texts (best-ranked first): an answer that copies
    one of them stops at that entry's sentence end (:func:`span_end`).
    """
    from transformers import DynamicCache

    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("greedy_generate: give exactly one of input_ids and inputs_embeds")
    tok = reader.tokenizer
    model = reader.model
    b = attention_mask.shape[0]
    if max_new_tokens <= 0 or b == 0:
        return [""] * b
    if lookup is not None and len(lookup) != b:
        raise ValueError(f"greedy_generate: lookup has {len(lookup)} rows for a batch of {b}")
    dev = attention_mask.device
    eos, pad = tok.eos_token_id, int(tok.pad_token_id)
    mask = attention_mask.long()
    history = ([[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(input_ids.tolist(), mask.tolist())]
               if input_ids is not None else [[] for _ in range(b)])
    if spans is not None and len(spans) != b:
        raise ValueError(f"greedy_generate: spans has {len(spans)} rows for a batch of {b}")
    sources = [list(lookup[r]) if lookup is not None else [] for r in range(b)]
    entries = [[t for t in spans[r] if t] if spans is not None else [] for r in range(b)]
    new: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b

    def take(r: int, token: int) -> bool:
        """Append ``token`` to row r; True when the row has ended."""
        if eos is not None and token == eos:
            return True
        new[r].append(token)
        history[r].append(token)
        if len(new[r]) >= max_new_tokens:
            return True
        return stop_at_answer_end and answer_stop(tok.decode(new[r], skip_special_tokens=True), entries[r]) is not None

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        first = _prefill(reader, cache, mask, pos, input_ids, inputs_embeds, [list(h) for h in history],
                         prompt_states).argmax(-1).tolist()
        for r in range(b):
            done[r] = take(r, first[r])
        while not all(done):
            active = [r for r in range(b) if not done[r]]
            n = min(DRAFT_TOKENS, DRAFT_BUDGET // len(active) - 1)
            feeds = {r: [new[r][-1]] + propose(history[r], sources[r], min(n, max_new_tokens - len(new[r]) - 1))
                     for r in active}
            w = max(len(f) for f in feeds.values())
            ids = torch.full((b, w), pad, dtype=torch.long)
            step = torch.zeros((b, w), dtype=torch.long)
            for r, f in feeds.items():
                ids[r, : len(f)] = torch.tensor(f, dtype=torch.long)
                step[r, : len(f)] = 1
            mask = torch.cat([mask, step.to(dev)], dim=1)
            pos = ((mask.cumsum(-1) - 1).clamp(min=0))[:, -w:]
            out = model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos, cache=cache,
                        use_cache=True, logits_to_keep=w)
            pred = out.logits.argmax(-1).tolist()  # [b, w]
            for r, f in feeds.items():
                j = 0  # drafts f[1..j] match what the model predicts after each prefix
                while j + 1 < len(f) and pred[r][j] == f[j + 1]:
                    j += 1
                for i in range(j + 1):
                    if take(r, pred[r][i]):
                        done[r] = True
                        break
                # The cache holds every fed position; those after the kept drafts are invalid.
                mask[r, mask.shape[1] - w + j + 1:] = 0
    texts = [tok.decode(row, skip_special_tokens=True) for row in new]
    return [cut_answer(t, e) for t, e in zip(texts, entries)] if stop_at_answer_end else texts
