"""One writer per pack: every write (and semantic search) runs on one single-worker thread.

The thread owns the pack's ``Memory`` (SQLite connection + encoder + index), so writes
are serialised and never block the GUI; the GUI reads through its own read-only
connection (WAL snapshots). Each task's result comes back on the GUI thread through a
queued signal; a result that is a ``Change`` is broadcast once on the hub.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal, Slot

from app.hub import ChangeHub

log = logging.getLogger(__name__)

Task = Callable[[Any], Any]  # receives the Memory


def is_change(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "change_id") and hasattr(obj, "ids")


class PackWriter(QObject):
    """The single write path of one pack. States: opening, ready, suspended, failed, closed."""

    ready = Signal(str)
    failed = Signal(str, object)  # path, exception
    idle = Signal()
    _deliver = Signal(object)

    def __init__(self, path: str | Path, hub: ChangeHub, encoder_provider: Callable[[], Any] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None, create: bool = False) -> None:
        super().__init__()
        self.path = str(path)
        self.hub = hub
        self._encoder_provider = encoder_provider
        self._on_error = on_error
        self._create = create
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"plugmem-writer-{Path(path).stem}")
        self._memory = None
        self._pending = 0
        self._lock = threading.Lock()
        self.state = "opening"
        self.error: BaseException | None = None
        self.messages: list[str] = []
        self._deliver.connect(self._on_deliver)
        self._run(self._open, None, None, broadcast=False, what="Opening")

    # ------------------------------------------------------------------ public
    @property
    def creating(self) -> bool:
        """True while a new pack's file exists but its schema is not written yet."""
        return self._create and self.state == "opening"

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, task: Task, on_done: Callable[[Any], None] | None = None, *, what: str = "",
               on_error: Callable[[BaseException], None] | None = None, broadcast: bool = True) -> Future:
        """Run ``task(memory)`` on the writer thread after everything submitted before it."""
        if self.state == "closed":
            raise RuntimeError(f"{Path(self.path).name} is closed")

        def call(_):
            if self._memory is None:
                raise RuntimeError(f"{Path(self.path).name} is not open ({self.state})")
            return task(self._memory)

        return self._run(call, on_done, on_error, broadcast=broadcast, what=what)

    def suspend(self, on_done: Callable[[Any], None] | None = None) -> None:
        """Close the pack so that an outside process (an import job) may write it."""
        self.state = "suspended"
        self._run(self._close_memory, on_done, None, broadcast=False, what="Closing")

    def reopen(self) -> None:
        """(Re)open after ``suspend`` or a repair; views are told through ``hub.reloaded``."""
        self.state = "opening"
        self._run(lambda _: (self._close_memory(None), self._open(None)), None, None, broadcast=False, what="Opening")

    def close(self, wait: bool = True) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        fut = self._executor.submit(self._close_memory, None)
        self._executor.shutdown(wait=wait)
        if wait:
            try:
                fut.result()
            except Exception as exc:  # pragma: no cover - reported in the log only
                log.warning("closing %s: %s", self.path, exc)

    # ------------------------------------------------------------------ thread side
    def _open(self, _):
        from engine.memory import Memory

        encoder = self._encoder_provider() if self._encoder_provider else None
        self._memory = Memory.open(self.path, encoder, create=self._create, name=Path(self.path).stem,
                                   on_message=self.messages.append)
        self._create = False
        if not self._memory.pack.readonly:
            from engine.evaluate import undo_interrupted_evaluation

            n = undo_interrupted_evaluation(self._memory)
            if n:
                self.messages.append(f"{Path(self.path).name}: undid {n} temporary edit(s) left by an edit "
                                     "evaluation that was interrupted")
        return "opened"

    def _close_memory(self, _):
        mem, self._memory = self._memory, None
        if mem is not None:
            mem.close()
        return "closed"

    def _run(self, fn, on_done, on_error, *, broadcast: bool, what: str) -> Future:
        with self._lock:
            self._pending += 1

        def job():
            try:
                res = fn(None)
                self._deliver.emit((fn, res, None, on_done, on_error, broadcast, what))
                return res
            except BaseException as exc:  # delivered to the GUI thread, never lost
                self._deliver.emit((fn, None, exc, on_done, on_error, broadcast, what))
                raise

        return self._executor.submit(job)

    # ------------------------------------------------------------------ GUI side
    @Slot(object)
    def _on_deliver(self, payload) -> None:
        fn, res, exc, on_done, on_error, broadcast, what = payload
        with self._lock:
            self._pending -= 1
        if exc is not None:
            if fn == self._open or what == "Opening":
                self.state = "failed"
                self.error = exc
                self.failed.emit(self.path, exc)
            if on_error is not None:
                on_error(exc)
            elif self._on_error is not None:
                self._on_error(f"{what or 'Writing'} {Path(self.path).name}", exc)
        else:
            if what == "Opening" and self.state == "opening":
                self.state = "ready"
                self.ready.emit(self.path)
                self.hub.reloaded.emit(self.path)
            if broadcast and is_change(res):
                self.hub.changed.emit(self.path, res)
            if on_done is not None:
                on_done(res)
        if self._pending == 0:
            self.idle.emit()
