"""Knowledge in the answer slot: a second plugin vector where the answer begins (issue 21).

A plugin's vector before a mention teaches the reader *which* entity it reads; the
answer is decoded many positions later. An answer-slot plugin also inserts, right
after the prompt's last token (the position that predicts the answer's first token),
a vector of the prompt's last injected entity (its subject), made by a second mapping
of the same entity embedding::

    The | capital | of | [M(e)] | France | is | [S(e)]  ->  " Paris"

``S`` starts as a copy of ``M`` (so the name-decoding the plugin already learned is
where it starts) and is trained with the task objective (:mod:`task_tune`,
``answer_slot=True``).

Saved like a plugin, plus the ``slot_mapping.*`` tensors, as format version 2: a
program that knows only version 1 refuses it ("newer than this program reads")
instead of silently dropping the slot; :func:`load_slot_plugin` reads both versions
(a version-1 plugin gets a slot mapping copied from its mapping). The folder is a
:class:`SlotPluginFiles` (``engine.artefacts.Artefact``), the plugin's kind one version on.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch

from engine.artefacts import check_fields, check_shapes, module_shapes
from engine.mechanisms.plugins.attach import PluginInjector
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.io import PluginFiles, load_plugin_parts, plugin_parts
from engine.mechanisms.plugins.module import KnowledgePlugin, MappingNetwork

SLOT_FORMAT_VERSION = 2


class SlotPluginFiles(PluginFiles):
    """A plugin folder of version 2 (+ ``slot_mapping.*`` tensors, ``answer_slot``); reads versions up to 2."""

    version = SLOT_FORMAT_VERSION
    remake = "train one with `plugmem task-tune --answer-slot`"

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        super().check_fields(meta, path)
        check_fields(meta, {"answer_slot": "bool?"}, PluginError, str(path))


class SlotPlugin(KnowledgePlugin):
    """A knowledge plugin with a second mapping for the answer slot."""

    slot_mapping: MappingNetwork

    @classmethod
    def from_plugin(cls, plugin: KnowledgePlugin, slot_mapping: MappingNetwork | None = None) -> "SlotPlugin":
        sp = cls(plugin.mapping, plugin.embeddings, reader_fingerprint=plugin.reader_fingerprint,
                 aliases=plugin.aliases, name=plugin.name, training=plugin.training)
        sp.slot_mapping = slot_mapping if slot_mapping is not None else copy.deepcopy(plugin.mapping)
        sp.gate = plugin.gate
        return sp

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.mapping.parameters()) + list(self.slot_mapping.parameters())

    def slot_vectors(self, entity_ids: Sequence[int], device: torch.device) -> torch.Tensor:
        rows = torch.tensor([self._row[int(e)] for e in entity_ids], dtype=torch.long, device=device)
        return self.slot_mapping(self.entity_table(device)[rows])  # [m, d]

    def save(self, folder: str | Path) -> Path:
        fields, state, files = plugin_parts(self)
        fields["answer_slot"] = True
        state.update({f"slot_mapping.{k}": v.detach().float().cpu().contiguous()
                      for k, v in self.slot_mapping.state_dict().items()})
        return SlotPluginFiles.save(folder, fields, state, files=files)


def load_slot_plugin(folder: str | Path, reader, pack=None) -> SlotPlugin:
    """A plugin of format version 2 with its slot mapping, or a version-1 plugin given a copy of its mapping."""
    base, state, meta = load_plugin_parts(folder, reader, pack, SlotPluginFiles)
    if meta["format_version"] < SLOT_FORMAT_VERSION:
        return SlotPlugin.from_plugin(base)
    expected = {f"slot_mapping.{k}": v for k, v in module_shapes(lambda: MappingNetwork(base.config)).items()}
    check_shapes(expected, {k: tuple(v.shape) for k, v in state.items() if k.startswith("slot_mapping.")},
                 Path(folder) / "model.safetensors", PluginError)
    slot = MappingNetwork(copy.deepcopy(base.config))
    slot.load_state_dict({k[len("slot_mapping."):]: v for k, v in state.items() if k.startswith("slot_mapping.")})
    slot.to(reader.device).eval()
    return SlotPlugin.from_plugin(base, slot)


class AnswerSlotInjector(PluginInjector):
    """A :class:`PluginInjector` of one slot plugin (the injector puts every slot plugin's slot vector
    right after the prompt, as an injection of kind "slot"; this name is kept for training and benches)."""

    def __init__(self, reader, plugin: SlotPlugin) -> None:
        super().__init__(reader, plugin)
        self.slot_plugin = plugin
