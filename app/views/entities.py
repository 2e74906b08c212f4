"""Entities tab: the selected pack's entities (name, aliases, number of triples) with a
filter box, the triples of the selected entity (relation, tail), and "Import triples…".

Reads run on the background read thread (:attr:`AppContext.reads`); the import runs on
the pack's one writer (one transaction: a bad file changes nothing, and the message names
its file and line). A pack's entities number in the thousands, not millions (one per
country, element, drug...), so the whole list is loaded and filtered in memory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext

log = logging.getLogger(__name__)

TRIPLES_FILTER = "Triples (*.jsonl *.csv);;All files (*)"
COLUMNS = ["name", "aliases", "triples"]
ID_ROLE = Qt.ItemDataRole.UserRole


class EntityTableModel(QAbstractTableModel):
    """Rows of :func:`engine.mechanisms.plugins.entities.entity_rows`: id, name, aliases, triples (as head)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt API
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole and COLUMNS[section] == "triples":
            return "Triples with this entity as head (as tail in brackets)"
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            if col == "name":
                return r["name"]
            if col == "aliases":
                return ", ".join(r["aliases"])
            return f"{r['triples']:,}" + (f" ({r['as_tail']:,})" if r.get("as_tail") else "")
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == "name" and r.get("description"):
                return r["description"]
            if col == "aliases" and r["aliases"]:
                return "\n".join(r["aliases"])
        if role == Qt.ItemDataRole.TextAlignmentRole and col == "triples":
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == ID_ROLE:
            return int(r["id"])
        if role == Qt.ItemDataRole.UserRole + 1:  # sort key
            return r["triples"] if col == "triples" else self.data(index).lower()
        return None


