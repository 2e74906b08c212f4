"""Guard against a reference-counting bug of PySide6 6.12.0 on Python 3.11.

With that binding, every call of a Qt method that returns nothing (``widget.update()``,
``scrollbar.setValue()``...) or an empty QVariant (``combo.currentData()``) hands back
``None`` without taking a reference to it, so ``None``'s reference count falls by one
per call. After a few thousand such calls it reaches zero and the interpreter aborts
with "Fatal Python error: none_dealloc" — seconds of scrolling, or at exit. PySide6
6.11.3 does not have the bug, and from Python 3.12 on ``None``, ``True`` and ``False``
are immortal, so it is harmless there.

:func:`install` measures whether the running binding leaks and, only then, gives the
three singletons a reference count so large that no session can exhaust it — what
Python 3.12 does for every interpreter. They are static objects that are never freed,
so this costs nothing and changes nothing else. The real fix is a PySide6 without the
bug (``pyside6-essentials != 6.12.0``).
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_BOOST = 1 << 40  # ~10^12 calls: more than any session makes
PROBE_CALLS = 64
_installed: bool | None = None


def leaks_none() -> bool:
    """Whether Qt's void methods drop a reference to None in this process."""
    from PySide6.QtCore import QObject

    obj = QObject()
    before = sys.getrefcount(None)
    for _ in range(PROBE_CALLS):
        obj.setObjectName("probe")
    return sys.getrefcount(None) - before <= -PROBE_CALLS // 2


def install() -> bool:
    """Apply the guard when the binding leaks (once). True when it was needed."""
    global _installed
    if _installed is not None:
        return _installed
    _installed = False
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    try:
        leaking = leaks_none()
    except Exception as exc:  # pragma: no cover - no Qt binding at all
        log.debug("refcount probe skipped: %s", exc)
        return False
    if leaking:
        for obj in (None, True, False):
            ref = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field of every object
            ref.value += _BOOST
        import PySide6

        log.warning("PySide6 %s loses references to None (a known binding bug); guarded. "
                    "Install pyside6-essentials 6.11.3 or a fixed release.", PySide6.__version__)
        _installed = True
    return _installed
