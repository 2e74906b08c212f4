"""JobWatcher: the engine's process runner seen as Qt signals.

Long jobs run in a child process (``engine.jobs.runner.JobRunner``); the watcher polls
their handles with a 10 Hz QTimer — active only while a job is running — and turns
events into ``progress``, ``finished`` and ``failed`` signals. Past jobs come from the
runner's own records, so interrupted ones can be resumed after a restart.

Some jobs run inside the app instead (:class:`InAppJob`, started with
``JobWatcher.start_in_app``): an evaluation needs the reader the app already holds on
its model thread and edits packs through their one writer, so a child process would
load a second reader and break the one-writer rule. They are watched and recorded
exactly like process jobs (same signals, same records table, same Jobs panel rows); a
crash of the app leaves their record 'running' with the app's pid, which the runner's
``mark_stale`` turns into 'interrupted' at the next start, and closing the app while one
runs records it 'interrupted' at once.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal

log = logging.getLogger(__name__)

POLL_MS = 100
FINAL = {"done", "failed", "cancelled", "error", "interrupted", "killed"}
IN_APP = "in-app"  # the ``fn`` of an in-app job's record: "in-app:<kind>" (never spawned)
RECORD_EVERY_S = 1.0  # progress written to an in-app job's record at most once a second


def is_in_app(record: Any) -> bool:
    """Whether a job record is of a job that ran inside the app (not in a child process)."""
    return str(_get(record, "fn", "") or "").startswith(IN_APP + ":")


@dataclass
class LiveJob:
    id: str
    kind: str
    title: str
    handle: Any
    started: float = field(default_factory=time.time)
    fraction: float = 0.0
    message: str = ""
    eta: float | None = None
    metrics: dict = field(default_factory=dict)
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step or epoch, loss)
    loss_unit: str = "step"  # what the x of ``losses`` counts
    log: list[str] = field(default_factory=list)
    status: str = "running"
    on_end: Callable[..., None] | None = None


def ended_text(status: str, message: str) -> str:
    """What the ``failed`` signal says of a job that did not finish: 'failed: reason'."""
    return f"{status}: {message}" if message else status


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class InAppJob:
    """A job that runs in the app (on a worker thread) seen like a runner's ``JobHandle``.

    The worker calls ``progress(fraction, message, **metrics)`` and checks
    ``should_stop()`` (both thread-safe) and, when it is over, ``succeed(result)`` or
    ``fail(exc)`` (a ``JobCancelled`` makes it 'cancelled'). The watcher's timer
    ``poll()``s it on the GUI thread: the events come out in order and the record in the
    jobs table follows (progress at most once a second, the end at once).
    """

    def __init__(self, records, job_id: int, kind: str) -> None:
        from engine.progress import EtaEstimator

        self.records = records
        self.id = job_id
        self.kind = kind
        self._stop = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._eta = EtaEstimator()
        self._eta_lock = threading.Lock()
        self._t0 = time.monotonic()
        self._result = None
        self._fraction = 0.0
        self._message = ""
        self._recorded = 0.0
        self._dirty = False
        #: the exception given to ``fail`` (the caller may word it for the user)
        self.exception: BaseException | None = None

    # ------------------------------------------------------------------ worker side (any thread)
    def progress(self, fraction: float, message: str = "", **metrics: Any) -> None:
        from engine.progress import clamp_fraction
        from engine.jobs.runner import Event

        f = clamp_fraction(fraction)
        with self._eta_lock:
            eta = self._eta.update(f)
        self._events.put(Event(self.id, "progress", f, str(message), eta, dict(metrics), time.time()))

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def succeed(self, result: Any) -> None:
        from engine.jobs.runner import Event

        self._events.put(Event(self.id, "done", 1.0, "", 0.0, time=time.time(), result=result))

    def fail(self, exc: BaseException) -> None:
        from engine.progress import JobCancelled
        from engine.jobs.runner import Event

        self.exception = exc
        if isinstance(exc, JobCancelled):
            why = str(exc) or "cancelled"
            self._events.put(Event(self.id, "cancelled", None, why, time=time.time(), error=why))
            return
        why = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._events.put(Event(self.id, "failed", None, why, time=time.time(), error=why, traceback=tb))

    # ------------------------------------------------------------------ watcher side (GUI thread)
    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def status(self) -> str:
        return self._result.status if self._result is not None else "running"

    @property
    def result(self):
        return self._result

    def cancel(self) -> None:
        """Ask the job to stop at its next check (returns at once)."""
        if self._result is None:
            log.info("cancelling in-app job %s", self.id)
            self._stop.set()

    def poll(self) -> list[Any]:
        if self._result is not None:
            return []
        out: list[Any] = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            out.append(ev)
            if ev.final:
                break
        for ev in out:
            if ev.kind == "progress":
                self._fraction = ev.fraction if ev.fraction is not None else self._fraction
                self._message = ev.message or self._message
                self._dirty = True
        final = next((e for e in out if e.final), None)
        if final is not None:
            self._finish(final)
        elif self._dirty and time.monotonic() - self._recorded >= RECORD_EVERY_S:
            self._record_progress()
        return out

    def wait(self, timeout: float | None = None):
        """The end (polling); TimeoutError when it has not come within ``timeout`` s.

        The end is delivered by the worker's callbacks, often through the GUI thread's
        event loop: do not block the GUI thread on it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._result is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout} s")
            self.poll()
            time.sleep(0.02)
        return self._result

    def abandon(self, status: str, reason: str) -> None:
        """Record the job ended (``status``: 'interrupted' when the app closes under it) and
        ask it to stop; its worker's own end, if it comes, is ignored."""
        if self._result is not None:
            return
        self._stop.set()
        from engine.jobs.runner import Event

        self._finish(Event(self.id, status, None, reason, time=time.time(), error=reason))

    def _record_progress(self) -> None:
        try:
            self.records.set_progress(self.id, self._fraction, self._message)
        except Exception as exc:  # a locked or closed records file must not stop the job
            log.warning("job %s: progress not recorded (%s)", self.id, exc)
        self._recorded, self._dirty = time.monotonic(), False

    def _finish(self, ev) -> None:
        from engine.jobs.runner import JobResult

        if ev.kind != "done" and ev.fraction is None:
            ev.fraction = self._fraction
        if not ev.message:
            ev.message = self._message
        try:
            result_json = json.dumps(ev.result) if ev.kind == "done" else None
        except (TypeError, ValueError) as exc:
            result_json = json.dumps({"unserialisable": str(exc)})
        self._result = JobResult(self.id, ev.kind, ev.result, ev.error, ev.traceback, None,
                                 round(time.monotonic() - self._t0, 3))
        try:
            self.records.finish(self.id, ev.kind, fraction=1.0 if ev.kind == "done" else self._fraction,
                                message=ev.message or self._message, error=ev.error, traceback=ev.traceback,
                                result_json=result_json)
        except Exception as exc:
            log.warning("job %s: end not recorded (%s)", self.id, exc)
        log.info("in-app job %s %s in %.1f s%s", self.id, ev.kind, self._result.seconds,
                 f": {ev.error}" if ev.error else "")


