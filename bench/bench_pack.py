"""Open and edit at scale: a pack of N entries (default 1M).

    .venv/bin/python bench/bench_pack.py [--n 1000000]

* open: time from Pack.open to keys searchable (Memory.open with the index cache),
  the encoder already loaded; baseline = reading all key blobs from SQLite (the naive
  way to get keys into memory). Goal < 0.5 s at 1M.
* edit: time from Memory.edit (re-encode one entry, SQLite, index in place) until a
  search returns the new text; baseline = the same edit with a flat faiss IndexIDMap2
  whose remove_ids is the naive in-place update. Goal <= 50 ms at 1M.

Keys of the synthetic entries are real MiniLM embeddings of real sentences, repeated
with small noise past the encoded set (timing only; recall is bench_search's job). The
pack is cached in bench/_data/ so reruns skip the ~2-minute build.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._corpus import DATA, sentences  # noqa: E402
from engine.encode import get_default_encoder  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.store import Pack  # noqa: E402


def make_pack(path: Path, n: int, enc) -> None:
    texts = sentences()[:4000]
    base = enc.encode(texts)
    rng = np.random.default_rng(0)
    with Pack.create(path, name=f"bench-{n}", encoder=enc.fingerprint) as p:
        step = 20_000
        t = time.perf_counter()
        for lo in range(0, n, step):
            m = min(step, n - lo)
            idx = rng.integers(0, len(texts), m)
            vecs = base[idx] + rng.normal(0, 0.02, (m, base.shape[1])).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            recs = [{"text": f"{texts[i]} (#{lo + j})", "source": "bench"} for j, i in enumerate(idx)]
            p.add_many(recs, vectors=vecs.astype(np.float32))
            print(f"\r  building pack: {lo + m:,}/{n:,} ({time.perf_counter() - t:.0f} s)", end="", flush=True)
        print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--edits", type=int, default=20)
    a = ap.parse_args()
    enc = get_default_encoder()
    enc.encode(["warm up"])
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"pack_{a.n}.plugmem"
    if not path.exists():
        make_pack(path, a.n, enc)
    with Memory.open(path, enc, on_message=print):  # builds the index cache once if missing
        pass

    # ---- open
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        mem = Memory.open(path, enc, on_message=print)
        mem.search_vectors(enc.encode(["probe"]), 1)
        opens.append(time.perf_counter() - t)
        mem.close()
    t = time.perf_counter()
    con = sqlite3.connect(path)
    blobs = con.execute("SELECT key FROM vectors").fetchall()
    naive_open = time.perf_counter() - t
    con.close()
    del blobs

    # ---- edit -> searchable
    mem = Memory.open(path, enc)
    ids = mem.pack.all_ids_array()[: a.edits * 50]
    rng = np.random.default_rng(1)
    edit_times = []
    for i, eid in enumerate(rng.choice(ids, a.edits, replace=False)):
        new = f"Zorblax crystal number {i} melts at {1000 + i} kelvin."
        t = time.perf_counter()
        mem.edit(int(eid), text=new)
        hit = mem.search(new, k=1)[0]
        edit_times.append(time.perf_counter() - t)
        assert hit.entry.text == new, (hit.entry.text, new)
    n_index = len(mem.index)
    mem.close()

    # baseline edit: flat IndexIDMap2, remove + add one id
    import faiss

    rng2 = np.random.default_rng(2)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(enc.dim))
    chunk = 100_000
    for lo in range(0, n_index, chunk):
        m = min(chunk, n_index - lo)
        v = rng2.normal(size=(m, enc.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        flat.add_with_ids(v, np.arange(lo, lo + m, dtype=np.int64))
    naive_edit = []
    for i in range(5):
        q = enc.encode([f"edited text {i}"])
        t = time.perf_counter()
        flat.remove_ids(np.array([i * 1000], dtype=np.int64))
        flat.add_with_ids(q, np.array([i * 1000], dtype=np.int64))
        flat.search(q, 1)
        naive_edit.append(time.perf_counter() - t)

    p50 = statistics.median(edit_times) * 1000
    print(f"entries: {a.n:,}  index type: {type(mem.index).__name__}")
    print(f"open to searchable: median {statistics.median(opens) * 1000:.0f} ms (goal < 500); naive blob load {naive_open * 1000:.0f} ms; ratio {naive_open / statistics.median(opens):.1f}x")
    print(f"edit -> search returns new text: p50 {p50:.1f} ms, max {max(edit_times) * 1000:.1f} ms (goal <= 50); naive flat IDMap2 remove+add+search {statistics.median(naive_edit) * 1000:.1f} ms; ratio {statistics.median(naive_edit) * 1000 / p50:.1f}x")


if __name__ == "__main__":
    main()
