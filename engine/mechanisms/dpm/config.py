"""The memory branch's configuration and file format names (see engine.mechanisms.dpm)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.artefacts import MAX_SIZE, check_size, config_from_dict

FORMAT = "plugmem-dpm"
FORMAT_VERSION = 2
VALUE_MODES = ("tokens", "pooled")
VALUE_SPACES = ("embedding", "unembedding", "both")
MATCH_MODES = ("cosine", "learned")
#: Where the shipped branch lives (resources/branches/<name>/config.json + model.safetensors).
DEFAULT_BRANCH = "smollm2-135m-dpm"


class DPMError(ValueError):
    """A DPM branch cannot be used: bad config, unreadable files, or made for another reader."""


@dataclass
class DPMConfig:
    """The branch's shape. ``layers`` = how many of the reader's last layers get a branch."""

    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    value_mode: str = "tokens"  # 'tokens' (one key/value per entry token) | 'pooled' (one per entry)
    # What a value token is (see MemoryBranch.value_vectors): its input embedding
    # ('embedding', branches trained before 2026-11-28), the direction that raises
    # that token's output logit above all others ('unembedding'), or both, each at unit RMS.
    value_space: str = "embedding"
    max_value_tokens: int = 64  # entry texts are truncated to this many tokens
    k: int = 5  # entries retrieved per prompt (the branch works with any k; this is the trained one)
    gate: bool = False  # an input-dependent sigmoid gate on the branch output
    match: str = "cosine"  # 'cosine' (reader-state similarity, shared) | 'learned' (per-layer q/k projections)
    # Inference-time multiplier of every branch layer's output (1.0 while training). The
    # trained branch is calibrated afterwards on a validation split: a larger value makes
    # the reader follow an edited entry more often, until paraphrases and locality suffer.
    output_scale: float = 1.0
    # Inference-time multiplier of the retrieval score's learned weight (beta) in the
    # branch's attention logits (1.0 while training), calibrated with output_scale: a
    # larger value puts more of the attention on the best-retrieved entries and less on
    # the "attend to nothing" slot.
    score_scale: float = 1.0

    def validate(self, where: str = "DPM config") -> None:
        for name in ("layers", "heads", "head_dim", "k"):
            check_size(getattr(self, name), name, DPMError, where)
        check_size(self.max_value_tokens, "max_value_tokens", DPMError, where, low=2)
        if self.heads * self.head_dim > MAX_SIZE:  # the width of the learned projections, [hidden, heads * head_dim]
            raise DPMError(f"{where}: heads x head_dim must be at most {MAX_SIZE:,}, got {self.heads} x {self.head_dim}")
        if self.value_mode not in VALUE_MODES:
            raise DPMError(f"{where}: value_mode must be one of {VALUE_MODES}, got {self.value_mode!r}")
        if self.value_space not in VALUE_SPACES:
            raise DPMError(f"{where}: value_space must be one of {VALUE_SPACES}, got {self.value_space!r}")
        if self.match not in MATCH_MODES:
            raise DPMError(f"{where}: match must be one of {MATCH_MODES}, got {self.match!r}")
        if not isinstance(self.gate, bool):
            raise DPMError(f"{where}: gate must be true or false, got {self.gate!r}")
        for name in ("output_scale", "score_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 < float(v) <= 100.0):
                raise DPMError(f"{where}: {name} must be a number in (0, 100], got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "DPM config") -> "DPMConfig":
        return config_from_dict(cls, d, DPMError, where)
