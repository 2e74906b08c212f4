"""The product-key memory as a :class:`~engine.mechanisms.base.Mechanism` (kind 'added layer')."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from engine.mechanisms.base import LeaveOneOut, MechanismBase
from engine.mechanisms.pkm import io
from engine.mechanisms.pkm.attach import Attachment, attach
from engine.mechanisms.pkm.module import ProductKeyMemory
from engine.mechanisms.registry import mechanism

#: How many of the slots the answer read most are left out in turn by leave_one_out.
LOO_SLOTS = 8


@torch.no_grad()
def value_tokens(reader, memory: ProductKeyMemory, slot: int, n: int = 5) -> list[str]:
    """The ``n`` tokens slot ``slot``'s value row pushes the output towards, read through the
    reader's final norm (when it has one) and the unembedding (a logit-lens reading: the value
    enters the residual stream at the layer, the layers above may change what it does)."""
    value = memory.values.weight[slot].to(reader.device, reader.dtype)  # [d]
    norm = getattr(getattr(reader.model, "model", None), "norm", None)
    h = norm(value[None, None]) if norm is not None else value[None, None]  # [1, 1, d]
    logits = reader.model.lm_head(h)[0, 0].float()  # [V]
    return [reader.tokenizer.decode([int(i)]) for i in logits.topk(min(n, logits.shape[0])).indices]


class PKMMechanism(MechanismBase):
    """A grown memory at its layer; ``meta`` is its config.json (corpus, training figures)."""

    spec = mechanism("pkm")

    def __init__(self, memory: ProductKeyMemory, layer: int, meta: dict[str, Any] | None = None) -> None:
        self.memory, self.layer, self.meta = memory, int(layer), dict(meta or {})
        self.folder: str | None = None  # set by load(): named in explanations

    @property
    def placement(self) -> str:
        return self.memory.config.placement

    @contextmanager
    def attach(self, reader) -> Iterator[Attachment]:
        with self.plug(reader) as att:
            yield att

    def plug(self, reader) -> Attachment:
        """Attach the memory until ``detach()`` (the app's checkbox); :meth:`attach` for a ``with``."""
        att = attach(reader, self.memory, self.layer, self.placement)
        att.source = self.folder
        return att

    def top_slots(self, reader, prompt: str, answer: str, n: int = LOO_SLOTS) -> list[tuple[int, float]]:
        """The ``n`` slots that received the most weight while the reader read ``prompt + answer``'s
        answer tokens: (slot, summed weight)."""
        ids = reader.tokenizer(prompt + answer, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n_ans = len(reader.tokenizer(answer, add_special_tokens=False)["input_ids"])
        with torch.no_grad(), self.attach(reader) as att:
            att.recording = []
            reader.model(input_ids=ids.to(reader.device), use_cache=False, logits_to_keep=1)
            idx, w = att.recording[0]
            att.recording = None
        # the positions that predict the answer tokens: the last n_ans + 1 but the final one
        idx, w = idx[-(n_ans + 1):-1].reshape(-1), w[-(n_ans + 1):-1].reshape(-1)
        total = torch.zeros(self.memory.config.slots).index_add_(0, idx, w.float())
        top = total.topk(min(n, int((total > 0).sum())))
        return [(int(i), float(v)) for v, i in zip(top.values, top.indices)]

    def slot_tokens(self, reader, slot: int, n: int = 5) -> list[str]:
        """The ``n`` tokens slot ``slot``'s value pushes the output towards (:func:`value_tokens`)."""
        return value_tokens(reader, self.memory, slot, n)

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        """log p(answer) with the layer, and with each of the slots it read most for the answer
        zeroed in turn (the parts are 'slot N')."""
        slots = self.top_slots(reader, prompt, answer)
        values = self.memory.values.weight
        with self.attach(reader):
            logp_all = float(reader.answer_logprob(prompt, answer))
            without = []
            for slot, _ in slots:
                saved = values.data[slot].clone()
                values.data[slot].zero_()
                try:
                    without.append(float(reader.answer_logprob(prompt, answer)))
                finally:
                    values.data[slot].copy_(saved)
        total = sum(w for _, w in slots) or 1.0
        return LeaveOneOut(logp_all, without, [w / total for _, w in slots], [f"slot {s}" for s, _ in slots])

    def save(self, folder: str | Path, *, reader_fingerprint: dict | None = None) -> Path:
        fp = reader_fingerprint or self.meta.get("reader") or {}
        return io.save(self.memory, folder, reader_fingerprint=fp, layer=self.layer,
                       corpus=self.meta.get("corpus"), training=self.meta.get("training"))

    @classmethod
    def load(cls, folder: str | Path, reader) -> "PKMMechanism":
        memory, meta = io.load(folder, reader)
        mech = cls(memory, meta["layer"], meta)
        mech.folder = str(folder)
        return mech
