"""One place where errors reach the user: a short message, never a traceback.

Errors the engine marks as the user's (bad input, a foreign pack, ...) are shown as
they are; anything else is a bug: the message says so and where the log file is, and
the traceback goes to the log file only.
"""
from __future__ import annotations

import logging
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger(__name__)


def log_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir("plugmem-studio", appauthor=False))


_LOG_FILE: Path | None = None


def setup_logging(level: int = logging.INFO) -> Path:
    """Send log records (with tracebacks) to ``<user_log_dir>/plugmem-studio.log``."""
    global _LOG_FILE
    if _LOG_FILE is not None:
        return _LOG_FILE
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _LOG_FILE = folder / "plugmem-studio.log"
    handler = RotatingFileHandler(_LOG_FILE, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))
    return _LOG_FILE


def is_user_error(exc: BaseException) -> bool:
    try:
        from engine.errors import user_errors

        kinds = user_errors()
    except Exception:  # pragma: no cover - engine incomplete
        kinds = ()
    from app.workspace import WorkspaceError

    return isinstance(exc, kinds + (WorkspaceError, FileNotFoundError, PermissionError, ValueError))


class Notifier(QObject):
    """Shows errors and notes. ``dialogs=False`` (tests) only emits ``message``."""

    message = Signal(str, str)  # level ("error" | "info"), text

    def __init__(self, parent_widget: QWidget | None = None, dialogs: bool = True) -> None:
        super().__init__()
        self.parent_widget = parent_widget
        self.dialogs = dialogs
        self.history: list[tuple[str, str]] = []

    def error(self, context: str, exc: BaseException | str) -> str:
        """Report a failure of ``context`` (e.g. "Saving entry 12"). Returns the shown text."""
        if isinstance(exc, BaseException):
            if is_user_error(exc):
                text = f"{context}: {_without_repeat(context, str(exc))}"
                log.warning("%s", text)
            else:
                where = f" Details are in {_LOG_FILE}." if _LOG_FILE else ""
                text = f"{context} failed unexpectedly ({type(exc).__name__}: {str(exc)[:200]}).{where}"
                log.error("%s\n%s", context, "".join(traceback.format_exception(exc)))
        else:
            text = f"{context}: {exc}"
            log.warning("%s", text)
        self.history.append(("error", text))
        self.message.emit("error", text)
        if self.dialogs:
            box = QMessageBox(QMessageBox.Icon.Warning, "PlugMem Studio", text, QMessageBox.StandardButton.Ok, self.parent_widget)
            box.setAttribute(_delete_on_close())
            box.open()  # window-modal, does not block the event loop
        return text

    def info(self, text: str) -> None:
        log.info("%s", text)
        self.history.append(("info", text))
        self.message.emit("info", text)


def _without_repeat(context: str, message: str) -> str:
    """``message`` without a leading "NAME: " that ``context`` already ends with: the engine
    names the pack for the command line ("geography.plugmem: an edit evaluation is
    running..."), and the app's context names it too ("Saving entry 2 of geography.plugmem")."""
    head, sep, rest = message.partition(": ")
    return rest if sep and head.strip() and rest and context.endswith(head) else message


def _delete_on_close():
    from PySide6.QtCore import Qt

    return Qt.WidgetAttribute.WA_DeleteOnClose
