"""Workspace side panel: attached packs (checkbox = plugged in), each pack's knowledge plugin
(checkbox, enabled when one is trained), counts, encoder; pack actions and a context menu."""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QHeaderView,
    QMenu,
    QMessageBox,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.workspace import WorkspaceError, plugin_status

log = logging.getLogger(__name__)

PATH_ROLE = Qt.ItemDataRole.UserRole
IMPORT_FILTER = "Corpus files (*.jsonl *.csv *.txt *.md);;All files (*)"
EXAMPLES_FILTER = "Probe files (*.jsonl);;All files (*)"
PLUGIN_COL = 3  # logical column of the plugin checkbox (shown second, beside the pack's name)


class WorkspacePanel(QWidget):
    import_started = Signal(str, str)  # pack path, job id
    check_done = Signal(str, dict)  # pack path, report
    counts_updated = Signal(str)  # pack path
    plugin_toggled = Signal(str, bool)  # pack path, knowledge plugin on
    map_tune_requested = Signal(str)  # pack path (context menu)
    entities_requested = Signal(str)  # pack path (context menu)

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("WorkspacePanel")
        self.ctx = ctx
        self._filling = False

        self.tree = QTreeWidget()
        self.tree.setObjectName("PackList")
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels(["Pack", "Entries", "Encoder", "Plugin"])
        self.tree.headerItem().setToolTip(0, "Tick a pack to plug its memory into the model")
        self.tree.headerItem().setToolTip(PLUGIN_COL, "Tick to plug the pack's knowledge plugin (map-tuned entity "
                                                      "vectors) into the reader; enabled once a plugin is trained")
        self.tree.setRootIsDecorated(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(PLUGIN_COL, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().moveSection(PLUGIN_COL, 1)  # Pack | Plugin | Entries | Encoder
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self._plugin_boxes: dict[str, QCheckBox] = {}
        self.tree.header().setMinimumSectionSize(40)
        self.setMinimumWidth(280)

        self.buttons: dict[str, QToolButton] = {}
        grid = QGridLayout()
        specs = [
            ("new", "New…", "Create an empty memory pack", self.new_pack),
            ("open", "Open…", "Attach an existing pack file", self.open_pack),
            ("import", "Import…", "Import documents or fact tables into the selected pack (background job)", self.import_into),
            ("export", "Export…", "Export the selected pack's entries to JSONL or CSV", self.export_pack),
            ("check", "Check…", "Check the selected pack and repair what can be rebuilt", self.check_selected),
            ("detach", "Detach", "Remove the selected pack from the workspace (the file stays)", self.detach_selected),
        ]
        for n, (key, label, tip, slot) in enumerate(specs):
            b = QToolButton(text=label)
            b.setToolTip(tip)
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            b.setSizePolicy(b.sizePolicy().Policy.Expanding, b.sizePolicy().Policy.Fixed)
            b.clicked.connect(slot)
            self.buttons[key] = b
            grid.addWidget(b, n // 3, n % 3)
        # the file dialog picks files only; folders (imported recursively) from the menu
        imp = QMenu(self)
        imp.addAction("Files…", lambda: self.import_into())
        imp.addAction("A folder…", self.import_folder)
        # Ray is an optional extra: the entry is always there, and says how to get Ray when missing
        imp.addAction("Files, encoded on Ray…", lambda: self.import_on_ray())
        imp.addSeparator()
        self.act_import_examples = imp.addAction("Worked examples (probe file)…", lambda: self.import_examples())
        self.act_import_examples.setToolTip("Each prompt and paraphrase of a probe file (prompt, answer) becomes "
                                            "an entry marked 'example': the question followed by its answer")
        self.buttons["import"].setMenu(imp)
        self.buttons["import"].setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self._drops = _DropFilter(self)
        self.tree.viewport().setAcceptDrops(True)
        self.tree.viewport().installEventFilter(self._drops)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.tree, 1)
        lay.addLayout(grid)

        self.tree.itemChanged.connect(self._item_changed)
        self.tree.currentItemChanged.connect(self._current_changed)
        ctx.workspace_changed.connect(self.refresh)
        ctx.current_changed.connect(self._follow_current)  # e.g. an explanation's entry opened in another pack
        # Counting is a query per pack: coalesce bursts of changes into one refresh.
        self._stale_counts: set[str] = set()
        self._counts_timer = QTimer(self)
        self._counts_timer.setSingleShot(True)
        self._counts_timer.setInterval(300)
        self._counts_timer.timeout.connect(self._refresh_stale_counts)
        ctx.hub.changed.connect(lambda p, c: self._counts_later(p))
        ctx.hub.reloaded.connect(self._counts_later)
        ctx.busy_changed.connect(lambda p, b: self.refresh())
        self.refresh()

    # ------------------------------------------------------------------ list
    def wanted_width(self) -> int:
        """The panel's width at which every column shows whole (pack names were cut to
        "chemi…" at 1280 px): each column's widest cell or title, the frame and margins."""
        tree, hh = self.tree, self.tree.header()
        cols = sum(max(tree.sizeHintForColumn(i), hh.sectionSizeHint(i)) for i in range(tree.columnCount())
                   if not tree.isColumnHidden(i))
        m = self.layout().contentsMargins()
        bar = tree.verticalScrollBar().sizeHint().width() if tree.verticalScrollBar().isVisible() else 0
        return cols + 2 * tree.frameWidth() + bar + m.left() + m.right()

    def selected_path(self) -> str | None:
        it = self.tree.currentItem()
        return it.data(0, PATH_ROLE) if it else None

    def item_for(self, path: str) -> QTreeWidgetItem | None:
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            if it.data(0, PATH_ROLE) == path:
                return it
        return None

    def refresh(self) -> None:
        """Rebuild the list when packs were attached/detached; otherwise update rows in place."""
        paths = [self.tree.topLevelItem(i).data(0, PATH_ROLE) for i in range(self.tree.topLevelItemCount())]
        if paths == self.ctx.workspace.paths():
            self._filling = True
            for ref in self.ctx.workspace.packs:
                it = self.item_for(ref.path)
                it.setCheckState(0, Qt.CheckState.Checked if ref.plugged else Qt.CheckState.Unchecked)
                self._fill_counts(it)
                self._fill_plugin(ref.path)
            self._filling = False
            self._update_buttons()
            return
        self._filling = True
        self.tree.clear()
        self._plugin_boxes.clear()
        current = None
        for ref in self.ctx.workspace.packs:
            it = QTreeWidgetItem([Path(ref.path).stem, "", ""])
            it.setData(0, PATH_ROLE, ref.path)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(0, Qt.CheckState.Checked if ref.plugged else Qt.CheckState.Unchecked)
            it.setToolTip(0, ref.path)
            self.tree.addTopLevelItem(it)
            box = QCheckBox()
            box.setObjectName("PluginBox")
            box.toggled.connect(lambda on, p=ref.path: self._plugin_changed(p, on))
            self._plugin_boxes[ref.path] = box
            self.tree.setItemWidget(it, PLUGIN_COL, box)
            self._fill_plugin(ref.path)
            self._fill_counts(it)
            if ref.path == self.ctx.current:
                current = it
        if current is not None:
            self.tree.setCurrentItem(current)
        self._filling = False
        self._update_buttons()

    def _counts_later(self, path: str) -> None:
        self._stale_counts.add(path)
        self._counts_timer.start()

    def _refresh_stale_counts(self) -> None:
        for p in list(self._stale_counts):
            self.refresh_counts(p)
        self._stale_counts.clear()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._counts_timer.stop()
        super().closeEvent(event)

    def refresh_counts(self, path: str) -> None:
        it = self.item_for(path)
        if it is not None:
            self._filling = True
            self._fill_counts(it)
            self._filling = False

    def _fill_counts(self, it: QTreeWidgetItem) -> None:
        path = it.data(0, PATH_ROLE)
        if self.ctx.is_busy(path):
            it.setText(1, "…")
            it.setText(2, self.ctx.busy_reason(path) or "busy")
            return
        w = self.ctx.writer_if_open(path)
        if not Path(path).exists() or (w is not None and w.creating):
            # a new pack's file appears before its schema is written: not "unreadable" yet
            it.setText(1, "")
            it.setText(2, "creating…" if w and w.state == "opening" else "missing file")
            return
        r = self.ctx.reader(path)
        if r is None:
            it.setText(1, "?")
            it.setText(2, "unreadable")
            return
        try:
            enc = r.encoder
        except Exception as exc:
            log.warning("encoder of %s: %s", path, exc)
            enc = None
        name = enc.name.split("/")[-1].removeprefix("all-") if enc else "none yet"
        it.setText(2, name)
        it.setToolTip(2, enc.describe() if enc else "no vectors yet: the encoder is recorded on the first import")
        if not it.text(1):
            it.setText(1, "…")

        # counting a million entries takes ~0.1-0.2 s: on the background read thread
        def done(counts: tuple[int, int]) -> None:
            item = self.item_for(path)
            if item is None:
                return
            active, disabled = counts
            self._filling = True
            item.setText(1, f"{active + disabled:,}")
            item.setToolTip(1, f"{active:,} active, {disabled:,} disabled")
            self._filling = False
            self.counts_updated.emit(path)

        self.ctx.reads.submit(path, lambda pack: (pack.count("active"), pack.count("disabled")), done,
                              on_error=lambda exc: log.warning("counts of %s: %s", path, exc))

    # ------------------------------------------------------------------ knowledge plugins
    def plugin_box(self, path: str) -> QCheckBox | None:
        return self._plugin_boxes.get(path)

    def refresh_plugins(self) -> None:
        """Look again for trained plugins beside the packs (after a map-tuning job)."""
        for ref in self.ctx.workspace.packs:
            self._fill_plugin(ref.path)

    def _fill_plugin(self, path: str) -> None:
        box = self._plugin_boxes.get(path)
        ref = self.ctx.workspace.find(path)
        if box is None or ref is None:
            return
        available, text = plugin_status(path)
        box.blockSignals(True)
        box.setChecked(bool(ref.plugin) and available)
        box.blockSignals(False)
        box.setEnabled(available)
        tip = text
        if ref.plugin and not available:
            tip += " (it was switched on: it comes back on when the plugin is there again)"
        box.setToolTip(tip)

    def _plugin_changed(self, path: str, on: bool) -> None:
        """Plug or unplug the pack's knowledge plugin: saved with the workspace; the model host
        loads it on its own thread (see MainWindow)."""
        try:
            self.ctx.workspace.set_plugin(path, on)
        except WorkspaceError as exc:
            self.ctx.notifier.error("Plugging the knowledge plugin", exc)
            return
        try:
            self.ctx.workspace.save()
        except OSError as exc:
            self.ctx.notifier.error("Saving the workspace", exc)
        self.plugin_toggled.emit(path, on)
        self.ctx.workspace_changed.emit()

    def _context_menu(self, pos) -> None:
        it = self.tree.itemAt(pos)
        if it is None:
            return
        self.tree.setCurrentItem(it)
        self.context_menu(it.data(0, PATH_ROLE)).popup(self.tree.viewport().mapToGlobal(pos))

    def context_menu(self, path: str) -> QMenu:
        """The pack's menu: entities, map-tuning, and the panel's pack actions."""
        m = QMenu(self)
        busy = self.ctx.is_busy(path)
        m.addAction("Entities and triples", lambda: self.entities_requested.emit(path))
        m.addAction("Train a knowledge plugin…", lambda: self.map_tune_requested.emit(path))
        m.addAction("Prepare for fast answers", lambda: self.prepare_states(path))
        m.addSeparator()
        for key in ("import", "export", "check", "detach"):
            b = self.buttons[key]
            a = m.addAction(b.text(), b.click)
            a.setEnabled(not busy)
        return m

    def _item_changed(self, it: QTreeWidgetItem, column: int) -> None:
        if self._filling or column != 0:
            return
        self.ctx.set_plugged(it.data(0, PATH_ROLE), it.checkState(0) == Qt.CheckState.Checked)

    def _follow_current(self, path: str) -> None:
        """Select the pack the rest of the window now shows (changed elsewhere than in this list)."""
        it = self.item_for(path) if path else None
        if it is None or it is self.tree.currentItem():
            return
        self._filling = True
        self.tree.setCurrentItem(it)
        self._filling = False
        self._update_buttons()

    def _current_changed(self, cur: QTreeWidgetItem | None, _prev) -> None:
        if self._filling:
            return
        self.ctx.set_current(cur.data(0, PATH_ROLE) if cur else None)
        self._update_buttons()

    def _update_buttons(self) -> None:
        path = self.selected_path()
        has = path is not None
        busy = bool(path and self.ctx.is_busy(path))
        for key in ("import", "export", "check", "detach"):
            self.buttons[key].setEnabled(has and not busy)

    # ------------------------------------------------------------------ actions
    def new_pack(self, path: str | None = None) -> str | None:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "New memory pack", str(self.ctx.workspace.folder), "Memory packs (*.plugmem)")
            if not path:
                return None
            if not path.endswith(".plugmem"):
                path += ".plugmem"
        if Path(path).exists():
            self.ctx.notifier.error("Creating a pack", f"{path} already exists; use Open to attach it")
            return None
        p = self.ctx.attach(path, create=True)
        self.ctx.set_current(p)
        return p

    def open_pack(self, path: str | None = None) -> str | None:
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Open memory pack", str(self.ctx.workspace.folder), "Memory packs (*.plugmem);;All files (*)")
            if not path:
                return None
        if not Path(path).is_file():
            self.ctx.notifier.error("Opening a pack", f"{path}: no such file")
            return None
        p = self.ctx.attach(path)
        self.ctx.writer(p)  # opening checks schema and encoder; a refusal reaches the notifier
        self.ctx.set_current(p)
        return p

    def import_on_ray(self, files: list[str] | None = None, path: str | None = None) -> None:
        """Import files with their keys encoded by a local Ray instance sized to this machine
        (engine/jobs/ray_build.py); without Ray installed, say how to get it and import nothing."""
        import importlib.util

        path = path or self.selected_path()
        if not path:
            return
        if importlib.util.find_spec("ray") is None:
            from engine.jobs.ray_build import INSTALL_HINT

            self.ctx.notifier.error(f"Importing into {Path(path).stem} on Ray",
                                    f"Ray is not installed; to build on Ray: {INSTALL_HINT}")
            return
        self.import_into(files, path, ray=True)

    def import_examples(self, files: list[str] | None = None, path: str | None = None) -> None:
        """Import probe files as worked examples (question → answer entries) into the pack."""
        self.import_into(files, path, as_examples=True)

    def import_into(self, files: list[str] | None = None, path: str | None = None, *, ray: bool = False,
                    as_examples: bool = False) -> None:
        path = path or self.selected_path()
        if not path:
            return
        if not files:
            where = " (encoded on Ray)" if ray else ""
            title = f"Import worked examples into {Path(path).stem}" if as_examples else f"Import into {Path(path).stem}{where}"
            files, _ = QFileDialog.getOpenFileNames(self, title, "", EXAMPLES_FILTER if as_examples else IMPORT_FILTER)
            if not files:
                return
        ctx = self.ctx
        config = {"pack": path, "inputs": list(files), "author": ctx.author}
        kind, target = ("ray_build", "engine.jobs.ray_build:ray_import_job") if ray else \
            ("build_memory", "engine.jobs.build_memory:import_job")
        if as_examples:
            config["as_examples"] = True

        def start(_=None):
            ctx.set_busy(path, True)

            def ended(job_id=None, status="", *_):
                ctx.set_busy(path, False)
                ctx.writer(path).reopen()
                if status == "failed":  # refused inputs: nothing was imported; say why (file:line)
                    ctx.notifier.error(f"Importing into {Path(path).name}", ctx.jobs.end_message(job_id) or status)

            try:
                what = "probe file(s) as examples" if as_examples else "file(s)"
                job_id = ctx.jobs.start(kind, target, config, on_end=ended,
                                        title=f"Import {len(files)} {what} into {Path(path).stem}"
                                              + (" on Ray" if ray else ""))
            except Exception as exc:
                ended()
                ctx.notifier.error(f"Starting the import into {Path(path).stem}", exc)
                return
            self.import_started.emit(path, job_id)

        # The job writes the pack from its own process: the app's writer lets go first.
        w = ctx.writer_if_open(path)
        if w is not None and w.state not in ("closed", "failed"):
            w.suspend(start)
        else:
            start()

    def import_folder(self, path: str | None = None) -> None:
        path = path or self.selected_path()
        if not path:
            return
        folder = QFileDialog.getExistingDirectory(self, f"Import a folder into {Path(path).stem}")
        if folder:
            self.import_into([folder], path)

    def drop(self, paths: list[str], pack: str | None = None) -> None:
        """Files or folders dropped on the window or on a pack: packs are opened, the rest
        imported into ``pack`` (else the selected pack)."""
        packs = [p for p in paths if p.endswith(".plugmem") and Path(p).is_file()]
        for p in packs:
            self.open_pack(p)
        rest = [p for p in paths if p not in packs]
        if not rest:
            return
        target = pack or self.selected_path()
        if not target:
            self.ctx.notifier.error("Importing dropped files", "no pack to import into: create one (New…) first")
            return
        self.import_into(rest, target)

    def prepare_states(self, path: str | None = None) -> str | None:
        """Job: read every active entry of the pack once and keep the states on disk."""
        path = path or self.selected_path()
        return start_prepare_states(self.ctx, [path]) if path else None

    def export_pack(self, dest: str | None = None, path: str | None = None):
        path = path or self.selected_path()
        if not path:
            return None
        if not dest:
            dest, _ = QFileDialog.getSaveFileName(self, "Export entries", str(Path(path).with_suffix(".jsonl")),
                                                  "JSON lines (*.jsonl);;CSV (*.csv)")
            if not dest:
                return None
        if Path(dest).suffix.lower() not in (".jsonl", ".csv"):
            self.ctx.notifier.error("Exporting", f"{dest}: choose a .jsonl or .csv file name")
            return None

        def work():
            from engine.store import Pack

            with Pack.open(path, readonly=True) as pack:  # its own connection, in the worker thread
                return pack.export(Path(dest))

        return self.ctx.run_in_thread(work, lambda n: self.ctx.notifier.info(f"Exported {n:,} entries to {dest}"),
                                      f"Exporting {Path(path).stem}")

    def check_selected(self) -> None:
        path = self.selected_path()
        if path:
            self.check(path, repair=False, ask_repair=True)

    def check(self, path: str, repair: bool = False, ask_repair: bool = False):
        """Run engine.check.check_pack in the background (the writer lets go meanwhile)."""
        try:
            from engine.check import check_pack
        except ImportError:
            self.ctx.notifier.error("Checking a pack", "this installation has no pack checker (engine.check)")
            return None
        ctx = self.ctx
        messages: list[str] = []

        def work():
            return check_pack(Path(path), repair=repair, on_message=messages.append)

        def done(report: dict) -> None:
            w = ctx.writer_if_open(path)
            if w is not None and w.state != "closed":
                w.reopen()
            self.check_done.emit(path, report)
            name = Path(path).stem
            if report.get("ok") or report.get("ok_after_repair"):
                fixed = report.get("repaired") or []
                ctx.notifier.info(f"{name}: no problems found" + (f" after repairing: {'; '.join(fixed)}" if fixed else ""))
                return
            problems = "\n".join([f"• {p}" for p in report.get("problems", [])]
                                 + [f"Not repaired: {r}" for r in report.get("not_repaired", [])])
            if ask_repair and not repair and ctx.notifier.dialogs:
                ans = QMessageBox.question(self, "Check", f"{name} has problems:\n{problems}\n\nRepair what can be rebuilt?")
                if ans == QMessageBox.StandardButton.Yes:
                    self.check(path, repair=True)
                return
            ctx.notifier.error(f"Checking {name}", f"{len(report.get('problems', []))} problem(s):\n{problems}")

        w = ctx.writer_if_open(path)
        if w is not None and w.state not in ("closed", "failed"):
            w.suspend(lambda _: ctx.run_in_thread(work, done, f"Checking {Path(path).stem}"))
            return None
        return ctx.run_in_thread(work, done, f"Checking {Path(path).stem}")

    def detach_selected(self) -> None:
        path = self.selected_path()
        if path:
            self.ctx.detach(path)



def dropped_paths(event) -> list[str]:
    """The local files and folders of a drag or drop event ([] for anything else)."""
    md = event.mimeData()
    return [u.toLocalFile() for u in md.urls() if u.isLocalFile()] if md is not None and md.hasUrls() else []


class _DropFilter(QObject):
    """Drops on the pack list: onto a pack imports into it, elsewhere into the selected one."""

    def __init__(self, panel: WorkspacePanel) -> None:
        super().__init__(panel)
        self.panel = panel

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and dropped_paths(event):
            event.acceptProposedAction()
            return True
        if event.type() == QEvent.Type.Drop and dropped_paths(event):
            item = self.panel.tree.itemAt(event.position().toPoint())
            self.panel.drop(dropped_paths(event), item.data(0, PATH_ROLE) if item is not None else None)
            event.acceptProposedAction()
            return True
        return False


def start_prepare_states(ctx: AppContext, paths: list[str]) -> str | None:
    """Start the job that reads every active entry of ``paths`` once through the workspace's
    reader and keeps the states on disk (``engine.jobs.prepare_states``), so the first
    'memory branch' answer that retrieves an entry does not wait for it. Returns the job id."""
    if not paths:
        ctx.notifier.error("Preparing for fast answers", "no pack: plug or select one first")
        return None
    config = {"packs": list(paths), "reader": ctx.workspace.reader, "branch": ctx.workspace.dpm_branch}
    names = ", ".join(Path(p).stem for p in paths)
    try:
        return ctx.jobs.start("prepare_states", "engine.jobs.prepare_states:prepare_states", config,
                              title=f"Prepare {names} for fast answers")
    except Exception as exc:
        ctx.notifier.error(f"Preparing {names}", exc)
        return None


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: WorkspacePanel(ctx), "Workspace")


if __name__ == "__main__":
    raise SystemExit(main())
