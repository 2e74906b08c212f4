"""The compressed (IVF-PQ) index: it agrees with exact search, returns exact scores, is
built and compacted in the background, survives damage and cancellation; and the exact
path's backend is chosen by measurement and cached."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import engine.index.ann as ann_mod
from engine.index import IndexCorruptError, VectorIndex, exact_backend

DIM = 32
N = 4000
ROOT = Path(__file__).resolve().parents[2]


def low_rank(rng, n, dim=DIM, latent=8):
    """Unit vectors of low intrinsic dimension (neighbourhoods, like real embeddings)."""
    proj = np.random.default_rng(99).standard_normal((latent, dim)).astype(np.float32)
    x = rng.standard_normal((n, latent)).astype(np.float32) @ proj
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(model: dict, q: np.ndarray, k: int) -> np.ndarray:
    ids = np.fromiter(model.keys(), np.int64, len(model))
    keys = np.stack(list(model.values()))
    s = q @ keys.T
    return ids[np.argsort(-s, axis=1, kind="stable")[:, :k]]


def recall(idx: VectorIndex, model: dict, q: np.ndarray, k: int = 10) -> float:
    want = brute(model, q, k)
    hits = 0
    for row, w in zip(q, want):
        got, _ = idx.search(row, k)
        hits += len(set(got[0].tolist()) & set(w.tolist()))
    return hits / (k * len(q))


def compressed(**kw) -> VectorIndex:
    return VectorIndex(DIM, approx_threshold=1000, compressed_threshold=1000, **kw)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The exact-backend choice is cached per machine: keep the tests' out of the user cache."""
    from engine.index import exact_backend

    monkeypatch.setenv("PLUGMEM_CACHE_DIR", str(tmp_path / "cache"))
    # small codebooks (8 sub-quantisers of 16 centroids): the same IVF-PQ, trained in a second
    monkeypatch.setattr(ann_mod, "PQ_M", 8)
    monkeypatch.setattr(ann_mod, "PQ_NBITS", 4)
    exact_backend.forget()
    yield
    exact_backend.forget()


@pytest.fixture()
def rng():
    return np.random.default_rng(11)


@pytest.fixture()
def data(rng):
    keys = low_rank(rng, N)
    ids = np.arange(N, dtype=np.int64) * 3
    return ids, keys


class Gate:
    """Holds background builds at their first chunk of adds until opened (real adds follow)."""

    def __init__(self, monkeypatch):
        self.entered, self.open = threading.Event(), threading.Event()
        real = ann_mod.add_chunked

        def held(index, keys, should_stop=None, start=0, chunk=ann_mod.ADD_CHUNK):
            self.entered.set()
            while not self.open.wait(0.01):
                if should_stop is not None and should_stop():
                    raise ann_mod.BuildCancelled
            return real(index, keys, should_stop, start, chunk)

        monkeypatch.setattr(ann_mod, "add_chunked", held)


def test_compressed_agrees_with_exact_and_rescores_exactly(rng, data):
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60) and idx.ann_kind == "ivfpq"
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    q = low_rank(rng, 60)
    assert recall(idx, model, q) >= 0.95
    got, scores = idx.search(q[:1], 10)
    np.testing.assert_array_equal(got[0, :1], brute(model, q[:1], 1)[0])  # top-1 agrees
    # the shortlist is re-scored from the keys: the scores are the float32 inner products
    want = np.stack([model[int(i)] for i in got[0]]) @ q[0]
    np.testing.assert_allclose(scores[0], want, rtol=0, atol=1e-6)
    assert np.all(np.diff(scores[0]) <= 0)


