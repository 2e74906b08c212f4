"""The memory branch as a :class:`~engine.mechanisms.base.Mechanism`."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from engine.mechanisms.base import LeaveOneOut, MechanismBase
from engine.mechanisms.dpm import io
from engine.mechanisms.dpm.attach import attach
from engine.mechanisms.dpm.fusion import DPMFusion
from engine.mechanisms.dpm.module import MemoryBranch
from engine.mechanisms.registry import mechanism


class DPMMechanism(MechanismBase):
    """A trained branch (+ the entry-state store that keeps its entries' states on disk)."""

    spec = mechanism("dpm")

    def __init__(self, branch: MemoryBranch, *, store=None) -> None:
        self.branch, self.store = branch, store
        self._fusions: dict[int, DPMFusion] = {}

    def fusion(self, reader) -> DPMFusion:
        """The fusion of this branch on ``reader``, made once (its caches are worth keeping)."""
        f = self._fusions.get(id(reader))
        if f is None or f.reader is not reader:
            f = self._fusions[id(reader)] = DPMFusion(reader, self.branch, store=self.store)
        return f

    @contextmanager
    def attach(self, reader) -> Iterator[DPMFusion]:
        # The hooks stay for the whole ``with``; the fusion's own attach inside is then a no-op.
        with attach(reader, self.branch):
            yield self.fusion(reader)

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        ids = reader.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return self.fusion(reader).leave_one_out(prompt, list(texts), list(scores), ids)

    def save(self, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        return io.save(self.branch, folder, extra=extra)

    @classmethod
    def load(cls, folder: str | Path, reader, *, store=None) -> "DPMMechanism":
        return cls(io.load(folder, reader), store=store)
