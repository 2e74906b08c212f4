"""Entry editor: title, text, tags, status with inline validation; history and revert.

Saving sends one edit through the pack's writer; reverting to a version is an edit
back to that version's field values (so it is itself undoable and shows in history).
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
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
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.views.text_diff import diff_html
from engine.store import MAX_TEXT_CHARS, ValidationError, validate_fields
from engine.store.pack import FIELDS
from engine.store.wording import describe_history

log = logging.getLogger(__name__)

# Edit → Undo / Redo use these same keys; the editor's fields hand them on (see PackUndoKeys)
UNDO_KEYS = (QKeySequence("Ctrl+Z"),)
REDO_KEYS = (QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y"))
LABELS = {"title": "Title", "text": "Text", "tags": "Tags", "source": "Source", "status": "Status"}


def field_problems(text: str, title: str = "", tags: list[str] | None = None) -> dict[str, str]:
    """What blocks saving, by field, in the engine's own words (its limits, its checks):
    each field is checked alone so that every faulty field is named at once."""
    problems = {}
    for fields, require_text in (({"text": text}, True), ({"title": title}, False), ({"tags": tags or []}, False)):
        try:
            validate_fields(fields, require_text=require_text)
        except ValidationError as exc:
            field = exc.field or next(iter(fields))
            problems[field] = _name_field(field, str(exc))
    return problems


def _name_field(field: str, message: str) -> str:
    """"'title' has 301 characters…" → "Title has 301 characters…"; otherwise "Tags: …"."""
    # a quoted 65-character tag is one unbreakable word: it would widen the dock past the screen
    message = _LONG_WORD.sub(lambda m: m.group(0)[:MAX_SHOWN_WORD] + "…", message)
    quoted = f"'{field}'"
    if message.startswith(quoted):
        return LABELS.get(field, field) + message[len(quoted):] + "."
    return f"{LABELS.get(field, field)}: {message}."


MAX_SHOWN_WORD = 30
_LONG_WORD = re.compile(r"[^\s']{%d,}" % (MAX_SHOWN_WORD + 2))


def parse_tags(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def describe_record(r: Any) -> str:
    """One line saying what a history record changed (the CLI's words, with typographic quotes)."""
    return describe_history(r, arrow="→", quote=lambda t: f"“{t}”", width=30)


def when_text(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


class PackUndoKeys(QObject):
    """Undo/redo keys in an editor field: the field's own undo while it has something to
    undo (typing not yet saved), else Edit → Undo on the pack — e.g. right after Save,
    which refills the field and so empties its own undo."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() != QEvent.Type.ShortcutOverride:
            return False
        keys = QKeySequence(event.keyCombination())
        if keys in UNDO_KEYS:
            own = obj.isUndoAvailable() if isinstance(obj, QLineEdit) else obj.document().isUndoAvailable()
        elif keys in REDO_KEYS:
            own = obj.isRedoAvailable() if isinstance(obj, QLineEdit) else obj.document().isRedoAvailable()
        else:
            return False
        if own:
            return False
        event.ignore()  # not claimed by the field: the window's shortcut (the pack's history) fires
        return True


class RevertPreview(QDialog):
    """What reverting to a version would change, field by field (current → that version)."""

    def __init__(self, entry: Any, record: Any, fields: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RevertPreview")
        self.setWindowTitle(f"Revert entry {entry.id}?")
        who = getattr(record, "author", None) or "someone unnamed"
        intro = QLabel(f"Entry {entry.id} goes back to its values after “{getattr(record, 'op', '')}” of "
                       f"{when_text(getattr(record, 'time', None))} by {who}. Struck-through words go, "
                       "underlined words come back. The revert is one change: Undo takes it back.")
        intro.setWordWrap(True)
        heading = QLabel(f"Revert entry {entry.id} to this version?")  # the title bar may not show
        heading.setObjectName("EditorHeader")
        self.diff = QTextBrowser()
        self.diff.setObjectName("RevertDiff")
        parts = []
        for f in FIELDS:
            if f not in fields:
                continue
            cur, old = getattr(entry, f), fields[f]
            if f == "tags":
                cur, old = ", ".join(cur or []) or "—", ", ".join(old or []) or "—"
            parts.append(f"<p><b>{LABELS[f]}</b><br>{diff_html(str(cur or ''), str(old or ''))}</p>")
        self.diff.setHtml("".join(parts))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.revert_btn = buttons.addButton("Revert", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(heading)
        lay.addWidget(intro)
        lay.addWidget(self.diff, 1)
        lay.addWidget(buttons)
        self.resize(540, 260)


class EntryEditor(QWidget):
    saved = Signal(object)  # the Change of the save
    write_patch_requested = Signal(str, int)  # pack path, entry id: "Write this fact into the weights…"

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EntryEditor")
        self.ctx = ctx
        self.path: str | None = None
        self.entry = None  # the Entry shown (None: new entry or nothing)
        self.mode = "none"  # "none" | "edit" | "new" | "multi"
        self._loading = False
        self._history: list[Any] = []
        self.preview: RevertPreview | None = None  # the open revert preview, if any

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
        self.patch_btn = QPushButton("Write this fact into the weights…")
        self.patch_btn.setObjectName("WritePatchButton")
        self.patch_btn.setToolTip("Fine-tune the reader so that it gives this entry's fact without the pack "
                                  "(a weight patch, which can be taken off again)")
        self.patch_btn.clicked.connect(lambda: self.entry is not None and self.path and self.write_patch_requested.emit(
            self.path, int(self.entry.id)))

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
        patch_row = QHBoxLayout()
        patch_row.addWidget(self.patch_btn)
        patch_row.addStretch(1)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.header)
        tl.addLayout(form, 1)
        tl.addWidget(self.validation)
        tl.addLayout(buttons)
        tl.addLayout(patch_row)

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

        self._undo_keys = PackUndoKeys(self)
        for w in (self.title, self.text, self.tags):
            w.installEventFilter(self._undo_keys)
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
        self.patch_btn.setEnabled(on and self.mode == "edit")
        self._update_buttons()

    def _load_history(self) -> None:
        reader = self.ctx.reader(self.path)
        try:
            recs = list(reader.history(entry_id=self.entry.id, limit=200)) if reader and self.entry else []
        except Exception as exc:
            log.warning("history of %s: %s", self.entry.id if self.entry else None, exc)
            recs = []
        recs.sort(key=lambda r: getattr(r, "change_id", 0), reverse=True)
        # the version the user chose stays chosen when the history refills (after a revert, say)
        chosen = self._selected_record()
        keep = (chosen.entry_id, chosen.id) if chosen is not None else None
        self._history = recs
        self.history.setRowCount(len(recs))
        for row, r in enumerate(recs):
            when = time.strftime("%m-%d %H:%M:%S", time.localtime(getattr(r, "time", 0) or 0))
            for col, val in enumerate((when, getattr(r, "author", None) or "—", describe_record(r))):
                item = QTableWidgetItem(val)
                item.setToolTip(val)
                self.history.setItem(row, col, item)
            if keep == (r.entry_id, r.id):
                self.history.selectRow(row)
        self._update_buttons()

    def _selected_record(self) -> Any | None:
        rows = {i.row() for i in self.history.selectedIndexes()}
        return self._history[min(rows)] if rows and min(rows) < len(self._history) else None

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
        return list(self.field_problems().values())

    def field_problems(self) -> dict[str, str]:
        v = self.values()
        return field_problems(v["text"], v["title"], v["tags"])

    def _edited(self, *_: object) -> None:
        if not self._loading:
            self._validate()

    def _validate(self) -> None:
        n = len(self.text.toPlainText())
        self.char_count.setText(f"{n:,} / {MAX_TEXT_CHARS:,} characters")
        _set_flag(self.char_count, "over", n > MAX_TEXT_CHARS)
        # an untouched entry is not blamed; a typed one is checked at every key press
        probs = self.field_problems() if self.mode in ("edit", "new") and self.is_dirty() else {}
        for field, widget in (("title", self.title), ("text", self.text), ("tags", self.tags)):
            _set_flag(widget, "invalid", field in probs)
        self.validation.setText("\n".join(probs.values()))
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
        """Preview what reverting to the selected version changes; revert when the user agrees."""
        record = self._selected_record()
        if record is None or self.entry is None:
            return
        fields = self._revert_fields(record)
        if not fields:
            self.ctx.notifier.info(f"Entry {self.entry.id} already has the values of that version.")
            return
        if self.preview is not None:
            self.preview.close()
        self.preview = RevertPreview(self.entry, record, fields, self)
        self.preview.accepted.connect(lambda: self.revert_to(record))
        self.preview.finished.connect(self._preview_closed)
        self.preview.open()  # window-modal, without a nested event loop

    def _preview_closed(self) -> None:
        if self.preview is not None:
            self.preview.deleteLater()
            self.preview = None

    def _revert_fields(self, record: Any) -> dict[str, Any]:
        after = getattr(record, "after", None) or {}
        fields = {f: after[f] for f in FIELDS if f in after and getattr(self.entry, f) != after[f]}
        if fields.get("status") == "deleted":
            fields.pop("status")
        return fields

    def revert_to(self, record: Any) -> None:
        """Edit the entry back to the values it had right after ``record``'s change."""
        if self.entry is None or not self.path:
            return
        fields = self._revert_fields(record)
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


def _set_flag(widget: QWidget, name: str, on: bool) -> None:
    """Set a boolean property the style sheet reads, and re-apply the style."""
    if widget.property(name) != on:
        widget.setProperty(name, on)
        widget.style().unpolish(widget)
        widget.style().polish(widget)


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
