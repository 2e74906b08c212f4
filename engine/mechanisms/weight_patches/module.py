"""The patch itself: ``{parameter name: delta}`` with the facts it writes and the base it was made on."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from engine.mechanisms.weight_patches.config import PatchConfig, PatchError


@dataclass
class Fact:
    """``prompt`` should be continued by ``answer`` once patched (``paraphrase`` too, if given)."""

    prompt: str
    answer: str
    paraphrase: str = ""
    old: str = ""
    source: str = ""  # 'PACK:ID' when it came from a pack's entry, or 'FILE:LINE'

    def check(self, where: str) -> None:
        for name in ("prompt", "answer"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise PatchError(f"{where}: field {name!r} must be a non-empty string, got {v!r}")
        for name in ("paraphrase", "old", "source"):
            if not isinstance(getattr(self, name), str):
                raise PatchError(f"{where}: field {name!r} must be a string")

    @property
    def target(self) -> str:
        """The answer as the reader continues a prompt: one leading space (" Tokyo")."""
        return " " + self.answer.strip()

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v or k in ("prompt", "answer")}


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's values as float32 bytes (what a patch's base check compares)."""
    return hashlib.sha256(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


@dataclass
class WeightPatch:
    """Delta = theta - theta0 of each changed tensor (float32, CPU), and its provenance.

    ``base`` holds the sha256 of each tensor it changes as it was when the patch was made
    (the reader, plus ``on_top_of``'s patches for a sequential one): applying it on any
    other value is refused. ``reader`` is the reader's fingerprint."""

    config: PatchConfig
    deltas: dict[str, torch.Tensor]
    base: dict[str, str]
    reader: dict[str, Any]
    facts: list[Fact]
    name: str = "patch"
    on_top_of: list[str] = field(default_factory=list)
    who: str = ""
    when: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.deltas) != set(self.base):
            raise PatchError(f"patch {self.name!r}: deltas and base hashes name different tensors")

    @property
    def size_bytes(self) -> int:
        return sum(d.numel() * d.element_size() for d in self.deltas.values())

    def max_abs(self) -> float:
        return max((float(d.abs().max()) for d in self.deltas.values()), default=0.0)

    def summary(self) -> dict[str, Any]:
        """What ``patch list``/``show`` and the explanation record say about it."""
        return {
            "name": self.name, "facts": len(self.facts), "tensors": sorted(self.deltas), "delta": self.config.delta,
            "max_abs_change": self.max_abs(), "bytes": self.size_bytes, "on_top_of": list(self.on_top_of),
            "who": self.who, "when": self.when, "metrics": dict(self.metrics),
        }
