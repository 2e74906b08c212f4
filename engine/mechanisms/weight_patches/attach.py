"""Applying patches to a reader in place, in a stated order, and removing them exactly.

Applying adds each delta to its tensor under ``torch.no_grad()``; removing copies back the
tensor as it was before (``w + d - d`` is not ``w`` bit for bit in float32). One
:class:`PatchStack` per reader keeps the order: removing a patch restores every tensor to
what it was before that patch and applies the later ones again, each re-checked against
its base (a sequential patch made on top of the removed one no longer fits and is left
out, named in the result). A patch is checked whole before any tensor is written, so
nothing is ever applied partially.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from engine.mechanisms.weight_patches.config import PatchError
from engine.mechanisms.weight_patches.module import WeightPatch, tensor_sha256

_ATTR = "_weight_patch_stack"


def check_reader(patch: WeightPatch, reader, where: str = "") -> None:
    """Refuse a patch made for another reader, naming both (``engine.artefacts.check_reader``)."""
    from engine.mechanisms.weight_patches.io import PatchFiles

    PatchFiles.check_reader(patch.reader or {}, reader, where or f"The weight patch {patch.name!r}")


def parameters(reader, names: Sequence[str], where: str) -> dict[str, torch.nn.Parameter]:
    """The reader's parameters called ``names``; an unknown name is refused with examples."""
    params = dict(reader.model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        blocks = reader.num_layers
        raise PatchError(f"{where}: the reader has no tensor {unknown[0]!r} (it has blocks 0 to {blocks - 1}, "
                         f"e.g. 'model.layers.0.mlp.down_proj.weight')")
    return {n: params[n] for n in names}


class PatchStack:
    """The patches applied to one reader, first applied first."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self._applied: list[tuple[WeightPatch, dict[str, torch.Tensor]]] = []  # (patch, tensors before it)

    @classmethod
    def of(cls, reader) -> "PatchStack":
        stack = getattr(reader, _ATTR, None)
        if stack is None:
            stack = cls(reader)
            setattr(reader, _ATTR, stack)
        return stack

    @property
    def patches(self) -> list[WeightPatch]:
        return [p for p, _ in self._applied]

    def names(self) -> list[str]:
        return [p.name for p, _ in self._applied]

    def check(self, patch: WeightPatch) -> dict[str, torch.nn.Parameter]:
        """Everything that must hold before ``patch`` touches a tensor: its reader, its
        tensors' names and shapes, and their current values (sha256) against its base."""
        where = f"patch {patch.name!r}"
        if any(p is patch for p in self.patches):
            raise PatchError(f"{where} is already applied")
        check_reader(patch, self.reader, where)
        params = parameters(self.reader, sorted(patch.deltas), where)
        for n, p in params.items():
            d = patch.deltas[n]
            if tuple(d.shape) != tuple(p.shape):
                raise PatchError(f"{where}: {n} has the shape {list(d.shape)}, the reader's {list(p.shape)}")
            now = tensor_sha256(p)
            if now != patch.base[n]:
                on = f" (it was made on top of {', '.join(patch.on_top_of)})" if patch.on_top_of else ""
                active = f"; applied now: {', '.join(self.names())}" if self._applied else "; no patch is applied now"
                raise PatchError(f"{where}: the base of {n} does not match: the patch expects sha256 "
                                 f"{patch.base[n][:12]}…, the reader has {now[:12]}…{on}{active}")
        return params

    def apply(self, patch: WeightPatch) -> None:
        params = self.check(patch)
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.add_(patch.deltas[n].to(device=p.device, dtype=p.dtype))
        self._applied.append((patch, saved))

    def remove(self, patch: WeightPatch | str) -> list[tuple[str, str]]:
        """Remove ``patch`` (or the one of that name); the later ones are applied again where
        their base still matches. Returns ``[(name, why)]`` of those left out."""
        idx = next((i for i, (p, _) in enumerate(self._applied) if p is patch or p.name == patch), None)
        if idx is None:
            name = patch if isinstance(patch, str) else patch.name
            raise PatchError(f"patch {name!r} is not applied (applied: {', '.join(self.names()) or 'none'})")
        later = [p for p, _ in self._applied[idx + 1:]]
        self._restore_to(idx)
        dropped: list[tuple[str, str]] = []
        for p in later:
            try:
                self.apply(p)
            except PatchError as exc:
                dropped.append((p.name, str(exc)))
        return dropped

    def clear(self) -> None:
        self._restore_to(0)

    def _restore_to(self, idx: int) -> None:
        params = dict(self.reader.model.named_parameters())
        with torch.no_grad():
            while len(self._applied) > idx:
                _, saved = self._applied.pop()
                for n, t in saved.items():
                    params[n].copy_(t)


def state_key(reader) -> tuple[int, ...]:
    """Identifies the patches applied to ``reader`` now (empty: none), for caches of answers
    that assumed a frozen reader."""
    stack = getattr(reader, _ATTR, None)
    return tuple(id(p) for p in stack.patches) if stack is not None else ()


@contextmanager
def applied(reader, patches: Sequence[WeightPatch]) -> Iterator[PatchStack]:
    """Apply ``patches`` in order for the ``with``; all or none (a refused one undoes the
    earlier ones); leaving restores the tensors they touched bit for bit."""
    stack = PatchStack.of(reader)
    reader.fingerprint  # computed (and cached) on the unpatched weights
    mine: list[WeightPatch] = []
    try:
        for p in patches:
            stack.apply(p)
            mine.append(p)
        yield stack
    finally:
        for p in reversed(mine):
            if any(q is p for q in stack.patches):
                stack.remove(p)


@contextmanager
def without(reader, patch: WeightPatch) -> Iterator[list[tuple[str, str]]]:
    """``patch`` left out of the reader's stack for the ``with`` (the later ones applied again
    where they still fit; the ``with`` gets those left out, ``[(name, why)]``); leaving puts
    the whole stack back as it was, in its order, bit for bit."""
    stack = PatchStack.of(reader)
    before = stack.patches
    dropped = stack.remove(patch)
    try:
        yield dropped
    finally:
        stack.clear()
        for p in before:
            stack.apply(p)
