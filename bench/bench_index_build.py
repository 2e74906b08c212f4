"""Building the compressed index without every key in RAM: peak resident memory, both ways.

For each size, two builds of the same keys, each in a fresh child process (so its VmHWM, the
peak resident set from /proc/self/status, is that build's alone), in the same run:

* ``ram``: the path before issue 22's streaming — the keys read in batches (as
  ``Memory.rebuild_index`` reads them from SQLite), concatenated, then ``VectorIndex.build``;
* ``streamed``: ``VectorIndex.build_streamed`` over the same batches (key files in the cache
  folder, memory-mapped; IVF-PQ trained on a seeded sample, codes added from chunked reads).

Each child builds the IVF-PQ (past ``compressed_threshold``, in its own thread: ``background``
False), saves the cache, then answers the held-out queries; the parent scores recall@10 against
an exact scan and compares the two ways' answers. Keys: real MiniLM sentence keys
(bench/_corpus.py) and mixtures of two of them (as bench_index_scale.py), written to a file
first; the held-out query sentences are never in the index.

Run (niced, one thread; each size ~5-8 min on the loaded 2-core VM):
  OMP_NUM_THREADS=1 nice -n 10 python bench/bench_index_build.py --sizes 1000000 2000000 --append
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

BATCH = 65_536  # rows per batch: what Pack.iter_active_vectors hands out
K = 10
N_HELD = 500


def status() -> dict:
    out = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def batches(path: str):
    from engine.index import keyfile

    keys = np.load(path, mmap_mode="r")
    for lo, rows in keyfile.iter_chunks(keys, BATCH):
        yield np.arange(lo, lo + len(rows), dtype=np.int64), rows


def child(mode: str, keys_path: str, folder: str, q_path: str, out_path: str) -> None:
    from engine.index import VectorIndex

    q = np.load(q_path)
    floor = status()
    ix = VectorIndex(q.shape[1], approx_threshold=0, compressed_threshold=0, background=False)
    ix.spill_dir = Path(folder)
    t0 = time.perf_counter()
    if mode == "ram":
        ids, keys = [], []
        for i, k in batches(keys_path):
            ids.append(i)
            keys.append(k)
        ix.build(np.concatenate(ids), np.concatenate(keys))
        del ids, keys
    else:
        ix.build_streamed(batches(keys_path))
    built = time.perf_counter() - t0
    ix.save(folder, {"bench": 1})
    total = time.perf_counter() - t0
    after_build = status()
    got = np.stack([ix.search(qv, K, exact=False)[0][0] for qv in q])
    np.save(out_path, got)
    print(json.dumps({"build_s": built, "build_save_s": total, "floor": floor, "built": after_build,
                      "end": status(), "nlist": int(ix._ann.nlist)}))


def write_keys(path: Path, base: np.ndarray, n: int, seed: int = 0) -> None:
    """``n`` keys to ``path``: the real ones, then mixtures w*a + (1-w)*b + noise (bench_search.extend)."""
    from bench_search import NOISE

    from engine.index.keyfile import KeyFileWriter

    w = KeyFileWriter(path, base.shape[1], np.float32)
    w.append(base[:n])
    rng = np.random.default_rng(seed)
    for start in range(len(base), n, 100_000):
        m = min(100_000, n - start)
        a = base[rng.integers(0, len(base), m)]
        b = base[rng.integers(0, len(base), m)]
        t = rng.random((m, 1), dtype=np.float32)
        x = t * a + (1 - t) * b + NOISE * rng.standard_normal((m, base.shape[1]), dtype=np.float32)
        w.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    w.close()


def truth(path: Path, q: np.ndarray) -> np.ndarray:
    from engine.index import keyfile

    best_s = np.full((len(q), K), -np.inf, np.float32)
    best_i = np.zeros((len(q), K), np.int64)
    for lo, rows in keyfile.iter_chunks(np.load(path, mmap_mode="r"), 262_144):
        s = np.concatenate([best_s, q @ rows.T], axis=1)  # [nq, K + m]
        i = np.concatenate([best_i, np.broadcast_to(np.arange(lo, lo + len(rows)), (len(q), len(rows)))], axis=1)
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / K for g, w in zip(got.tolist(), want.tolist())]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000])
    ap.add_argument("--real", type=int, default=20_000, help="real MiniLM keys to start from (held-out included)")
    ap.add_argument("--append", action="store_true", help="append the figures to bench/RESULTS.md")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    import faiss

    import _corpus
    from _results import publish
    from engine.index.exact_backend import cpu_model

    _, real = _corpus.real_embeddings(a.real)
    base, held = real[:-N_HELD], real[-N_HELD:]
    load0 = os.getloadavg()[0]
    lines = [f"### Streamed build against the in-RAM build (bench_index_build.py, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)",
             "", f"Machine: {cpu_model()}, {os.cpu_count()} cores shared with other engineers' jobs (load average "
             f"{load0:.0f} at the start): times are upper bounds. OMP {os.environ.get('OMP_NUM_THREADS', 'default')}, "
             f"faiss {faiss.__version__}, numpy {np.__version__}. Keys: {len(base):,} real MiniLM keys + mixtures; "
             f"{N_HELD} held-out query sentences. Each build in its own process: build (IVF-PQ48, in the build's "
             "thread), save the cache, then the queries.", "",
             "| keys | way | peak RSS MiB (VmHWM) | runtime before MiB | build s | build + save s | recall@10 held-out | same top-10 as in-RAM |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        qf = tmp / "q.npy"
        np.save(qf, held)
        for n in a.sizes:
            kf = tmp / f"keys{n}.npy"
            print(f"size {n:,}: writing keys", flush=True)
            write_keys(kf, base, n)
            want = truth(kf, held)
            got = {}
            for mode in ("ram", "streamed"):
                folder = tmp / f"ix-{mode}-{n}"
                folder.mkdir()
                of = tmp / f"got-{mode}-{n}.npy"
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(kf), str(folder), str(qf), str(of)],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-3000:], flush=True)
                    raise SystemExit(f"{mode} build at {n:,} failed")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                got[mode] = np.load(of)
                rc = recall(got[mode], want)
                same = float(np.mean(np.all(np.sort(got[mode], 1) == np.sort(got["ram"], 1), axis=1)))
                rows.append((n, mode, r, rc))
                lines.append(f"| {n:,} | {mode} | {r['built']['VmHWM']:,.0f} | {r['floor']['VmRSS']:,.0f} | "
                             f"{r['build_s']:.0f} | {r['build_save_s']:.0f} | {rc:.3f} | {same:.3f} |")
                print(lines[-1], json.dumps(r), flush=True)
                for p in folder.iterdir():
                    p.unlink()
            kf.unlink()
    lines.append("")
    by = {(n, m): r for n, m, r, _ in rows}
    for n in a.sizes:
        ram, st = by[(n, "ram")]["built"]["VmHWM"], by[(n, "streamed")]["built"]["VmHWM"]
        tr, ts = by[(n, "ram")]["build_save_s"], by[(n, "streamed")]["build_save_s"]
        lines.append(f"- {n:,}: peak RSS streamed / in-RAM = {st / ram:.2f} ({st:,.0f} / {ram:,.0f} MiB); "
                     f"build + save time streamed / in-RAM = {ts / tr:.2f}.")
    if len(a.sizes) >= 2:
        n1, n2 = a.sizes[0], a.sizes[-1]
        for mode in ("ram", "streamed"):
            h1, h2 = by[(n1, mode)]["built"]["VmHWM"], by[(n2, mode)]["built"]["VmHWM"]
            per = (h2 - h1) * 2**20 / (n2 - n1)
            lines.append(f"- {mode}: peak grows {per:,.0f} B per key from {n1:,} to {n2:,}; at 10M by the same "
                         f"slope: {(h1 * 2**20 + per * (10_000_000 - n1)) / 2**30:.1f} GiB.")
    publish("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()
