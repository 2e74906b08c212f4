"""Make probes from a pack's own entries (engine.evaluate.cloze), review and edit them,
save them beside the pack (``NAME.probes.jsonl``) and run them at once."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext

log = logging.getLogger(__name__)

COLUMNS = ("prompt", "answer", "paraphrases", "subject", "relation")  # editable; the entry id is kept per row
SEP = " | "  # between paraphrases in their cell
MAX_REVIEWED = 10_000
HOW = {"triple": "cut at a triple's object", "sentence": "cut in the sentence"}


class ProbeMaker(QDialog):
    """Emits ``saved(path, run)`` once the probes are written; ``run``: the user asked to run them."""

    saved = Signal(str, bool)

    def __init__(self, ctx: AppContext, pack: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ProbeMaker")
        self.setWindowTitle("Make probes from a pack")
        self.ctx = ctx
        self.made: list[dict[str, Any]] = []
        heading = QLabel("Probes made from the pack's own entries")
        heading.setObjectName("EditorHeader")
        intro = QLabel("Each probe is an entry with its object cut off: the reader should continue the prompt "
                       "with the answer. The object is a triple's tail where the pack has triples, else the words "
                       "after the sentence's last linking word; a paraphrase is added where the prompt names the "
                       "relation. Check them, correct a cell by double-clicking it (paraphrases are separated by "
                       "“|”), then save (beside the pack) and run.")
        intro.setWordWrap(True)
        self.pack = QComboBox()
        for p in ctx.workspace.paths():
            self.pack.addItem(Path(p).stem, p)
        if pack and self.pack.findData(pack) < 0:
            self.pack.addItem(Path(pack).stem, pack)
        if pack:
            self.pack.setCurrentIndex(self.pack.findData(pack))
        self.sample = QSpinBox()
        # a table of a million editable rows is no review: more than this, `plugmem probes make`
        self.sample.setRange(1, MAX_REVIEWED)
        self.sample.setValue(100)
        self.sample.setSuffix(" probes")
        self.sample.setToolTip(f"How many entries to probe, chosen at random (the same ones each time); at most "
                               f"{MAX_REVIEWED:,} here, any number with `plugmem probes make`")
        self.make_btn = QPushButton("Make")
        row = QHBoxLayout()
        row.addWidget(QLabel("Pack"))
        row.addWidget(self.pack, 1)
        row.addWidget(QLabel("Sample"))
        row.addWidget(self.sample)
        row.addWidget(self.make_btn)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("ProbeTable")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        hh = self.table.horizontalHeader()
        # the prompt and its paraphrases share the room left by the short columns (with the
        # paraphrases sized to contents the prompt, what is reviewed, was cut to "Hydrogen was …")
        for c in range(len(COLUMNS)):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.Stretch if COLUMNS[c] in ("prompt", "paraphrases")
                                    else QHeaderView.ResizeMode.ResizeToContents)
        self.note = QLabel()
        self.note.setObjectName("EvalStatus")
        self.note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.save_btn = buttons.addButton("Save", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_btn = buttons.addButton("Save and run", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_btn.setDefault(True)
        for b in (self.save_btn, self.run_btn):
            b.setEnabled(False)
        buttons.rejected.connect(self.reject)
        self.save_btn.clicked.connect(lambda: self.save(run=False))
        self.run_btn.clicked.connect(lambda: self.save(run=True))
        self.make_btn.clicked.connect(self.make)
        lay = QVBoxLayout(self)
        lay.addWidget(heading)
        lay.addWidget(intro)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.note)
        lay.addWidget(buttons)
        self.resize(760, 480)

    def current_pack(self) -> str | None:
        return self.pack.currentData()

    def make(self) -> None:
        """Make the probes on the read thread; they fill the table when they come."""
        from engine.evaluate.cloze import make_probes

        path = self.current_pack()
        if not path:
            self.note.setText("No pack: attach or create one first.")
            return
        n = self.sample.value()
        self.make_btn.setEnabled(False)
        self.note.setText(f"Making probes from {Path(path).stem}…")
        self.ctx.reads.submit(path, lambda pack: [p.to_dict() for p in make_probes(pack, sample=n)],
                              self._made, on_error=self._failed)

    def done(self, result: int) -> None:  # noqa: N802 - Qt API
        self._closed = True  # probes still being made are dropped when they come
        super().done(result)

    def _failed(self, exc: BaseException) -> None:
        if getattr(self, "_closed", False):
            return
        self.make_btn.setEnabled(True)
        self.note.setText(f"No probes: {exc}")

    def _made(self, probes: list[dict[str, Any]]) -> None:
        if getattr(self, "_closed", False):
            return
        self.make_btn.setEnabled(True)
        self.made = probes
        self.table.setRowCount(len(probes))
        for r, p in enumerate(probes):
            for c, key in enumerate(COLUMNS):
                value = SEP.join(p.get(key) or []) if key == "paraphrases" else str(p.get(key) or "")
                item = QTableWidgetItem(value)
                item.setToolTip(f"entry {p.get('entry_id')}, {HOW.get(p.get('split_by'), '')}")
                self.table.setItem(r, c, item)
        by_triple = sum(p.get("split_by") == "triple" for p in probes)
        self.note.setText(f"{len(probes):,} probes: {by_triple:,} cut at a triple's object, "
                          f"{len(probes) - by_triple:,} in the sentence. Empty a prompt to leave that probe out."
                          if probes else "No entry could be cut into a probe (too short?).")
        for b in (self.save_btn, self.run_btn):
            b.setEnabled(bool(probes))

    def probes(self) -> list[dict[str, Any]]:
        """The probes as the table now has them (edited; rows with an empty prompt or answer left out)."""
        out = []
        for r, p in enumerate(self.made):
            cells = {key: (self.table.item(r, c).text().strip() if self.table.item(r, c) else "")
                     for c, key in enumerate(COLUMNS)}
            cells["paraphrases"] = [q.strip() for q in cells["paraphrases"].split("|") if q.strip()]
            if cells["prompt"] and cells["answer"]:
                out.append({**p, **cells})
        return out

    def save(self, run: bool) -> str | None:
        from engine.evaluate.cloze import default_probe_path, write_probes

        path, probes = self.current_pack(), self.probes()
        if not path or not probes:
            self.note.setText("Nothing to save: every probe needs a prompt and an answer.")
            return None
        out = default_probe_path(path)
        try:
            write_probes(probes, out)
        except OSError as exc:
            self.note.setText(f"Could not write {out}: {exc.strerror or exc}")
            return None
        self.saved.emit(str(out), run)
        self.accept()
        return str(out)