class JobWatcher(QObject):
    progress = Signal(str, float, str, object, object)  # job id, fraction, message, eta (s or None), metrics
    finished = Signal(str, object)  # job id, result
    failed = Signal(str, str)  # job id, message ("cancelled: ..." for cancels)
    jobs_changed = Signal()
    started = Signal(str)  # a new (or resumed) job's id, once it is listed in ``live``

    def __init__(self, db_path: str | Path, notifier=None) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.notifier = notifier
        self._runner = None
        self.live: dict[str, LiveJob] = {}
        self._reruns: dict[str, Callable[[dict], str | None]] = {}
        self._end_messages: dict[str, str] = {}
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

    @property
    def runner(self):
        if self._runner is None:
            from engine.jobs.runner import JobRunner

            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._runner = JobRunner(self.db_path)
        return self._runner

    def end_message(self, job_id: str) -> str:
        """Why a job of this session ended as it did (its error for a failed one), or ''."""
        return self._end_messages.get(str(job_id), "")

    # ------------------------------------------------------------------ control
    def start(self, kind: str, target: str, config: dict, *, title: str = "", on_end: Callable[..., None] | None = None) -> str:
        """Start ``target`` ('module:function') in a child process; returns the job id."""
        h = self.runner.start(kind, target, config, title=title or None)
        return self._watch(h, kind, title or kind, on_end)

    def start_in_app(self, kind: str, config: dict, run: Callable[[InAppJob], None], *, title: str = "",
                     on_end: Callable[..., None] | None = None) -> str:
        """Record and watch a job that runs inside the app; returns its id.

        ``run(job)`` is called at once (on the GUI thread) and must hand the work to a
        worker that reports through ``job.progress`` / ``job.should_stop`` and ends it
        with ``job.succeed`` / ``job.fail``. ``config`` (JSON) is kept in the record, so a
        re-run registered with :meth:`register_rerun` can start the same work again.
        """
        records = self.runner.records
        jid_int = records.insert(kind, f"{IN_APP}:{kind}", json.dumps(config), title or None)
        records.set_running(jid_int, os.getpid())
        h = InAppJob(records, jid_int, kind)
        jid = self._watch(h, kind, title or kind, on_end)
        try:
            run(h)
        except Exception as exc:  # could not even start: end it as failed, visibly
            h.fail(exc)
        return jid

    def register_rerun(self, kind: str, rerun: Callable[[dict], str | None]) -> None:
        """How to start an in-app job of ``kind`` again from its recorded config ("Resume"
        in the Jobs panel: in-app jobs keep no checkpoint, so they start over)."""
        self._reruns[kind] = rerun

    def can_resume(self, record: Any) -> bool:
        status = str(_get(record, "status", ""))
        if status not in {"interrupted", "cancelled", "failed", "killed", "error"}:
            return False
        return not is_in_app(record) or str(_get(record, "kind", "")) in self._reruns

    def resume(self, job_id: str, on_end: Callable[..., None] | None = None) -> str:
        rec = self.record(job_id)
        if rec is not None and is_in_app(rec):
            rerun = self._reruns.get(str(_get(rec, "kind", "")))
            if rerun is None:
                raise ValueError(f"job #{job_id} ran inside the app and cannot be resumed here; "
                                 "start it again where it was started")
            new = rerun(dict(_get(rec, "config") or {}))
            if not new:
                raise ValueError(f"job #{job_id} could not be started again")
            return new
        h = self.runner.resume(job_id)
        rec = self.record(job_id)
        title = _get(rec, "title") or _get(rec, "kind", "job")
        return self._watch(h, str(_get(rec, "kind", "job")), f"{title} (resumed)", on_end)

    def cancel(self, job_id: str) -> bool:
        job = self.live.get(str(job_id))
        if job is None:
            return False
        job.handle.cancel()
        job.message = "cancelling…"
        self.progress.emit(job.id, job.fraction, job.message, None, job.metrics)
        return True

    def _watch(self, h, kind: str, title: str, on_end) -> str:
        jid = str(_get(h, "id"))
        self.live[jid] = LiveJob(jid, kind, title, h, on_end=on_end)
        if not self.timer.isActive():
            self.timer.start()
        self.jobs_changed.emit()
        self.started.emit(jid)
        return jid

    # ------------------------------------------------------------------ records
    def records(self) -> list[Any]:
        """The runner's job records, newest first (empty when there is no runner yet)."""
        try:
            recs = list(self.runner.jobs())
        except Exception as exc:
            log.warning("job records unreadable: %s", exc)
            return []
        return recs

    def record(self, job_id: str) -> Any:
        return next((r for r in self.records() if str(_get(r, "id")) == str(job_id)), None)

    def is_running(self) -> bool:
        return bool(self.live)

    def process_jobs_running(self) -> bool:
        """Whether a job runs in a child process (it competes with the app's model for the cores)."""
        return any(not isinstance(j.handle, InAppJob) for j in list(self.live.values()))

    # ------------------------------------------------------------------ polling
    def poll(self) -> None:
        for job in list(self.live.values()):
            try:
                events = job.handle.poll()
            except Exception as exc:
                self._end(job, "failed", None, f"lost contact with the job: {exc}")
                continue
            for ev in events or ():
                self._event(job, ev)
                if job.id not in self.live:
                    break
            if job.id in self.live and self._handle_done(job):
                self._finish_from_handle(job)
        if not self.live:
            self.timer.stop()

    def _event(self, job: LiveJob, ev: Any) -> None:
        kind = str(_get(ev, "kind", _get(ev, "type", "progress")) or "progress")
        frac = _get(ev, "fraction")
        msg = _get(ev, "message") or ""
        if kind in FINAL or _get(ev, "status") in FINAL:
            status = _get(ev, "status") or kind
            self._end(job, str(status), _get(ev, "result"), _get(ev, "error") or msg)
            return
        if frac is not None:
            job.fraction = max(0.0, min(1.0, float(frac)))
        if msg:
            job.message = str(msg)
            if not job.log or job.log[-1] != job.message:
                job.log.append(job.message)
                del job.log[:-500]
        eta = _get(ev, "eta")
        job.eta = float(eta) if eta is not None else None
        metrics = _get(ev, "metrics") or {}
        if metrics:
            job.metrics = dict(metrics)
            if "loss" in metrics:
                # x: the job's own step (training) or epoch (TransE), else the point count
                unit = "step" if "step" in metrics else "epoch" if "epoch" in metrics else None
                job.loss_unit = unit or "step"
                x = float(metrics[unit]) if unit else float(len(job.losses))
                job.losses.append((x, float(metrics["loss"])))
        self.progress.emit(job.id, job.fraction, job.message, job.eta, job.metrics)

    def _handle_done(self, job: LiveJob) -> bool:
        h = job.handle
        for name in ("done", "finished", "is_done"):
            v = getattr(h, name, None)
            if v is not None:
                v = v() if callable(v) else v
                if isinstance(v, bool):
                    return v
        st = getattr(h, "status", None)
        st = st() if callable(st) else st
        return st in FINAL

    def _finish_from_handle(self, job: LiveJob) -> None:
        try:
            res = job.handle.wait(timeout=1)
        except Exception as exc:
            self._end(job, "failed", None, str(exc))
            return
        status = str(_get(res, "status", "done"))
        self._end(job, status, _get(res, "result", res), _get(res, "error") or _get(res, "message") or "")

    def _end(self, job: LiveJob, status: str, result: Any, message: str) -> None:
        self.live.pop(job.id, None)
        job.status = status
        self._end_messages[job.id] = message  # for on_end callbacks: why a job failed
        if status == "done":
            job.fraction = 1.0
            self.finished.emit(job.id, result)
        else:
            self.failed.emit(job.id, ended_text(status, message))
        if job.on_end is not None:
            try:
                job.on_end(job.id, status, result)
            except Exception as exc:  # never let a view's callback break polling
                log.exception("job end callback: %s", exc)
        self.jobs_changed.emit()

    def close(self) -> None:
        """Stop polling; running jobs are cancelled (they resume from their checkpoint later)."""
        self.timer.stop()
        for job in list(self.live.values()):
            if isinstance(job.handle, InAppJob):  # it stops at its next check; the app is going away
                job.handle.abandon("interrupted", "the app was closed while it ran; start it again to finish it")
                continue
            try:
                job.handle.cancel()
                job.handle.wait(timeout=10)
            except Exception as exc:  # pragma: no cover
                log.warning("stopping job %s: %s", job.id, exc)
        self.live.clear()
        close = getattr(self._runner, "close", None)
        if callable(close):
            close()
