"""The change hub: every committed mutation is broadcast once, views decide whether to refresh."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal


class ChangeHub(QObject):
    """``changed(pack_path, change)``: ``change`` is the engine's ``Change`` record."""

    changed = Signal(str, object)
    # A pack's writer opened or closed, or its file was replaced by a job: reload all views.
    reloaded = Signal(str)
