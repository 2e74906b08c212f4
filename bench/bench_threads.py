"""Ask-and-explain latency under CPU contention: OpenMP threads that spin, sleep, or one thread.

    .venv/bin/python bench/bench_threads.py [--n 6] [--threads 2] [--policies default,PASSIVE,one-thread]

A child process answers ``--n`` held-out-relation prompts of the demo geography pack
(real reader, shipped branch, dpm mode, k = 5, with explanation) after one warm-up, under
each policy: libgomp's default (threads spin at every barrier), ``OMP_WAIT_POLICY=PASSIVE``
(they sleep), ``spin=N`` (``GOMP_SPINCOUNT``), or ``one-thread`` (no barriers at all); each
on the machine as found (its load average is printed) and beside a competing job: another
process doing float32 matrix products with ``--threads`` threads (like a training run).

On a 2-core machine the spinning threads of two jobs take turns in scheduler quanta: a
linear layer that takes 0.2 ms alone then takes ~10 ms. The app's model thread therefore
drops to one torch thread while one of its jobs runs in a child process
(app/model_host.py). Figures: medians of the per-prompt latency, and the ratio baseline /
policy in the same condition (> 1: faster than the baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import publish  # noqa: E402

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from engine.demo import ensure_demo_workspace
from engine.evaluate import read_probes
from engine.explain import Predictor
from engine.memory import Memory
from engine.resources import demo_dir
from engine.session import open_session
ws = ensure_demo_workspace()
pack = next(p for p in ws["packs"] if Path(p).stem == "geography")
pred = Predictor.from_session(open_session())  # the default reader and its shipped branch
reader = pred.reader
probes = [p for p in read_probes(demo_dir() / "geography" / "probes_heldout.jsonl") if p.split == "heldout_relation"]
out = []
with Memory.open(pack) as mem:
    pred.predict("The capital of France is", [mem], k=5)
    for p in probes[: int(sys.argv[2])]:
        t = time.perf_counter()
        pred.predict(p.prompt, [mem], k=5)
        out.append(time.perf_counter() - t)
print(json.dumps(out))
"""

LOAD = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a) 
"""


def run(policy: str, threads: int, n: int) -> list[float]:
    """policy: 'default' (libgomp spins at a barrier), 'PASSIVE', 'spin=N' (GOMP_SPINCOUNT) or 'one-thread'."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin="):
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy == "one-thread":
        threads = 1
        env["OMP_NUM_THREADS"] = "1"
    elif policy != "default":
        raise SystemExit(f"unknown policy {policy!r}")
    res = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(n), str(ROOT)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--policies", default="default,PASSIVE,one-thread",
                    help="comma-separated: default | PASSIVE | spin=N (GOMP_SPINCOUNT) | one-thread; the first is the baseline")
    a = ap.parse_args()
    policies = a.policies.split(",")
    rows = []
    for cond in ("machine as found", "+ competing job"):
        burner = None
        if cond == "+ competing job":
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
            burner = subprocess.Popen([sys.executable, "-c", LOAD, str(a.threads)], env=env)
            time.sleep(2)
        try:
            med = {p: statistics.median(run(p, a.threads, a.n)) for p in policies}
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        rows.append((f"{cond} (load {os.getloadavg()[0]:.1f})", med))
        print(cond, {p: f"{v * 1000:.0f} ms" for p, v in med.items()}, flush=True)
    load = os.getloadavg()[0]
    lines = [
        f"### bench_threads.py — {time.strftime('%Y-%m-%d %H:%M')} ({platform.machine()}, {os.cpu_count()} cores, "
        f"{a.threads} torch threads, load average at the end {load:.1f}; {a.n} prompts, dpm, k = 5, with explanation)",
        "",
        "| condition | " + " | ".join(f"{p}: median ms (× vs {policies[0]})" for p in policies) + " |",
        "|---|" + "---|" * len(policies),
    ] + [f"| {c} | " + " | ".join(f"{m[p] * 1000:.0f} ({m[policies[0]] / m[p]:.2f})" for p in policies) + " |"
         for c, m in rows]
    table = "\n".join(lines) + "\n"
    publish(table, a.append)


if __name__ == "__main__":
    main()
