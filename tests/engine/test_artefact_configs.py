"""Hostile or damaged artefact folders (knowledge plugins, entity embeddings, DPM branches):
every wrong type, missing field, absurd size or shape is refused with the artefact's own
error naming the file and the field, before anything is allocated (issue 24)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from engine.mechanisms import dpm
from engine.mechanisms.dpm import DPMConfig, DPMError, MemoryBranch
from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.errors import EmbeddingError, PluginError
from engine.mechanisms.plugins.io import load_plugin
from engine.mechanisms.plugins.module import KnowledgePlugin
from engine.store import Pack
from tests.engine.test_plugins_fixtures import make_pack


@pytest.fixture(scope="module")
def reader():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


def _edit(path: Path, change) -> None:
    """Rewrite the JSON file ``path`` after ``change(obj)``."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    change(obj)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _set(keys: str, value):
    """``change`` that sets the dotted field ``keys`` ("config.embed_dim") to ``value``; ``...`` deletes it."""
    *parents, last = keys.split(".")

    def change(obj):
        for k in parents:
            obj = obj[k]
        if value is ...:
            del obj[last]
        else:
            obj[last] = value

    return change


def _refused(error, match: str, load, path: Path) -> None:
    """``load()`` raises ``error`` naming ``path`` and matching ``match``, and does so at once."""
    t0 = time.monotonic()
    with pytest.raises(error, match=match) as info:
        load()
    assert str(path) in str(info.value)
    assert time.monotonic() - t0 < 5  # nothing was allocated for the absurd sizes
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- knowledge plugins
@pytest.fixture
def plugin_dir(reader, tmp_path) -> Path:
    pack_path = make_pack(tmp_path, with_facts=False)
    with Pack.open(pack_path, readonly=True) as pack:
        ents = pack.entities()
    emb = EntityEmbeddings([e["id"] for e in ents], [e["name"] for e in ents],
                           np.random.default_rng(0).normal(size=(len(ents), 8)).astype(np.float32), "imported")
    folder = KnowledgePlugin.create(reader, emb, name="geo").save(tmp_path / "geo.plugin")
    load_plugin(folder, reader)  # the untouched folder loads
    return folder


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("config", ..., "missing field\\(s\\) 'config'"),
        ("config", [8, 64], "field 'config' must be an object, got a list"),
        ("config.embed_dim", 10**9, "embed_dim must be a whole number from 1 to 65,536, got 1000000000"),
        ("config.embed_dim", "8", "field 'embed_dim' must be a whole number, got a string"),
        ("config.embed_dim", 16, "entity_vectors \\[\\d+, 8\\] .* do not fit config.embed_dim 16"),
        ("config.embed_dim", ..., "missing field\\(s\\) 'embed_dim'"),
        ("config.hidden_size", 0, "hidden_size must be a whole number from 1"),
        ("config.hidden_size", 128, "config.hidden_size is 128, but the reader reads 64-d vectors"),
        ("config.hidden", -1, "hidden must be a whole number from 0"),
        ("config.hidden", 10**12, "hidden must be a whole number from 0 to 65,536"),
        ("config.hidden", 4, "does not match its config.json: missing .*unexpected"),
        ("config.fix_norm", "yes", "field 'fix_norm' must be true or false"),
        ("config.target_norm", float("inf"), "target_norm must be a finite number > 0"),
        ("config.target_norm", None, "field 'target_norm' must be a number, got null"),
        ("reader", "tiny-llama-seed0", "field 'reader' must be an object, got a string"),
        ("entity_set", 7, "field 'entity_set' must be a string"),
        ("embeddings", ["imported"], "field 'embeddings' must be an object"),
        ("embeddings.meta", [1], "embeddings: field 'meta' must be an object"),
    ],
)
def test_a_bad_plugin_config_is_refused_naming_the_file_and_field(reader, plugin_dir, field, value, match):
    path = plugin_dir / "config.json"
    _edit(path, _set(field, value))
    _refused(PluginError, match, lambda: load_plugin(plugin_dir, reader), path.parent)


