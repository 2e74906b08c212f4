"""VectorIndex: exact results equal brute force, edits are honoured, the cache round-trips
and a damaged cache is reported as missing / stale / corrupt."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine.index.vector_index as vi
from engine.index import IndexCorruptError, IndexMissingError, IndexStaleError, VectorIndex

DIM = 32


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def low_rank(rng, n, dim=DIM, latent=8):
    """Unit vectors of low intrinsic dimension, like real sentence embeddings.

    Isotropic noise has no neighbourhood structure and no approximate index finds its
    neighbours well; real embeddings (and these) do.
    """
    proj = np.random.default_rng(99).standard_normal((latent, dim)).astype(np.float32)
    x = rng.standard_normal((n, latent)).astype(np.float32) @ proj
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(ids, keys, q, k):
    s = q @ keys.T
    o = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[o], np.take_along_axis(s, o, 1)


def reference_search(model: dict, q, k):
    ids = np.fromiter(model.keys(), np.int64, len(model))
    keys = np.stack(list(model.values())) if model else np.zeros((0, q.shape[1]), np.float32)
    return brute(ids, keys, q, k)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The exact-backend choice is cached per machine: keep the tests' out of the user cache."""
    from engine.index import exact_backend

    monkeypatch.setenv("PLUGMEM_CACHE_DIR", str(tmp_path / "cache"))
    exact_backend.forget()
    yield
    exact_backend.forget()


@pytest.fixture()
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("n", [500, 70_000])  # numpy path, and fp16 shortlist + fp32 re-score path
def test_exact_equals_brute_force(rng, n):
    dim = 64
    keys = unit(rng, n, dim)
    ids = rng.permutation(n * 3)[:n].astype(np.int64)
    idx = VectorIndex(dim, approx_threshold=10**9)
    idx.build(ids, keys)
    q = unit(rng, 12, dim)
    want_i, want_s = brute(ids, keys, q, 10)
    for one in range(3):  # single queries
        got_i, got_s = idx.search(q[one], 10)
        assert got_i.shape == (1, 10) and got_i.dtype == np.int64 and got_s.dtype == np.float32
        np.testing.assert_array_equal(got_i[0], want_i[one])
        np.testing.assert_allclose(got_s[0], want_s[one], atol=1e-5)
    got_i, got_s = idx.search(q, 10)  # a batch (torch matmul path)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)


def test_upsert_replaces_and_remove_hides(rng):
    keys = unit(rng, 300)
    ids = np.arange(300, dtype=np.int64) + 1000
    idx = VectorIndex(DIM, approx_threshold=10**9)
    idx.build(ids, keys)
    new = unit(rng, 1)[0]
    idx.upsert([1005], new)
    assert len(idx) == 300 and 1005 in idx
    got, score = idx.search(new, 1)
    assert got[0, 0] == 1005 and score[0, 0] == pytest.approx(1.0, abs=1e-5)
    got, _ = idx.search(keys[5], 300)
    assert list(got[0]).count(1005) == 1  # the old key is gone, not duplicated
    assert idx.remove([1005, 999_999]) == 1  # unknown ids are ignored
    assert 1005 not in idx and len(idx) == 299
    got, _ = idx.search(new, 300)
    assert 1005 not in got


def test_many_edits_match_reference(rng, monkeypatch):
    monkeypatch.setattr(vi, "DELTA_FOLD_ROWS", 40)  # fold the delta into the base often
    keys = unit(rng, 400)
    model = {int(i): keys[i] for i in range(400)}
    idx = VectorIndex(DIM, approx_threshold=10**9)
    idx.build(np.arange(400), keys)
    removed: set[int] = set()
    for step in range(600):
        i = int(rng.integers(0, 600))
        if rng.random() < 0.4:
            idx.remove([i])
            model.pop(i, None)
            removed.add(i)
        else:
            v = unit(rng, 1)[0]
            idx.upsert([i], v)
            model[i] = v
            removed.discard(i)
        if step % 50 == 0:
            q = unit(rng, 3)
            got, s = idx.search(q, 15)
            want, ws = reference_search(model, q, 15)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(s, ws, atol=1e-5)
            assert not (set(got.ravel().tolist()) & removed)
    assert len(idx) == len(model)
    assert set(idx.ids().tolist()) == set(model)


def test_approximate_recall_and_removals(rng, monkeypatch, tmp_path):
    monkeypatch.setattr(vi, "DELTA_FOLD_ROWS", 64)
    n = 4000
    keys = low_rank(rng, n)
    ids = np.arange(n, dtype=np.int64) * 2
    idx = VectorIndex(DIM, approx_threshold=1000)
    idx.build(ids, keys)
    assert idx.wait_ready(30) and idx.approximate
    gone = ids[rng.choice(n, 800, replace=False)]
    idx.remove(gone)
    model = {int(i): keys[j] for j, i in enumerate(ids) if i not in set(gone.tolist())}
    fresh = low_rank(rng, 200)
    new_ids = np.arange(200, dtype=np.int64) * 2 + 1  # odd ids: new entries, folded into the graph
    idx.upsert(new_ids, fresh)
    model.update({int(i): fresh[j] for j, i in enumerate(new_ids)})
    q = low_rank(rng, 100)
    got, _ = idx.search(q[:1], 10)  # single queries use the graph
    hits = 0
    for row in q:
        g, _ = idx.search(row, 10)
        w, _ = reference_search(model, row[None], 10)
        hits += len(set(g[0].tolist()) & set(w[0].tolist()))
        assert not np.isin(g[0], gone).any()
    assert hits / (10 * len(q)) >= 0.95
    exact_i, _ = idx.search(q, 10, exact=True)
    want_i, _ = reference_search(model, q, 10)
    np.testing.assert_array_equal(exact_i, want_i)
    # the graph survives a save/load, tombstones included
    idx.save(tmp_path / "ix", {"cv": 3})
    back = VectorIndex.load(tmp_path / "ix", {"cv": 3})
    assert back.wait_ready(30) and back.approximate
    g2, _ = back.search(q, 10, exact=False)
    assert not np.isin(g2, gone).any()
    np.testing.assert_array_equal(g2, idx.search(q, 10, exact=False)[0])


