"""Streamed builds and compactions (issue 22): the keys go chunk by chunk to key files that
serve, memory-mapped, as the base, so no step holds every key in RAM. The streamed index must
answer like the in-RAM one, refuse bad input without touching the index it replaces, and leave
the saved index in use when it is cancelled or killed."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import engine.index.ann as ann_mod
from engine.index import VectorIndex, exact_backend

from .test_index_compressed import DIM, N, ROOT, brute, low_rank, recall


@pytest.fixture(autouse=True)
def small_pq(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGMEM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ann_mod, "PQ_M", 8)
    monkeypatch.setattr(ann_mod, "PQ_NBITS", 4)
    exact_backend.forget()
    yield
    exact_backend.forget()


@pytest.fixture()
def rng():
    return np.random.default_rng(5)


@pytest.fixture()
def data(rng):
    return np.arange(N, dtype=np.int64) * 3, low_rank(rng, N)


def chunked(ids, keys, size=700):
    return ((ids[i : i + size], keys[i : i + size]) for i in range(0, len(ids), size))


def compressed(tmp_path=None, **kw) -> VectorIndex:
    ix = VectorIndex(DIM, approx_threshold=1000, compressed_threshold=1000, background=False, **kw)
    if tmp_path is not None:
        ix.spill_dir = tmp_path / "spill"
    return ix


def spills(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".spill-*")) if folder.is_dir() else []


def test_streamed_build_answers_like_the_in_ram_build(rng, data, tmp_path):
    ids, keys = data
    ram = compressed()
    ram.build(ids, keys)
    st = compressed(tmp_path)
    assert st.build_streamed(chunked(ids, keys)) == N
    assert isinstance(st._keys, np.memmap) and st.ann_kind == ram.ann_kind == "ivfpq"
    assert len(spills(tmp_path / "spill")) == 2  # float32 + float16 key files, memory-mapped
    q = low_rank(rng, 80)
    # same seeded sample, same training, same codes: the same top-10, with the same scores
    a_ids, a_s = ram.search(q, 10, exact=False)
    b_ids, b_s = st.search(q, 10, exact=False)
    np.testing.assert_array_equal(b_ids, a_ids)
    np.testing.assert_allclose(b_s, a_s, atol=1e-6)
    model = {int(i): keys[j] for j, i in enumerate(ids)}
    assert recall(st, model, q) >= 0.95
    np.testing.assert_array_equal(st.search(q, 10, exact=True)[0], brute(model, q, 10))
    # the key files go when the base that maps them does
    del st
    gc.collect()
    assert spills(tmp_path / "spill") == []


def test_streamed_build_holds_one_chunk_not_every_key(tmp_path):
    n, size, dim = 20_000, 1_000, 256  # 20 MB of keys; ids and their order are 5 % of that
    ids = np.arange(n, dtype=np.int64)

    def gen():
        r = np.random.default_rng(1)
        for lo in range(0, n, size):
            yield ids[lo : lo + size], low_rank(r, size, dim)

    def peak_of(fn) -> int:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    all_keys = n * dim * 4
    ram = VectorIndex(dim, approx_threshold=10**9, background=False)
    in_ram = peak_of(lambda: ram.build(*map(np.concatenate, zip(*gen()))))
    del ram
    ix = VectorIndex(dim, approx_threshold=10**9, background=False)
    ix.spill_dir = tmp_path
    streamed = peak_of(lambda: ix.build_streamed(gen()))
    assert in_ram > 2 * all_keys  # the measure sees the keys: build() holds them (and a copy)
    # a few chunks (the generator's own temporaries, the checks, the float16 copy) of 20
    assert streamed < all_keys / 4, f"peak {streamed:,} B for {all_keys:,} B of keys"
    assert len(ix) == n


def test_bad_chunk_or_cancel_leaves_the_previous_index(rng, data, tmp_path):
    ids, keys = data
    ix = compressed(tmp_path)
    ix.build(ids, keys)
    uid, q = ix._ann_uid, low_rank(rng, 20)
    before = ix.search(q, 10, exact=False)
    bad = keys.copy()
    bad[2_345, 3] = np.nan
    with pytest.raises(ValueError, match=r"chunk 3, rows from 2100\).*row 245 contains NaN"):
        ix.build_streamed(chunked(ids, bad))
    dup = ids.copy()
    dup[3_000] = dup[10]
    with pytest.raises(ValueError, match=rf"duplicate ids \[{int(dup[10])}\]"):
        ix.build_streamed(chunked(dup, keys))
    with pytest.raises(ValueError, match=rf"shape \[n, {DIM}\]"):
        ix.build_streamed([(ids[:5], keys[:5, :-1])])
    calls = []
    with pytest.raises(ann_mod.BuildCancelled):
        ix.build_streamed(chunked(ids, keys), should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert spills(tmp_path / "spill") == []  # every attempt removed its files
    assert ix._ann_uid == uid and len(ix) == N
    np.testing.assert_array_equal(ix.search(q, 10, exact=False)[0], before[0])


def test_streamed_compaction_matches_in_ram_and_publishes_by_link(rng, data, tmp_path):
    ids, keys = data
    folder = tmp_path / "ix"
    saved = compressed()
    saved.build(ids, keys)
    saved.save(folder, {"cv": 1})
    gone = ids[rng.choice(N, N // 3, replace=False)]
    ram = compressed()
    ram.build(ids, keys)
    ram.remove(gone)  # past a quarter: compaction starts by itself (in RAM)
    back = VectorIndex.load(folder, {"cv": 1})
    assert back.wait_ready(60) and isinstance(back._keys, np.memmap)
    back.background = False
    back.remove(gone)  # the same, from the memory-mapped keys: streamed to new key files
    assert not back.needs_compaction and len(back._ids) == N - len(gone)
    assert ram._trained is not None and len(ram._ids) == len(back._ids)
    assert isinstance(back._keys, np.memmap) and isinstance(back._keys16, np.memmap)
    assert Path(back._keys.filename).parent == folder and len(spills(folder)) == 2
    q = low_rank(rng, 60)
    np.testing.assert_array_equal(back.search(q, 10, exact=False)[0], ram.search(q, 10, exact=False)[0])
    back.save(folder, {"cv": 2})
    # the cache's key files are the compaction's own (a hard link, no copy of the keys)
    assert os.stat(folder / "base_keys.npy").st_ino == os.stat(back._keys.filename).st_ino
    again = VectorIndex.load(folder, {"cv": 2})
    assert again.wait_ready(60) and len(again) == N - len(gone)
    np.testing.assert_array_equal(again.search(q, 10, exact=False)[0], ram.search(q, 10, exact=False)[0])
    del back
    gc.collect()
    assert spills(folder) == []  # the link names went with the map; the cache keeps its files
    assert (folder / "base_keys.npy").is_file()


def test_killed_streamed_build_leaves_the_saved_index_in_use(rng, data, tmp_path):
    ids, keys = data
    folder = tmp_path / "ix"
    ix = compressed()
    ix.build(ids, keys)
    ix.save(folder, {"cv": 1})
    q = low_rank(rng, 20)
    want = ix.search(q, 10, exact=False)[0]
    child = textwrap.dedent(f"""
        import os, time
        import numpy as np
        from engine.index import VectorIndex
        ix = VectorIndex({DIM}, approx_threshold=1000, compressed_threshold=1000)
        ix.spill_dir = {str(folder)!r}
        def chunks():
            rng = np.random.default_rng(0)
            for c in range(1000):
                yield np.arange(c * 100, c * 100 + 100), rng.standard_normal((100, {DIM})).astype(np.float32)
                if c == 5:
                    os.write(1, b"streaming\\n")
                    time.sleep(60)
        ix.build_streamed(chunks())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "streaming"
        assert len(spills(folder)) == 2  # its half-written key files, beside the cache
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    back = VectorIndex.load(folder, {"cv": 1})
    assert back.wait_ready(60) and back.ann_kind == "ivfpq" and len(back) == N
    np.testing.assert_array_equal(back.search(q, 10, exact=False)[0], want)
    back.save(folder, {"cv": 1})  # the dead build's files are strays: removed under the lock
    assert spills(folder) == []


def test_memory_rebuild_streams_from_the_pack(tmp_path, encoder, monkeypatch):
    from engine.memory import Memory, index_dir_for

    from .conftest import FACTS

    monkeypatch.setattr("engine.memory.STREAM_BUILD_ROWS", 1)
    path = tmp_path / "m.plugmem"
    with Memory.open(path, encoder, create=True, name="m") as m:
        m.add_many([{"text": t, "title": title, "tags": [tag]} for t, title, tag in FACTS])
        m.rebuild_index()
        assert isinstance(m.index._keys, np.memmap)
        assert Path(m.index._keys.filename).parent == index_dir_for(path)
        hit = m.search("What is the capital of Japan?", k=1)[0].entry.text
    assert hit == "Tokyo is the capital of Japan."
    del m
    gc.collect()
    assert spills(index_dir_for(path)) == []
    with Memory.open(path, encoder) as m:
        assert m.search("What is the capital of Japan?", k=1)[0].entry.text == hit
        assert len(m.index) == len(FACTS)
