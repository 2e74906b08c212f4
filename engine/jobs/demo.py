"""Small real jobs for the runner: its own tests and a way to try the Jobs panel.

They import nothing heavy (a worker starts in well under a second for them).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from engine.progress import JobCancelled, check


def _read_checkpoint(path: Path) -> int:
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["done"])
    except FileNotFoundError:
        return 0


def _write_checkpoint(path: Path, done: int) -> None:
    """Atomic: a temp file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"done": done}, f)
    os.replace(tmp, path)


def count_job(config: dict[str, Any], progress: Callable[..., None], should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Count to ``n`` with ``delay`` seconds a step.

    With ``checkpoint`` (a file path) every step is committed there, and a new run with
    the same config continues after the last committed step instead of starting at 0.
    Returns ``{"counted": n, "resumed_from": k, "steps_run": n - k}``.
    """
    n = int(config.get("n", 100))
    delay = float(config.get("delay", 0.01))
    ckpt = Path(config["checkpoint"]) if config.get("checkpoint") else None
    start = _read_checkpoint(ckpt) if ckpt else 0
    if start:
        progress(start / n, f"resuming at {start} of {n}")
    for i in range(start, n):
        if should_stop():
            raise JobCancelled(f"cancelled at {i} of {n}; resume to continue")
        time.sleep(delay)
        if ckpt:
            _write_checkpoint(ckpt, i + 1)
        progress((i + 1) / n, f"{i + 1} of {n}", step=i + 1, remaining=n - i - 1)
    return {"counted": n, "resumed_from": start, "steps_run": n - start}


def sleep_job(config: dict[str, Any], progress: Callable[..., None], should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Sleep ``seconds`` in slices of 0.05 s, reporting progress and honouring cancel."""
    seconds = float(config.get("seconds", 1.0))
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        check(should_stop, f"cancelled after {elapsed:.1f} s")
        progress(elapsed / seconds, f"slept {elapsed:.1f} of {seconds:.1f} s")
        time.sleep(0.05)
    progress(1.0, "awake")
    return {"slept": round(time.monotonic() - t0, 3)}


def fail_job(config: dict[str, Any], progress: Callable[..., None], should_stop: Callable[[], bool]) -> None:
    """Report a little progress, then raise ``ValueError(config['message'])``."""
    progress(0.5, "about to fail")
    raise ValueError(config.get("message", "this job always fails"))


def crash_job(config: dict[str, Any], progress: Callable[..., None], should_stop: Callable[[], bool]) -> None:
    """Die without a result: ``os._exit(code)`` (like a segfault or an abort in native code)."""
    progress(0.25, "about to crash")
    time.sleep(0.2)  # let the progress message reach the parent
    os._exit(int(config.get("code", 3)))


def stubborn_job(config: dict[str, Any], progress: Callable[..., None], should_stop: Callable[[], bool]) -> None:
    """Ignore ``should_stop`` for ``seconds`` (like native code that never checks): only termination ends it."""
    seconds = float(config.get("seconds", 60.0))
    progress(0.0, "not listening")
    time.sleep(seconds)
