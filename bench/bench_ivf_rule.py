"""The IVF-PQ list / probe / shortlist rule past 1M keys (issue 22): a sweep, then a held-out check.

For each size: write the keys (the first real MiniLM keys, then mixtures of two, as
bench_index_build.py) to a file, memory-map it, build the compressed index the way
``VectorIndex`` does (``ann.train_ivfpq`` + ``ann.add_chunked``; one build per nlist), then for
every (nprobe, shortlist) answer 500 TUNING queries one at a time as ``VectorIndex`` does
(``ann.search_ivfpq``, rows sorted, exact re-score from the mapped keys with pread).

Choice rule, fixed before the sweep: at each size the cheapest setting (lowest p50 on the tuning
queries) whose tuning recall@10 >= 0.955. The rule of n in engine/index/ann.py is fitted to those
choices; ``--held`` then reports recall@10 and p50/p95 on 500 HELD-OUT queries (other sentences,
never in the index nor used to choose) with the rule as shipped.

Run (niced, one thread; each size <= ~12 min on the loaded 2-core VM):
  OMP_NUM_THREADS=1 nice -n 10 python bench/bench_ivf_rule.py --sizes 2000000 --nlists 2048 4096
  OMP_NUM_THREADS=1 nice -n 10 python bench/bench_ivf_rule.py --sizes 100000 1000000 2000000 --held
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

K = 10
N_TUNE = 500
N_HELD = 500
TARGET = 0.955


def run_queries(index, keys, f, q, nprobe: int, short: int):
    """(top-10 rows [nq, K], per-query seconds) — the VectorIndex compressed path, one query at a time."""
    from engine.index import ann, keyfile

    got = np.full((len(q), K), -1, np.int64)
    ts = []
    for i in range(len(q)):
        t0 = time.perf_counter()
        rows = ann.search_ivfpq(index, q[i : i + 1], short, nprobe, None)[0].astype(np.int64)
        rows = np.sort(rows[rows >= 0])
        s = keyfile.take_rows(keys, rows, f) @ q[i]  # [r] exact float32
        top = rows[np.argsort(-s)[:K]]
        ts.append(time.perf_counter() - t0)
        got[i, : len(top)] = top
    return got, np.asarray(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", required=True)
    ap.add_argument("--nlists", type=int, nargs="*", default=[], help="lists to build (default: ann.ivf_nlist(n))")
    ap.add_argument("--nprobes", type=int, nargs="*", default=[64, 128, 192, 256, 384])
    ap.add_argument("--shorts", type=int, nargs="*", default=[100, 200, 300, 400])
    ap.add_argument("--held", action="store_true", help="only the shipped rule, on the held-out queries")
    ap.add_argument("--also-held", action="store_true",
                    help="sweep: also answer the held-out queries per setting (reported, never used to choose)")
    ap.add_argument("--real", type=int, default=20_000)
    ap.add_argument("--append", action="store_true")
    a = ap.parse_args()

    import faiss

    import _corpus
    from _results import publish
    from bench_index_build import recall, truth, write_keys
    from engine.index import ann
    from engine.index.exact_backend import cpu_model

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _, real = _corpus.real_embeddings(a.real)
    base, tune, held = real[: -N_TUNE - N_HELD], real[-N_TUNE - N_HELD : -N_HELD], real[-N_HELD:]
    q = held if a.held else tune
    what = "held-out" if a.held else "tuning"
    lines = [f"#### bench_ivf_rule.py {'--held' if a.held else 'sweep'} — {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
             "", f"{cpu_model()}, {os.cpu_count()} cores shared (load average {os.getloadavg()[0]:.1f} at the start), "
             f"OMP {os.environ.get('OMP_NUM_THREADS', 'default')}, faiss {faiss.__version__}; {len(base):,} real keys + "
             f"mixtures; {len(q)} {what} queries.", ""]
    with tempfile.TemporaryDirectory(prefix="bench-ivf-", dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in a.sizes:
            kf = Path(tmp) / f"keys{n}.npy"
            t0 = time.perf_counter()
            write_keys(kf, base, n)
            keys = np.load(kf, mmap_mode="r")
            want = truth(kf, q)
            want_h = truth(kf, held) if a.also_held and not a.held else None
            print(f"{n:,}: keys + truth {time.perf_counter() - t0:.0f} s", flush=True)
            nlists = [ann.ivf_nlist(n)] if (a.held or not a.nlists) else a.nlists
            for nlist in nlists:
                t0 = time.perf_counter()
                index = ann.train_ivfpq(keys, nlist)
                ann.add_chunked(index, keys)
                build = time.perf_counter() - t0
                nl = int(index.nlist)
                settings = ([(ann.ivf_nprobe(nl), ann.rerank_for(n, K))] if a.held
                            else [(p, s) for p in a.nprobes if p <= nl for s in a.shorts])
                res = []
                with open(kf, "rb") as f:
                    run_queries(index, keys, f, q[:50], *settings[0])  # warm the page cache and faiss
                    for p, s in settings:
                        got, ts = run_queries(index, keys, f, q, p, s)
                        rc = recall(got, want)
                        p50, p95 = np.percentile(ts * 1e3, [50, 95])
                        res.append((p, s, rc, p50, p95))
                        extra = {}
                        if want_h is not None:
                            got_h, ts_h = run_queries(index, keys, f, held, p, s)
                            extra = {"held_recall": round(recall(got_h, want_h), 4),
                                     "held_p50": round(float(np.percentile(ts_h * 1e3, 50)), 3)}
                        print(json.dumps({"n": n, "nlist": nl, "nprobe": p, "short": s, "recall": round(rc, 4),
                                          "p50": round(p50, 3), "p95": round(p95, 3), **extra}), flush=True)
                codes = n / nl
                if a.held:
                    p, s, rc, p50, p95 = res[0]
                    lines.append(f"| {n:,} | {nl:,} | {p} | {s} | {p * codes:,.0f} | {rc:.3f} | {p50:.2f} / {p95:.2f} | {build:.0f} |")
                else:
                    ok = [r for r in res if r[2] >= TARGET]
                    best = min(ok, key=lambda r: r[3]) if ok else None
                    lines.append(f"- {n:,} keys, {nl:,} lists ({codes:,.0f} codes per list; build {build:.0f} s), "
                                 "nprobe/shortlist: recall@10, p50 ms: "
                                 + "; ".join(f"{p}/{s}: {rc:.3f}, {p50:.2f}" for p, s, rc, p50, _ in res)
                                 + (f". **Cheapest ≥ {TARGET}: nprobe {best[0]}, shortlist {best[1]} ({best[2]:.3f}, "
                                    f"{best[3]:.2f} ms; {best[0] * codes:,.0f} codes scanned)**" if best else
                                    f". **None reaches {TARGET}**"))
                print(lines[-1], flush=True)
                del index
            del keys
            kf.unlink()
    if a.held:
        lines[4:4] = ["| keys | lists | nprobe | shortlist | codes scanned | recall@10 held-out | p50 / p95 ms | build s |",
                      "|---|---|---|---|---|---|---|---|"]
    publish("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()
