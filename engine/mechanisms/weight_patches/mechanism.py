"""Weight patches as a :class:`~engine.mechanisms.base.Mechanism`: one or several patches,
applied in the order given (the first is applied first), removed exactly on detach."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from engine.mechanisms.base import LeaveOneOut, MechanismBase, MechanismError
from engine.mechanisms.registry import mechanism
from engine.mechanisms.weight_patches import io
from engine.mechanisms.weight_patches.attach import PatchStack, applied
from engine.mechanisms.weight_patches.module import WeightPatch


class WeightPatchMechanism(MechanismBase):
    """The active weight patches of a session, in their order."""

    spec = mechanism("weight_patches")

    def __init__(self, patches: WeightPatch | Sequence[WeightPatch]) -> None:
        self.patches = [patches] if isinstance(patches, WeightPatch) else list(patches)
        names = [p.name for p in self.patches]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MechanismError(f"two active weight patches are both named {twice[0]!r}")

    @contextmanager
    def attach(self, reader) -> Iterator[PatchStack]:
        with applied(reader, self.patches) as stack:
            yield stack

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        """log p(``answer``) with every patch, and with each patch's delta left out in turn
        (an ablation: the other deltas stay, whatever their bases say)."""
        with applied(reader, self.patches):
            logp_all = float(reader.answer_logprob(prompt, answer))
            params = dict(reader.model.named_parameters())
            without = []
            for p in self.patches:
                saved = {n: params[n].detach().clone() for n in p.deltas}
                with torch.no_grad():
                    for n, d in p.deltas.items():
                        params[n].sub_(d.to(params[n]))
                try:
                    without.append(float(reader.answer_logprob(prompt, answer)))
                finally:
                    with torch.no_grad():
                        for n, t in saved.items():
                            params[n].copy_(t)
        return LeaveOneOut(logp_all, without, None, parts=[p.name for p in self.patches])

    def save(self, folder: str | Path) -> Path:
        """Save the one active patch (a patch is one folder; save several one by one)."""
        if len(self.patches) != 1:
            raise MechanismError(f"{len(self.patches)} patches are active: save each into its own folder")
        return io.save(self.patches[0], folder)

    @classmethod
    def load(cls, folder: str | Path, reader) -> "WeightPatchMechanism":
        return cls(io.load(folder, reader))
