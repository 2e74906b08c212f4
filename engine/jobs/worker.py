"""The child-process side of the job runner.

``child_main`` runs in a process started with the 'spawn' method: it imports the job's
module, calls ``fn(config, progress, should_stop)`` and sends messages to the parent
through a multiprocessing Queue (whose feeder thread means a slow parent never blocks
the job):

* ``("progress", fraction, message, eta_seconds, metrics, unix_time)`` — throttled;
* exactly one final message: ``("done", result_json)``, ``("cancelled", reason)`` or
  ``("failed", reason, traceback_text)``.

A child that dies without a final message (``os._exit``, ``kill -9``, a segfault) is
detected by the parent from its exit code. The child ignores SIGINT (Ctrl+C in a
terminal reaches the whole process group; the parent turns it into a cancel) and stops
itself through ``should_stop`` when its parent disappears.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from engine.progress import EtaEstimator, JobCancelled, clamp_fraction

log = logging.getLogger(__name__)

TICK_S = 0.1


#: Job functions that moved (issue 17: one folder per mechanism): saved job records still
#: name the old 'module:function', and resuming one must find it.
MOVED: dict[str, str] = {
    "engine.jobs.train_memory_reader:train_memory_reader": "engine.mechanisms.dpm.train_branch:train_memory_reader",
    "engine.plugins.transe:train_transe": "engine.mechanisms.plugins.transe:train_transe",
    "engine.plugins.map_tune:map_tune": "engine.mechanisms.plugins.map_tune:map_tune",
}


def resolve(fn_path: str) -> Callable[..., Any]:
    """'package.module:function' → the function (a moved one found at its new place)."""
    fn_path = MOVED.get(fn_path, fn_path)
    module, sep, name = fn_path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"job function must be 'module:function', got {fn_path!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{fn_path} is not callable")
    return obj


def to_json(result: Any) -> str:
    """A job's return value as JSON (dataclasses and objects with ``to_dict`` allowed)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    elif hasattr(result, "to_dict"):
        result = result.to_dict()
    try:
        return json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the job's result is not JSON-serialisable: {exc}") from None


def _metric(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    item = getattr(v, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(v)


class Reporter:
    """The ``progress`` callable handed to the job: throttled, with an ETA.

    At most one message per ``min_interval`` seconds goes out; a throttled update is
    kept and sent by the ticker (or the next call) once the interval has passed, so the
    last state always arrives. ``fraction >= 1`` is sent at once. Intermediate updates
    (and their metrics) can be dropped: a loss curve is sampled at ≤ 1/min_interval Hz.
    """

    def __init__(self, send: Callable[[tuple], None], min_interval: float = 0.05) -> None:
        self._send = send
        self.min_interval = min_interval
        self.eta = EtaEstimator()
        self._lock = threading.Lock()
        self._last = -1e9
        self._pending: tuple | None = None

    def __call__(self, fraction: float, message: str = "", **metrics: Any) -> None:
        f = clamp_fraction(fraction)
        now = time.monotonic()
        eta = self.eta.update(f, now)
        msg = ("progress", f, str(message), eta, {str(k): _metric(v) for k, v in metrics.items()}, time.time())
        with self._lock:
            if f >= 1.0 or now - self._last >= self.min_interval:
                self._pending = None
                self._last = now
                self._send(msg)
            else:
                self._pending = msg

    def flush(self, force: bool = True) -> None:
        with self._lock:
            if self._pending is not None and (force or time.monotonic() - self._last >= self.min_interval):
                msg, self._pending = self._pending, None
                self._last = time.monotonic()
                self._send(msg)


def child_main(fn_path: str, config_json: str, queue: Any, stop_event: Any, parent_pid: int, min_interval: float) -> None:
    """Entry point of the worker process (picklable: a module-level function)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # pragma: no cover - not the main thread / platform
        pass
    orphaned = threading.Event()
    finished = threading.Event()
    reporter = Reporter(queue.put, min_interval)

    def tick() -> None:
        while not finished.wait(TICK_S):
            reporter.flush(force=False)
            if os.getppid() != parent_pid and not orphaned.is_set():
                log.warning("job runner (pid %d) is gone; stopping at the next checkpoint", parent_pid)
                orphaned.set()

    threading.Thread(target=tick, name="job-ticker", daemon=True).start()

    def should_stop() -> bool:
        return stop_event.is_set() or orphaned.is_set()

    try:
        fn = resolve(fn_path)
        result = to_json(fn(json.loads(config_json), reporter, should_stop))
        final: tuple = ("done", result)
    except JobCancelled as exc:
        final = ("cancelled", str(exc) or "cancelled")
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        reason = _reason(exc)
        final = ("failed", reason, traceback.format_exc())
    finished.set()
    reporter.flush()
    queue.put(final)
    queue.close()
    queue.join_thread()  # everything is in the pipe before the process exits
    # The result is delivered and the job's files are closed: skip the interpreter's teardown
    # (freeing torch and transformers took over the parent's 2 s grace on a busy machine, so
    # every finished job was logged as hanging and terminated).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def _reason(exc: BaseException) -> str:
    """One line: the message alone for the user's errors (it names file and line), with the
    exception's type for anything else (a bug)."""
    from engine.errors import user_errors

    if not str(exc):
        return type(exc).__name__
    line = str(exc).splitlines()[0]
    return line if isinstance(exc, user_errors()) else f"{type(exc).__name__}: {line}"