def test_rebuilt_after_edits_and_tombstones(rng, data, monkeypatch):
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60)
    first_uid = idx._ann_uid
    gate = Gate(monkeypatch)
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    gone = ids[rng.choice(N, N // 3, replace=False)]
    idx.remove(gone)  # a third tombstoned: past the threshold, compaction starts by itself
    for i in gone.tolist():
        model.pop(i)
    assert gate.entered.wait(30) and idx.building
    # while it runs, queries use the previous ann and honour the tombstones; edits go on
    q = low_rank(rng, 40)
    got, _ = idx.search(q, 10, exact=False)
    assert idx.approximate and not np.isin(got, gone).any()
    fresh = low_rank(rng, 300)
    new_ids = np.arange(300, dtype=np.int64) * 3 + 1
    monkeypatch.setattr("engine.index.vector_index.DELTA_FOLD_ROWS", 64)  # folded into the old base
    idx.upsert(new_ids, fresh)
    model.update({int(i): fresh[j] for j, i in enumerate(new_ids)})
    late_gone = ids[~np.isin(ids, gone)][:50]
    idx.remove(late_gone)  # tombstones made during the compaction carry over
    for i in late_gone.tolist():
        model.pop(i)
    gate.open.set()
    assert idx.wait_ready(60) and idx.ann_kind == "ivfpq" and idx._ann_uid != first_uid
    assert len(idx._ids) < N  # the tombstoned rows are gone from the base
    assert len(idx) == len(model)
    got, _ = idx.search(q, 10, exact=False)
    assert not np.isin(got, np.concatenate([gone, late_gone])).any()
    assert recall(idx, model, q) >= 0.95
    np.testing.assert_array_equal(idx.search(q, 10, exact=True)[0], brute(model, q, 10))


def test_cancelled_build_leaves_the_previous_index(rng, data, monkeypatch):
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60)
    uid, q = idx._ann_uid, low_rank(rng, 20)
    before = idx.search(q, 10, exact=False)
    gate = Gate(monkeypatch)
    with idx._lock:
        idx._start_ann(compact=True)
    assert gate.entered.wait(30)
    assert idx.cancel_build() and idx.wait_ready(30)
    gate.open.set()
    assert idx._ann_uid == uid and idx.ann_kind == "ivfpq"
    np.testing.assert_array_equal(idx.search(q, 10, exact=False)[0], before[0])
    # a first build cancelled: searches stay exact and correct
    idx2 = compressed()
    gate.open.clear()
    gate.entered.clear()
    idx2.build(ids, keys)
    assert gate.entered.wait(30) and not idx2.approximate
    assert idx2.cancel_build()
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    np.testing.assert_array_equal(idx2.search(q[0], 10)[0][0], brute(model, q[:1], 10)[0])


def test_damaged_compressed_cache_is_detected_and_rebuilt(rng, data, tmp_path, caplog):
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60)
    folder = tmp_path / "ix"
    idx.save(folder, {"cv": 1})
    assert (folder / "ann.faiss").is_file() and (folder / "ann_trained.faiss").is_file()
    q = low_rank(rng, 10)
    want = idx.search(q, 10, exact=False)[0]
    # truncated: the stamp's sizes catch it, and the owner (Memory) rebuilds from the pack
    p = folder / "ann.faiss"
    data_bytes = p.read_bytes()
    p.write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(IndexCorruptError, match="ann.faiss"):
        VectorIndex.load(folder, {"cv": 1})
    # garbage that matches its stamp (written by a broken tool): read fails, rebuilt in the
    # background from the keys, the rest of the cache (and every entry) kept
    p.write_bytes(b"\x00" * len(data_bytes))
    meta = json.loads((folder / "stamp.json").read_text())
    from engine.index.cache import _checksum

    meta["files"]["ann.faiss"]["sha256"] = _checksum(p)
    (folder / "stamp.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="engine.index.cache"):
        back = VectorIndex.load(folder, {"cv": 1})
        assert back.wait_ready(60)
    assert "unusable" in caplog.text and "ann.faiss" in caplog.text
    assert len(back) == N and back.ann_kind == "ivfpq"
    np.testing.assert_array_equal(back.search(q, 10, exact=False)[0], want)  # same training, same codes
    back.save(folder, {"cv": 1})
    assert VectorIndex.load(folder, {"cv": 1}).wait_ready(60)


def test_killed_build_leaves_the_saved_index_usable(rng, data, tmp_path):
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60)
    folder = tmp_path / "ix"
    idx.save(folder, {"cv": 1})
    gone = ids[: N // 2]
    child = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        import engine.index.ann as ann_mod
        from engine.index import VectorIndex
        ann_mod.PQ_M, ann_mod.PQ_NBITS = 8, 4
        real = ann_mod.add_chunked
        def slow(*a, **kw):  # a build that takes long enough to be killed in the middle
            os.write(1, b"building\\n"); time.sleep(60); return real(*a, **kw)  # os.write: two threads print
        ann_mod.add_chunked = slow
        ix = VectorIndex.load({str(folder)!r}, {{"cv": 1}})
        ix.wait_ready(60)
        ix.remove(np.asarray({gone.tolist()!r}, dtype=np.int64))  # starts a background compaction
        ix.save({str(folder)!r}, {{"cv": 2}})  # the tombstones, with the previous ann
        os.write(1, b"saved\\n")
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert sorted(lines) == ["building", "saved"], lines
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    back = VectorIndex.load(folder, {"cv": 2})
    assert back.wait_ready(60) and back.ann_kind == "ivfpq"
    model = {int(i): keys[j] for j, i in enumerate(ids) if j >= N // 2}
    q = low_rank(rng, 30)
    got, _ = back.search(q, 10, exact=False)
    assert not np.isin(got, gone).any()
    assert recall(back, model, q) >= 0.95


def test_exact_backend_is_chosen_by_measurement_and_cached(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("PLUGMEM_CACHE_DIR", str(tmp_path))
    exact_backend.forget()
    calls = []
    real = exact_backend.measure

    def counted(dim, rows=exact_backend.CAL_ROWS, reps=exact_backend.CAL_REPS):
        calls.append(dim)
        return real(dim, rows=8192, reps=3)

    monkeypatch.setattr(exact_backend, "measure", counted)
    first = exact_backend.choose(DIM)
    assert first in exact_backend.BACKENDS and calls == [DIM]
    saved = json.loads((tmp_path / exact_backend.CACHE_NAME).read_text())
    key = exact_backend.machine_key(DIM)
    assert exact_backend.cpu_model() in key and "torch=" in key and "numpy=" in key
    assert saved[key]["backend"] == first and set(saved[key]["seconds"]) == set(exact_backend.BACKENDS)
    exact_backend.forget()  # a new process: reads the cache, measures nothing
    assert exact_backend.choose(DIM) == first and calls == [DIM]
    assert exact_backend.choose(DIM + 16) in exact_backend.BACKENDS and calls == [DIM, DIM + 16]
    # both backends answer exactly (the index uses whichever was chosen)
    n = 70_000  # past FP16_MIN_ROWS: the one-query exact scan
    keys = low_rank(rng, n)
    idx = VectorIndex(DIM, approx_threshold=10**9)
    idx.build(np.arange(n), keys)
    idx.remove(np.arange(0, n, 7))
    model = {i: keys[i] for i in range(n) if i % 7}
    q = low_rank(rng, 3)
    for backend in exact_backend.BACKENDS:
        monkeypatch.setattr(exact_backend, "choose", lambda dim, backend=backend, **kw: backend)
        for row in q:
            np.testing.assert_array_equal(idx.search(row, 10)[0][0], brute(model, row[None], 10)[0])
    exact_backend.forget()


def test_ivf_rule_values_at_the_measured_sizes():
    """The list / probe / shortlist rule at the sizes bench_ivf_rule.py measured (RESULTS.md):
    tuning recall@10 needed a 300-row shortlist at 1M (0.946 with 200) and 400 at 2M (0.946
    with 300); nlist and nprobe keep their 100k / 1M values."""
    assert [ann_mod.ivf_nlist(n) for n in (100_000, 1_000_000, 2_000_000, 4_000_000)] == [512, 2048, 2048, 4096]
    assert [ann_mod.ivf_nprobe(nl) for nl in (512, 2048, 4096, 8192)] == [64, 128, 181, 256]
    assert [ann_mod.rerank_for(n, 10) for n in (100_000, 1_000_000, 2_000_000, 10_000_000)] == [200, 300, 425, 949]
    assert ann_mod.rerank_for(1_000_000, 50) == 500  # a large k still gets 10 rows per answer
    assert ann_mod.rerank_for(10**9, 10) == ann_mod.RERANK_MAX


def test_shortlist_follows_the_keys_indexed(rng, data, monkeypatch):
    """The search re-scores rerank_for(codes indexed) rows: with the rate raised so that 4,000
    keys want ~1,000 rows, faiss is asked for that many and recall does not drop."""
    ids, keys = data
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60) and idx.ann_kind == "ivfpq"
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    q = low_rank(rng, 40)
    before = recall(idx, model, q)
    asked = []
    real = ann_mod.search_ivfpq

    def spy(index, queries, n_short, nprobe, bitmap):
        asked.append(n_short)
        return real(index, queries, n_short, nprobe, bitmap)

    monkeypatch.setattr(ann_mod, "search_ivfpq", spy)
    monkeypatch.setattr(ann_mod, "RERANK_AT_MILLION", 15_811)
    after = recall(idx, model, q)
    assert set(asked) == {ann_mod.rerank_for(N, 10)} and ann_mod.rerank_for(N, 10) >= 990
    assert after >= before


def test_index_saved_before_the_rule_change_opens_and_searches(rng, data, tmp_path, monkeypatch):
    """A cache written when the shortlist was a flat 200 (or with lists the rule would now pick
    differently) is read as it is: no rebuild, same answers at the same shortlist, and its
    training is still accepted for a compaction (trained_fits within 2x of the lists wanted)."""
    ids, keys = data
    shipped_rule = ann_mod.rerank_for
    monkeypatch.setattr(ann_mod, "rerank_for", lambda n, k: max(200, 10 * k))  # the old rule
    idx = compressed()
    idx.build(ids, keys)
    assert idx.wait_ready(60)
    folder = tmp_path / "ix"
    idx.save(folder, {"cv": 1})
    q = low_rank(rng, 20)
    old_answers = idx.search(q, 10, exact=False)[0]
    nlist = int(idx._ann.nlist)
    monkeypatch.setattr(ann_mod, "rerank_for", shipped_rule)
    monkeypatch.setattr(ann_mod, "ivf_nlist", lambda n: 2 * nlist)  # a rule that now wants 2x the lists
    adds = []
    real_add = ann_mod.add_chunked
    monkeypatch.setattr(ann_mod, "add_chunked", lambda *a, **kw: adds.append(1) or real_add(*a, **kw))
    back = VectorIndex.load(folder, {"cv": 1})
    assert back.wait_ready(60) and back.ann_kind == "ivfpq" and int(back._ann.nlist) == nlist
    assert adds == []  # read from the cache, not rebuilt
    np.testing.assert_array_equal(back.search(q, 10, exact=False)[0], old_answers)  # 4000 keys: still 200
    assert ann_mod.trained_fits(back._trained, len(back), DIM)
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    assert recall(back, model, q) >= 0.95
