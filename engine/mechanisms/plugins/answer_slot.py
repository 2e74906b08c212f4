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
from typing import Any, Collection, Sequence

import torch

from engine.artefacts import check_fields, check_shapes, module_shapes
from engine.mechanisms.plugins.attach import BuiltInputs, InjectedBatch, PluginInjector
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
    """:class:`PluginInjector` + one slot vector per row right after the prompt (the row's last injected entity)."""

    def __init__(self, reader, plugin: SlotPlugin) -> None:
        super().__init__(reader, plugin)
        self.slot_plugin = plugin

    def build(self, prompts: Sequence[str], answers: Sequence[Sequence[int]] | None = None, *,
              drop: Sequence[Collection[int]] | None = None, enabled: bool = True,
              links=None) -> InjectedBatch:
        batch = super().build(prompts, answers, drop=drop, enabled=enabled, links=links)
        if not enabled:
            return batch
        b = batch.inputs
        n, W, d = b.inputs_embeds.shape
        dev = b.inputs_embeds.device
        subj = [row[-1].entity_id if row else None for row in batch.injected]
        has = [i for i, e in enumerate(subj) if e is not None]
        if not has:
            return batch
        # Every row grows by one column: the slot after its prompt, or (no entity) one more left pad.
        cut = torch.tensor([int(b.token_col[i, plen - 1]) + 1 for i, plen in enumerate(batch.prompt_lens)])  # [n]
        src = torch.arange(W + 1)[None, :].expand(n, -1)  # [n, W+1] new column -> old column
        has_t = torch.tensor([e is not None for e in subj])
        old = torch.where(src < cut[:, None], src, src - 1)
        old = torch.where(has_t[:, None], old, (src - 1).clamp(min=0))
        slot_col = torch.where(has_t, cut, torch.full_like(cut, -1))  # [n]
        emb = b.inputs_embeds.gather(1, old.to(dev)[..., None].expand(-1, -1, d))  # [n, W+1, d]
        att = b.attention_mask.gather(1, old.to(dev))
        att[~has_t.to(dev), 0] = 0  # the extra left pad of rows without a slot
        vec = self.slot_plugin.slot_vectors([subj[i] for i in has], dev).to(emb.dtype)  # [m, d]
        rows = torch.tensor(has, device=dev)
        emb = emb.index_put((rows, slot_col[has].to(dev)), vec)
        att = att.index_put((rows, slot_col[has].to(dev)), torch.ones(len(has), dtype=att.dtype, device=dev))
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        tc = b.token_col.clone()
        valid = tc >= 0
        shift = torch.where(has_t[:, None], (tc >= cut[:, None]).long(), torch.ones_like(tc))
        tc = torch.where(valid, tc + shift, tc)
        # Mention vectors sit before the cut and rows without a slot have none: insert_col stays.
        return InjectedBatch(BuiltInputs(emb, att, pos, tc, b.insert_col), batch.injected, batch.prompt_lens)
