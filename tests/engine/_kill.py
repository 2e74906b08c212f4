"""Start a job in the child-process runner and kill -9 it once it is past a given progress."""
from __future__ import annotations

import os
import signal
import time


def start_and_kill(runner, name: str, target: str, config: dict, *, past: float = 0.2, timeout: float = 180.0):
    """The job's handle, after SIGKILL once it reported progress above ``past``."""
    h = runner.start(name, target, config)
    deadline = time.monotonic() + timeout
    progressed = False
    while time.monotonic() < deadline and not progressed:
        for ev in h.poll(timeout=0.2):
            if getattr(ev, "fraction", 0) and ev.fraction > past:
                progressed = True
    assert progressed, f"{name} never got past {past:.0%}"
    os.kill(h.pid, signal.SIGKILL)
    h.wait(timeout=30)
    return h
