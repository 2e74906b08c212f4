"""Jobs panel: running and past jobs (the runner's records), progress, ETA, log, cancel, resume,
and a live loss curve (pyqtgraph, redrawn at most 10 times a second)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QInputDialog,
    QLabel,
    QMenu,
    QToolButton,
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.jobs import _get, is_in_app
from app.views.fit import MenuToolButton
from app.views.job_details import summary_html, technical_text

log = logging.getLogger(__name__)

REDRAW_MS = 100  # <= 10 redraws per second


def fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"

# job, status, progress, ETA; the message column takes the rest
COLUMN_WIDTHS = (220, 80, 120, 60)
MIN_JOB_WIDTH, MIN_MESSAGE_WIDTH = 100, 90


class JobsPanel(QWidget):
    job_selected = Signal(str)

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("JobsPanel")
        self.ctx = ctx
        self.jobs = ctx.jobs
        self._rows: list[str] = []
        self._records: dict[str, Any] = {}
        self._plot_dirty = False
        self._logs: dict[str, list[str]] = {}  # messages of this session's jobs, kept after they end

        self.table = QTableWidget(0, len(COLUMN_WIDTHS) + 1)
        self.table.setObjectName("JobTable")
        self.table.setHorizontalHeaderLabels(["job", "status", "progress", "ETA", "message"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        for col, width in enumerate(COLUMN_WIDTHS):
            self.table.setColumnWidth(col, width)
        # a narrow dock (a 1024 px screen) shrinks the job column instead of scrolling sideways
        self.table.viewport().installEventFilter(self)
        # rows as tall as the text (not the progress bar's default): four or five rows show
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 8)

        self.cancel_btn = QPushButton("Cancel")
        self.resume_btn = QPushButton("Resume")
        self.resume_btn.setToolTip("Continue an interrupted or cancelled job from its last checkpoint")
        self.refresh_btn = QPushButton("Refresh")
        self.new_btn = MenuToolButton(text="New job")  # room for its menu arrow
        self.new_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.new_btn.setToolTip("Start a background job")
        menu = QMenu(self)
        menu.addAction("Train the memory reader on the demo facts…", lambda: self.train_memory_reader_dialog(demo=True))
        menu.addAction("Train the memory reader on files…", lambda: self.train_memory_reader_dialog(demo=False))
        menu.addAction("Prepare the plugged packs for fast answers", self.prepare_plugged)
        self.new_btn.setMenu(menu)
        btns = QHBoxLayout()
        btns.addWidget(self.new_btn)
        btns.addWidget(self.cancel_btn)
        btns.addWidget(self.resume_btn)
        btns.addStretch(1)
        btns.addWidget(self.refresh_btn)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.table, 1)
        ll.addLayout(btns)

        # the selected job in words; its function and raw config behind "Technical details"
        self.summary = QLabel("Select a job to see what it does, when it ran and how it ended.")
        self.summary.setObjectName("JobSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(1000)
        self.log_view.setPlaceholderText("The selected job's messages appear here.")
        self.tech_btn = QToolButton(text="Technical details")
        self.tech_btn.setObjectName("TechDetailsButton")
        self.tech_btn.setCheckable(True)
        self.tech_btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.tech_btn.setArrowType(Qt.ArrowType.RightArrow)
        self.tech_btn.setAutoRaise(True)
        self.tech_view = QPlainTextEdit()
        self.tech_view.setObjectName("TechDetails")
        self.tech_view.setReadOnly(True)
        self.tech_view.setVisible(False)
        self.tech_btn.toggled.connect(self._show_technical)
        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background=None)
        self.plot.setObjectName("LossPlot")
        self.plot.setLabel("left", "loss")
        self.plot.setLabel("bottom", "step")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMinimumHeight(110)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(width=2))
        self.plot.setVisible(False)
        self.redraws = 0
        details = QWidget()
        dl = QVBoxLayout(details)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.setSpacing(2)
        summary_scroll = QScrollArea()  # a short dock must not cut the summary's last lines
        summary_scroll.setWidget(self.summary)
        summary_scroll.setWidgetResizable(True)
        summary_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        dl.addWidget(summary_scroll, 3)
        dl.addWidget(self.log_view, 2)
        dl.addWidget(self.tech_btn, 0, Qt.AlignmentFlag.AlignLeft)
        dl.addWidget(self.tech_view, 3)

        # the loss curve goes beside the details, not under them: below, it made the dock
        # taller and squeezed the docks beside it when it appeared
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setObjectName("JobsSplitter")
        split.addWidget(left)
        split.addWidget(details)
        split.addWidget(self.plot)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setStretchFactor(2, 2)
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split)

        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(REDRAW_MS)
        self.redraw_timer.timeout.connect(self._redraw_plot)

        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn.clicked.connect(self.resume_selected)
        self.refresh_btn.clicked.connect(self.refresh)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.jobs.progress.connect(self._progress)
        self.jobs.jobs_changed.connect(self.refresh)
        self.jobs.started.connect(self.show_job)
        self.jobs.finished.connect(lambda jid, res: self._ended(jid))
        self.jobs.failed.connect(lambda jid, msg: self._ended(jid, msg))
        self.refresh()

    # ------------------------------------------------------------------ rows
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if obj is self.table.viewport() and event.type() == QEvent.Type.Resize:
            self._fit_columns(event.size().width())
        return super().eventFilter(obj, event)

    def _fit_columns(self, width: int) -> None:
        rest = sum(COLUMN_WIDTHS[1:])
        self.table.setColumnWidth(0, max(MIN_JOB_WIDTH, min(COLUMN_WIDTHS[0], width - rest - MIN_MESSAGE_WIDTH)))

    def selected_id(self) -> str | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self._rows[min(rows)] if rows else None

    def refresh(self) -> None:
        """Live jobs first, then the runner's past records, newest first."""
        keep = self.selected_id()
        try:
            recs = self.jobs.records() if (self.jobs._runner is not None or self.jobs.db_path.exists()) else []
        except Exception:
            recs = []
        self._records = {str(_get(r, "id")): r for r in recs}
        ids = list(self.jobs.live.keys()) + [i for i in self._records if i not in self.jobs.live]
        self._rows = ids
        self.table.setRowCount(len(ids))
        for row, jid in enumerate(ids):
            live = self.jobs.live.get(jid)
            rec = self._records.get(jid)
            if live is not None:
                title, status, frac, eta, msg = live.title, "running", live.fraction, live.eta, live.message
            else:
                title = str(_get(rec, "title") or _get(rec, "kind") or "job")
                status = str(_get(rec, "status") or "?")
                frac = _get(rec, "fraction")
                frac = float(frac) if frac is not None else (1.0 if status == "done" else 0.0)
                eta = None
                msg = str(_get(rec, "message") or _get(rec, "error") or "")
            started = _get(rec, "started") or _get(rec, "created")
            when = time.strftime(" · %m-%d %H:%M", time.localtime(float(started))) if isinstance(started, (int, float)) else ""
            name = QTableWidgetItem(f"#{jid} {title}{when}")
            name.setToolTip(name.text())  # cut to the column in a narrow dock: whole here and in the details
            self.table.setItem(row, 0, name)
            self.table.setItem(row, 1, QTableWidgetItem(status))
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setValue(int(frac * 1000))
            bar.setFormat(f"{frac * 100:.0f}%")
            self.table.setCellWidget(row, 2, bar)
            self.table.setItem(row, 3, QTableWidgetItem(fmt_eta(eta)))
            item = QTableWidgetItem(msg)
            item.setToolTip(msg)
            self.table.setItem(row, 4, item)
        if keep in ids:
            self.table.selectRow(ids.index(keep))
        elif ids and self.jobs.live:
            self.table.selectRow(0)
        self._show_summary()
        self._update_buttons()

    def show_job(self, jid: str) -> None:
        """Select a job and scroll it into view (a job that has just started)."""
        live = self.jobs.live.get(jid)
        if live is not None:
            self._logs[jid] = live.log  # the same list: it grows while the job runs
        if jid not in self._rows:
            self.refresh()
        if jid in self._rows:
            row = self._rows.index(jid)
            self.table.selectRow(row)
            self.table.scrollToItem(self.table.item(row, 0))

    def _progress(self, jid: str, fraction: float, message: str, eta, metrics) -> None:
        if jid not in self._rows:
            self.refresh()
            return
        row = self._rows.index(jid)
        bar = self.table.cellWidget(row, 2)
        if isinstance(bar, QProgressBar):
            bar.setValue(int(fraction * 1000))
            bar.setFormat(f"{fraction * 100:.0f}%")
        self.table.item(row, 3).setText(fmt_eta(eta))
        self.table.item(row, 4).setText(message)
        if jid == self.selected_id():
            live = self.jobs.live.get(jid)
            if live and live.log and (self.log_view.blockCount() < len(live.log) or not self.log_view.toPlainText().endswith(live.log[-1])):
                self.log_view.appendPlainText(live.log[-1])
            if metrics and "loss" in metrics:
                self._plot_dirty = True
                if not self.redraw_timer.isActive():
                    self.redraw_timer.start()

    def _ended(self, jid: str, message: str = "") -> None:
        if message and jid == self.selected_id():
            self.log_view.appendPlainText(message)
        self._show_summary()
        self._redraw_plot()
        self.redraw_timer.stop()

    def _selection_changed(self) -> None:
        jid = self.selected_id()
        self.log_view.clear()
        live = self.jobs.live.get(jid) if jid else None
        if live is not None:
            self.log_view.setPlainText("\n".join(live.log))
        elif jid in self._records:
            lines = self._logs.get(jid) or [str(_get(self._records[jid], "message") or "")]
            self.log_view.setPlainText("\n".join(lines))
        self._show_summary()
        self._plot_dirty = True
        self._redraw_plot()
        self._update_buttons()
        if jid:
            self.job_selected.emit(jid)

    def _show_summary(self) -> None:
        """The selected job in words, and its technical details (shown when asked for)."""
        jid = self.selected_id()
        rec = self._records.get(jid) if jid else None
        live = self.jobs.live.get(jid) if jid else None
        if rec is None and live is None:
            self.summary.setText("Select a job to see what it does, when it ran and how it ended.")
            self.tech_view.setPlainText("")
            return
        config = dict(_get(rec, "config") or {})
        kind = str(_get(rec, "kind") or (live.kind if live else "job"))
        self.summary.setText(summary_html(
            kind=kind, title=live.title if live else str(_get(rec, "title") or kind),
            status="running" if live else str(_get(rec, "status") or "?"), config=config,
            started=_get(rec, "started") or (live.started if live else None),
            finished=None if live else _get(rec, "finished"), result=None if live else _get(rec, "result"),
            error=None if live else _get(rec, "error"), message=live.message if live else str(_get(rec, "message") or "")))
        extra = {k: _get(rec, k) for k in ("status", "pid", "exit_code", "attempts", "traceback")}
        extra["result"] = _get(rec, "result")
        self.tech_view.setPlainText(technical_text(job_id=str(jid), kind=kind, fn=str(_get(rec, "fn") or "?"),
                                                   config=config, extra=extra))

    def _show_technical(self, on: bool) -> None:
        self.tech_btn.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.tech_view.setVisible(on)

    def _redraw_plot(self) -> None:
        if not self._plot_dirty:
            self.redraw_timer.stop()
            return
        self._plot_dirty = False
        jid = self.selected_id()
        live = self.jobs.live.get(jid) if jid else None
        pts = live.losses if live is not None else []
        if pts and self.plot.isHidden():  # a third of the width, not a sliver
            w = max(self.splitter.width(), 600)
            self.splitter.setSizes([int(w * 0.44), int(w * 0.28), int(w * 0.28)])
        self.plot.setVisible(bool(pts))
        if pts:
            xs, ys = zip(*pts)
            self.plot.setLabel("bottom", live.loss_unit)
            self.curve.setData(list(xs), list(ys))
            self.redraws += 1

    def _update_buttons(self) -> None:
        jid = self.selected_id()
        running = jid in self.jobs.live if jid else False
        rec = self._records.get(jid) if jid else None
        self.cancel_btn.setEnabled(running)
        self.resume_btn.setEnabled(bool(jid) and not running and rec is not None and self.jobs.can_resume(rec))
        self.resume_btn.setToolTip(
            "Run this evaluation again from the start (it keeps no checkpoint)" if rec is not None and is_in_app(rec)
            else "Continue an interrupted or cancelled job from its last checkpoint")

    # ------------------------------------------------------------------ actions
    def cancel_selected(self) -> None:
        jid = self.selected_id()
        if jid:
            self.jobs.cancel(jid)

    def resume_selected(self) -> None:
        jid = self.selected_id()
        if not jid:
            return
        try:
            self.jobs.resume(jid)
        except Exception as exc:
            self.ctx.notifier.error(f"Resuming job {jid}", exc)

    # ------------------------------------------------------------------ training
    def train_memory_reader(self, data: list[str], steps: int = 1000, out: str | None = None,
                            **options) -> str | None:
        """Train the DPM memory branch of the workspace's reader in a background job (child
        process, live loss curve, resumable). When it ends well the workspace uses the new
        branch: mode 'dpm' of "Ask and explain" and the evaluations then read through it."""
        ctx = self.ctx
        if not data:
            ctx.notifier.error("Training the memory reader", "no training files chosen")
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = out or str(ctx.workspace.folder / "branches" / f"dpm-{stamp}")
        config = {"out": out, "data": list(data), "steps": int(steps), "reader": ctx.workspace.reader, **options}

        def ended(job_id, status, result) -> None:
            if status != "done":
                return
            ctx.use_dpm_branch(out)
            ctx.notifier.info(f"Memory branch trained ({Path(out).name}); mode “memory branch” now uses it.")

        try:
            return ctx.jobs.start("train_memory_reader", "engine.mechanisms.dpm.train_branch:train_memory_reader", config,
                                  title=f"Train the memory reader ({steps:,} steps)", on_end=ended)
        except Exception as exc:
            ctx.notifier.error("Starting the memory reader training", exc)
            return None

    def prepare_plugged(self) -> str | None:
        """Read every active entry of the plugged packs once; keep the states on disk."""
        from app.views.workspace_panel import start_prepare_states

        return start_prepare_states(self.ctx, list(self.ctx.workspace.plugged()))

    def train_memory_reader_dialog(self, demo: bool) -> None:
        if demo:
            from engine.resources import demo_dir

            data = sorted(str(p) for p in demo_dir().glob("*/counterfactual_train.jsonl"))
        else:
            data, _ = QFileDialog.getOpenFileNames(
                self, "Training facts (JSONL: text, prompt, answer)", "", "JSON lines (*.jsonl);;All files (*)")
        if not data:
            return
        steps, ok = QInputDialog.getInt(self, "Train the memory reader",
                                        f"{len(data)} file(s). Training steps (about 1 s each on a CPU):", 1000, 10, 100_000, 100)
        if ok:
            self.train_memory_reader(data, steps)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.redraw_timer.stop()
        super().closeEvent(event)


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: JobsPanel(ctx), "Jobs")


if __name__ == "__main__":
    raise SystemExit(main())
