"""Import throughput on Ray Data against the single-process import, in the same run.

    <venv with the scale extra>/bin/python bench/bench_ray_import.py [--n 10000] [--files 4] [--append]

Three imports of the same corpus (real English sentences, bench/_corpus.py) into fresh packs:
the single-process import (build_memory, torch on every core), then `ray_build` on a local Ray
of this machine's CPUs with 1 and with 2 encoder actors of one thread each. Each Ray run starts
its own Ray, so its wall time includes Ray's start, the validation pass and the actors' encoder
loads. Reported per run: entries/s, the ratio to the single process (issue 22's goal: >= 0.90
with 2 workers on 2 cores), each worker's encode rate (entries per second of encoder time), and
the time outside encoding: wall - (encoder seconds / workers), i.e. what Ray, parsing and the
driver's writes add to a perfectly parallel encode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._corpus import sentences  # noqa: E402
from bench._results import publish  # noqa: E402
from engine.jobs.build_memory import build_memory  # noqa: E402
from engine.jobs.ray_build import ray_build  # noqa: E402


def _quiet(*_a, **_k) -> None:
    pass


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=4, help="the corpus is split into this many JSONL files")
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--append", action="store_true", help="append the figures to bench/RESULTS.md")
    a = ap.parse_args()
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    texts = sentences()[: a.n]
    cpus = os.cpu_count() or 1
    load_before = _load()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        inputs = []
        per = -(-len(texts) // a.files)
        for k in range(a.files):
            f = Path(d) / f"part{k}.jsonl"
            f.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts[k * per : (k + 1) * per]), encoding="utf-8")
            inputs.append(str(f))

        def single(tag: str) -> float:
            t = time.perf_counter()
            res = build_memory({"pack": str(Path(d) / f"local{tag}.plugmem"), "inputs": inputs}, _quiet, lambda: False)
            wall = time.perf_counter() - t
            assert res["entries_added"] == len(texts), res
            rows.append((f"single process, torch {cpus} threads ({tag})", wall, len(texts) / wall, None, None))
            print(f"single process ({tag}): {wall:.1f} s, {len(texts) / wall:.1f} entries/s", flush=True)
            return len(texts) / wall

        local_rate = single("first")
        pack_bytes = sum(f.stat().st_size for f in Path(d).glob("localfirst.plugmem*") if f.is_file())
        for workers in (1, 2):
            t = time.perf_counter()
            res = ray_build({"pack": str(Path(d) / f"ray{workers}.plugmem"), "inputs": inputs, "workers": workers,
                             "threads_per_worker": 1, "num_cpus": cpus, "chunk_size": a.shard_size}, _quiet, lambda: False)
            wall = time.perf_counter() - t
            assert res["entries_added"] == len(texts) and not res["errors"], res
            per_worker = len(texts) / res["encode_seconds"]
            outside = wall - res["encode_seconds"] / workers
            rows.append((f"Ray, {workers} worker(s) x 1 thread", wall, len(texts) / wall, per_worker,
                         (outside, res["startup_seconds"], res["merge_seconds"])))
            print(f"ray {workers}: {wall:.1f} s, {len(texts) / wall:.1f} entries/s, per worker {per_worker:.1f}/s, "
                  f"outside encoding {outside:.1f} s (Ray start {res['startup_seconds']:.1f} s, "
                  f"writes {res['merge_seconds']:.1f} s)", flush=True)

        # again at the end: the machine is shared, its load moves, and the ratio must not hide that
        local_rate = (local_rate + single("last")) / 2
    lines = [
        f"### bench_ray_import.py — {time.strftime('%Y-%m-%d %H:%M')} ({len(texts):,} entries in {a.files} files, "
        f"shards of {a.shard_size}, {platform.machine()}, {cpus} CPUs, load average before {load_before}, after {_load()}; "
        f"pack {pack_bytes / len(texts):,.0f} bytes per entry)",
        "",
        "| run | wall s | entries/s | vs single process (mean of both runs) | encode entries/s per worker | outside encoding s (Ray start, pack writes) |",
        "|---|---|---|---|---|---|",
    ]
    for name, wall, rate, per_worker, outside in rows:
        pw = f"{per_worker:.1f}" if per_worker else "–"
        out = f"{outside[0]:.1f} ({outside[1]:.1f}, {outside[2]:.1f})" if outside else "–"
        lines.append(f"| {name} | {wall:.1f} | {rate:.1f} | {rate / local_rate:.2f} | {pw} | {out} |")
    publish("\n".join(lines) + "\n", a.append)


if __name__ == "__main__":
    main()
