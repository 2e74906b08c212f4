"""A knowledge plugin's folder: ``config.json`` (format, version, config, the reader it was
made for, the entity set) + ``model.safetensors`` (``mapping.*``, ``entity_vectors``,
``entity_ids``) + ``entities.json`` (names and aliases it links), by default beside its
pack (``<pack>.plugin/``). Loading checks the reader's fingerprint, the tensor shapes
before anything is allocated and, given the pack, the entity set.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from engine.artefacts import Artefact, check_fields, check_shapes, module_shapes
from engine.mechanisms.plugins.config import FORMAT, FORMAT_VERSION, MappingConfig
from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.errors import PluginError
from engine.mechanisms.plugins.gate import RelationGate
from engine.mechanisms.plugins.module import KnowledgePlugin, MappingNetwork

log = logging.getLogger(__name__)


def default_plugin_dir(pack_path: str | Path) -> Path:
    p = Path(pack_path)
    return p.with_name(p.name + ".plugin")


def default_task_plugin_dir(pack_path: str | Path) -> Path:
    p = Path(pack_path)
    return p.with_name(p.name + ".task-plugin")


def plugged_plugin_dir(pack_path: str | Path) -> Path:
    """The plugin a pack plugs (one per domain): its task-tuned plugin (``<pack>.task-plugin``,
    trained to answer, often from the general one) where one exists, else ``<pack>.plugin``."""
    task = default_task_plugin_dir(pack_path)
    return task if (task / "config.json").is_file() else default_plugin_dir(pack_path)


class PluginFiles(Artefact):
    """A knowledge-plugin folder (``engine.artefacts.Artefact``), with ``entities.json`` beside it."""

    format, version = FORMAT, FORMAT_VERSION
    what, error = "a knowledge plugin", PluginError
    remake = "train one with `plugmem map-tune`"
    reader_hint = "map-tune a plugin for this reader"
    json_options = {"indent": 1, "ensure_ascii": False}

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        check_fields(meta, {"config": "dict", "reader": "dict", "entity_set": "str", "name": "str?",
                            "embeddings": "dict?", "training": "dict?"}, PluginError, str(path),
                     required=("config", "reader", "entity_set"))
        check_fields(meta.get("embeddings") or {}, {"source": "str?", "meta": "dict?"}, PluginError,
                     f"{path}: embeddings")
        MappingConfig.from_dict(meta["config"], f"{path}: config")


def read_plugin_config(folder: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a plugin folder, of any kind (raises ``PluginError`` naming the file)."""
    from engine.mechanisms.plugins.answer_slot import SlotPluginFiles

    if not (Path(folder) / "config.json").is_file():  # no plugin at all: say how to make the general one
        return PluginFiles.read_config(folder)
    return SlotPluginFiles.read_config(folder)


def _check_weights(cfg: MappingConfig, shapes: dict[str, tuple[int, ...]], reader, folder: Path) -> None:
    """Refuse a plugin whose config does not fit ``reader`` or whose tensors (from the
    file header) are not the shapes its config implies, before anything is allocated."""
    path, weights = folder / "config.json", folder / "model.safetensors"
    if cfg.hidden_size != reader.hidden_size:
        raise PluginError(f"{path}: config.hidden_size is {cfg.hidden_size}, but the reader reads "
                          f"{reader.hidden_size}-d vectors")
    vec, ids = shapes.get("entity_vectors"), shapes.get("entity_ids")
    if vec is None or ids is None:
        raise PluginError(f"{weights}: no {'entity_vectors' if vec is None else 'entity_ids'!r} tensor (damaged plugin)")
    if len(vec) != 2 or vec[1] != cfg.embed_dim or ids != vec[:1]:
        raise PluginError(f"{weights}: entity_vectors {list(vec)} and entity_ids {list(ids)} do not fit "
                          f"config.embed_dim {cfg.embed_dim} in {path}")
    expected = {f"mapping.{k}": v for k, v in module_shapes(lambda: MappingNetwork(cfg)).items()}
    check_shapes(expected, {k: v for k, v in shapes.items() if k.startswith("mapping.")}, weights, PluginError)


