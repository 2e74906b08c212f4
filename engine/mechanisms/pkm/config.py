"""The product-key memory layer's configuration, size presets and file format names."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from engine.artefacts import check_size, config_from_dict

FORMAT = "plugmem-pkm"
FORMAT_VERSION = 1

#: Size presets: slots (a square number: sqrt(slots) sub-keys per half). 'large' is for a GPU.
PRESETS: dict[str, int] = {"quick": 128 * 128, "standard": 256 * 256, "large": 512 * 512}
QUERY_NORMS = ("layer", "batch", "rms", "none")
PLACEMENTS = ("beside", "replace")  # h + FFN(n) + PKM(n)  |  h + PKM(n) (the ablation)
INITS = ("zero", "random")  # values at zero (the reader unchanged) | normal(0, d^-1/2) as in XLM
MAX_SLOTS = 1 << 22  # 4M slots: far past what fits a laptop, refused before anything is allocated


class PKMError(ValueError):
    """A product-key memory cannot be used: bad config, unreadable files, another reader's layer."""


@dataclass
class PKMConfig:
    """The layer's shape. ``layer`` -1: the first layer of the reader's upper third."""

    layer: int = -1
    slots: int = PRESETS["standard"]
    heads: int = 4
    k: int = 32  # slots read per head (top-k of each half, then top-k over the k x k sums)
    key_dim: int = 256  # query / key width per head (two halves of key_dim / 2)
    # Layer norm by default: batch norm (XLM) makes a token's query depend on the batch's
    # statistics while training, which a causal decoder answering one prompt never has.
    query_norm: str = "layer"
    placement: str = "beside"
    init: str = "zero"

    @property
    def n_keys(self) -> int:
        """Sub-keys per half: sqrt(slots)."""
        return math.isqrt(self.slots)

    def validate(self, where: str = "PKM config") -> None:
        check_size(self.layer, "layer", PKMError, where, low=-1)
        check_size(self.slots, "slots", PKMError, where, low=4, high=MAX_SLOTS)
        if self.n_keys ** 2 != self.slots:
            lo = self.n_keys
            raise PKMError(f"{where}: slots must be a square number (sqrt(slots) sub-keys per half), got "
                           f"{self.slots:,}; the nearest are {lo * lo:,} and {(lo + 1) ** 2:,}")
        check_size(self.heads, "heads", PKMError, where, high=64)
        check_size(self.key_dim, "key_dim", PKMError, where, low=2, high=4096)
        if self.key_dim % 2:
            raise PKMError(f"{where}: key_dim must be even (two halves), got {self.key_dim}")
        check_size(self.k, "k", PKMError, where, high=self.n_keys)
        for name, choices in (("query_norm", QUERY_NORMS), ("placement", PLACEMENTS), ("init", INITS)):
            if getattr(self, name) not in choices:
                raise PKMError(f"{where}: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def resolved_layer(self, num_layers: int, where: str = "PKM config") -> int:
        """The reader layer the memory sits at (``-1`` -> the first of the upper third);
        ``PKMError`` when the reader has no such layer."""
        layer = default_layer(num_layers) if self.layer == -1 else self.layer
        if not 0 <= layer < num_layers:
            raise PKMError(f"{where}: layer {self.layer} is out of range: the reader has layers 0 to {num_layers - 1}")
        return layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "PKM config") -> "PKMConfig":
        return config_from_dict(cls, d, PKMError, where)


def default_layer(num_layers: int) -> int:
    """The first layer of the reader's upper third (20 of SmolLM2-135M's 30; 1 of 2)."""
    return min(num_layers - 1, (2 * num_layers) // 3)


def preset(name: str) -> int:
    """Slots of a size preset; ``PKMError`` names the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PKMError(f"unknown size preset {name!r}; choose one of {', '.join(PRESETS)}") from None
