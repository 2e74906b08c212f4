"""Fusion style + the system palette + a small QSS (resources/styles/app.qss) + the app icon."""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

log = logging.getLogger(__name__)


def resource(*parts: str) -> Path:
    from engine.resources import resources_dir

    return resources_dir().joinpath(*parts)


def app_icon() -> QIcon:
    p = resource("icons", "plugmem-studio.svg")
    return QIcon(str(p)) if p.exists() else QIcon()


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    qss = resource("styles", "app.qss")
    try:
        app.setStyleSheet(qss.read_text(encoding="utf-8"))
    except OSError as exc:
        log.warning("style sheet not loaded (%s); using plain Fusion", exc)
    app.setWindowIcon(app_icon())
