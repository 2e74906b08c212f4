"""The main window: workspace (left), memory browser / ask and explain / evaluation / entities
(centre), entry editor (right), jobs (bottom)."""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QMenu, QProgressBar, QTabWidget, QWidget

from app.context import AppContext
from app.settings import load_state, save_settings, save_state
from app.views.browser import MemoryBrowser
from app.views.editor import REDO_KEYS, UNDO_KEYS, EntryEditor
from app.views.elided import ElidedLabel
from app.views.entities import EntitiesView
from app.views.evaluation import EvaluationView
from app.views.explain import ExplainPanel
from app.views.jobs_panel import JobsPanel
from app.views.map_tune import PluginTrainer, run_dialog
from app.views.side_docks import SIDE, SideDocks
from app.views.workspace_panel import WorkspacePanel

log = logging.getLogger(__name__)


def default_size():
    """1440 x 860, or the screen's available area when that is smaller (a 1280 x 800 laptop)."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QGuiApplication

    size = QSize(1440, 860)
    screen = QGuiApplication.primaryScreen()
    if screen is not None:
        size = size.boundedTo(screen.availableGeometry().size())
    return size


class MainWindow(QMainWindow):
    def __init__(self, ctx: AppContext, restore: bool = True) -> None:
        super().__init__()
        self.setObjectName("MainWindow")
        self.ctx = ctx
        ctx.notifier.parent_widget = self
        self.setWindowTitle("PlugMem Studio")
        self.resize(default_size())
        self.setAcceptDrops(True)

        self.browser = MemoryBrowser(ctx)
        self.explain = ExplainPanel(ctx)
        self.evaluation = EvaluationView(ctx)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("MainTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.browser, "Memory")
        self.tabs.addTab(self.explain, "Ask and explain")
        self.tabs.addTab(self.evaluation, "Evaluation")
        self.entities = EntitiesView(ctx)
        self.tabs.addTab(self.entities, "Entities")
        self.setCentralWidget(self.tabs)
        self.workspace_panel = WorkspacePanel(ctx)
        self.editor = EntryEditor(ctx)
        self.jobs_panel = JobsPanel(ctx)
        self.workspace_dock = self._dock("Workspace", self.workspace_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.editor_dock = self._dock("Entry", self.editor, Qt.DockWidgetArea.RightDockWidgetArea)
        self.jobs_dock = self._dock("Jobs", self.jobs_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        # weight patches beside the packs: the Patches dock below the Workspace dock
        from app.patches import PatchLibrary
        from app.views.patches import PatchesPanel

        self.patches = PatchLibrary(ctx, self)
        self.patches_panel = PatchesPanel(self.patches)
        self.patches_dock = self._dock("Patches", self.patches_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.splitDockWidget(self.workspace_dock, self.patches_dock, Qt.Orientation.Vertical)
        # grown product-key memories beside the patches: a checkbox plugs one into the reader
        from app.pkm_layers import PKMLayers
        from app.views.pkm import PKMPanel

        self.pkm_layers = PKMLayers(ctx, self)
        self.pkm_panel = PKMPanel(self.pkm_layers)
        # "PKM": four tabs share the 313 px column on a narrow screen; the panel spells the name out
        self.pkm_dock = self._dock("PKM", self.pkm_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.pkm_dock.setToolTip("Product-key memory: grown layers of learned slots; tick one to plug it in")
        # a tab beside the Patches: a third dock in the column made the window 851 px tall at least
        self.tabifyDockWidget(self.patches_dock, self.pkm_dock)
        self.patches_dock.raise_()
        self.resizeDocks([self.workspace_dock, self.editor_dock], [330, 360], Qt.Orientation.Horizontal)
        self._docks_fitted = False  # sized to their content at the first show (unless restored)
        # the Entry dock keeps the full height: the Jobs dock below the tabs never squeezes
        # its History list, and it is tall enough for four or five jobs
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([self.jobs_dock], [190], Qt.Orientation.Vertical)
        self.side_docks = SideDocks(self, self.workspace_dock, self.editor_dock, self.fit_docks,
                                    below=[self.patches_dock, self.pkm_dock])  # one column below ~1,234 px
        for d in (self.workspace_dock, self.editor_dock):
            d.toggleViewAction().toggled.connect(lambda on: self.side_docks.arrange())

        self.browser.selection_changed.connect(lambda ids: self.editor.show_ids(self.browser.path, ids))
        self.browser.new_requested.connect(self.new_entry)
        self.explain.entry_activated.connect(self.open_entry)
        # "Write this fact into the weights…": from an entry, a wrong answer, a wrong probe
        self.browser.write_patch_requested.connect(self.write_patch_from_entry)
        self.editor.write_patch_requested.connect(self.write_patch_from_entry)
        self.explain.write_patch_requested.connect(self.write_patch)
        self.evaluation.write_patch_requested.connect(self.write_patch)
        self.patches_panel.write_requested.connect(lambda: self.write_patch({}))
        self.patches.changed.connect(lambda: self.explain.patches_changed(self.patches.applied))
        self.pkm_layers.changed.connect(lambda: self.explain.pkm_changed(self.pkm_layers.plugged))
        # Evaluation uses Ask's mode and k (e.g. context once the reader has no memory branch)
        follow = lambda *_: self.evaluation.follow_ask(self.explain.current_mode(), self.explain.k.value())  # noqa: E731
        self.explain.mode.currentIndexChanged.connect(follow)
        self.explain.k.valueChanged.connect(follow)
        # knowledge plugins: entities tab, map-tuning jobs, plugin checkboxes, the model host
        self.plugin_trainer = PluginTrainer(ctx, self)
        self.plugin_trainer.plugin_ready.connect(self._plugin_ready)
        from app.views.pkm import PKMGrower

        self.pkm_grower = PKMGrower(ctx, self)
        self.pkm_grower.grown.connect(lambda pack, folder: self.ctx.notifier.info(
            f"Product-key memory of {Path(pack).stem} grown into {folder}: Tools > Product-key memory usage shows it; "
            "tick it in the PKM dock to plug it in."))
        self.pkm_grower.grown.connect(lambda pack, folder: self.pkm_layers.changed.emit())
        self.workspace_panel.map_tune_requested.connect(self.map_tune)
        self.workspace_panel.entities_requested.connect(self.show_entities)
        self.workspace_panel.plugin_toggled.connect(lambda p, on: self._sync_plugins())
        self.entities.map_tune_requested.connect(self.map_tune)
        ctx.model.plugins_loaded.connect(self._plugins_loaded)
        if ctx.workspace.plugins():
            self._sync_plugins()

        self._build_menus()
        self._build_status_bar()
        ctx.hub.changed.connect(lambda p, c: self.update_undo_actions())
        ctx.hub.reloaded.connect(lambda p: self.update_undo_actions())
        ctx.current_changed.connect(lambda p: self.update_undo_actions())
        ctx.busy_changed.connect(lambda p, b: self.update_undo_actions())
        ctx.current_changed.connect(lambda p: self._update_title())
        ctx.workspace_changed.connect(self._update_plugged)
        ctx.encoder_ready.connect(lambda dev: self.device_label.setText(f"Device: {dev}"))
        ctx.demo_progress.connect(self._demo_progress)
        ctx.notifier.message.connect(self._note)
        ctx.jobs.progress.connect(lambda *a: self._update_jobs_label())
        ctx.jobs.jobs_changed.connect(self._update_jobs_label)
        ctx.jobs.started.connect(self._job_started)
        ctx.model.state_changed.connect(lambda st: self._update_reader_label())
        if restore:
            self.restore_state()
        ctx.workspace_changed.connect(self._grow_workspace_dock)
        self.update_undo_actions()
        self._update_plugged()
        self._update_title()
        self._update_reader_label()

    # files and folders dropped anywhere on the window go into the pack shown (see WorkspacePanel.drop)
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        from app.views.workspace_panel import dropped_paths

        if dropped_paths(event):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        from app.views.workspace_panel import dropped_paths

        paths = dropped_paths(event)
        if paths:
            event.acceptProposedAction()
            self.workspace_panel.drop(paths, self.ctx.current)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(f"{title}Dock")
        d.setWidget(widget)
        d.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetClosable
                      | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, d)
        return d

    # ------------------------------------------------------------------ menus
    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        wp = self.workspace_panel
        self.act_new_pack = f.addAction("New pack…", lambda: wp.new_pack())
        self.act_open_pack = f.addAction("Open pack…", lambda: wp.open_pack())
        self.act_open_pack.setShortcut(QKeySequence.StandardKey.Open)
        f.addAction("Import into pack…", lambda: wp.import_into())
        f.addAction("Import worked examples into pack…", lambda: wp.import_examples())
        f.addAction("Export pack…", lambda: wp.export_pack())
        f.addAction("Check pack…", wp.check_selected)
        f.addSeparator()
        quit_act = f.addAction("Quit", self.close)
        quit_act.setShortcut(QKeySequence.StandardKey.Quit)

        e = mb.addMenu("&Edit")
        self.act_undo = QAction("Undo", self)
        self.act_undo.setShortcuts(list(UNDO_KEYS))
        self.act_undo.triggered.connect(self.undo)
        self.act_redo = QAction("Redo", self)
        self.act_redo.setShortcuts(list(REDO_KEYS))
        self.act_redo.triggered.connect(self.redo)
        e.addAction(self.act_undo)
        e.addAction(self.act_redo)
        e.addSeparator()
        self.act_new_entry = e.addAction("New entry", self.new_entry)
        self.act_new_entry.setShortcut(QKeySequence.StandardKey.New)
        self.act_save_entry = e.addAction("Save entry", self.editor.save)
        self.act_save_entry.setShortcut(QKeySequence.StandardKey.Save)
        e.addSeparator()
        e.addAction(self.browser.act_disable)
        e.addAction(self.browser.act_enable)
        e.addAction(self.browser.act_delete)
        e.addSeparator()
        find = e.addAction("Find", lambda: (self.browser.search_box.setFocus(), self.browser.search_box.selectAll()))
        find.setShortcut(QKeySequence.StandardKey.Find)

        v = mb.addMenu("&View")
        for n in range(self.tabs.count()):
            a = v.addAction(self.tabs.tabText(n), lambda n=n: self.tabs.setCurrentIndex(n))
            a.setShortcut(QKeySequence(f"Ctrl+{n + 1}"))
        v.addSeparator()
        for d in (self.workspace_dock, self.patches_dock, self.pkm_dock, self.editor_dock, self.jobs_dock):
            v.addAction(d.toggleViewAction())

        m = mb.addMenu("&Model")
        ask = m.addAction("Ask…", self.focus_prompt)
        ask.setShortcut(QKeySequence("Ctrl+K"))
        m.addAction("Ask again", self.explain.ask_again)

        t = mb.addMenu("&Tools")
        self.act_entities = t.addAction("Entities and triples", lambda: self.show_entities(self.ctx.current))
        self.act_import_triples = t.addAction("Import triples…", self._import_triples)
        self.act_map_tune = t.addAction("Train a knowledge plugin…", lambda: self.map_tune(self.ctx.current))
        self.act_grow_pkm = t.addAction("Grow a product-key memory…", lambda: self.grow_pkm(self.ctx.current))
        self.act_pkm_usage = t.addAction("Product-key memory usage…", lambda: self.pkm_usage(self.ctx.current))
        self.act_write_patch = t.addAction("Write a fact into the weights…", lambda: self.write_patch({}))

        from app.views import help as pages

        h = mb.addMenu("&Help")
        self.help_page = None
        self.act_getting_started = h.addAction("Getting started", lambda: self.show_help("Getting started",
                                                                                         pages.GETTING_STARTED))
        self.act_getting_started.setShortcut(QKeySequence.StandardKey.HelpContents)
        h.addAction("File formats", lambda: self.show_help("File formats", pages.formats_html()))
        h.addAction("Keyboard shortcuts", lambda: self.show_help(
            "Keyboard shortcuts", pages.shortcuts_html(a for m in mb.findChildren(QMenu) for a in m.actions())))
        h.addAction("Open the log folder", pages.open_log_folder)
        h.addSeparator()
        h.addAction("About PlugMem Studio", lambda: self.show_help("About", pages.about_html(self.ctx)))

    def show_help(self, title: str, body: str):
        """Show a help page beside the window (one at a time)."""
        from app.views.help import HelpPage

        if self.help_page is not None:
            self.help_page.close()
        self.help_page = HelpPage(title, body, self)
        self.help_page.show()
        return self.help_page

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.device_label = QLabel("Device: loading encoder…")
        # pack and model names can be long: cut to the room left, whole in the tooltip
        self.plugged_label = ElidedLabel()
        # a running job's title is long: cut like the names beside it, rather than cutting them
        self.jobs_label = ElidedLabel("No jobs running")
        self.reader_label = ElidedLabel("Reader: not loaded")
        self.demo_bar = QProgressBar()
        self.demo_bar.setMaximumWidth(200)
        self.demo_bar.setVisible(False)
        # One-line notes ("no problems found", "Exported ...") get a label of their own: the
        # permanent widgets leave showMessage() no room, so its messages were never seen.
        self.note_label = ElidedLabel()
        self.note_label.setObjectName("statusNote")
        self.note_timer = QTimer(self)
        self.note_timer.setSingleShot(True)
        self.note_timer.timeout.connect(lambda: (self.note_label.setText(""), self.note_label.setVisible(False)))
        # as wide as its note, no wider: with three fifths of the bar it cut the packs' and the
        # reader's names beside a 190 px "no problems found"
        sb.addPermanentWidget(self.note_label, 0)
        self.note_label.setVisible(False)  # shown with a note: while hidden, its room goes to the names beside it
        # no stretch: each label asks for its whole text and is cut only when the bar has too
        # little room for all (with stretch, the bar shared its room equally and cut the
        # reader's long name beside a roomy "No jobs running")
        for w in (self.plugged_label, self.jobs_label, self.demo_bar, self.reader_label, self.device_label):
            sb.addPermanentWidget(w, 0)

    def show_note(self, text: str, ms: int = 10_000) -> None:
        """Show a one-line note in the status bar for ``ms`` milliseconds."""
        self.note_label.setText(text.splitlines()[0] if text else "")
        # whole up to 45 % of the bar (the bar's layout would give it only its 12-character
        # minimum); + 16: app.qss pads status-bar labels 8 px a side, outside the size hint
        want = self.note_label.sizeHint().width() + 16
        # and no wider than the names beside it leave (a long refusal cut them to "Plugge…",
        # "Reader…"): the note is whole in its tooltip, and an error in its dialog too
        names = (self.plugged_label, self.jobs_label, self.demo_bar, self.reader_label, self.device_label)
        room = self.statusBar().width() - sum(w.sizeHint().width() + 16 for w in names if w.isVisible()) - 24
        cap = max(int(0.25 * self.width()), min(room, int(0.45 * self.width())))
        self.note_label.setMinimumWidth(min(want, cap) if text else 0)
        self.note_label.setMaximumWidth(cap)
        self.note_label.setVisible(bool(text))
        self.note_timer.start(ms)

    # ------------------------------------------------------------------ undo / redo
    def _reader(self):
        return self.ctx.reader(self.ctx.current)

    def update_undo_actions(self) -> None:
        r = self._reader()
        busy = bool(self.ctx.current and self.ctx.is_busy(self.ctx.current))
        try:
            can_u, can_r = (r.can_undo(), r.can_redo()) if r is not None else (False, False)
            lu = r.undo_label() if can_u else ""
            lr = r.redo_label() if can_r else ""
        except Exception as exc:
            log.warning("undo state: %s", exc)
            can_u = can_r = False
            lu = lr = ""
        self.act_undo.setEnabled(can_u and not busy)
        self.act_redo.setEnabled(can_r and not busy)
        self.act_undo.setText(f"Undo {lu}".strip())
        self.act_redo.setText(f"Redo {lr}".strip())

    def undo(self) -> None:
        if self.ctx.current and self.act_undo.isEnabled():
            author = self.ctx.author  # the history's "who" of the undo row
            self.ctx.writer(self.ctx.current).submit(lambda m: m.undo(author), what="Undo in")

    def redo(self) -> None:
        if self.ctx.current and self.act_redo.isEnabled():
            author = self.ctx.author
            self.ctx.writer(self.ctx.current).submit(lambda m: m.redo(author), what="Redo in")

    def focus_prompt(self) -> None:
        self.tabs.setCurrentWidget(self.explain)
        self.explain.prompt.setFocus()
        self.explain.prompt.selectAll()

    def open_entry(self, path: str, entry_id: int) -> None:
        """Show an entry (e.g. one that explains an answer) in the editor, selected in the browser."""
        self.ctx.set_current(path)
        b = self.browser
        if not b.select_id(entry_id) and (b.model.searching or b.model.status or b.model.tag):
            b.search_box.clear()
            b.run_search()
            b.status.setCurrentIndex(0)
            b.tag.setCurrentIndex(0)
            b.select_id(entry_id)
        if self.editor.entry is None or self.editor.entry.id != entry_id or self.editor.path != path:
            self.editor.show_entry(path, entry_id)
        self.editor_dock.show()
        self.editor_dock.raise_()

    def new_entry(self) -> None:
        self.editor_dock.show()
        self.editor.new_entry(self.ctx.current)

    # ------------------------------------------------------------------ status bar
    def _update_title(self) -> None:
        cur = self.ctx.current
        self.setWindowTitle(f"{Path(cur).stem} — PlugMem Studio" if cur else "PlugMem Studio")

    def _update_reader_label(self) -> None:
        host = self.ctx.model
        text = {"idle": "Reader: not loaded", "loading": "Reader: loading…", "failed": "Reader: failed to load",
                "closed": "Reader: closed"}.get(host.state, f"Reader: {host.description}")
        self.reader_label.setText(text)
        if host.state == "failed" and host.error is not None:
            self.reader_label.setToolTip(str(host.error))

    def _update_plugged(self) -> None:
        names = [Path(p).stem for p in self.ctx.workspace.plugged()]
        plugins = [Path(p).stem for p in self.ctx.workspace.plugins()]
        self.plugged_label.setText("Plugged in: " + (", ".join(names) if names else "none")
                                   + (f" · plugins: {', '.join(plugins)}" if plugins else ""))

    # ------------------------------------------------------------------ knowledge plugins
    def show_entities(self, path: str | None) -> None:
        if path:
            self.ctx.set_current(path)
        self.tabs.setCurrentWidget(self.entities)

    def _import_triples(self) -> None:
        self.show_entities(self.ctx.current)
        self.entities.import_triples()

    def map_tune(self, path: str | None) -> str | None:
        """Open the map-tune dialog for ``path`` and start its jobs (shown in the Jobs dock)."""
        jid = run_dialog(self.ctx, self.plugin_trainer, path, self)
        if jid is not None:
            self.jobs_dock.show()
            self.jobs_dock.raise_()
        return jid

    def grow_pkm(self, path: str | None) -> str | None:
        """Open the grow dialog for ``path`` and start its job (shown in the Jobs dock)."""
        from app.views.pkm import run_dialog as grow_dialog

        jid = grow_dialog(self.ctx, self.pkm_grower, path, self)
        if jid is not None:
            self.jobs_dock.show()
            self.jobs_dock.raise_()
        return jid

    def write_patch(self, prefill: dict):
        """The *Write this fact into the weights…* dialog, prefilled; its job shows in the Jobs dock."""
        from app.views.patches import WritePatchDialog

        dlg = WritePatchDialog(self.patches, prefill, self)
        self._patch_dialog = dlg  # reachable (tests, screenshots) while it is open
        if dlg.exec() == dlg.DialogCode.Accepted and dlg.jid is not None:
            self.jobs_dock.show()
            self.jobs_dock.raise_()
            self.patches_dock.show()
        return dlg.jid

    def write_patch_from_entry(self, path: str, entry_id: int):
        """The dialog prefilled from an entry, cut where the probe maker cuts it."""
        from app.views.patches import prefill_from_entry

        pack = self.ctx.reader(path)
        if pack is None:
            self.ctx.notifier.error("Writing a fact into the weights", f"{path}: the pack cannot be read now")
            return None
        try:
            prefill = prefill_from_entry(pack, entry_id)
        except (KeyError, ValueError, LookupError) as exc:
            self.ctx.notifier.error("Writing a fact into the weights", f"{Path(path).name}: entry {entry_id}: {exc}")
            return None
        return self.write_patch(prefill)

    def pkm_usage(self, path: str | None):
        from app.views.pkm import show_usage

        self._pkm_usage_window = show_usage(self.ctx, path, self)
        return self._pkm_usage_window

    def _sync_plugins(self) -> None:
        """Load (on the model thread) the plugins that are switched on; drop the others."""
        self.ctx.model.set_plugins(self.ctx.workspace.plugins())

    def _plugin_ready(self, path: str) -> None:
        self.workspace_panel.refresh_plugins()
        on = path in self.ctx.workspace.plugins()
        self.ctx.notifier.info(f"Knowledge plugin of {Path(path).stem} trained"
                               + (": it is plugged in and reloaded." if on else ": tick its plugin box to use it."))
        if on:
            self._sync_plugins()

    def _plugins_loaded(self, loaded: dict, notes: list) -> None:
        if notes:
            self.ctx.notifier.error("Knowledge plugins", "; ".join(notes))
        elif loaded:
            self.show_note("Knowledge plugins plugged in: " + ", ".join(loaded.values()))

    def _update_jobs_label(self) -> None:
        live = list(self.ctx.jobs.live.values())
        if not live:
            self.jobs_label.setText("No jobs running")
        else:
            j = live[0]
            more = f" (+{len(live) - 1})" if len(live) > 1 else ""
            self.jobs_label.setText(f"Job: {j.title} {j.fraction * 100:.0f}%{more}")

    def _job_started(self, jid: str) -> None:
        """A new job: the Jobs dock shows it selected, and the status bar says where it is."""
        job = self.ctx.jobs.live.get(jid)
        self.jobs_dock.show()
        self.show_note(f"Started job #{jid}{': ' + job.title if job else ''} — selected in the Jobs panel below.")

    def _demo_progress(self, fraction: float, message: str) -> None:
        self.demo_bar.setVisible(fraction < 1.0)
        self.demo_bar.setValue(int(fraction * 100))
        self.demo_bar.setFormat("Demo %p%")

    def _note(self, level: str, text: str) -> None:
        self.show_note(text)

    # ------------------------------------------------------------------ layout
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.side_docks.arrange()
        if not self._docks_fitted:
            self._docks_fitted = True
            self.fit_docks()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.side_docks.arrange()

    def fit_docks(self) -> None:
        """Side docks in proportion to the window: the Workspace list as wide as its pack
        names and counts need (at most 30 % of the window), the Entry dock what the tabs'
        minimum leaves (at most 28 %) (at 1280 px the fixed 330/360 cut names to "chemi…")."""
        w = self.width()
        ws = min(max(self.workspace_panel.wanted_width(), self.workspace_panel.minimumWidth()), int(0.3 * w))
        sep = 2 * self.style().pixelMetric(self.style().PixelMetric.PM_DockWidgetSeparatorExtent, None, self)
        rest = w - ws - self.centralWidget().minimumSizeHint().width() - sep - 4
        ed = max(self.editor.minimumSizeHint().width(), min(int(0.28 * w), rest))
        if self.side_docks.mode != SIDE:  # one column: the pack names whole, if the tabs leave room
            room = w - self.centralWidget().minimumSizeHint().width() - sep - 4
            ws = ed = max(self.editor.minimumSizeHint().width(), min(self.workspace_panel.wanted_width(), room))
        self.resizeDocks([self.workspace_dock, self.editor_dock], [ws, ed], Qt.Orientation.Horizontal)

    def _grow_workspace_dock(self) -> None:
        # a newly attached pack with a longer name: widen the list up to its share, never shrink it
        want = min(self.workspace_panel.wanted_width(), int(0.3 * self.width()))
        if self._docks_fitted and self.workspace_dock.isVisible() and want > self.workspace_dock.width():
            self.resizeDocks([self.workspace_dock], [want], Qt.Orientation.Horizontal)

    # ------------------------------------------------------------------ state
    def restore_state(self) -> None:
        geo = load_state("geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        st = load_state("windowState")
        if st is not None:
            self.restoreState(st)
            self.side_docks.detect()
            self._docks_fitted = True  # the user's dock sizes win
        hdr = load_state(self._header_key())
        if hdr is not None:
            self.browser.view.horizontalHeader().restoreState(hdr)
            self.browser._fitted = True
            self.browser._show_score_column()
            self.browser._show_sort_indicator()
        sp = load_state("editorSplitter")
        if sp is not None:
            self.editor.splitter.restoreState(sp)
        sp = load_state("explainSplitter")
        if sp is not None:
            self.explain.splitter.restoreState(sp)
        sp = load_state("evalSplitter")
        if sp is not None:
            self.evaluation.splitter.restoreState(sp)
        sp = load_state("entitiesSplitter")
        if sp is not None:
            self.entities.splitter.restoreState(sp)

    def _header_key(self) -> str:
        """Header state is only valid for the column set it was saved with."""
        return "browserHeader/" + "-".join(self.browser.model.columns())

    def save_state(self) -> None:
        save_state("geometry", self.saveGeometry())
        save_state("windowState", self.saveState())
        save_state(self._header_key(), self.browser.view.horizontalHeader().saveState())
        save_state("editorSplitter", self.editor.splitter.saveState())
        save_state("explainSplitter", self.explain.splitter.saveState())
        save_state("evalSplitter", self.evaluation.splitter.saveState())
        save_state("entitiesSplitter", self.entities.splitter.saveState())
        self.ctx.settings.last_workspace = str(self.ctx.workspace.folder)
        save_settings(self.ctx.settings)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        try:
            self.save_state()
        except Exception as exc:  # pragma: no cover
            log.warning("saving window state: %s", exc)
        for t in self.findChildren(QTimer):  # debounce, count refresh, plot redraw
            t.stop()
        self.ctx.close()
        super().closeEvent(event)
