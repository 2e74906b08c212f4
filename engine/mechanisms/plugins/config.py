"""A knowledge plugin's config: the mapping network's sizes, validated (``config.json``'s
``config`` field), and the folder's format name and version."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.artefacts import check_size, config_from_dict
from engine.mechanisms.plugins.errors import PluginError

FORMAT = "plugmem-knowledge-plugin"
FORMAT_VERSION = 1


@dataclass
class MappingConfig:
    embed_dim: int  # entity embedding size
    hidden_size: int  # the reader's input-embedding size
    hidden: int = 0  # 0: linear map; > 0: MLP with one hidden layer of this width
    fix_norm: bool = True  # rescale outputs to target_norm
    target_norm: float = 1.0  # mean norm of the reader's token embeddings (set at creation)

    def validate(self, where: str = "plugin config") -> None:
        check_size(self.embed_dim, "embed_dim", PluginError, where)
        check_size(self.hidden_size, "hidden_size", PluginError, where)
        check_size(self.hidden, "hidden", PluginError, where, low=0)
        if not isinstance(self.target_norm, (int, float)) or not 0 < self.target_norm < float("inf"):
            raise PluginError(f"{where}: target_norm must be a finite number > 0, got {self.target_norm!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "plugin config") -> "MappingConfig":
        return config_from_dict(cls, d, PluginError, where)