def test_damaged_plugin_entities_and_tensors_are_refused(reader, plugin_dir):
    from safetensors.numpy import load_file, save_file

    _edit(plugin_dir / "entities.json", _set("aliases", "Nippon"))
    _refused(PluginError, "field 'aliases' must be a list", lambda: load_plugin(plugin_dir, reader), plugin_dir)
    _edit(plugin_dir / "entities.json", lambda o: o.update(aliases=[7] * len(o["names"])))
    _refused(PluginError, "entities.json does not match", lambda: load_plugin(plugin_dir, reader), plugin_dir)

    weights = plugin_dir / "model.safetensors"
    state = load_file(str(weights))
    state["mapping.net.weight"] = np.zeros((64, 9), np.float32)  # one column more than embed_dim
    save_file(state, str(weights))
    _refused(PluginError, "mapping.net.weight \\[64, 9\\] \\(the config implies \\[64, 8\\]\\)",
             lambda: load_plugin(plugin_dir, reader), weights)


def test_plugmem_refuses_a_hostile_plugin_before_loading_a_reader(plugin_dir, capsys):
    from engine.cli import main

    _edit(plugin_dir / "config.json", _set("config.embed_dim", 10**9))
    code = main(["predict", "The capital of France is", "--plugin", str(plugin_dir), "--reader", "/nowhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(plugin_dir / "config.json") in err[0] and "embed_dim" in err[0]


# ---------------------------------------------------------------------------- entity embeddings
@pytest.fixture
def embeddings_dir(tmp_path) -> Path:
    emb = EntityEmbeddings([1, 2, 3], ["France", "Spain", "Japan"], np.eye(3, 8, dtype=np.float32), "transe")
    folder = emb.save(tmp_path / "geo.embeddings")
    EntityEmbeddings.load(folder)
    return folder


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("names", ..., "missing field\\(s\\) 'names'"),
        ("names", "France", "field 'names' must be a list, got a string"),
        ("names", [1, 2, 3], "field 'names' must be a list of strings"),
        ("names", ["France"], "the name list \\(1\\) does not match .* \\(3 rows\\)"),
        ("dim", 10**9, "field 'dim' is 1000000000, but .* holds 8"),
        ("dim", "8", "field 'dim' must be a whole number"),
        ("count", 4, "field 'count' is 4, but .* holds 3"),
        ("meta", ["x"], "field 'meta' must be an object"),
        ("source", 3, "field 'source' must be a string"),
    ],
)
def test_a_bad_embeddings_config_is_refused_naming_the_file_and_field(embeddings_dir, field, value, match):
    path = embeddings_dir / "config.json"
    _edit(path, _set(field, value))
    _refused(EmbeddingError, match, lambda: EntityEmbeddings.load(embeddings_dir), embeddings_dir)


def test_embeddings_whose_tensors_do_not_line_up_are_refused(embeddings_dir):
    from safetensors.numpy import save_file

    weights = embeddings_dir / "embeddings.safetensors"
    save_file({"vectors": np.zeros((3, 8), np.float32), "entity_ids": np.arange(4)}, str(weights))
    _refused(EmbeddingError, "vectors \\[3, 8\\] and entity_ids \\[4\\] do not line up",
             lambda: EntityEmbeddings.load(embeddings_dir), weights)
    save_file({"vectors": np.zeros((3, 8), np.float32)}, str(weights))
    _refused(EmbeddingError, "expected tensors 'vectors' and 'entity_ids'", lambda: EntityEmbeddings.load(embeddings_dir), weights)


