"""The one artefact base (engine.artefacts.Artefact): folders written before it still load and
are written again byte for byte; writes are atomic; a new kind is a few lines.

``data/artefacts-v1/`` was written by the code before the base (commit 0aa6f95, on the tiny
reader of seed 0): a DPM branch, entity embeddings, a knowledge plugin, a context layout; and
by the code before PKMFiles / PatchFiles / SlotPluginFiles (commit 63c95f4): a product-key
memory (+ usage), a weight patch, an answer-slot plugin (version 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.artefacts import Artefact, atomic_write, check_fields
from engine.mechanisms import dpm
from engine.mechanisms.base import MechanismError
from engine.mechanisms.context.mechanism import ContextMechanism
from engine.mechanisms.plugins.embeddings import EntityEmbeddings
from engine.mechanisms.plugins.errors import EmbeddingError, PluginError
from engine.mechanisms.plugins.io import load_plugin

OLD = Path(__file__).parent / "data" / "artefacts-v1"


@pytest.fixture(scope="module")
def reader():
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert sorted(p.name for p in b.iterdir()) == names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_a_branch_written_before_loads_and_is_written_again_byte_for_byte(reader, tmp_path):
    branch = dpm.load(OLD / "branch", reader)
    assert branch.config.layers == 1
    training = json.loads((OLD / "branch" / "config.json").read_text())["training"]
    dpm.save(branch, tmp_path / "b", extra=training)
    same_files(OLD / "branch", tmp_path / "b")


def test_a_plugin_and_embeddings_written_before_load_and_are_written_again(reader, tmp_path):
    plugin = load_plugin(OLD / "plugin", reader)
    assert plugin.name == "zoo" and plugin.embeddings.names == ["Zebra", "Lion", "Ça va"]
    assert plugin.aliases[5] == ["Löwe"]
    plugin.save(tmp_path / "p")
    same_files(OLD / "plugin", tmp_path / "p")
    emb = EntityEmbeddings.load(OLD / "embeddings")
    emb.save(tmp_path / "e")
    same_files(OLD / "embeddings", tmp_path / "e")


def test_a_context_layout_written_before_loads(tmp_path):
    assert ContextMechanism.load(OLD / "context").style == "facts"
    ContextMechanism("facts").save(tmp_path / "c")
    same_files(OLD / "context", tmp_path / "c")


def test_each_kind_refuses_with_its_own_error_naming_the_file(reader, tmp_path):
    from engine.reader.tiny import make_tiny_reader

    other = make_tiny_reader(1)
    with pytest.raises(dpm.DPMError, match=r"branch.*trained for the reader 'tiny-llama-seed0', not the loaded reader"):
        dpm.load(OLD / "branch", other)
    with pytest.raises(PluginError, match="not the loaded reader 'tiny-llama-seed1'.*map-tune a plugin"):
        load_plugin(OLD / "plugin", other)
    for kind, copy in (("embeddings", EntityEmbeddings.load), ("context", ContextMechanism.load)):
        d = shutil.copytree(OLD / kind, tmp_path / kind)
        cfg = json.loads((d / "config.json").read_text())
        cfg["format_version"] = 99
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises((EmbeddingError, MechanismError), match=r"config.json: format version 99 is newer"):
            copy(d)
    with pytest.raises(PluginError, match=r"nowhere is not a knowledge plugin folder: no config.json; train one with `plugmem map-tune`"):
        load_plugin(tmp_path / "nowhere", reader)


class ToyError(ValueError):
    pass


class ToyFiles(Artefact):
    """What a new mechanism writes: the class attributes and its own field check."""

    format, version = "plugmem-toy", 2
    what, error = "a toy layer", ToyError
    remake = "train one with `plugmem train-toy`"
    reader_hint = "train a toy layer for this reader"

    @classmethod
    def check_fields(cls, meta, path):
        check_fields(meta, {"slots": "int", "reader": "dict"}, ToyError, str(path), required=("slots", "reader"))


def test_a_new_kind_round_trips_and_is_checked(reader, tmp_path):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ToyFiles.save(tmp_path / "t", {"slots": 3, "reader": reader.fingerprint}, {"w": w})
    meta = ToyFiles.read_config(tmp_path / "t")
    assert (meta["format"], meta["format_version"], meta["slots"]) == ("plugmem-toy", 2, 3)
    ToyFiles.check_reader(meta["reader"], reader, "The toy layer")
    assert torch.equal(ToyFiles.read_tensors(tmp_path / "t", {"w": (3, 4)})["w"], w)
    with pytest.raises(ToyError, match=r"model.safetensors does not match its config.json: wrong shape"):
        ToyFiles.read_tensors(tmp_path / "t", {"w": (4, 3)})
    with pytest.raises(ToyError, match=r"config.json: field 'slots' must be a whole number"):
        ToyFiles.save(tmp_path / "bad", {"slots": "3", "reader": {}}, {"w": w})
        ToyFiles.read_config(tmp_path / "bad")
    ToyFiles.save(tmp_path / "nan", {"slots": 1, "reader": {}}, {"w": torch.tensor([float("nan")])})
    with pytest.raises(ToyError, match=r"nan.model.safetensors: non-finite values in \['w'\]"):
        ToyFiles.read_tensors(tmp_path / "nan")
    with pytest.raises(ToyError, match=r"is not a toy layer folder: no config.json; train one"):
        (tmp_path / "empty").mkdir()
        ToyFiles.read_config(tmp_path / "empty")
    ToyFiles.save(tmp_path / "np", {"slots": 1, "reader": {}}, {"w": np.ones(2, np.float32)})
    assert ToyFiles.read_tensors(tmp_path / "np", framework="np")["w"].tolist() == [1.0, 1.0]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old", encoding="utf-8")

    def fail(p: Path) -> None:
        p.write_text("half", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    atomic_write(target, lambda p: p.write_text("new", encoding="utf-8"))
    assert target.read_text(encoding="utf-8") == "new" and target.stat().st_mode & 0o644 == 0o644


# Written by the code before PKMFiles / PatchFiles / SlotPluginFiles (commit 63c95f4, tiny reader of seed 0).
def test_a_product_key_memory_written_before_loads_and_is_written_again_byte_for_byte(reader, tmp_path):
    from engine.mechanisms.pkm import io as pkm_io

    memory, meta = pkm_io.load(OLD / "pkm", reader)
    assert meta["layer"] == 1 and memory.config.slots == 16
    pkm_io.save(memory, tmp_path / "m", reader_fingerprint=meta["reader"], layer=meta["layer"],
                corpus=meta["corpus"], training=meta["training"])
    w, c = pkm_io.load_usage(OLD / "pkm", 16)
    pkm_io.save_usage(tmp_path / "m", w, c)
    same_files(OLD / "pkm", tmp_path / "m")


def test_a_weight_patch_written_before_loads_and_is_written_again_byte_for_byte(reader, tmp_path):
    from engine.mechanisms.weight_patches import load, save

    patch = load(OLD / "patch", reader)
    assert patch.name == "zebra" and patch.facts[0].answer == "Porto-Novo"
    save(patch, tmp_path / "p")
    same_files(OLD / "patch", tmp_path / "p")


def test_an_answer_slot_plugin_written_before_loads_and_is_written_again_byte_for_byte(reader, tmp_path):
    from engine.mechanisms.plugins.answer_slot import load_slot_plugin

    sp = load_slot_plugin(OLD / "slot-plugin", reader)
    e = [int(sp.embeddings.entity_ids[0])]
    assert not torch.allclose(sp.slot_vectors(e, reader.device), sp.vectors(e, reader.device))
    sp.save(tmp_path / "s")
    same_files(OLD / "slot-plugin", tmp_path / "s")
