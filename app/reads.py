"""Slow reads off the GUI thread: id lists, full-text search, tag and entry counts.

At a million entries some reads take from 0.1 to 2 s (loading every id for the table,
``GROUP BY`` over the tags, a full-text search for a common word). They run here, on
one background thread that holds its own read-only connection per pack (SQLite
connections belong to the thread that made them; WAL lets them read while the writer
writes), and their results come back on the GUI thread through a queued signal.
Callers tag requests with a generation number and drop answers that a newer request
has made stale.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)


class ReadService(QObject):
    _deliver = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugmem-reads")
        self._packs: dict[str, Any] = {}  # only touched on the read thread
        self._lock = threading.Lock()
        self._pending = 0
        self._futures: set[Future] = set()
        self.closed = False
        self._deliver.connect(self._on_deliver)

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, path: str, fn: Callable[[Any], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> Future | None:
        """Run ``fn(pack)`` on the read thread with a read-only Pack of ``path``."""
        if self.closed:
            return None
        with self._lock:
            self._pending += 1

        def job():
            try:
                res = fn(self._pack(path))
            except BaseException as exc:
                self._deliver.emit((None, exc, on_done, on_error))
                raise
            self._deliver.emit((res, None, on_done, on_error))
            return res

        fut = self._executor.submit(job)
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        return fut

    def forget(self, path: str) -> None:
        """Reopen ``path`` on the next request (it was replaced, repaired or detached)."""
        if not self.closed:
            self._executor.submit(self._close_one, path)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in list(self._futures):  # queued reads are not wanted any more
            fut.cancel()
        self._executor.submit(self._close_all)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ read thread
    def _pack(self, path: str):
        p = self._packs.get(path)
        if p is None:
            from engine.store import Pack

            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such pack file")
            p = Pack.open(path, readonly=True)
            self._packs[path] = p
        return p

    def _close_one(self, path: str) -> None:
        p = self._packs.pop(path, None)
        if p is not None:
            p.close()

    def _close_all(self) -> None:
        for path in list(self._packs):
            self._close_one(path)

    # ------------------------------------------------------------------ GUI thread
    @Slot(object)
    def _on_deliver(self, payload) -> None:
        res, exc, on_done, on_error = payload
        with self._lock:
            self._pending -= 1
        if self.closed:
            return
        if exc is not None:
            if on_error is not None:
                on_error(exc)
            else:
                log.warning("background read failed: %s", exc)
        elif on_done is not None:
            on_done(res)
