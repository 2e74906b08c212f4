"""What a plugged product-key memory did for an answer (Ask and explain, ``plugmem predict --pkm``).

The layer sits on the reader (``engine.mechanisms.pkm.attach``) for every answer, so the
record says it was active (:func:`layer_info`), can give the answer without it
(:func:`without_layer`: detached for the ``with``, plugged again after, the reader bit for bit
as before in between), and lists the slots it read most for the answer (:func:`slots_read`).

The slots read: the prompt followed by the answer's tokens (as ``Reader.answer_logprob``
tokenises them) goes once through the reader with the layer; at each position that predicts
an answer token the layer's softmax weights are summed over the heads and the k slots each
head read, then over those positions. A slot's top tokens read its value row through the
reader's final norm and unembedding (value · lm_head, a logit-lens reading: the layers above
the memory may still change what the value does). The reading is of the prompt alone, not of
the retrieved entries a memory mode put before it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from engine.explain.record import SlotRead
from engine.mechanisms.pkm.mechanism import value_tokens

#: Slots listed per answer, and top tokens per slot.
TOP_SLOTS = 8
TOP_TOKENS = 5


def attached_layer(reader):
    """The product-key memory attached to ``reader`` now (an ``Attachment``), or None."""
    from engine.mechanisms.pkm.attach import attachment

    return attachment(reader)


def layer_info(reader) -> dict[str, Any] | None:
    """What the record says of the plugged layer: its folder, layer, slots and placement (None: none)."""
    att = attached_layer(reader)
    if att is None:
        return None
    return {"folder": att.source, "layer": int(att.layer), "slots": int(att.memory.config.slots),
            "placement": att.placement}


def layer_key(reader) -> tuple:
    """Identifies the layer plugged now (empty: none), for caches of answers of a frozen reader."""
    att = attached_layer(reader)
    return () if att is None else (id(att.memory),)


@contextmanager
def without_layer(reader) -> Iterator[None]:
    """The plugged layer taken off for the ``with`` and plugged again after (a no-op with none)."""
    from engine.mechanisms.pkm.attach import attach

    att = attached_layer(reader)
    if att is None:
        yield
        return
    att.detach()
    try:
        yield
    finally:
        again = attach(reader, att.memory, att.layer, att.placement)
        again.source = att.source


@torch.no_grad()
def slots_read(reader, prompt: str, answer: str, n: int = TOP_SLOTS, top_tokens: int = TOP_TOKENS) -> list[SlotRead]:
    """The ``n`` slots the plugged layer gave the most weight while the reader read ``answer``
    after ``prompt`` (best first; [] with no layer plugged or an empty answer)."""
    att = attached_layer(reader)
    if att is None:
        return []
    a_ids = reader.tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    if not a_ids:
        return []
    p_ids = reader._prompt_ids([prompt])[0]
    ids = torch.tensor([p_ids + a_ids], device=reader.device)  # [1, P + A]
    att.recording = []
    try:
        reader.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        idx, w = att.recording[0]  # [P + A, H, k] each
    finally:
        att.recording = None
    # the positions that predict the answer's tokens: P - 1 ... P + A - 2
    at = slice(len(p_ids) - 1, len(p_ids) + len(a_ids) - 1)
    idx, w = idx[at].reshape(-1), w[at].reshape(-1).float()
    total = torch.zeros(att.memory.config.slots).index_add_(0, idx, w)  # [slots]
    top = total.topk(min(n, int((total > 0).sum())))
    return [SlotRead(int(i), float(v), value_tokens(reader, att.memory, int(i), top_tokens))
            for v, i in zip(top.values, top.indices)]
