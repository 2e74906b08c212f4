"""Run long jobs in a child process, stream their progress, record them in SQLite.

A job is a plain function ``fn(config, progress, should_stop) -> result`` named by an
import path (``'engine.jobs.demo:count_job'``) with a JSON-serialisable ``config``:

* ``progress(fraction, message='', **metrics)`` — see :mod:`engine.progress`;
* ``should_stop()`` — true once the job was cancelled (or its parent died); the job
  then commits or discards its partial work and raises ``JobCancelled``;
* the return value must be JSON-serialisable (a dataclass or ``to_dict()`` is fine).

**Resume contract.** ``JobRunner.resume(id)`` starts an interrupted, cancelled or
failed job again with the *same config*; the runner keeps no state of its own. A job
function is therefore responsible for resuming from its last committed checkpoint
(build_memory keeps ``rows_done`` per input file in the pack, training jobs keep a
checkpoint file), and a cancelled or killed job must leave its output either as before
it started or exactly at its last committed checkpoint.

**Why a child process, started with 'spawn'.** A crash or ``kill -9`` of the job must
not take the GUI down, cancel must be able to end a job stuck in native code, and
torch (OpenMP thread pools, CUDA) is not safe across ``fork``. Spawn costs ~1–2 s per
job (a fresh interpreter imports the job's module). In a PyInstaller bundle the app's
entry point must call ``multiprocessing.freeze_support()`` first thing under
``if __name__ == '__main__':`` so that the spawned bundle executable becomes a worker
instead of a second GUI.

The parent API never blocks unless asked to: ``JobHandle.poll()`` drains whatever
arrived (a GUI calls it from a timer), ``wait()`` blocks (CLI), ``cancel()`` only sets
a flag. A job that does not end ``cancel_grace`` seconds (5) after ``cancel()`` is
terminated. A child that dies without a final message ends its job as
``interrupted`` (killed by a signal) or ``failed`` (any other exit code) with
"worker exited with code N" — never a hang.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.jobs.records import FINAL, RESUMABLE, JobRecord, JobRecords
from engine.jobs.worker import MOVED, child_main

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0
THROTTLE_S = 0.05  # at most ~20 progress events a second
DB_WRITE_INTERVAL_S = 1.0  # progress is written to the record at most once a second
EXIT_JOIN_S = 2.0
MAX_DRAIN = 10_000


@dataclass
class Event:
    """One thing that happened to a job.

    ``kind`` is 'progress' or a final status ('done', 'failed', 'cancelled',
    'interrupted'); a final event carries ``result`` (done) or ``error``.
    """

    job_id: int
    kind: str
    fraction: float | None = None
    message: str = ""
    eta_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    result: Any = None
    error: str | None = None
    traceback: str | None = None

    @property
    def final(self) -> bool:
        return self.kind in FINAL

    @property
    def status(self) -> str:
        return self.kind if self.final else "running"

    @property
    def eta(self) -> float | None:
        return self.eta_seconds


@dataclass
class JobResult:
    """How a job ended. ``error`` is one line; ``traceback`` the full text (failures)."""

    id: int
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "done"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _check_fn_path(fn_path: str) -> None:
    """Fail early, in the parent, on a malformed or unknown job path (without importing it);
    a moved job function is looked for at its new place, as the worker will."""
    module, sep, name = MOVED.get(fn_path, fn_path).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"job function must be 'module:function', got {fn_path!r}")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ValueError(f"job module {module!r} not found (job {fn_path!r})")


class JobHandle:
    """A running (or finished) job as seen from the parent.

    Poll it from one thread (a GUI timer or the CLI loop); ``on_event`` runs in that
    thread. ``cancel()`` may be called from any thread.
    """

    def __init__(self, runner: "JobRunner", job_id: int, kind: str, process: Any, queue: Any, stop_event: Any,
                 on_event: Callable[[Event], None] | None) -> None:
        self.runner = runner
        self.id = job_id
        self.kind = kind
        self._process = process
        self._queue = queue
        self._stop = stop_event
        self.on_event = on_event
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self._cancel_at: float | None = None
        self._terminated = False
        self._result: JobResult | None = None
        self._fraction = 0.0
        self._message = ""
        self._db_written = 0.0
        self._db_dirty = False

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def status(self) -> str:
        return self._result.status if self._result else "running"

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> JobResult | None:
        return self._result

    @property
    def fraction(self) -> float:
        return self._fraction

    def __repr__(self) -> str:
        return f"<JobHandle #{self.id} {self.kind} {self.status} {self._fraction:.0%}>"

    # ------------------------------------------------------------------ control
    def cancel(self) -> None:
        """Ask the job to stop (returns at once); it is terminated if still alive after the grace time."""
        if self._result is None and self._cancel_at is None:
            log.info("cancelling job %s", self.id)
            self._cancel_at = time.monotonic()
            self._stop.set()

    def terminate(self) -> None:
        """Stop the worker now (SIGTERM) without waiting for a checkpoint; the record says cancelled."""
        if self._result is None:
            self.cancel()
            self._terminated = True
            if self._process.is_alive():
                self._process.terminate()

    # ------------------------------------------------------------------ events
    def poll(self, timeout: float = 0) -> list[Event]:
        """Events that arrived since the last call (waits up to ``timeout`` s for the first)."""
        with self._lock:
            if self._result is not None:
                return []
            events = [self._event(m) for m in self._drain(timeout)]
            if not any(e.final for e in events) and not self._process.is_alive():
                events += [self._event(m) for m in self._drain(0)]  # sent just before it exited
                if not any(e.final for e in events):
                    events.append(self._died())
            elif self._cancel_at is not None and not self._terminated and \
                    time.monotonic() - self._cancel_at > self.runner.cancel_grace:
                log.warning("job %s did not stop %.0f s after cancel; terminating it", self.id, self.runner.cancel_grace)
                self._terminated = True
                self._process.terminate()
            final = next((e for e in events if e.final), None)
            if final is not None:
                events = events[: events.index(final) + 1]
                self._finish(final)
            else:
                self._record_progress()
        for ev in events:
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:  # a view's callback must not break the job's bookkeeping
                    log.exception("on_event callback of job %s failed", self.id)
        return events

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job ends; TimeoutError when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._result is None:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            self.poll(timeout=left)
        return self._result

    # ------------------------------------------------------------------ internals
    def _drain(self, timeout: float) -> list[tuple]:
        msgs: list[tuple] = []
        try:
            if timeout > 0:
                msgs.append(self._queue.get(timeout=timeout))
            while len(msgs) < MAX_DRAIN:
                msgs.append(self._queue.get_nowait())
        except (queue_mod.Empty, EOFError, OSError):
            pass
        return msgs

    def _event(self, msg: tuple) -> Event:
        kind = msg[0]
        if kind == "progress":
            _, fraction, message, eta, metrics, t = msg
            self._fraction, self._db_dirty = fraction, True
            if message:
                self._message = message
            return Event(self.id, "progress", fraction, message, eta, metrics, t)
        now = time.time()
        if kind == "done":
            result = json.loads(msg[1])
            return Event(self.id, "done", 1.0, self._message, 0.0, time=now, result=result)
        if kind == "cancelled":
            return Event(self.id, "cancelled", self._fraction, msg[1], time=now, error=msg[1])
        if kind == "failed":
            return Event(self.id, "failed", self._fraction, msg[1], time=now, error=msg[1], traceback=msg[2])
        return Event(self.id, "failed", self._fraction, f"unknown message from worker: {kind!r}", time=now,
                     error=f"unknown message from worker: {kind!r}")

    def _died(self) -> Event:
        self._process.join(EXIT_JOIN_S)
        code = self._process.exitcode
        reason = f"worker exited with code {code}"
        if code is not None and code < 0:
            reason += f" ({_signal_name(code)})"
        if self._cancel_at is not None:
            how = "terminated after the cancel grace time" if self._terminated else "stopped"
            return Event(self.id, "cancelled", self._fraction, f"cancelled; worker {how} ({reason})", time=time.time(),
                         error=f"cancelled ({reason})")
        kind = "interrupted" if code is None or code < 0 else "failed"
        reason += " without a result" if kind == "failed" else "; resume to continue from the last checkpoint"
        return Event(self.id, kind, self._fraction, reason, time=time.time(), error=reason)

    def _record_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._db_dirty and (force or now - self._db_written >= DB_WRITE_INTERVAL_S):
            self.runner.records.set_progress(self.id, self._fraction, self._message)
            self._db_written, self._db_dirty = now, False

    def _finish(self, ev: Event) -> None:
        proc = self._process
        proc.join(EXIT_JOIN_S)
        if proc.is_alive():  # sent its result but hangs on exit (stray non-daemon threads)
            log.warning("job %s worker did not exit after its result; terminating it", self.id)
            proc.terminate()
            proc.join(EXIT_JOIN_S)
            if proc.is_alive():
                proc.kill()
                proc.join(EXIT_JOIN_S)
        try:
            self._queue.close()
        except OSError:
            pass
        res = JobResult(self.id, ev.kind, ev.result, ev.error, ev.traceback, proc.exitcode,
                        round(time.monotonic() - self._t0, 3))
        result_json = json.dumps(ev.result) if ev.kind == "done" else None
        self.runner.records.finish(
            self.id, ev.kind, fraction=1.0 if ev.kind == "done" else self._fraction,
            message=ev.message or self._message, error=ev.error, traceback=ev.traceback,
            result_json=result_json, exit_code=proc.exitcode,
        )
        if ev.kind == "done":
            self._fraction = 1.0
        self._result = res
        self.runner._forget(self)
        log.info("job %s %s in %.1f s%s", self.id, ev.kind, res.seconds, f": {ev.error}" if ev.error else "")


class JobRunner:
    """Starts jobs in child processes and keeps their records in ``records_db_path``.

    Creating a runner marks records left 'running' by a dead process 'interrupted'.
    """

    def __init__(self, records_db_path: str | Path, *, cancel_grace: float = CANCEL_GRACE_S,
                 throttle: float = THROTTLE_S) -> None:
        self.records = JobRecords(records_db_path)
        self.cancel_grace = cancel_grace
        self.throttle = throttle
        self._ctx = mp.get_context("spawn")
        self._live: dict[int, JobHandle] = {}
        self._lock = threading.Lock()
        self.records.mark_stale()
        ref = weakref.ref(self)
        self._atexit = lambda: (r := ref()) is not None and r.close()
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ jobs
    def start(self, kind: str, fn_path: str, config: dict[str, Any] | None = None,
              on_event: Callable[[Event], None] | None = None, *, title: str | None = None) -> JobHandle:
        """Start ``fn_path`` ('module:function') with ``config`` in a child process."""
        _check_fn_path(fn_path)
        try:
            config_json = json.dumps(config or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job config is not JSON-serialisable: {exc}") from None
        job_id = self.records.insert(kind, fn_path, config_json, title)
        return self._spawn(job_id, kind, fn_path, config_json, on_event)

    def resume(self, job_id: int | str, on_event: Callable[[Event], None] | None = None) -> JobHandle:
        """Run an interrupted, cancelled or failed job again with the same config (same id).

        The job function resumes from its own last committed checkpoint.
        """
        rec = self.records.get(job_id)
        if rec is None:
            raise KeyError(f"no job #{job_id} in {self.records.path}")
        if rec.id in self._live:
            raise ValueError(f"job #{rec.id} is still running")
        if rec.status not in RESUMABLE:
            raise ValueError(f"job #{rec.id} is {rec.status}; only {', '.join(sorted(RESUMABLE))} jobs can be resumed")
        _check_fn_path(rec.fn)
        self.records.requeue(rec.id)
        log.info("resuming job %s (%s)", rec.id, rec.fn)
        return self._spawn(rec.id, rec.kind, rec.fn, json.dumps(rec.config), on_event)

    def _spawn(self, job_id: int, kind: str, fn_path: str, config_json: str,
               on_event: Callable[[Event], None] | None) -> JobHandle:
        q = self._ctx.Queue()
        stop = self._ctx.Event()
        proc = self._ctx.Process(
            target=child_main, args=(fn_path, config_json, q, stop, os.getpid(), self.throttle),
            name=f"plugmem-job-{job_id}", daemon=False,
        )
        try:
            proc.start()
        except Exception as exc:
            self.records.finish(job_id, "failed", error=f"could not start the worker: {exc}")
            raise
        self.records.set_running(job_id, proc.pid)
        handle = JobHandle(self, job_id, kind, proc, q, stop, on_event)
        with self._lock:
            self._live[job_id] = handle
        log.info("job %s (%s, %s) started in pid %s", job_id, kind, fn_path, proc.pid)
        return handle

    def _forget(self, handle: JobHandle) -> None:
        with self._lock:
            self._live.pop(handle.id, None)

    # ------------------------------------------------------------------ records
    def jobs(self, limit: int = 100) -> list[JobRecord]:
        """Job records, newest first."""
        return self.records.list(limit)

    def get(self, job_id: int | str) -> JobRecord | None:
        return self.records.get(job_id)

    def live(self) -> list[JobHandle]:
        with self._lock:
            return list(self._live.values())

    def close(self, timeout: float | None = None) -> None:
        """Cancel the jobs still running (they can be resumed later) and close the records."""
        for h in self.live():
            h.cancel()
        for h in self.live():
            try:
                h.wait(self.cancel_grace + 3 if timeout is None else timeout)
            except TimeoutError:
                h.terminate()
                h.wait(5)
        try:
            atexit.unregister(self._atexit)
        except Exception:  # pragma: no cover
            pass
        self.records.close()

    def __enter__(self) -> "JobRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_job(fn_path: str, config: dict[str, Any] | None = None, on_event: Callable[[Event], None] | None = None, *,
            kind: str | None = None, db_path: str | Path = ":memory:") -> JobResult:
    """Run a job in a child process and block until it ends (for the CLI).

    The first Ctrl+C cancels the job (it stops at its next checkpoint); a second one
    terminates the worker. Records go to ``db_path`` (throw-away by default).
    """
    runner = JobRunner(db_path)
    stop_requests = [0]
    old = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        def on_sigint(signum: int, frame: Any) -> None:  # noqa: ARG001
            stop_requests[0] += 1

        old = signal.signal(signal.SIGINT, on_sigint)
    try:
        handle = runner.start(kind or fn_path.rpartition(":")[2], fn_path, config, on_event)
        seen = 0
        while not handle.done:
            if stop_requests[0] != seen:
                seen = stop_requests[0]
                if seen == 1:
                    log.warning("stopping job %s at its next checkpoint (Ctrl+C again to stop at once)", handle.id)
                    handle.cancel()
                else:
                    handle.terminate()
            handle.poll(timeout=0.1)
        return handle.result  # type: ignore[return-value]
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old)
        runner.close()
