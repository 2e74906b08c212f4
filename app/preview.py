"""Run one panel alone on the demo workspace (``python -m app.views.browser`` and friends)."""
from __future__ import annotations

import sys
from typing import Callable

from PySide6.QtWidgets import QApplication, QWidget


def run_panel(factory: Callable[..., QWidget], title: str, argv: list[str] | None = None) -> int:
    from app.context import AppContext, default_workspace_folder
    from app.notifier import Notifier, setup_logging
    from app.theme import apply_theme
    from app.workspace import Workspace

    setup_logging()
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    apply_theme(app)
    folder = default_workspace_folder()
    ws = Workspace.load(folder)
    ctx = AppContext(ws, Notifier())
    widget = factory(ctx)
    ctx.notifier.parent_widget = widget
    widget.setWindowTitle(f"{title} — PlugMem Studio")
    widget.resize(1100, 700)
    widget.show()
    ctx.load_encoder()
    if not ws.packs:
        ctx.build_demo()
    elif ws.current:
        ctx.current_changed.emit(ws.current)
    try:
        return app.exec()
    finally:
        ctx.close()
