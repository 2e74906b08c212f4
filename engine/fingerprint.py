"""Identity of the key encoder that produced a pack's vectors.

Kept free of torch so that the store can check it without loading a model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EncoderFingerprint:
    """What makes two encoders' vectors comparable: same model, same weights, same pooling."""

    name: str
    weights_sha256: str
    dim: int
    pooling: str

    def describe(self) -> str:
        return f"{self.name} ({self.dim}-d, {self.pooling} pooling, weights {self.weights_sha256[:12]})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderFingerprint":
        return cls(name=str(d["name"]), weights_sha256=str(d["weights_sha256"]), dim=int(d["dim"]), pooling=str(d["pooling"]))
