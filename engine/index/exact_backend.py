"""Which exact scan answers one query fastest on this machine: measured once, then cached.

Two ways to score one query against every base key on the CPU:

* ``torch16``: torch's fp16 mat-vec over the fp16 copy of the keys (half the bytes read),
  then the shortlist re-scored in float32;
* ``numpy32``: numpy's float32 mat-vec over the float32 keys.

Which is faster depends on the CPU, not on a constant: at 100k x 384 keys the torch path was
2x faster than numpy on a Zen 3, and 0.7x as fast on an AVX-512 Xeon (FACTS.md). So the first
large exact search on a machine times both on the same synthetic keys (~0.5 s) and keeps the
winner in ``<cache>/exact-backend.json`` under a key naming the CPU model and the library
versions; a new CPU, numpy or torch measures again.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

BACKENDS = ("torch16", "numpy32")
CACHE_NAME = "exact-backend.json"
CAL_ROWS = 131_072  # past the L3 cache of a laptop, as the indexes this is chosen for
CAL_REPS = 7
_lock = threading.Lock()
_chosen: dict[str, str] = {}  # machine key -> backend, for this process


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key(dim: int) -> str:
    """What the measured choice depends on: CPU model, thread count, libraries, dimension."""
    return "|".join([cpu_model(), f"threads={torch.get_num_threads()}", f"numpy={np.__version__}",
                     f"torch={torch.__version__}", f"dim={int(dim)}"])


def _cache_file(cache_dir: str | Path | None) -> Path:
    from engine.resources import cache_root

    return cache_root(cache_dir) / CACHE_NAME


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def score_torch16(keys16: np.ndarray, q: np.ndarray) -> torch.Tensor:
    """fp16 scores of every row: [Nb, dim] fp16 x [dim] -> [Nb] fp16 (a shortlist, not a result)."""
    return torch.mv(torch.from_numpy(keys16), torch.from_numpy(q).half())


def score_numpy32(keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float32 scores of every row: [Nb, dim] x [dim] -> [Nb]."""
    return np.asarray(keys) @ q


def measure(dim: int, rows: int = CAL_ROWS, reps: int = CAL_REPS) -> dict[str, float]:
    """Median seconds per one-query scan + top-64 for each backend, on synthetic unit keys
    (speed depends on the bytes scanned, not on what they hold)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x16 = x.astype(np.float16)
    q = x[0].copy()
    runs = {
        "torch16": lambda: torch.topk(score_torch16(x16, q), 84).indices,
        "numpy32": lambda: np.argpartition(-score_numpy32(x, q), 84)[:84],
    }
    ts: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm
        for _ in range(reps):  # interleaved, so a burst of load elsewhere hits both alike
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                ts[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in ts.items()}


def choose(dim: int, *, cache_dir: str | Path | None = None) -> str:
    """The exact single-query backend for this machine: cached, or measured now and cached."""
    key = machine_key(dim)
    with _lock:
        if key in _chosen:
            return _chosen[key]
        path = _cache_file(cache_dir)
        entry = _read(path).get(key)
        if isinstance(entry, dict) and entry.get("backend") in BACKENDS:
            _chosen[key] = entry["backend"]
            return entry["backend"]
        times = measure(dim)
        best = min(times, key=times.get)
        log.info("exact search backend for this machine: %s (%s)", best,
                 ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in times.items()))
        _chosen[key] = best
        try:  # a cache that cannot be written only costs a measurement next time
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _read(path)
            data[key] = {"backend": best, "seconds": times, "rows": CAL_ROWS, "measured": time.time()}
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("exact search backend choice not cached (%s)", exc)
        return best


def forget() -> None:
    """Drop this process's remembered choices (tests; after a library upgrade in place)."""
    with _lock:
        _chosen.clear()
