"""Build throughput: entries/s through the whole pipeline (parse + encode + SQLite + index)
against the raw key encoder's entries/s on the same texts, measured in the same run.

    .venv/bin/python bench/bench_build.py [--n 3000]

Goal: pipeline >= 90 % of the raw encoder (encoding dominates; the rest must not add much).
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._corpus import sentences  # noqa: E402
from engine.encode import get_default_encoder  # noqa: E402
from engine.jobs.build_memory import build_memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args()
    texts = sentences()[: a.n]
    enc = get_default_encoder()
    enc.encode(texts[:64])  # warm up

    t = time.perf_counter()
    enc.encode(texts)
    raw = len(texts) / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "corpus.jsonl"
        src.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts), encoding="utf-8")
        t = time.perf_counter()
        res = build_memory({"pack": str(Path(d) / "b.plugmem"), "inputs": [str(src)]}, lambda *x, **k: None, lambda: False)
        pipe = res["entries_added"] / (time.perf_counter() - t)
    ratio = pipe / raw
    print(f"texts: {len(texts):,} (avg {sum(map(len, texts)) / len(texts):.0f} chars)")
    print(f"raw encoder:   {raw:8.1f} entries/s")
    print(f"full pipeline: {pipe:8.1f} entries/s")
    print(f"ratio pipeline/raw: {ratio:.3f} (goal >= 0.90)")
    row = f"| {time.strftime('%Y-%m-%d')} | {platform.node()[:12]} | {len(texts):,} | {raw:.1f} | {pipe:.1f} | {ratio:.2f} |"
    print(row)


if __name__ == "__main__":
    main()
