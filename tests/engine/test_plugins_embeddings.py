"""Entity embeddings: TransE training (checkpoints, resume, cancel) and imports with clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from engine.mechanisms.plugins.embeddings import EntityEmbeddings, import_embeddings, save_embeddings
from engine.mechanisms.plugins.errors import EmbeddingError
from engine.mechanisms.plugins.transe import train_transe
from engine.progress import JobCancelled
from engine.store import Pack
from tests.engine.test_plugins_fixtures import COUNTRIES, make_pack


@pytest.fixture
def pack_path(tmp_path):
    return make_pack(tmp_path, with_facts=False)


def _cfg(pack_path, **kw):
    return {"pack": str(pack_path), "dim": 16, "epochs": 40, "batch": 8, "lr": 0.02, "checkpoint_every": 5, **kw}


def test_transe_learns_the_triples_and_saves_entity_vectors(pack_path):
    seen = []
    res = train_transe(_cfg(pack_path), progress=lambda f, m="", **kw: seen.append((f, kw)))
    assert res["entities"] == len(COUNTRIES) and res["relations"] == 3
    assert res["losses"][-1] < 0.5 * res["losses"][0]
    assert res["tail_hits_at_10"] > 0.5
    assert any("loss" in kw for _, kw in seen) and seen[-1][0] == 1.0
    emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    assert emb.source == "transe" and emb.dim == 16 and sorted(emb.names) == sorted(COUNTRIES)
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-4)
    with Pack.open(pack_path, readonly=True) as pack:
        assert emb.check_pack(pack) == []


def test_transe_cancel_then_resume_gives_the_uninterrupted_result(tmp_path, pack_path):
    full = train_transe(_cfg(pack_path, out=str(tmp_path / "full")))
    calls = {"n": 0}

    def stop_after_12_epochs():
        calls["n"] += 1
        return calls["n"] > 12

    out = tmp_path / "resumed"
    with pytest.raises(JobCancelled, match="epoch 12/40"):
        train_transe(_cfg(pack_path, out=str(out)), should_stop=stop_after_12_epochs)
    assert (out / "checkpoint.pt").is_file() and not (out / "config.json").exists()
    res = train_transe(_cfg(pack_path, out=str(out)))
    assert res["resumed_from"] == 12
    assert res["losses"] == pytest.approx(full["losses"], rel=1e-5)
    a = EntityEmbeddings.load(tmp_path / "full").vectors
    b = EntityEmbeddings.load(out).vectors
    assert np.allclose(a, b, atol=1e-5)
    with pytest.raises(EmbeddingError, match="another TransE config"):
        train_transe(_cfg(pack_path, out=str(out), dim=8))
    assert train_transe(_cfg(pack_path, out=str(out), dim=8, force=True))["resumed_from"] == 0


def test_transe_refuses_a_pack_without_triples(tmp_path):
    p = tmp_path / "empty.plugmem"
    Pack.create(p).close()
    with pytest.raises(Exception, match="no entities"):
        train_transe({"pack": str(p)})


def _names(pack_path):
    with Pack.open(pack_path, readonly=True) as pack:
        return [e["name"] for e in pack.entities()]


def test_import_npy_with_names_and_safetensors_with_ids(tmp_path, pack_path):
    names = _names(pack_path)[::-1]
    arr = np.random.default_rng(0).normal(size=(len(names), 12)).astype(np.float32)
    np.save(tmp_path / "e.npy", arr)
    (tmp_path / "ids.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    with Pack.open(pack_path, readonly=True) as pack:
        emb = import_embeddings(pack, tmp_path / "e.npy", tmp_path / "ids.txt")
        assert emb.names == names and emb.dim == 12
        ids = [e["id"] for e in pack.entities()][:3]
    out = save_embeddings(emb, tmp_path / "emb")
    assert np.array_equal(EntityEmbeddings.load(out).vectors, arr)
    with pytest.raises(EmbeddingError, match="already holds entity embeddings; not overwritten"):
        save_embeddings(emb, tmp_path / "emb")
    from safetensors.numpy import save_file

    save_file({"embeddings": arr[:3], "entity_ids": np.array(ids, dtype=np.int64)}, str(tmp_path / "e.safetensors"))
    with Pack.open(pack_path, readonly=True) as pack:
        emb2 = import_embeddings(pack, tmp_path / "e.safetensors")
        assert emb2.entity_ids.tolist() == ids
        assert len(emb2.check_pack(pack)) == len(COUNTRIES) - 3  # the others are simply not covered


@pytest.mark.parametrize("case, message", [
    ("rows", "lists 9 entities but"),
    ("unknown", "entry 2 ('Atlantis') is not an entity"),
    ("twice", "is listed twice (entries 1 and 2)"),
    ("dim", "dimension 12, expected 64"),
    ("nan", "row 3 holds NaN"),
    ("pickle", "not a plain numeric .npy"),
    ("1d", "must be a 2-D array"),
])
def test_import_errors_name_the_problem(tmp_path, pack_path, case, message):
    names = _names(pack_path)
    arr = np.ones((len(names), 12), dtype=np.float32)
    if case == "rows":
        names = names[:9]
    elif case == "unknown":
        names[1] = "Atlantis"
    elif case == "twice":
        names[1] = names[0]
    elif case == "nan":
        arr[3, 2] = np.nan
    elif case == "1d":
        arr = arr[:, 0]
    if case == "pickle":
        np.save(tmp_path / "e.npy", np.array([{"a": 1}] * len(names), dtype=object), allow_pickle=True)
    else:
        np.save(tmp_path / "e.npy", arr)
    (tmp_path / "ids.txt").write_text("\n".join(names), encoding="utf-8")
    with Pack.open(pack_path, readonly=True) as pack, pytest.raises(EmbeddingError) as err:
        import_embeddings(pack, tmp_path / "e.npy", tmp_path / "ids.txt", dim=64 if case == "dim" else None)
    assert message in str(err.value)


def test_an_id_list_that_is_not_utf8_is_named_by_file_and_line(tmp_path, pack_path):
    names = _names(pack_path)
    np.save(tmp_path / "e.npy", np.ones((len(names), 12), dtype=np.float32))
    (tmp_path / "ids.txt").write_bytes(("\n".join(names[:1] + ["Z\xfcrich"] + names[2:])).encode("latin-1"))
    with Pack.open(pack_path, readonly=True) as pack, pytest.raises(EmbeddingError) as err:
        import_embeddings(pack, tmp_path / "e.npy", tmp_path / "ids.txt")
    assert str(err.value).startswith(f"{tmp_path / 'ids.txt'}:2: not valid UTF-8 (byte 0xfc")


def test_embeddings_for_another_entity_set_are_refused(tmp_path, pack_path):
    train_transe(_cfg(pack_path, epochs=2))
    emb = EntityEmbeddings.load(pack_path.with_name(pack_path.name + ".embeddings"))
    other = tmp_path / "other"
    other.mkdir()
    from engine.mechanisms.plugins.entities import import_triples
    from tests.engine.test_plugins_fixtures import write_jsonl

    with Pack.create(other / "o.plugmem") as pack:
        import_triples(pack, [write_jsonl(other / "t.jsonl", [{"head": "Mars", "relation": "r", "tail": "x"}])])
        with pytest.raises(EmbeddingError, match="made for another entity set: 10 of its 10 entities"):
            emb.check_pack(pack, "these")