def test_k_larger_than_size_and_empty(rng):
    idx = VectorIndex(DIM)
    got, s = idx.search(unit(rng, 2), 5)
    assert got.shape == (2, 5) and (got == -1).all() and np.isneginf(s).all()
    keys = unit(rng, 3)
    idx.build([4, 5, 6], keys)
    got, s = idx.search(keys[0], 5)
    assert sorted(got[0, :3].tolist()) == [4, 5, 6] and got[0, 0] == 4
    assert (got[0, 3:] == -1).all() and np.isneginf(s[0, 3:]).all()
    idx.remove([4, 5, 6])
    got, _ = idx.search(keys[0], 5)
    assert (got == -1).all() and len(idx) == 0


def test_bad_input_is_refused_and_loses_nothing(rng):
    idx = VectorIndex(DIM)
    keys = unit(rng, 10)
    idx.build(np.arange(10), keys)
    with pytest.raises(ValueError, match=r"shape \[n, 32\]"):
        idx.upsert([1], np.ones(16, np.float32))
    bad = unit(rng, 2)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        idx.upsert([20, 21], bad)
    with pytest.raises(ValueError, match=r"duplicate ids in one call \[3\]"):
        idx.upsert([3, 3], unit(rng, 2))
    with pytest.raises(ValueError, match="2 ids but 3 keys"):
        idx.build([1, 2], unit(rng, 3))
    with pytest.raises(ValueError, match="queries must have shape"):
        idx.search(np.ones((1, 5), np.float32), 3)
    assert len(idx) == 10 and 20 not in idx
    got, _ = idx.search(keys[2], 1)
    assert got[0, 0] == 2


def test_save_load_round_trip_after_edits(rng, tmp_path):
    keys = unit(rng, 500)
    idx = VectorIndex(DIM, approx_threshold=10**9)
    idx.build(np.arange(500), keys)
    folder = tmp_path / "pack.index"
    idx.save(folder, {"content_version": 1})
    idx.upsert([7, 900], unit(rng, 2))
    idx.remove([8])
    idx.save(folder, {"content_version": 2})  # base files are reused, delta rewritten
    back = VectorIndex.load(folder, {"content_version": 2})
    q = unit(rng, 4)
    np.testing.assert_array_equal(back.search(q, 20)[0], idx.search(q, 20)[0])
    assert len(back) == len(idx) == 500 and 8 not in back and 900 in back
    back.upsert([8], keys[8])  # the loaded (memory-mapped) index stays editable
    assert back.search(keys[8], 1)[0][0, 0] == 8
    other = tmp_path / "copy.index"
    back.save(other, {"content_version": 3})
    assert len(VectorIndex.load(other, {"content_version": 3})) == 501


def test_cache_errors(rng, tmp_path):
    idx = VectorIndex(DIM)
    idx.build(np.arange(100), unit(rng, 100))
    folder = tmp_path / "ix"
    with pytest.raises(IndexMissingError):
        VectorIndex.load(folder, {"cv": 1})
    idx.save(folder, {"cv": 1})
    with pytest.raises(IndexStaleError, match="saved for"):
        VectorIndex.load(folder, {"cv": 2})
    # truncated keys file
    p = folder / "base_keys.npy"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="base_keys.npy"):
        VectorIndex.load(folder, {"cv": 1})
    # same size, different bytes
    p.write_bytes(data[:-8] + b"\x00garbage")
    with pytest.raises(IndexCorruptError, match="checksum"):
        VectorIndex.load(folder, {"cv": 1})
    p.write_bytes(data)
    assert len(VectorIndex.load(folder, {"cv": 1})) == 100
    (folder / "stamp.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexCorruptError, match="unreadable"):
        VectorIndex.load(folder, {"cv": 1})
    idx.save(folder, {"cv": 1})
    meta = json.loads((folder / "stamp.json").read_text())
    meta["n_base"] = 99  # inconsistent with the files
    (folder / "stamp.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="expected"):
        VectorIndex.load(folder, {"cv": 1})
    idx.save(folder, {"cv": 1})
    (folder / "delta_ids.npy").unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        VectorIndex.load(folder, {"cv": 1})


def test_get_keys_returns_the_key_held_for_each_id(rng):
    keys = unit(rng, 50)
    idx = VectorIndex(DIM, approx_threshold=10**9)
    idx.build(np.arange(50), keys)
    new = unit(rng, 1)
    idx.upsert([7], new)  # now in the delta, its base row tombstoned
    idx.remove([3])
    got, found = idx.get_keys([0, 7, 3, 99])
    assert found.tolist() == [True, True, False, False]
    assert np.array_equal(got[0], keys[0]) and np.array_equal(got[1], new[0])
    assert not got[2:].any()
