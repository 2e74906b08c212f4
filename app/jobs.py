"""JobWatcher: the engine's process runner seen as Qt signals.

Long jobs run in a child process (``engine.jobs.runner.JobRunner``); the watcher polls
their handles with a 10 Hz QTimer — active only while a job is running — and turns
events into ``progress``, ``finished`` and ``failed`` signals. Past jobs come from the
runner's own records, so interrupted ones can be resumed after a restart.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal

log = logging.getLogger(__name__)

POLL_MS = 100
FINAL = {"done", "failed", "cancelled", "error", "interrupted", "killed"}


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
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step or time, loss)
    log: list[str] = field(default_factory=list)
    status: str = "running"
    on_end: Callable[..., None] | None = None


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class JobWatcher(QObject):
    progress = Signal(str, float, str, object, object)  # job id, fraction, message, eta (s or None), metrics
    finished = Signal(str, object)  # job id, result
    failed = Signal(str, str)  # job id, message ("cancelled: ..." for cancels)
    jobs_changed = Signal()

    def __init__(self, db_path: str | Path, notifier=None) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.notifier = notifier
        self._runner = None
        self.live: dict[str, LiveJob] = {}
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

    # ------------------------------------------------------------------ control
    def start(self, kind: str, target: str, config: dict, *, title: str = "", on_end: Callable[..., None] | None = None) -> str:
        """Start ``target`` ('module:function') in a child process; returns the job id."""
        h = self.runner.start(kind, target, config, title=title or None)
        return self._watch(h, kind, title or kind, on_end)

    def resume(self, job_id: str, on_end: Callable[..., None] | None = None) -> str:
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
                x = float(metrics.get("step", len(job.losses)))
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
        if status == "done":
            job.fraction = 1.0
            self.finished.emit(job.id, result)
        else:
            text = f"{status}: {message}" if message else status
            self.failed.emit(job.id, text)
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
            try:
                job.handle.cancel()
                job.handle.wait(timeout=10)
            except Exception as exc:  # pragma: no cover
                log.warning("stopping job %s: %s", job.id, exc)
        self.live.clear()
        close = getattr(self._runner, "close", None)
        if callable(close):
            close()
