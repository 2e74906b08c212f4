"""The knowledge plugin's network and the plugin object.

:class:`MappingNetwork` maps an entity's embedding (TransE or imported) to ONE vector of
the reader's input-embedding space: a linear map (or a one-hidden-layer MLP) whose output
is rescaled to the mean norm of the reader's token embeddings (``fix_norm``), so an
inserted vector is as loud as a word, never louder. :class:`KnowledgePlugin` is the mapping
+ the entity embeddings it reads + the reader it was made for (saved and loaded by
``io.py``; put into prompts by ``attach.PluginInjector``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from engine.mechanisms.plugins.config import MappingConfig
from engine.mechanisms.plugins.embeddings import EntityEmbeddings, check_entity_set
from engine.mechanisms.plugins.entities import EntityLinker
from engine.mechanisms.plugins.errors import PluginError


class MappingNetwork(nn.Module):
    """``[n, embed_dim] -> [n, hidden_size]``: one vector of the reader's input space per entity."""

    def __init__(self, config: MappingConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.hidden:
            self.net = nn.Sequential(nn.Linear(config.embed_dim, config.hidden), nn.GELU(),
                                     nn.Linear(config.hidden, config.hidden_size))
        else:
            self.net = nn.Linear(config.embed_dim, config.hidden_size)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        v = self.net(e)  # [n, d]
        if self.config.fix_norm:
            v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-6) * self.config.target_norm
        return v


def token_embedding_norm(reader) -> float:
    """Mean L2 norm of the reader's input token embeddings (the loudness of a word)."""
    w = reader.model.get_input_embeddings().weight
    return float(w.detach().float().norm(dim=-1).mean())


class KnowledgePlugin:
    """Mapping network + the entity embeddings it reads + what it was made for."""

    def __init__(self, mapping: MappingNetwork, embeddings: EntityEmbeddings, *, reader_fingerprint: dict,
                 aliases: dict[int, list[str]] | None = None, name: str = "plugin",
                 training: dict[str, Any] | None = None) -> None:
        if embeddings.dim != mapping.config.embed_dim:
            raise PluginError(f"plugin: entity embeddings have dimension {embeddings.dim}, the mapping expects "
                              f"{mapping.config.embed_dim}")
        self.mapping = mapping
        self.embeddings = embeddings
        self.reader_fingerprint = dict(reader_fingerprint)
        self.aliases = {int(k): list(v) for k, v in (aliases or {}).items()}
        self.name = name
        self.training = dict(training or {})
        self._row = {int(eid): i for i, eid in enumerate(embeddings.entity_ids.tolist())}
        self._table: torch.Tensor | None = None
        self._linker: EntityLinker | None = None
        # A relation gate (gate.RelationGate): set by the loader from ``training``; None = always applied.
        self.gate = None

    @classmethod
    def create(cls, reader, embeddings: EntityEmbeddings, *, hidden: int = 0, fix_norm: bool = True,
               aliases: dict[int, list[str]] | None = None, name: str = "plugin", seed: int = 0) -> "KnowledgePlugin":
        cfg = MappingConfig(embeddings.dim, reader.hidden_size, hidden, fix_norm, token_embedding_norm(reader))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mapping = MappingNetwork(cfg)
        mapping.to(reader.device)
        return cls(mapping, embeddings, reader_fingerprint=reader.fingerprint, aliases=aliases, name=name)

    @property
    def config(self) -> MappingConfig:
        return self.mapping.config

    @property
    def entity_set(self) -> str:
        return self.embeddings.fingerprint

    def has(self, entity_id: int) -> bool:
        return int(entity_id) in self._row

    def linker(self) -> EntityLinker:
        """Links the plugin's entities only (names + aliases recorded at training or set from the pack)."""
        if self._linker is None:
            ents = [(eid, n, self.aliases.get(int(eid), [])) for eid, n in
                    zip(self.embeddings.entity_ids.tolist(), self.embeddings.names)]
            self._linker = EntityLinker(ents)
        return self._linker

    def use_pack_aliases(self, pack) -> list[int]:
        """Check the entity set against ``pack`` and link with the pack's current aliases.

        Returns the pack entities the plugin does not cover (they are not injected).
        """
        missing = check_entity_set(self.embeddings.entity_ids.tolist(), self.embeddings.names, pack,
                                   f"The knowledge plugin {self.name!r}")
        self.aliases = {int(e["id"]): list(e["aliases"]) for e in pack.entities() if int(e["id"]) in self._row}
        self._linker = None
        return missing

    def entity_table(self, device: torch.device) -> torch.Tensor:
        if self._table is None or self._table.device != device:
            self._table = torch.from_numpy(self.embeddings.vectors).to(device)  # [n, embed_dim]
        return self._table

    def vectors(self, entity_ids: Sequence[int], device: torch.device) -> torch.Tensor:
        """Mapped vectors ``[m, hidden_size]`` for entity ids (with gradients when the mapping trains)."""
        rows = torch.tensor([self._row[int(e)] for e in entity_ids], dtype=torch.long, device=device)
        return self.mapping(self.entity_table(device)[rows])

    def check_reader(self, reader, what: str | None = None) -> None:
        from engine.mechanisms.plugins.io import PluginFiles

        PluginFiles.check_reader(self.reader_fingerprint, reader, what or f"The knowledge plugin {self.name!r}")

    def save(self, folder: str | Path) -> Path:
        """Write the plugin folder (``engine.mechanisms.plugins.io.save_plugin``)."""
        from engine.mechanisms.plugins.io import save_plugin

        return save_plugin(self, folder)

    @classmethod
    def load(cls, folder: str | Path, reader, pack=None) -> "KnowledgePlugin":
        """Load a plugin for ``reader`` (refused if made for another); with ``pack``, check its entity set."""
        from engine.mechanisms.plugins.io import load_plugin

        return load_plugin(folder, reader, pack)
