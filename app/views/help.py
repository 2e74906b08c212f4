"""The Help menu's pages: getting started (the expert's five steps), file formats, keyboard
shortcuts, About (versions of the app, reader, encoder, torch, Qt) and the log folder."""
from __future__ import annotations

import html
import platform
from importlib import metadata

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from app.notifier import log_dir
from app.views.evaluation import FORMATS_HELP
from engine.store import MAX_TEXT_CHARS

GETTING_STARTED = (
    "<h3>Getting started</h3><ol>"
    "<li><b>Import</b> your documents or fact tables: <i>File → Import into pack…</i> (JSONL, CSV, .txt, .md), "
    "or drag files or a whole folder onto the window (onto a pack in the Workspace list to import into that "
    "pack; a dropped <code>.plugmem</code> file is opened). "
    "A pack is built in the background; the Jobs panel shows its progress.</li>"
    "<li><b>Check and fix</b> the entries in the <i>Memory</i> tab: search, edit in the Entry panel, disable "
    "or delete; <i>Edit → Undo</i> undoes any change, and each entry's history says who changed what.</li>"
    "<li><b>Plug</b> the packs the model should read: tick them in the Workspace panel.</li>"
    "<li><b>Ask</b> in <i>Ask and explain</i>: the answer with and without the memory, and the entries behind "
    "it. Fix a wrong entry, press <i>Ask again</i>.</li>"
    "<li><b>Measure</b> in <i>Evaluation</i>: <i>Make probes from a pack…</i> turns your entries into questions; "
    "run them to see how often the model is right with the memory and without it.</li></ol>")
IMPORT_FORMATS = ((
    "<b>Import</b>: JSONL (one object a line: <code>text</code>, optional <code>title</code>, <code>source</code>, "
    "<code>tags</code>); CSV with a <code>text</code> column; .txt and .md files or folders, split into passages at "
    "blank lines (Markdown headings become titles). An entry's text is at most {:,} characters. "
    "<b>Triples</b> (Entities tab): JSONL or CSV with <code>head</code>, <code>relation</code>, <code>tail</code>.")
    .format(MAX_TEXT_CHARS))


def shortcuts_html(actions) -> str:
    """A table of the window's actions that have a shortcut (menus say the rest)."""
    rows = []
    for a in actions:
        keys = ", ".join(k.toString() for k in a.shortcuts())
        if keys and a.text():
            rows.append(f"<tr><td><b>{html.escape(keys)}</b></td><td>{html.escape(a.text().replace('&', ''))}</td></tr>")
    extra = [("Ctrl+Z in a field", "undoes the typing; right after Save, the pack's last change")]
    rows += [f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in extra]
    return "<h3>Keyboard shortcuts</h3><table cellpadding='3'>" + "".join(rows) + "</table>"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def about_html(ctx) -> str:
    """Versions of the app and of what it runs on."""
    import PySide6
    from PySide6.QtCore import qVersion

    reader = ctx.model.description or "not loaded yet"
    enc = ctx.encoder.fingerprint.describe() if getattr(ctx, "encoder", None) is not None else "not loaded yet"
    rows = [("PlugMem Studio", _version("plugmem-studio")), ("Reader", reader), ("Key encoder", enc),
            ("torch", _version("torch")), ("transformers", _version("transformers")), ("faiss", _version("faiss-cpu")
             if _version("faiss-cpu") != "not installed" else _version("faiss-gpu")),
            ("Qt", f"{qVersion()} (PySide6 {PySide6.__version__})"), ("Python", platform.python_version()),
            ("Log folder", str(log_dir()))]
    return "<h3>About PlugMem Studio</h3><table cellpadding='3'>" + "".join(
        f"<tr><td><b>{k}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def log_folder_url() -> QUrl:
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return QUrl.fromLocalFile(str(folder))


def open_log_folder() -> bool:
    return QDesktopServices.openUrl(log_folder_url())


class HelpPage(QDialog):
    """One help page (rich text), non-modal so it can stay open beside the window."""

    def __init__(self, title: str, body: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("HelpPage")
        self.setWindowTitle(title)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.text.setHtml(body)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text, 1)
        lay.addWidget(buttons)
        self.resize(640, 460)


def formats_html() -> str:
    return "<h3>File formats</h3><p>" + IMPORT_FORMATS + "</p><p>" + FORMATS_HELP + "</p>"
