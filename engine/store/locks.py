"""The lock that keeps a pack's temporary edits (an edit evaluation's) apart from everyone else's.

An edit evaluation applies edits to a pack, measures, then undoes them by popping the
undo stack. Any change that lands in between (a user's ``plugmem edit`` from a shell,
another app instance, a second evaluation) would be popped instead and lost. So the
evaluation holds this lock for its whole run, and :meth:`engine.store.pack.Pack` refuses
a change while ANOTHER PROCESS holds it (:func:`refuse_if_held_elsewhere`).

Within one process the holder may make its edits from any thread (the app evaluates on
its model thread while the pack's writer thread applies the edits; its own editors wait
because the app marks the pack busy), so this process's holds are remembered here.

The lock is a 0-byte file beside the pack (``<pack>.evaluating.lock``) locked with
``flock`` / ``LockFileEx`` (``filelock``): a holder that dies releases it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from engine.store.errors import PackError

SUFFIX = ".evaluating.lock"

_held: dict[str, int] = {}  # lock path -> how many holds this process has on it
_held_guard = threading.Lock()


class PackBusyError(PackError):
    """Another process is running an edit evaluation on this pack: a change now would be
    undone with the evaluation's own temporary edits."""


def lock_path(pack_path: str | Path) -> Path:
    path = Path(os.path.abspath(pack_path))
    return path.with_name(path.name + SUFFIX)


def evaluation_lock(pack_path: str | Path) -> FileLock:
    """The pack's lock object (one per path in this process; re-entrant within one thread)."""
    return FileLock(str(lock_path(pack_path)), is_singleton=True)


@contextmanager
def holding(pack_path: str | Path, busy_message: str) -> Iterator[None]:
    """Hold the pack's lock for the block, or raise :class:`PackBusyError` (``busy_message``)
    at once when another holder has it. This process's changes to the pack stay allowed
    from any thread while it is held."""
    lock = evaluation_lock(pack_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PackBusyError(busy_message) from None
    key = lock.lock_file
    with _held_guard:
        _held[key] = _held.get(key, 0) + 1
    try:
        yield
    finally:
        with _held_guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        lock.release()


def refuse_if_held_elsewhere(pack_path: str | Path) -> None:
    """Raise :class:`PackBusyError` when another process holds the pack's lock.

    Costs one ``stat`` when no evaluation ever ran on the pack (no lock file), otherwise a
    non-blocking lock attempt (released at once: an evaluation spends seconds answering its
    "before" probes before its first edit, so a change that passed this check is committed
    long before, and sits below the evaluation's edits on the undo stack).
    """
    path = lock_path(pack_path)
    with _held_guard:
        if str(path) in _held:
            return
    if not path.exists():
        return
    probe = FileLock(str(path), thread_local=False)  # a separate handle: this process holds nothing
    try:
        probe.acquire(timeout=0)
    except Timeout:
        raise PackBusyError(
            f"{Path(pack_path).name}: an edit evaluation is running on this pack in another program; "
            "it undoes its temporary edits when it ends, and would undo this change with them. "
            "Make the change after it ends."
        ) from None
    probe.release()
