"""Search benchmark for engine.index.VectorIndex on real MiniLM embeddings.

    .venv/bin/python bench/bench_search.py                  # 10k, 100k, 1M
    .venv/bin/python bench/bench_search.py --sizes 10000,100000

Keys: up to ~30k real sentences (docstrings of installed packages, see bench/_corpus.py)
encoded with the shipped all-MiniLM-L6-v2, cached in bench/_data/. Past the real set the
corpus is extended with normalised random convex mixtures of two real embeddings plus
small noise; queries are always held-out REAL embeddings. Prints the figures and appends
a markdown table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _corpus  # noqa: E402
from engine.index import VectorIndex  # noqa: E402
from engine.index import ann  # noqa: E402

N_REAL = 30_000
N_QUERIES = 1_000
NOISE = 0.004  # per-dimension std; real keys have ~0.05 per dimension


def extend(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` keys: the real ones first, then normalised mixtures w*a + (1-w)*b + noise."""
    if n <= len(real):
        return real[:n].copy()
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), np.float32)
    out[: len(real)] = real
    for start in range(len(real), n, 100_000):
        m = min(100_000, n - start)
        a = real[rng.integers(0, len(real), m)]
        b = real[rng.integers(0, len(real), m)]
        w = rng.random((m, 1), dtype=np.float32)
        x = w * a + (1 - w) * b + NOISE * rng.standard_normal((m, real.shape[1]), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, reps: int) -> np.ndarray:
    fn()  # warm
    ts = np.empty(reps)
    for r in range(reps):
        t = time.perf_counter()
        fn()
        ts[r] = time.perf_counter() - t
    return ts * 1e3


def pct(ts: np.ndarray) -> str:
    return f"{np.percentile(ts, 50):.2f} / {np.percentile(ts, 99):.2f}"


def numpy_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T  # [n, N]
    return np.argpartition(-s, k - 1, axis=1)[:, :k]


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist())]))


def index_bytes(ix: VectorIndex, folder: Path) -> dict:
    arrays = sum(np.asarray(a).nbytes for a in (ix._ids, ix._keys, ix._order, ix._dead))
    fp16 = np.asarray(ix._keys16).nbytes if ix._keys16 is not None else 0
    ann = (folder / "ann.faiss").stat().st_size if (folder / "ann.faiss").exists() else 0
    return {"fp32+ids": arrays, "fp16": fp16, "hnsw": ann}