class _Filter(QSortFilterProxyModel):
    """Case-insensitive substring match on the name or any alias."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole + 1)

    def set_text(self, text: str) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9 (invalidateFilter is deprecated there)
            self.beginFilterChange()
            self.text = text.strip().lower()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:  # pragma: no cover - older Qt
            self.text = text.strip().lower()
            self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent) -> bool:  # noqa: N802 - Qt API
        if not self.text:
            return True
        r = self.sourceModel().rows[row]
        return self.text in r["name"].lower() or any(self.text in a.lower() for a in r["aliases"])


class EntitiesView(QWidget):
    entities_loaded = Signal(str, int)  # pack path, number of entities
    triples_shown = Signal(int, int)  # entity id, number of triples
    import_done = Signal(str, object)  # pack path, TriplesImportResult
    import_failed = Signal(str, str)  # pack path, message
    map_tune_requested = Signal(str)  # pack path

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EntitiesView")
        self.ctx = ctx
        self.path: str | None = None
        self._gen = 0
        self._entity_id: int | None = None

        self.filter_box = QLineEdit(placeholderText="Filter entities by name or alias…")
        self.filter_box.setObjectName("EntityFilter")
        self.filter_box.setClearButtonEnabled(True)
        self.import_btn = QPushButton("Import triples…")
        self.import_btn.setToolTip("Add triples (JSONL or CSV: head, relation, tail, head_aliases, tail_aliases) "
                                   "to the pack; a file with an error imports nothing")
        self.map_tune_btn = QPushButton("Train a knowledge plugin…")
        self.map_tune_btn.setToolTip("Train this pack's knowledge plugin from its entities and triples (background job)")
        self.count = QLabel()
        self.count.setObjectName("CountLabel")
        top = QHBoxLayout()
        top.addWidget(self.filter_box, 1)
        top.addWidget(self.count)
        top.addWidget(self.import_btn)
        top.addWidget(self.map_tune_btn)

        self.model = EntityTableModel(self)
        self.proxy = _Filter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("EntityTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.setWordWrap(False)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        fm = self.fontMetrics()  # sized to fit the tab at 1280 px, aliases taking the rest
        self.table.setColumnWidth(0, fm.averageCharWidth() * 22)
        # the header's own measure (bold, padded by the style sheet): the font's cut it to "tripl…"
        self.table.setColumnWidth(2, max(fm.horizontalAdvance("00000") + 28, hh.sectionSizeHint(2)))

        self.entity_label = QLabel("Select an entity to see its triples.")
        self.entity_label.setObjectName("SectionLabel")
        self.entity_label.setWordWrap(True)
        self.triples = QTableWidget(0, 3)
        self.triples.setObjectName("TripleTable")
        self.triples.setHorizontalHeaderLabels(["relation", "tail", "source"])
        self.triples.verticalHeader().setVisible(False)
        self.triples.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.triples.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # the relation is read whole (it was cut to "atomic_nu…", "goldschmid…" at 1280 px): as
        # wide as the longest; the tail takes the rest and wraps; the source is cut (whole in
        # its tooltip)
        self.triples.setWordWrap(True)
        self.triples.verticalHeader().setMinimumSectionSize(self.fontMetrics().height() + 8)
        self.triples.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        th = self.triples.horizontalHeader()
        th.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        th.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.triples.setColumnWidth(2, fm.averageCharWidth() * 12)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.entity_label)
        rl.addWidget(self.triples, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("EntitiesSplitter")
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 1)  # the triples' tails are what a curator checks: half the room
        self.splitter.setStretchFactor(1, 1)

        self.status = QLabel()
        self.status.setObjectName("ExplainStatus")  # same look: error property turns it red
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.status)

        self.filter_box.textChanged.connect(self._filter)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _prev: self._select(cur))
        self.import_btn.clicked.connect(lambda: self.import_triples())
        self.map_tune_btn.clicked.connect(lambda: self.path and self.map_tune_requested.emit(self.path))
        ctx.current_changed.connect(self.show_pack)
        ctx.hub.reloaded.connect(lambda p: p == self.path and self.reload())
        ctx.busy_changed.connect(lambda p, b: p == self.path and self._update_buttons())
        self.show_pack(ctx.current or "")

    # ------------------------------------------------------------------ loading
    def show_pack(self, path: str) -> None:
        self.path = path or None
        self.filter_box.clear()
        self.reload()

    def reload(self) -> None:
        """Load the pack's entities (background read); keeps the selected entity when it is still there."""
        self._gen += 1
        gen = self._gen
        self._update_buttons()
        if not self.path or not Path(self.path).exists():
            self.model.set_rows([])
            self._show_triples(None, [])
            self.count.setText("")
            self._say("No pack selected." if not self.path else f"{Path(self.path).name}: the file is missing.")
            return
        path, keep = self.path, self._entity_id

        def load(pack):
            from engine.mechanisms.plugins.entities import entity_rows

            return entity_rows(pack)

        def done(rows) -> None:
            if gen != self._gen:
                return
            self.model.set_rows(rows)
            self._update_count()
            if keep is not None and not self.select_entity(keep):
                self._show_triples(None, [])
            if not rows:
                self._say(f"{Path(path).stem} has no entities yet: import triples (JSONL or CSV with head, "
                          "relation, tail) to add them.")
            elif "has no entities yet" in self.status.text() or "Reading the entities" in self.status.text():
                self._say("")  # a notice of the last load, no longer true (an import's message stays)
            self.entities_loaded.emit(path, len(rows))

        self.ctx.reads.submit(path, load, done, on_error=lambda exc: gen == self._gen and self._say(
            f"Reading the entities of {Path(path).name}: {exc}", error=True))

    def _filter(self, text: str) -> None:
        self.proxy.set_text(text)
        self._update_count()

    def _update_count(self) -> None:
        n, shown = self.model.rowCount(), self.proxy.rowCount()
        self.count.setText(f"{n:,} entities" if shown == n else f"{shown:,} of {n:,} entities")

    def row_names(self) -> list[str]:
        """The entity names shown, in table order (after filter and sort)."""
        return [self.proxy.index(r, 0).data() for r in range(self.proxy.rowCount())]

    def select_entity(self, entity_id: int) -> bool:
        for r in range(self.proxy.rowCount()):
            idx = self.proxy.index(r, 0)
            if idx.data(ID_ROLE) == int(entity_id):
                self.table.setCurrentIndex(idx)
                self.table.scrollTo(idx)
                return True
        return False

    def _select(self, index) -> None:
        if not index.isValid() or not self.path:
            self._entity_id = None
            self._show_triples(None, [])
            return
        eid = int(index.data(ID_ROLE))
        row = self.model.rows[self.proxy.mapToSource(index).row()]
        self._entity_id = eid
        gen = self._gen
        self.ctx.reads.submit(self.path, lambda pack: pack.triples(head=eid),
                              lambda rows: gen == self._gen and self._entity_id == eid and self._show_triples(row, rows),
                              on_error=lambda exc: self._say(f"Reading the triples of {row['name']}: {exc}", error=True))

    def _show_triples(self, entity: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
        self.triples.setRowCount(len(rows))
        for i, t in enumerate(rows):
            self.triples.setItem(i, 0, QTableWidgetItem(t["relation"]))
            tail = QTableWidgetItem(t["tail"] + ("  (entity)" if t.get("tail_id") else ""))
            tail.setToolTip(t["tail"])
            self.triples.setItem(i, 1, tail)
            src = QTableWidgetItem(t.get("source") or "")
            src.setToolTip(t.get("source") or "")
            self.triples.setItem(i, 2, src)
        if entity is None:
            self.entity_label.setText("Select an entity to see its triples.")
            return
        aliases = f" — also {', '.join(entity['aliases'])}" if entity["aliases"] else ""
        self.entity_label.setText(f"{entity['name']}{aliases}: {len(rows):,} triple(s)")
        self.triples_shown.emit(int(entity["id"]), len(rows))

    def triple_rows(self) -> list[tuple[str, str]]:
        """The (relation, tail) pairs shown for the selected entity."""
        return [(self.triples.item(r, 0).text(), self.triples.item(r, 1).text()) for r in range(self.triples.rowCount())]

    # ------------------------------------------------------------------ import
    def import_triples(self, files: list[str] | None = None) -> bool:
        """Import triples files into the shown pack through its one writer. False when refused."""
        path = self.path
        if not path:
            self._say("Select a pack in the Workspace panel first.", error=True)
            return False
        if self.ctx.is_busy(path):
            self._say(f"{Path(path).stem} is busy ({self.ctx.busy_reason(path)}); import the triples when it is done.",
                      error=True)
            return False
        if not files:
            files, _ = QFileDialog.getOpenFileNames(self, f"Import triples into {Path(path).stem}", "", TRIPLES_FILTER)
            if not files:
                return False
        files = [str(f) for f in files]
        names = ", ".join(Path(f).name for f in files)
        self._say(f"Importing triples from {names}…")
        self.import_btn.setEnabled(False)

        def work(memory):
            from engine.mechanisms.plugins.entities import import_triples

            return import_triples(memory.pack, files)

        def done(res) -> None:
            self._update_buttons()
            d = res.to_dict()
            text = (f"Imported {names}: {d['triples_added']:,} triples added, {d['entities_added']:,} new entities, "
                    f"{d['entities_updated']:,} updated, {d['duplicates_skipped']:,} duplicates skipped.")
            self._say(text)
            self.ctx.notifier.info(text)
            self.import_done.emit(path, res)
            if path == self.path:
                self.reload()

        def failed(exc: BaseException) -> None:
            self._update_buttons()
            shown = self.ctx.notifier.error(f"Importing triples into {Path(path).stem}", exc)
            self._say(shown + " Nothing was imported.", error=True)
            self.import_failed.emit(path, shown)

        try:
            self.ctx.writer(path).submit(work, done, on_error=failed, what="Importing triples into", broadcast=False)
        except RuntimeError as exc:
            failed(exc)
            return False
        return True

    # ------------------------------------------------------------------ helpers
    def _update_buttons(self) -> None:
        ok = bool(self.path) and not (self.path and self.ctx.is_busy(self.path))
        self.import_btn.setEnabled(ok)
        self.map_tune_btn.setEnabled(bool(self.path))

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setProperty("error", error)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)
        self.status.setText(text)


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: EntitiesView(ctx), "Entities")


if __name__ == "__main__":
    raise SystemExit(main())
