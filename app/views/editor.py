"""Entry editor: title, text, tags, status with inline validation; history and revert.

Saving sends one edit through the pack's writer; reverting to a version is an edit
back to that version's field values (so it is itself undoable and shows in history).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext

log = logging.getLogger(__name__)

MAX_TEXT = 4000
FIELDS = ("title", "text", "source", "tags", "status")


def validate(text: str, title: str = "") -> list[str]:
    """Messages that block saving (empty, too long); [] when the entry can be saved."""
    problems = []
    if not text.strip():
        problems.append("The text is empty: an entry needs a fact or a short passage.")
    elif len(text) > MAX_TEXT:
        problems.append(f"The text is {len(text):,} characters; the limit is {MAX_TEXT:,}. Split it into several entries.")
    if len(title) > 300:
        problems.append(f"The title is {len(title):,} characters; keep it under 300.")
    return problems


def parse_tags(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def describe_record(r: Any) -> str:
    """One line saying what a history record changed."""
    before, after = getattr(r, "before", None) or {}, getattr(r, "after", None) or {}
    op = getattr(r, "op", "")
    if not before and after:
        return f"{op}: “{str(after.get('text', ''))[:60]}”"
    parts = []
    for f in FIELDS:
        if f in after and before.get(f) != after.get(f):
            if f == "text":
                parts.append(f"text “{str(before.get(f, ''))[:30]}” → “{str(after[f])[:30]}”")
            elif f == "tags":
                parts.append(f"tags {', '.join(before.get(f) or []) or '—'} → {', '.join(after[f] or []) or '—'}")
            else:
                parts.append(f"{f} {before.get(f, '')!s} → {after[f]!s}")
    return f"{op}: " + "; ".join(parts) if parts else op


class EntryEditor(QWidget):
    saved = Signal(object)  # the Change of the save

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EntryEditor")
        self.ctx = ctx
        self.path: str | None = None
        self.entry = None  # the Entry shown (None: new entry or nothing)
        self.mode = "none"  # "none" | "edit" | "new" | "multi"
        self._loading = False
        self._history: list[Any] = []

        self.header = QLabel("Select an entry to edit it.")
        self.header.setObjectName("EditorHeader")
        self.header.setWordWrap(True)
        self.title = QLineEdit()
        self.text = QPlainTextEdit()
        self.text.setTabChangesFocus(True)
        self.tags = QLineEdit(placeholderText="comma, separated, tags")
        self.status = QComboBox()
        self.status.addItems(["active", "disabled"])
        self.source = QLabel()
        self.source.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.source.setWordWrap(True)
        self.validation = QLabel()
        self.validation.setObjectName("ValidationMessage")
        self.validation.setWordWrap(True)
        self.char_count = QLabel()
        self.char_count.setObjectName("CharCount")
        self.save_btn = QPushButton("Save")
        self.save_btn.setDefault(True)
        self.discard_btn = QPushButton("Discard changes")
        self.delete_btn = QPushButton("Delete")

        form = QFormLayout()
        form.addRow("Title", self.title)
        form.addRow("Text", self.text)
        form.addRow("", self.char_count)
        form.addRow("Tags", self.tags)
        form.addRow("Status", self.status)
        form.addRow("Source", self.source)
        buttons = QHBoxLayout()
        buttons.addWidget(self.delete_btn)
        buttons.addStretch(1)
        buttons.addWidget(self.discard_btn)
        buttons.addWidget(self.save_btn)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.header)
        tl.addLayout(form, 1)
        tl.addWidget(self.validation)
        tl.addLayout(buttons)

        self.history = QTableWidget(0, 3)
        self.history.setObjectName("HistoryTable")
        self.history.setHorizontalHeaderLabels(["when", "who", "what"])
        self.history.verticalHeader().setVisible(False)
        self.history.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.history.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.history.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.history.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.history.setColumnWidth(0, 105)
        self.history.setColumnWidth(1, 70)
        self.revert_btn = QPushButton("Revert to this version")
        self.revert_btn.setToolTip("Edit the entry back to the field values it had after the selected change")
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(QLabel("History"))
        bl.addWidget(self.history, 1)
        bl.addWidget(self.revert_btn, 0, Qt.AlignmentFlag.AlignRight)

        split = QSplitter(Qt.Orientation.Vertical)
        split.setObjectName("EditorSplitter")
        split.addWidget(top)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split)

        for w in (self.title, self.tags):
            w.textChanged.connect(self._edited)
        self.text.textChanged.connect(self._edited)
        self.status.currentIndexChanged.connect(self._edited)
        self.save_btn.clicked.connect(self.save)
        self.discard_btn.clicked.connect(self.reload)
        self.delete_btn.clicked.connect(self.delete)
        self.revert_btn.clicked.connect(self.revert_selected)
        self.history.itemSelectionChanged.connect(self._update_buttons)
        ctx.hub.changed.connect(self._on_change)
        ctx.busy_changed.connect(lambda path, busy: self._update_buttons())
        ctx.current_changed.connect(lambda p: self.show_nothing())
        self.show_nothing()

    # ------------------------------------------------------------------ showing
    def show_nothing(self, message: str = "Select an entry to edit it, or press New to add one.") -> None:
        self.mode = "none"
        self.entry = None
        self._fill(None)
        self.header.setText(message)
        self._set_enabled(False)

    def show_ids(self, path: str | None, ids: list[int]) -> None:
        """Show the selection of the browser: one entry is edited, several are summarised."""
        if self.is_dirty() and self.entry is not None and ids == [self.entry.id]:
            return
        self.path = path
        if len(ids) == 1:
            self.show_entry(path, ids[0])
        elif len(ids) > 1:
            self.show_nothing(f"{len(ids):,} entries selected. Disable, enable or delete them together from "
                              "the browser's “Selected” menu (one undo step).")
            self.mode = "multi"
        else:
            self.show_nothing()

    def show_entry(self, path: str | None, entry_id: int) -> None:
        self.path = path
        reader = self.ctx.reader(path)
        entries = reader.get_many([entry_id]) if reader is not None else []
        if not entries:
            self.show_nothing(f"Entry {entry_id} no longer exists.")
            return
        self.mode = "edit"
        self.entry = entries[0]
        self._fill(self.entry)
        self._set_enabled(True)
        self._load_history()

    def new_entry(self, path: str | None) -> None:
        self.path = path
        if not path:
            self.ctx.notifier.error("Adding an entry", "no pack is open; attach or create one first")
            return
        self.mode = "new"
        self.entry = None
        self._fill(None)
        self.header.setText(f"New entry in {Path(path).stem}")
        self._set_enabled(True)
        self.delete_btn.setEnabled(False)
        self.history.setRowCount(0)
        self.revert_btn.setEnabled(False)
        self.text.setFocus()
        self._edited()

    def reload(self) -> None:
        if self.mode == "edit" and self.entry is not None:
            self.show_entry(self.path, self.entry.id)
        elif self.mode == "new":
            self.new_entry(self.path)

    def _fill(self, e) -> None:
        self._loading = True
        self.title.setText(e.title if e else "")
        self.text.setPlainText(e.text if e else "")
        self.tags.setText(", ".join(e.tags) if e else "")
        self.status.setCurrentText(e.status if e and e.status in ("active", "disabled") else "active")
        self.source.setText(e.source if e and e.source else ("(typed in PlugMem Studio)" if self.mode == "new" else ""))
        if e is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated)) if e.updated else "?"
            self.header.setText(f"Entry {e.id} · version {e.version} · updated {when}")
        if e is None:
            self.history.setRowCount(0)
            self._history = []
        self._loading = False
        self._validate()

    def _set_enabled(self, on: bool) -> None:
        for w in (self.title, self.text, self.tags, self.status, self.delete_btn, self.history):
            w.setEnabled(on)
        self._update_buttons()

    def _load_history(self) -> None:
        reader = self.ctx.reader(self.path)
        try:
            recs = list(reader.history(entry_id=self.entry.id, limit=200)) if reader and self.entry else []
        except Exception as exc:
            log.warning("history of %s: %s", self.entry.id if self.entry else None, exc)
            recs = []
        recs.sort(key=lambda r: getattr(r, "change_id", 0), reverse=True)
        self._history = recs
        self.history.setRowCount(len(recs))
        for row, r in enumerate(recs):
            when = time.strftime("%m-%d %H:%M:%S", time.localtime(getattr(r, "time", 0) or 0))
            for col, val in enumerate((when, getattr(r, "author", None) or "—", describe_record(r))):
                item = QTableWidgetItem(val)
                item.setToolTip(val)
                self.history.setItem(row, col, item)
        self._update_buttons()

    # ------------------------------------------------------------------ editing
    def values(self) -> dict[str, Any]:
        return {
            "title": self.title.text().strip(),
            "text": self.text.toPlainText(),
            "tags": parse_tags(self.tags.text()),
            "status": self.status.currentText(),
        }

    def changed_fields(self) -> dict[str, Any]:
        v = self.values()
        if self.entry is None:
            return v
        return {k: val for k, val in v.items() if getattr(self.entry, k) != val}

    def is_dirty(self) -> bool:
        if self.mode == "new":
            return bool(self.text.toPlainText().strip() or self.title.text().strip())
        return self.mode == "edit" and bool(self.changed_fields())

    def problems(self) -> list[str]:
        v = self.values()
        return validate(v["text"], v["title"])

    def _edited(self, *_: object) -> None:
        if not self._loading:
            self._validate()

    def _validate(self) -> None:
        n = len(self.text.toPlainText())
        self.char_count.setText(f"{n:,} / {MAX_TEXT:,} characters")
        self.char_count.setProperty("over", n > MAX_TEXT)
        self.char_count.style().unpolish(self.char_count)
        self.char_count.style().polish(self.char_count)
        probs = self.problems() if self.mode in ("edit", "new") and (self.is_dirty() or self.mode == "new") else []
        if self.mode == "new" and not self.is_dirty():
            probs = []
        self.validation.setText("\n".join(probs))
        self.validation.setVisible(bool(probs))
        self._update_buttons()

    def _update_buttons(self) -> None:
        editable = self.mode in ("edit", "new") and not (self.path and self.ctx.is_busy(self.path))
        dirty = self.is_dirty()
        self.save_btn.setEnabled(editable and dirty and not self.problems())
        self.discard_btn.setEnabled(editable and dirty)
        self.revert_btn.setEnabled(self.mode == "edit" and bool(self.history.selectedItems()))

    def save(self) -> bool:
        """Validate and send the edit (or the new entry) to the writer. False when blocked."""
        probs = self.problems()
        if probs:
            self.validation.setText("\n".join(probs))
            self.validation.setVisible(True)
            return False
        if not self.path:
            return False
        author = self.ctx.author
        writer = self.ctx.writer(self.path)
        if self.mode == "new":
            v = self.values()

            def added(change):
                self.saved.emit(change)
                if change is not None and change.ids:
                    self.show_entry(self.path, int(change.ids[0]))

            writer.submit(lambda m: m.add(v["text"], title=v["title"], source="", tags=v["tags"], author=author)
                          if v["status"] == "active" else _add_disabled(m, v, author), added, what="Adding an entry to")
            return True
        fields = self.changed_fields()
        if not fields or self.entry is None:
            return False
        eid = self.entry.id
        writer.submit(lambda m: m.edit(eid, author=author, **fields), self._after_save, what=f"Saving entry {eid} of")
        return True

    def _after_save(self, change) -> None:
        self.saved.emit(change)
        if self.entry is not None:
            self.show_entry(self.path, self.entry.id)

    def delete(self) -> None:
        if self.mode != "edit" or self.entry is None or not self.path:
            return
        eid, author = self.entry.id, self.ctx.author
        self.ctx.writer(self.path).submit(lambda m: m.delete([eid], author=author), what=f"Deleting entry {eid} of")

    def revert_selected(self) -> None:
        rows = {i.row() for i in self.history.selectedIndexes()}
        if rows:
            self.revert_to(self._history[min(rows)])

    def revert_to(self, record: Any) -> None:
        """Edit the entry back to the values it had right after ``record``'s change."""
        if self.entry is None or not self.path:
            return
        after = getattr(record, "after", None) or {}
        fields = {f: after[f] for f in FIELDS if f in after and getattr(self.entry, f) != after[f]}
        if fields.get("status") == "deleted":
            fields.pop("status")
        if not fields:
            self.ctx.notifier.info(f"Entry {self.entry.id} already has the values of that version.")
            return
        eid, author = self.entry.id, self.ctx.author
        self.ctx.writer(self.path).submit(lambda m: m.edit(eid, author=author, **fields), self._after_save,
                                          what=f"Reverting entry {eid} of")

    # ------------------------------------------------------------------ outside changes
    def _on_change(self, path: str, change) -> None:
        if path != self.path or self.mode != "edit" or self.entry is None:
            return
        if self.entry.id in {int(i) for i in getattr(change, "ids", ())} and not self.is_dirty():
            self.show_entry(self.path, self.entry.id)


def _add_disabled(memory, v: dict, author: str):
    """A new entry saved as disabled: added then disabled would be two undo steps, so add
    it active and let the user disable it — except when the pack supports status on add."""
    try:
        return memory.add(v["text"], title=v["title"], source="", tags=v["tags"], status="disabled", author=author)
    except TypeError:
        return memory.add(v["text"], title=v["title"], source="", tags=v["tags"], author=author)


def main() -> int:
    from app.preview import run_panel

    def make(ctx):
        from PySide6.QtWidgets import QSplitter

        from app.views.browser import MemoryBrowser

        split = QSplitter()
        browser = MemoryBrowser(ctx)
        editor = EntryEditor(ctx)
        browser.selection_changed.connect(lambda ids: editor.show_ids(browser.path, ids))
        browser.new_requested.connect(lambda: editor.new_entry(browser.path))
        split.addWidget(browser)
        split.addWidget(editor)
        return split

    return run_panel(make, "Entry editor")


if __name__ == "__main__":
    raise SystemExit(main())