def run_size(n: int, real: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    print(f"\n=== {n:,} keys ===", flush=True)
    x = extend(real, n)
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    reps1 = 300 if n <= 100_000 else 60
    reps64 = 20 if n <= 100_000 else 4
    q1 = [queries[i] for i in range(reps1)]
    it = iter(range(10**9))
    r: dict = {"n": n, "ef": ann.auto_ef_search(n)}

    r["numpy_1"] = timed(lambda: numpy_top(x, q1[next(it) % reps1][None], k), reps1)
    r["numpy_64"] = timed(lambda: numpy_top(x, queries[:64], k), reps64)

    t = time.perf_counter()
    ex = VectorIndex(x.shape[1], approx_threshold=10**12)
    ex.build(ids, x)
    r["build_exact_s"] = time.perf_counter() - t
    del ex

    t = time.perf_counter()
    ix = VectorIndex(x.shape[1], approx_threshold=0, background=False)
    ix.build(ids, x)
    r["build_hnsw_s"] = time.perf_counter() - t
    print(f"build: exact {r['build_exact_s']:.2f} s, HNSW {r['build_hnsw_s']:.1f} s", flush=True)

    r["exact_1"] = timed(lambda: ix.search(q1[next(it) % reps1], k, exact=True), reps1)
    r["exact_64"] = timed(lambda: ix.search(queries[:64], k, exact=True), reps64)
    truth, _ = ix.search(queries, k, exact=True)  # [Q, k]
    check = ids[numpy_top(x, queries[:20], k)]
    r["exact_matches_numpy"] = recall(truth[:20], check)
    r["approx_1"] = timed(lambda: ix.search(q1[next(it) % reps1], k, exact=False), max(reps1, 300))
    r["approx_64"] = timed(lambda: ix.search(queries[:64], k, exact=False), reps64)
    r["sweep"] = {}
    base_ef = ix.ef_search
    for ef in (64, 128, 200, 240, 300):
        ix.ef_search = ef
        got, _ = ix.search(queries, k, exact=False)
        lat = timed(lambda: ix.search(q1[next(it) % reps1], k, exact=False), 200)
        r["sweep"][ef] = (recall(got, truth), float(np.percentile(lat, 50)))
        print(f"  efSearch {ef:4d}: recall@10 {r['sweep'][ef][0]:.4f}  p50 {r['sweep'][ef][1]:.3f} ms", flush=True)
    ix.ef_search = base_ef
    got, _ = ix.search(queries, k, exact=False)
    r["recall"] = recall(got, truth)

    # single-id edits: replace an existing id, and remove another
    rng = np.random.default_rng(1)
    victims = ids[rng.choice(n, 200, replace=False)]
    new = extend(real, 200, seed=5)
    up, rm = [], []
    for j in range(100):
        t = time.perf_counter()
        ix.upsert(victims[j : j + 1], new[j : j + 1])
        up.append(time.perf_counter() - t)
        t = time.perf_counter()
        ix.remove(victims[100 + j : 101 + j])
        rm.append(time.perf_counter() - t)
    r["upsert_1"] = np.array(up) * 1e3
    r["remove_1"] = np.array(rm) * 1e3
    got, _ = ix.search(queries[:200], k, exact=False)
    r["no_removed_returned"] = not np.isin(got, victims[100:]).any()
    r["approx_1_after_edits"] = timed(lambda: ix.search(q1[next(it) % reps1], k, exact=False), 200)

    folder = _corpus.DATA / f"index_{n}"
    shutil.rmtree(folder, ignore_errors=True)
    t = time.perf_counter()
    ix.save(folder, {"bench": n})
    r["save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ix.upsert(victims[:1], new[:1])
    ix.save(folder, {"bench": n + 1})
    r["resave_after_edit_s"] = time.perf_counter() - t
    r["bytes"] = index_bytes(ix, folder)
    del ix
    t = time.perf_counter()
    back = VectorIndex.load(folder, {"bench": n + 1})
    r["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    back.search(queries[0], k)  # exact until the graph is read
    r["first_query_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    back.wait_ready()
    r["graph_ready_s"] = r["open_s"] + time.perf_counter() - t
    del back
    shutil.rmtree(folder, ignore_errors=True)

    for key in ("numpy_1", "exact_1", "approx_1", "approx_1_after_edits", "numpy_64", "exact_64", "approx_64", "upsert_1", "remove_1"):
        print(f"  {key:22s} p50/p99 ms {pct(r[key])}")
    for key in ("recall", "exact_matches_numpy", "no_removed_returned", "save_s", "resave_after_edit_s", "open_s", "first_query_ms", "graph_ready_s", "bytes"):
        print(f"  {key:22s} {r[key]}")
    return r


def sweep_only(n: int, real: np.ndarray, queries: np.ndarray, efs: list[int], k: int = 10, ef_construction: int = ann.EF_CONSTRUCTION) -> str:
    """Exact single-query latency and the HNSW efSearch sweep only (one build), as markdown."""
    x = extend(real, n)
    ids = np.arange(n, dtype=np.int64)
    ix = VectorIndex(x.shape[1], approx_threshold=10**12)
    ix.build(ids, x)
    it = iter(range(10**9))
    ex1 = timed(lambda: ix.search(queries[next(it) % 200], k), 100)
    truth, _ = ix.search(queries, k, exact=True)
    print(f"exact 1q p50/p99 {pct(ex1)} ms", flush=True)
    del ix
    t = time.perf_counter()
    ix = VectorIndex(x.shape[1], approx_threshold=0, ef_construction=ef_construction, background=False)
    ix.build(ids, x)
    build = time.perf_counter() - t
    out = [f"\n### efSearch sweep at {n:,} ({time.strftime('%Y-%m-%d %H:%M')}; HNSW M={ix.hnsw_m}, "
           f"efConstruction={ix.ef_construction}, build {build:.0f} s; exact 1q p50/p99 {pct(ex1)} ms)\n",
           "| efSearch | recall@10 | 1q p50 / p99 ms |", "|---|---|---|"]
    for ef in efs:
        ix.ef_search = ef
        got, _ = ix.search(queries, k, exact=False)
        lat = timed(lambda: ix.search(queries[next(it) % 1000], k, exact=False), 300)
        out.append(f"| {ef} | {recall(got, truth):.4f} | {pct(lat)} |")
        print(out[-1], flush=True)
    return "\n".join(out) + "\n"


def to_markdown(rows: list[dict], n_real: int) -> str:
    def p50(t):
        return f"{np.percentile(t, 50):.2f}"

    def p5099(t):
        return f"{np.percentile(t, 50):.2f} / {np.percentile(t, 99):.2f}"

    lines = [
        f"\n## bench_search.py — {time.strftime('%Y-%m-%d %H:%M')} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n",
        f"Keys: {n_real:,} real MiniLM embeddings of docstring sentences; larger sizes add normalised convex "
        f"mixtures of two real embeddings + N(0, {NOISE}²) noise per dimension (synthetic, but on the real manifold). "
        f"Queries: {N_QUERIES} held-out real embeddings. k = 10. Latencies in ms, p50 / p99. "
        f"HNSW M={ann.HNSW_M}, efConstruction={ann.EF_CONSTRUCTION}, efSearch by size (auto): "
        + ", ".join(f"{r['n']:,}: {r['ef']}" for r in rows) + ".\n",
        "| size | numpy brute 1q | exact 1q | ×numpy | HNSW 1q | ×numpy | recall@10 | numpy 64q | exact 64q | HNSW 64q |"
        " build exact / HNSW s | upsert 1 id | remove 1 id | open s (graph ready s) | first query after open | bytes fp32+ids / fp16 / HNSW |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        b = r["bytes"]
        lines.append(
            f"| {r['n']:,} | {p5099(r['numpy_1'])} | {p5099(r['exact_1'])} | "
            f"{np.percentile(r['numpy_1'], 50) / np.percentile(r['exact_1'], 50):.1f} | {p5099(r['approx_1'])} | "
            f"{np.percentile(r['numpy_1'], 50) / np.percentile(r['approx_1'], 50):.0f} | {r['recall']:.4f} | "
            f"{p50(r['numpy_64'])} | {p50(r['exact_64'])} | {p50(r['approx_64'])} | "
            f"{r['build_exact_s']:.2f} / {r['build_hnsw_s']:.1f} | {p5099(r['upsert_1'])} | {p5099(r['remove_1'])} | "
            f"{r['open_s']:.3f} ({r['graph_ready_s']:.2f}) | {r['first_query_ms']:.1f} ms | "
            f"{b['fp32+ids']:,} / {b['fp16']:,} / {b['hnsw']:,} |"
        )
    lines.append("\nefSearch sweep (recall@10 vs exact, p50 ms for one query):\n")
    lines.append("| size | " + " | ".join(f"ef {ef}" for ef in rows[0]["sweep"]) + " |")
    lines.append("|---|" + "---|" * len(rows[0]["sweep"]))
    for r in rows:
        lines.append(f"| {r['n']:,} | " + " | ".join(f"{rc:.4f} @ {ms:.2f}" for rc, ms in r["sweep"].values()) + " |")
    lines.append(
        "\nChecks: exact top-10 equals numpy on 20 queries: "
        + ", ".join(f"{r['n']:,}: {r['exact_matches_numpy']:.3f}" for r in rows)
        + "; no removed id returned after 100 removals: "
        + ", ".join(f"{r['n']:,}: {r['no_removed_returned']}" for r in rows)
        + "; save / re-save after one edit (s): "
        + ", ".join(f"{r['n']:,}: {r['save_s']:.2f} / {r['resave_after_edit_s']:.3f}" for r in rows)
        + "\n"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md")
    ap.add_argument("--sweep-only", action="store_true", help="only exact latency + an efSearch sweep per size")
    ap.add_argument("--ef", default="64,128,200,300,400,600", help="efSearch values for --sweep-only")
    ap.add_argument("--ef-construction", type=int, default=ann.EF_CONSTRUCTION, help="HNSW efConstruction for --sweep-only")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    torch.set_num_threads(min(2, os.cpu_count() or 2))
    _, emb = _corpus.real_embeddings(N_REAL)
    queries, real = emb[:N_QUERIES], emb[N_QUERIES:]
    if args.sweep_only:
        efs = [int(e) for e in args.ef.split(",")]
        md = "".join(sweep_only(n, real, queries, efs, ef_construction=args.ef_construction) for n in sizes)
    else:
        md = to_markdown([run_size(n, real, queries) for n in sizes], len(real))
    print(md)
    if not args.no_write:
        res = ROOT / "bench" / "RESULTS.md"
        if not res.exists():
            res.write_text(
                "# Benchmark results\n\nMachine: 2-core Zen 3 (AVX2, no AVX-512/bf16), 24 GiB, no GPU. Date: 2026-11-24.\n",
                encoding="utf-8",
            )
        with open(res, "a", encoding="utf-8") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