# ---------------------------------------------------------------------------- DPM branches
@pytest.fixture
def branch_dir(reader, tmp_path) -> Path:
    folder = dpm.save(MemoryBranch(DPMConfig(layers=2, heads=2, head_dim=8, match="learned"), reader), tmp_path / "br")
    dpm.load(folder, reader)
    return folder


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("reader", "SmolLM2-135M-Instruct", "field 'reader' must be an object, got a string"),
        ("reader", ..., "missing field\\(s\\) 'reader'"),
        ("config", ..., "missing field\\(s\\) 'config'"),
        ("config", "learned", "field 'config' must be an object"),
        ("config.heads", 10**9, "config: heads must be a whole number from 1 to 65,536, got 1000000000"),
        ("config.head_dim", 16, "does not match its config.json: wrong shape: .*the config implies"),
        ("config.layers", "2", "field 'layers' must be a whole number, got a string"),
        ("config.layers", 99, "config.json: DPM config: layers=99 but the reader has only \\d+ layers"),
        ("config.k", -1, "k must be a whole number from 1"),
        ("config.max_value_tokens", 1, "max_value_tokens must be a whole number from 2"),
        ("config.gate", 1, "field 'gate' must be true or false, got 1"),
        ("hidden_size", "64", "field 'hidden_size' must be a whole number"),
    ],
)
def test_a_bad_branch_config_is_refused_naming_the_file_and_field(reader, branch_dir, field, value, match):
    path = branch_dir / "config.json"
    _edit(path, _set(field, value))
    _refused(DPMError, match, lambda: dpm.load(branch_dir, reader), path.parent)


def test_a_branch_whose_reader_is_a_string_cannot_skip_the_compatibility_check(reader, branch_dir):
    """A string ``reader`` used to be searched for key names as substrings, found none, and
    so let another reader's branch load; now it is refused as a malformed file."""
    from engine.reader.tiny import make_tiny_reader

    _edit(branch_dir / "config.json", _set("reader", "architecture hidden_size weights_sha256"))
    with pytest.raises(DPMError, match=re.escape(str(branch_dir / "config.json")) + ": field 'reader' must be an object"):
        dpm.load(branch_dir, make_tiny_reader(1))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DPMConfig(heads=4096, head_dim=4096, match="learned").validate(), "heads x head_dim must be at most 65,536"),
        (lambda: DPMConfig.from_dict({"layers": 2, "colour": 1}), "DPM config: unknown field\\(s\\) colour"),
    ],
)
def test_a_new_branch_config_is_bounded_too(make, match):
    with pytest.raises(DPMError, match=match):
        make()


def test_training_jobs_refuse_sizes_that_cannot_be_allocated(tmp_path):
    from engine.mechanisms.dpm.train_branch import TrainMemoryReaderConfig
    from engine.mechanisms.plugins.transe import TransEConfig

    with pytest.raises(PluginError, match="train-transe config: dim must be a whole number from 1 to 65,536, got 1000000000"):
        TransEConfig.from_dict({"pack": str(tmp_path / "p.plugmem"), "dim": 10**9})
    with pytest.raises(ValueError, match="heads x head_dim must be at most"):
        TrainMemoryReaderConfig.from_dict({"out": "o", "data": "d", "heads": 1000, "head_dim": 1000})


@pytest.mark.parametrize("make, err", [
    ("engine.mechanisms.plugins.map_tune:MapTuneConfig", "map-tune config: field 'batch' must be a whole number"),
    ("engine.mechanisms.plugins.task_tune:TaskTuneConfig", "task-tune config: field 'batch' must be a whole number"),
    ("engine.mechanisms.plugins.transe:TransEConfig", "train-transe config: field 'batch' must be a whole number"),
])
def test_a_job_config_from_json_names_a_field_of_the_wrong_type(make, err):
    """A job config written by hand (the GUI's job records, a script) with "16" for 16 is
    refused naming the field, not with a TypeError deep in training."""
    import importlib

    from engine.mechanisms.plugins.errors import PluginError

    mod, cls = make.split(":")
    with pytest.raises(PluginError, match=err + ", got a string"):
        getattr(importlib.import_module(mod), cls).from_dict({"pack": "p.plugmem", "batch": "16"})


def test_a_pkm_grow_config_names_its_missing_fields():
    from engine.mechanisms.pkm.config import PKMError
    from engine.mechanisms.pkm.train import GrowConfig

    with pytest.raises(PKMError, match="pkm grow config: missing field\\(s\\) 'out', 'corpus'"):
        GrowConfig.from_dict({"slots": 16_384})
    assert GrowConfig.from_dict({"out": "o", "corpus": "notes.txt"}).corpus == ["notes.txt"]
