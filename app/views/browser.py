"""Memory browser: the entries of the current pack in an id-only table, filters and search.

Search is debounced (250 ms); full-text mode ranks with FTS5 on the GUI thread's
read-only connection (a few ms even at 1M entries), semantic mode runs on the pack's
writer thread (it owns the encoder and index) and comes back ranked with scores.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QProgressBar,
    QStackedWidget,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.models.entry_table import EntryTableModel
from app.views.fit import MenuToolButton, fit_placeholder
from engine.store.examples import EXAMPLE_TAG

log = logging.getLogger(__name__)

DEBOUNCE_MS = 250
MODES = [("Full text", "text"), ("Semantic", "semantic")]
STATUSES = [("All entries", None), ("Active", "active"), ("Disabled", "disabled")]


def make_entry_view(model: EntryTableModel) -> QTableView:
    """The entry table as the browser shows it (the GUI benchmark measures this same view):
    uniform row heights, so that a million rows cost no per-row size queries."""
    view = QTableView()
    view.setObjectName("EntryTable")
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    vh = view.verticalHeader()
    vh.setVisible(False)
    vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    vh.setDefaultSectionSize(view.fontMetrics().height() + 8)
    hh = view.horizontalHeader()
    hh.setHighlightSections(False)
    hh.setStretchLastSection(False)
    # status before source: with the score column of a search the status was pushed past the
    # table's edge at 1280 px ("a…"); source and updated are the ones that scroll
    cols = model.columns()
    hh.moveSection(hh.visualIndex(cols.index("status")), hh.visualIndex(cols.index("source")))
    return view


class MemoryBrowser(QWidget):
    selection_changed = Signal(list)  # selected entry ids
    search_done = Signal(str, int)  # mode, number of results
    write_patch_requested = Signal(str, int)  # pack path, entry id: "Write this fact into the weights…"

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MemoryBrowser")
        self.ctx = ctx
        self.path: str | None = None
        self._search_gen = 0
        self._tags_gen = 0
        self._shown_cv: int | None = None

        self.search_box = QLineEdit(placeholderText=self._placeholder("text"))
        self.search_box.setClearButtonEnabled(True)
        self.search_box.setObjectName("SearchBox")
        fit_placeholder(self.search_box, [self._placeholder(key) for _, key in MODES])  # either mode's, whole
        self.mode = QComboBox()
        for label, key in MODES:
            self.mode.addItem(label, key)
        self.mode.setToolTip("Full text: words of the title and text (FTS5). Semantic: meaning, by the key encoder.")
        self.status = QComboBox()
        for label, key in STATUSES:
            self.status.addItem(label, key)
        self.tag = QComboBox()
        self.tag.addItem("All tags", None)
        self.tag.setMinimumContentsLength(14)  # "Examples (1,234)" reads whole
        self.count_label = QLabel()
        self.count_label.setObjectName("CountLabel")
        self.count_label.setWordWrap(True)  # the empty pack's hint must not widen the window

        self.new_btn = QToolButton(text="New")
        self.new_btn.setToolTip("Add an entry to this pack (Ctrl+N)")
        self.bulk_btn = MenuToolButton(text="Selected")  # room for its menu arrow
        self.bulk_btn.setToolTip("Disable, enable or delete the selected entries (one undo step)")
        self.bulk_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.act_disable = QAction("Disable", self)
        self.act_enable = QAction("Enable", self)
        self.act_delete = QAction("Delete", self, shortcut=QKeySequence.StandardKey.Delete)
        self.act_delete.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        menu = QMenu(self)
        for a in (self.act_disable, self.act_enable, self.act_delete):
            menu.addAction(a)
            self.addAction(a)
        self.bulk_btn.setMenu(menu)

        # two rows: in one, the search box and five controls needed more than the 640 px a
        # 1280 px window leaves the tabs, and the row's end ("Selected") was cut off
        top = QVBoxLayout()
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        row1.addWidget(self.search_box, 1)
        row1.addWidget(self.mode)
        row2.addWidget(self.status)
        row2.addWidget(self.tag)
        row2.addStretch(1)
        row2.addWidget(self.new_btn)
        row2.addWidget(self.bulk_btn)
        top.addLayout(row1)
        top.addLayout(row2)

        self.model = EntryTableModel(self)
        self.view = make_entry_view(self.model)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        # the context menu: the bulk actions, and writing the entry's fact into the reader's weights
        self.context_menu = QMenu(self)
        for a in (self.act_disable, self.act_enable, self.act_delete):
            self.context_menu.addAction(a)
        self.context_menu.addSeparator()
        self.act_write_patch = self.context_menu.addAction("Write this fact into the weights…", self._write_patch)
        self.view.customContextMenuRequested.connect(self._context_menu)
        hh = self.view.horizontalHeader()
        hh.setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        hh.setSortIndicatorShown(True)
        hh.sectionClicked.connect(self._header_clicked)
        hh.sectionResized.connect(self._section_resized)
        # Columns follow the table's width until the user sizes one (or saved state is restored).
        self._fitted = False
        self._fitting = False
        self._apply_column_widths()

        self.placeholder = QWidget()
        pl = QVBoxLayout(self.placeholder)
        pl.addStretch(1)
        self.placeholder_label = QLabel("No memory pack is open.\nAttach or create one in the Workspace panel.")
        self.placeholder_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder_label.setObjectName("Placeholder")
        self.placeholder_bar = QProgressBar()
        self.placeholder_bar.setVisible(False)
        self.placeholder_bar.setMaximumWidth(420)
        pl.addWidget(self.placeholder_label)
        pl.addWidget(self.placeholder_bar, 0, Qt.AlignmentFlag.AlignHCenter)
        pl.addStretch(2)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.view)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.stack, 1)
        lay.addWidget(self.count_label)

        self.debounce = QTimer(self)
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(DEBOUNCE_MS)
        self.debounce.timeout.connect(self.run_search)
        self.search_box.textChanged.connect(lambda _: self.debounce.start())
        self.search_box.returnPressed.connect(self.run_search)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.status.currentIndexChanged.connect(self._filter_changed)
        self.tag.currentIndexChanged.connect(self._filter_changed)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.model.ids_loaded.connect(self._update_count)
        self._kept: tuple[int, list[int]] | None = None
        self.model.modelAboutToBeReset.connect(self._keep_place)
        self.model.modelReset.connect(self._restore_place)
        self.model.modelReset.connect(self._update_count)
        self.new_btn.clicked.connect(self.new_requested)
        self.act_disable.triggered.connect(lambda: self.set_status_selected("disabled"))
        self.act_enable.triggered.connect(lambda: self.set_status_selected("active"))
        self.act_delete.triggered.connect(self.delete_selected)

        ctx.current_changed.connect(self.show_pack)
        ctx.hub.changed.connect(self._on_change)
        ctx.hub.reloaded.connect(self._on_reloaded)
        ctx.demo_progress.connect(self._demo_progress)
        ctx.busy_changed.connect(self._busy_changed)

        i = self.mode.findData(ctx.settings.search_mode)
        self.mode.setCurrentIndex(max(0, i))
        self.show_pack(ctx.current or "")

    @staticmethod
    def _placeholder(mode: str) -> str:
        return "Search entries…  (" + ("full text" if mode == "text" else "by meaning") + ")"

    # ------------------------------------------------------------------ pack
    def show_pack(self, path: str) -> None:
        if (path or None) != self.path:
            # another pack: its rows are other entries, even where their ids match the old
            # selection, so nothing stays selected (the editor is emptied below as well)
            self.view.selectionModel().clear()
            self.view.scrollToTop()
        self.path = path or None
        reader = self.ctx.reader(self.path)
        if self.path:
            self.ctx.writer(self.path)  # start opening its writer (semantic search, edits)
        self.model.status, self.model.tag = self.status.currentData(), None
        self.model.loader = self._load_in_background
        self._shown_cv = self._content_version(reader) if reader is not None else None
        self.model.set_pack(reader)
        self._refresh_tags(reader)
        if reader is None:
            if self.path:
                self.placeholder_label.setText(f"Opening {Path(self.path).name}…")
            self.stack.setCurrentWidget(self.placeholder)
        else:
            self._show_table()
            if self.search_box.text().strip():
                self.run_search()
        self.selection_changed.emit([])

    def _refresh_tags(self, reader) -> None:
        """Fill the tag filter (a GROUP BY over all tags: seconds at a million entries, so
        it runs on the background read thread)."""
        if reader is None or not self.path:
            self._fill_tags([])
            return
        self._tags_gen += 1
        gen, path = self._tags_gen, self.path

        def done(tags):
            if gen == self._tags_gen and path == self.path:
                self._fill_tags(tags)

        self.ctx.reads.submit(path, lambda pack: pack.tags()[:500], done,
                              on_error=lambda exc: log.warning("tags of %s: %s", path, exc))

    def _fill_tags(self, tags) -> None:
        cur = self.tag.currentData()
        self.tag.blockSignals(True)
        self.tag.clear()
        self.tag.addItem("All tags", None)
        names = [t[0] if isinstance(t, (tuple, list)) else str(t) for t in tags]
        if EXAMPLE_TAG in names:  # the reserved tag of worked examples heads the list, by name
            n = next((t[1] for t in tags if isinstance(t, (tuple, list)) and t[0] == EXAMPLE_TAG), None)
            self.tag.addItem(f"Examples ({n:,})" if isinstance(n, int) else "Examples", EXAMPLE_TAG)
        for name in names:
            if name != EXAMPLE_TAG:
                self.tag.addItem(name, name)
        i = self.tag.findData(cur)
        self.tag.setCurrentIndex(i if i >= 0 else 0)
        self.tag.blockSignals(False)
        if cur is not None and i < 0:  # the chosen tag is gone: show everything again
            self._filter_changed()

    def _load_in_background(self, fn, on_done) -> None:
        """The table model's loader: big id lists come from the background read thread."""
        path = self.path
        self.count_label.setText("Loading the entry list…")
        self.ctx.reads.submit(path, fn, on_done, on_error=lambda exc: self._load_failed(path, exc))

    def _load_failed(self, path: str, exc: BaseException) -> None:
        if path == self.path:
            self.count_label.setText(f"The entry list could not be read: {exc}")
            log.warning("id list of %s: %s", path, exc)

    def _content_version(self, reader) -> int | None:
        try:
            return int(reader.content_version)
        except Exception:
            return None

    def _on_reloaded(self, path: str) -> None:
        """The pack was (re)opened by its writer or rewritten by a job: reload, keep the selection."""
        if path != self.path:
            return
        reader = self.ctx.reader(path)
        if reader is None:
            return
        self._show_table()
        cv = self._content_version(reader)
        if self.model.pack is reader and cv is not None and cv == self._shown_cv:
            return  # the writer just opened what is already shown
        self._shown_cv = cv
        keep = self.selected_ids()
        if self.model.searching:
            self.model.pack = reader
            self.run_search()
        else:
            self.model.set_pack(reader)
        self._refresh_tags(reader)
        if keep and not self.select_id(keep[0]):
            self.selection_changed.emit([])

    def _busy_changed(self, path: str, busy: bool) -> None:
        if path == self.path:
            self.new_btn.setEnabled(not busy)
            self.bulk_btn.setEnabled(not busy)
            for a in (self.act_disable, self.act_enable, self.act_delete):
                a.setEnabled(not busy)

    def _demo_progress(self, fraction: float, message: str) -> None:
        if self.path:
            return
        self.stack.setCurrentWidget(self.placeholder)
        self.placeholder_label.setText(f"Building the demo workspace (first start only)…\n{message}")
        self.placeholder_bar.setVisible(fraction < 1.0)
        self.placeholder_bar.setValue(int(fraction * 100))

    # ------------------------------------------------------------------ filters / sort
    def _filter_changed(self) -> None:
        self.model.set_filter(self.status.currentData(), self.tag.currentData())
        self.ctx.settings.status_filter = self.status.currentData() or "all"

    def _header_clicked(self, section: int) -> None:
        cols = self.model.columns()
        name = cols[section] if section < len(cols) else ""
        if name not in ("id", "updated", "score"):
            # Only keyset-friendly orders; put the indicator back on the real order.
            self._show_sort_indicator()
            return
        hh = self.view.horizontalHeader()
        self.model.sort(section, hh.sortIndicatorOrder())
        self._show_sort_indicator()

    def _show_sort_indicator(self) -> None:
        key = self.model.effective_sort()
        name = key.lstrip("-")
        cols = self.model.columns()
        hh = self.view.horizontalHeader()
        hh.blockSignals(True)
        if name in cols:
            desc = key.startswith("-") or name == "score"
            hh.setSortIndicator(cols.index(name), Qt.SortOrder.DescendingOrder if desc else Qt.SortOrder.AscendingOrder)
        hh.blockSignals(False)

    def _apply_column_widths(self) -> None:
        widths = {"id": 64, "title": 140, "text": 380, "source": 150, "status": 66, "updated": 122, "score": 64}
        self._fitting = True
        for i, name in enumerate(self.model.columns()):
            self.view.setColumnWidth(i, widths.get(name, 100))
        self._fitting = False
        self._show_score_column()

    def fit_columns(self) -> None:
        """Share the table's width between the columns: fixed ones by their content, the
        rest to text (2/3, at least 45 % of the view) and source (1/3)."""
        cols = self.model.columns()
        fm = self.view.fontMetrics()
        pad = 18
        fixed = {
            "id": fm.horizontalAdvance("0000000") + pad,
            "score": fm.horizontalAdvance("00.000") + pad,
            "status": fm.horizontalAdvance("disabled") + pad,
            "updated": fm.horizontalAdvance("2026-11-27 16:09") + pad,
            "title": fm.horizontalAdvance("M" * 9) + pad,
        }
        # the columns that sort show the arrow beside their (bold) title: room for both
        hh = self.view.horizontalHeader()
        for n in ("id", "score", "updated"):
            fixed[n] = max(fixed[n], hh.sectionSizeHint(cols.index(n)))
        self._fitting = True
        avail = self.view.viewport().width() - 2
        used = sum(w for n, w in fixed.items() if not self.view.isColumnHidden(cols.index(n)))
        rest = max(240, avail - used)
        for n, w in fixed.items():
            self.view.setColumnWidth(cols.index(n), w)
        # In a narrow table (a 1280 px screen with both docks open) the text still gets 45 % of
        # the view: the columns after it (source, status, updated) scroll instead.
        text = max(int(rest * 0.66), int(avail * 0.45))
        self.view.setColumnWidth(cols.index("text"), text)
        self.view.setColumnWidth(cols.index("source"), max(rest - text, fm.horizontalAdvance("M" * 7) + pad))
        self._fitting = False

    def _show_table(self) -> None:
        self.stack.setCurrentWidget(self.view)
        if not self._fitted and self.view.viewport().width() > 300:
            self.fit_columns()

    def _section_resized(self, *_: object) -> None:
        if not self._fitting:
            self._fitted = True  # the user sized a column: leave the widths alone from now on

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if not self._fitted and self.stack.currentWidget() is self.view and self.view.viewport().width() > 300:
            self.fit_columns()

    def _show_score_column(self) -> None:
        self._fitting, was = True, self._fitting
        self.view.setColumnHidden(self.model.columns().index("score"), not self.model.searching)
        self._fitting = was
        if not self._fitted and self.view.viewport().width() > 300:
            self.fit_columns()

    # ------------------------------------------------------------------ search
    def _mode_changed(self) -> None:
        mode = self.mode.currentData()
        self.ctx.settings.search_mode = mode
        self.search_box.setPlaceholderText(self._placeholder(mode))
        if self.search_box.text().strip():
            self.run_search()

    def run_search(self) -> None:
        """Run the box's query now (the debounce timer calls this 250 ms after typing stops)."""
        self.debounce.stop()
        query = self.search_box.text().strip()
        self._search_gen += 1
        gen = self._search_gen
        if not query or not self.path:
            if self.model.searching:
                self.model.clear_results()
                self._show_score_column()
                self._show_sort_indicator()
            return
        mode = self.mode.currentData()
        k = self.ctx.settings.search_k
        if mode == "text":
            status, path = self.status.currentData(), self.path
            self.count_label.setText("Searching…")

            def failed(exc):
                if gen == self._search_gen:
                    self.count_label.setText(f"Full-text query not understood: {exc}")

            # Pack.fts scores are -bm25 (bigger is better); the status filter applies. A common
            # word takes seconds at a million entries: it runs on the background read thread.
            self.ctx.reads.submit(
                path, lambda pack: pack.fts(query, limit=k, status=status),
                lambda ranked: self._show_results(gen, mode, [int(i) for i, _ in ranked], [float(s) for _, s in ranked]),
                on_error=failed)
        else:
            writer = self.ctx.writer(self.path)
            self.count_label.setText("Searching by meaning…")

            def done(hits):
                self._show_results(gen, mode, [h.entry.id for h in hits], [h.score for h in hits])

            writer.submit(lambda m: m.search(query, k), done, what="Semantic search in", broadcast=False)

    def _show_results(self, gen: int, mode: str, ids: list[int], scores: list[float]) -> None:
        if gen != self._search_gen:
            return  # a newer query was typed meanwhile
        self.model.set_results(ids, scores)
        self._show_score_column()
        self._show_sort_indicator()
        self.search_done.emit(mode, len(ids))

    # ------------------------------------------------------------------ changes
    def _on_change(self, path: str, change) -> None:
        if path != self.path:
            return
        self.model.apply_change(change)
        if self.model.searching and getattr(change, "kind", "") != "edit":
            self.model.invalidate_all()

    def _keep_place(self) -> None:
        """Before the id list is replaced: remember the scroll position and the selection."""
        self._kept = (self.view.verticalScrollBar().value(), self.selected_ids())

    def _restore_place(self) -> None:
        kept, self._kept = self._kept, None
        if kept is None:
            return
        scroll, ids = kept
        if ids:
            sel = self.view.selectionModel()
            sel.blockSignals(True)
            for n, eid in enumerate(ids[:1000]):
                row = self.model.row_of(eid)
                if row >= 0:
                    sel.select(self.model.index(row, 0), QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
            sel.blockSignals(False)
            self.view.viewport().update()
        QTimer.singleShot(0, self, lambda: self.view.verticalScrollBar().setValue(scroll))
        if set(self.selected_ids()) != set(ids):
            self.selection_changed.emit(self.selected_ids())

    def _update_count(self, *_: object) -> None:
        n = self.model.rowCount()
        if self.model.searching:
            self.count_label.setText(f"{n:,} results, best first")
        elif self.path and n == 0 and self.model.status is None and self.model.tag is None:
            self.count_label.setText(f"{Path(self.path).stem} is empty: drop files or folders on the window, "
                                     "use Import… in the Workspace panel, or press New to type an entry.")
        elif self.path:
            self.count_label.setText(f"{n:,} entries  ·  {Path(self.path).stem}")
        else:
            self.count_label.setText("")

    # ------------------------------------------------------------------ selection / bulk
    def selected_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.view.selectionModel().selectedRows()})
        return [self.model.id_at(r) for r in rows]

    def _selection_changed(self, *_: object) -> None:
        self.selection_changed.emit(self.selected_ids())

    def select_id(self, entry_id: int) -> bool:
        row = self.model.row_of(entry_id)
        if row < 0:
            return False
        idx = self.model.index(row, 0)
        self.view.selectionModel().select(idx, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.view.scrollTo(idx)
        return True

    new_requested = Signal()

    def _context_menu(self, pos) -> None:
        self.act_write_patch.setEnabled(len(self.selected_ids()) == 1 and bool(self.path))
        self.context_menu.exec(self.view.viewport().mapToGlobal(pos))

    def _write_patch(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1 and self.path:
            self.write_patch_requested.emit(self.path, int(ids[0]))

    def set_status_selected(self, status: str) -> None:
        ids = self.selected_ids()
        if not ids or not self.path:
            return
        author = self.ctx.author
        self.ctx.writer(self.path).submit(lambda m: m.set_status(ids, status, author=author),
                                          what=f"Setting {len(ids)} entries to {status} in")

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        if not ids or not self.path:
            return
        author = self.ctx.author
        self.ctx.writer(self.path).submit(lambda m: m.delete(ids, author=author), what=f"Deleting {len(ids)} entries in")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.debounce.stop()
        super().closeEvent(event)


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: MemoryBrowser(ctx), "Memory browser")


if __name__ == "__main__":
    raise SystemExit(main())
