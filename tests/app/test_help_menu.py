"""The Help menu (issue 23): getting started, file formats, shortcuts, About with the
versions the app runs on, and the log folder."""
from __future__ import annotations

from importlib import metadata

from PySide6.QtCore import qVersion

from .conftest import open_window


def test_help_menu_pages(qtbot, make_ctx, small_pack):
    from app.notifier import log_dir
    from app.views.help import log_folder_url

    path = str(small_pack.resolve())
    ctx = make_ctx([path])
    win = open_window(qtbot, ctx, path)
    try:
        menu = next(a.menu() for a in win.menuBar().actions() if a.text() == "&Help")
        names = [a.text() for a in menu.actions() if a.text()]
        assert names == ["Getting started", "File formats", "Keyboard shortcuts", "Open the log folder",
                         "About PlugMem Studio"]
        act = {a.text(): a for a in menu.actions()}
        act["Getting started"].trigger()
        text = win.help_page.text.toPlainText()
        assert win.help_page.isVisible() and "Import" in text and "Make probes from a pack" in text
        assert "drag files or a whole folder onto the window" in text  # what test_drops does
        act["File formats"].trigger()
        text = win.help_page.text.toPlainText()
        assert "old_text" in text and "paraphrases" in text and "4,000 characters" in text
        act["Keyboard shortcuts"].trigger()
        text = win.help_page.text.toPlainText()
        assert "Ctrl+Z" in text and "Ctrl+Shift+Z" in text and "Save entry" in text
        act["About PlugMem Studio"].trigger()
        text = win.help_page.text.toPlainText()
        assert metadata.version("torch") in text and qVersion() in text and str(log_dir()) in text
        assert "Key encoder" in text and "Reader" in text
        assert log_folder_url().toLocalFile() == str(log_dir()) and log_dir().is_dir()
    finally:
        win.close()
