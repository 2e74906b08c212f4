"""Putting a product-key memory beside (or in place of) a reader layer's feed-forward block,
and taking it off again.

Llama-style decoder layers compute ``h = h + mlp(post_attention_layernorm(h))``
(transformers 5.x ``LlamaDecoderLayer.forward``), so a forward hook on the chosen layer's
``mlp`` returning ``mlp(n) + pkm(n)`` gives exactly ``h + FFN(n) + PKM(n)``. The ablation's
``placement='replace'`` swaps the ``mlp`` module for the memory (``h + PKM(n)``); detaching
puts the very same module object back. Either way the reader's own tensors are never written.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.mechanisms.pkm.config import PKMError
from engine.mechanisms.pkm.module import ProductKeyMemory

_ATTR = "_pkm_attachment"


class _Replaced(nn.Module):
    """What sits where the FFN was, for ``placement='replace'``."""

    def __init__(self, memory: ProductKeyMemory, owner: "Attachment") -> None:
        super().__init__()
        self.memory, self._owner = memory, [owner]  # a list: not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._owner[0]._record(x)
        return self.memory(x)


class Attachment:
    """A memory on a reader's layer; :meth:`detach` (or leaving the ``with``) takes it off.

    ``recording``: a list to which every forward appends ``(slots [N, H, k], weights [N, H, k])``
    on the CPU (for the usage figures), or None."""

    def __init__(self, reader, memory: ProductKeyMemory, layer: int, placement: str) -> None:
        self.reader, self.memory, self.layer, self.placement = reader, memory, layer, placement
        self.recording: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.source: str | None = None  # the folder the memory was loaded from, for explanations
        self._hook = None
        self._mlp: nn.Module | None = None
        block = reader.layers[layer]
        if placement == "replace":
            self._mlp = block.mlp
            block.mlp = _Replaced(memory, self)
        else:
            def hook(module, inputs, output):
                self._record(inputs[0])
                return output + memory(inputs[0])

            self._hook = block.mlp.register_forward_hook(hook)
        setattr(reader, _ATTR, self)

    def _record(self, x: torch.Tensor) -> None:
        if self.recording is not None:
            with torch.no_grad():
                idx, w = self.memory.lookup(x.reshape(-1, x.shape[-1]).float())
            self.recording.append((idx.cpu(), w.cpu()))

    @property
    def attached(self) -> bool:
        return getattr(self.reader, _ATTR, None) is self

    def detach(self) -> None:
        if not self.attached:
            return
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._mlp is not None:
            self.reader.layers[self.layer].mlp = self._mlp
            self._mlp = None
        setattr(self.reader, _ATTR, None)

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def attach(reader, memory: ProductKeyMemory, layer: int, placement: str = "beside") -> Attachment:
    """Attach ``memory`` at ``reader.layers[layer]`` (moved to the reader's device, float32).

    One memory per reader at a time: a second attach is refused until the first is detached."""
    if not 0 <= layer < len(reader.layers):
        raise PKMError(f"layer {layer} is out of range: the reader has layers 0 to {len(reader.layers) - 1}")
    if memory.hidden_size != reader.hidden_size:
        raise PKMError(f"this memory's values are {memory.hidden_size}-wide, the reader's hidden size is "
                       f"{reader.hidden_size}")
    current = getattr(reader, _ATTR, None)
    if current is not None and current.attached:
        raise PKMError("a product-key memory is already attached to this reader; detach it first")
    memory.to(reader.device)
    return Attachment(reader, memory, layer, placement)


def attachment(reader) -> Attachment | None:
    """The memory attached to ``reader`` now, or None."""
    att = getattr(reader, _ATTR, None)
    return att if att is not None and att.attached else None
