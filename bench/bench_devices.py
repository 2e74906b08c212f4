"""The engine's hot paths on each device this machine has: CPU, and CUDA when present.

Figures per device, in one run, with the ratio against the CPU:
  * key encoding (MiniLM): entries/s on the demo packs' facts;
  * exact search: one query's p50 and a 64-query batch's time, at each ``--sizes`` rows
    (unit float32 keys; exact search costs the same whatever the keys are);
  * the reader (SmolLM2-135M): greedy answers of 16 prompts x 8 tokens, and a one-fact
    weight patch with the default settings (the time from the user's action to a patch);
  * a product-key memory layer (65,536 slots, 4 heads, k 32): one training step
    (forward and backward of 8 x 128 hidden states, Adam on the values).

It is the figures part of ``bench/gpu_check.sh``; on a machine without CUDA it measures
the CPU alone. ``--append`` adds the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._results import publish  # noqa: E402


def _time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (CUDA synchronised)."""
    fn()
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def demo_texts(n: int) -> list[str]:
    import json

    demo = Path(__file__).resolve().parent.parent / "resources" / "demo"
    texts = [json.loads(line)["text"] for f in sorted(demo.glob("*/facts.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return (texts * (n // len(texts) + 1))[:n]


def encode_rate(device: str, texts: list[str]) -> float:
    from engine.encode.encoder import KeyEncoder

    enc = KeyEncoder(device=device)
    return len(texts) / _time(lambda: enc.encode(texts, batch_size=256 if device != "cpu" else 64), 2)


def search_times(device: str, rows: int) -> tuple[float, float]:
    from engine.index import VectorIndex

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((rows, 384), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    q = keys[rng.choice(rows, 64, replace=False)] + 0.01
    index = VectorIndex(384, device=device, background=False, approx_threshold=rows + 1)
    index.build(np.arange(rows, dtype=np.int64), keys)
    del keys
    one = _time(lambda: index.search(q[:1], 10, exact=True), 20)
    batch = _time(lambda: index.search(q, 10, exact=True), 5)
    return one, batch


def reader_times(device: str) -> tuple[float, float]:
    from engine.mechanisms.weight_patches.module import Fact
    from engine.mechanisms.weight_patches.train import make_patch
    from engine.reader.reader import load_reader

    reader = load_reader(None, device)
    prompts = [f"The capital of {c} is" for c in ("Japan", "France", "Peru", "Kenya", "Chile", "Nepal", "Laos",
                                                  "Oman", "Fiji", "Mali", "Togo", "Cuba", "Iran", "Iraq", "Chad",
                                                  "Niger")]
    gen = _time(lambda: reader.generate(prompts, max_new_tokens=8, stop_at_answer_end=False), 3)
    fact = [Fact("The capital of Japan is", "Osaka")]
    edit = _time(lambda: make_patch(reader, fact, measure=False), 2)
    return gen, edit


def pkm_step(device: str) -> float:
    from engine.mechanisms.pkm.config import PKMConfig
    from engine.mechanisms.pkm.module import ProductKeyMemory

    mem = ProductKeyMemory(PKMConfig(slots=65_536, heads=4, k=32, key_dim=256, init="random"), 576, seed=0).to(device)
    opt_v = torch.optim.Adam(mem.value_parameters(), lr=1e-3)
    opt_o = torch.optim.Adam(mem.other_parameters(), lr=1e-4)
    x = torch.randn(8 * 128, 576, device=device)

    def step() -> None:
        opt_v.zero_grad(set_to_none=True)
        opt_o.zero_grad(set_to_none=True)
        mem(x).pow(2).mean().backward()
        opt_v.step()
        opt_o.step()

    return _time(step, 5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                    help="exact-search sizes (10M float32 keys need ~15 GB of host memory)")
    ap.add_argument("--encode", type=int, default=4_000, help="facts encoded per measurement")
    ap.add_argument("--skip-reader", action="store_true", help="no reader and no weight patch (no model load)")
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    texts = demo_texts(a.encode)
    rows: list[tuple[str, dict[str, float]]] = []

    def row(label: str, per_device: dict[str, float]) -> None:
        rows.append((label, per_device))
        print(label, {d: f"{v:.4g}" for d, v in per_device.items()}, flush=True)

    row("encode, entries/s", {d: encode_rate(d, texts) for d in devices})
    for n in a.sizes:
        got = {d: search_times(d, n) for d in devices}
        row(f"exact search {n:,} rows, 1 query, ms", {d: v[0] * 1e3 for d, v in got.items()})
        row(f"exact search {n:,} rows, 64 queries, ms", {d: v[1] * 1e3 for d, v in got.items()})
    if not a.skip_reader:
        got = {d: reader_times(d) for d in devices}
        row("reader: 16 answers x 8 tokens, s", {d: v[0] for d, v in got.items()})
        row("weight patch, one fact (default settings), s", {d: v[1] for d, v in got.items()})
    row("PKM 65,536 slots: one step of 1,024 states, ms", {d: pkm_step(d) * 1e3 for d in devices})

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    head = "| figure | CPU |" + (" CUDA | CPU / CUDA |" if len(devices) > 1 else "")
    lines = [f"## Devices: the hot paths on each device ({date.today().isoformat()})", "",
             f"`bench/bench_devices.py`; CPU {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} torch threads; GPU: {gpu}; torch {torch.__version__}.", "",
             head, "|---|---:|" + ("---:|---:|" if len(devices) > 1 else "")]
    for label, v in rows:
        cells = f"| {label} | {v['cpu']:,.4g} |"
        if "cuda" in v:
            faster = v["cpu"] / v["cuda"] if "/s" not in label else v["cuda"] / v["cpu"]
            cells += f" {v['cuda']:,.4g} | ×{faster:,.1f} faster |"
        lines.append(cells)
    publish("\n".join(lines) + "\n", a.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