def plugin_parts(plugin: KnowledgePlugin) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """What :func:`save_plugin` writes: config fields, tensors, side files (a variant adds to them)."""
    fields = {"name": plugin.name, "config": asdict(plugin.config), "reader": plugin.reader_fingerprint,
              "entity_set": plugin.entity_set, "entities": len(plugin.embeddings),
              "embeddings": {"source": plugin.embeddings.source, "meta": plugin.embeddings.meta},
              "training": plugin.training}
    state = {f"mapping.{k}": v.detach().float().cpu().contiguous() for k, v in plugin.mapping.state_dict().items()}
    state["entity_vectors"] = torch.from_numpy(plugin.embeddings.vectors).contiguous()
    state["entity_ids"] = torch.from_numpy(plugin.embeddings.entity_ids).contiguous()
    ents = {"names": plugin.embeddings.names,
            "aliases": [plugin.aliases.get(int(e), []) for e in plugin.embeddings.entity_ids.tolist()]}
    return fields, state, {"entities.json": json.dumps(ents, ensure_ascii=False)}


def save_plugin(plugin: KnowledgePlugin, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (mapping, entity vectors and ids) + ``entities.json``."""
    fields, state, files = plugin_parts(plugin)
    return PluginFiles.save(folder, fields, state, files=files)


def load_plugin(folder: str | Path, reader, pack=None) -> KnowledgePlugin:
    """Load a plugin for ``reader`` (refused if made for another); with ``pack``, check its entity set.

    The one loader of every plugin folder: one written with an answer slot (``task-tune
    --answer-slot``) loads as an ``answer_slot.SlotPlugin``, whose injector then adds the slot.
    """
    from engine.mechanisms.plugins.answer_slot import load_slot_plugin

    if read_plugin_config(folder).get("answer_slot"):
        return load_slot_plugin(folder, reader, pack)
    return load_plugin_parts(folder, reader, pack)[0]


def load_plugin_parts(folder: str | Path, reader, pack=None, kind: type[PluginFiles] = PluginFiles
                      ) -> tuple[KnowledgePlugin, dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`load_plugin` read as ``kind`` (a variant's versions), with the tensors and config it read."""
    folder = Path(folder)
    meta = kind.read_config(folder)
    kind.check_reader(meta["reader"], reader, f"The knowledge plugin in {folder}")
    cfg = MappingConfig.from_dict(meta["config"])  # checked, naming the file, by read_config
    _check_weights(cfg, kind.tensor_shapes(folder), reader, folder)
    state = kind.read_tensors(folder)
    try:
        ents = json.loads((folder / "entities.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PluginError(f"{folder / 'entities.json'} is unreadable ({exc})") from None
    check_fields(ents, {"names": "list", "aliases": "list"}, PluginError, str(folder / "entities.json"),
                 required=("names", "aliases"))
    names, aliases = ents["names"], ents["aliases"]
    if len(names) != len(state["entity_ids"]) or len(aliases) != len(names) \
            or not all(isinstance(a, list) and all(isinstance(x, str) for x in a) for a in aliases):
        raise PluginError(f"{folder / 'entities.json'} does not match model.safetensors (damaged plugin)")
    source = meta.get("embeddings") or {}
    emb = EntityEmbeddings(state["entity_ids"].numpy(), [str(n) for n in names], state["entity_vectors"].numpy(),
                           str(source.get("source") or "imported"), dict(source.get("meta") or {}))
    if meta.get("entity_set") != emb.fingerprint:
        raise PluginError(f"{folder}: config.json and model.safetensors disagree on the entity set (damaged plugin)")
    mapping = MappingNetwork(cfg)  # its shapes were checked against the file above
    mapping.load_state_dict({k[len("mapping."):]: v for k, v in state.items() if k.startswith("mapping.")})
    plugin = KnowledgePlugin(mapping, emb, reader_fingerprint=meta["reader"],
                 aliases={int(e): list(a) for e, a in zip(emb.entity_ids.tolist(), aliases)},
                 name=str(meta.get("name") or folder.name), training=meta.get("training") or {})
    mapping.to(reader.device).eval()
    plugin.gate = RelationGate.from_training(plugin.training, str(folder / "config.json"))
    if pack is not None:
        missing = plugin.use_pack_aliases(pack)
        if missing:
            log.info("%s: %d entities of %s have no embedding in the plugin; they are not injected",
                     folder, len(missing), pack.path)
    return plugin, state, meta
