"""Evaluation view: run fact-probe or edit evaluations (engine.evaluate, the same code as
the CLI and the benchmarks) on a chosen file with the plugged packs; see the figures
with and without memory, per relation, as a table and a bar chart; past runs are kept
in the workspace (``evaluations.jsonl``) and several can be compared.

Each run is a job of the Jobs panel (progress, ETA, log, cancel; kept in past jobs,
'interrupted' if the app went away under it) that runs on the model thread, after any
question being answered, so the GUI never waits. Its progress shows here too. An edit
evaluation edits the plugged packs through their writers and undoes every edit at the
end, also when cancelled; the packs refuse the user's edits meanwhile. The wrong answers
of a run are listed with their first line (the full continuation in the tooltip), as in
"Ask and explain".
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.notifier import is_user_error
from app.evaluations import EvalRequest, EvalRun, EvalStartError, EvalStore, JOB_KINDS, start_evaluation
from engine.mechanisms import modes

log = logging.getLogger(__name__)

WITH = QColor(47, 123, 216)
WITHOUT = QColor(150, 150, 150)
MODES = [(m.label, m.name) for m in modes()]
# the tab's help: what a probe file and an edit file hold (README has the same)
FORMATS_HELP = (
    "<b>Probe file</b> (JSONL, one object a line): <code>prompt</code> and <code>answer</code> (required: the "
    "reader should continue the prompt with the answer; right when its continuation starts with it, case "
    "ignored), optional <code>paraphrases</code> (a list of other prompts with the same answer), "
    "<code>subject</code> and <code>relation</code> (the entry titled <i>subject</i> and tagged <i>relation</i> "
    "is the fact, for hit@k and the figures per relation).<br>"
    "<code>{\"prompt\": \"The capital of Japan is\", \"answer\": \"Tokyo\", \"subject\": \"Japan\", "
    "\"relation\": \"capital\"}</code><br>"
    "<b>Edit file</b>: <code>old_text</code> (an entry's text now), <code>new_text</code> (what it becomes), "
    "<code>prompt</code> and <code>new</code> (the answer the edit should give), optional <code>paraphrase</code> "
    "and <code>old</code>. Each edit is applied, measured and undone.<br>"
    "No file? <b>Make probes from a pack…</b> cuts each entry before its object and lets you check them first.")
EMPTY_STATE = (
    "<p style='font-size:14px'><b>No evaluation yet.</b></p>"
    "<p>1. Pick what to ask above: a demo probe file, a file of your own, or press <b>Make probes from a "
    "pack…</b> to have probes made from your entries (you check them before they are saved).<br>"
    "2. Press <b>Run</b>. The reader answers every probe with the plugged packs and without them; the "
    "figures appear here, per relation, with the wrong answers, and stay for comparison.</p>")
DEMO_FILES = [("probes_heldout.jsonl", "held-out probes"), ("probes_train.jsonl", "training probes"),
              ("edits.jsonl", "edits")]


def detect_kind(path: str | Path) -> str:
    """'edits' when the file's first record has ``old_text``, else 'probes' (also for a file
    that cannot be read: reading it for the run then says what is wrong, and where)."""
    from engine.jsonl import JsonlError, read_jsonl

    try:
        for _, rec in read_jsonl(path):
            return "edits" if "old_text" in rec else "probes"
    except JsonlError:
        pass
    return "probes"


def demo_files() -> list[tuple[str, str]]:
    """(label, path) of the bundled demo probe and edit files."""
    from engine.resources import demo_dir

    out = []
    root = demo_dir()
    for domain in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for name, label in DEMO_FILES:
            f = root / domain / name
            if f.is_file():
                out.append((f"{domain} · {label}", str(f)))
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _side_by_side(runs: list[EvalRun]) -> tuple[list[str], list[str], list[list[str]], dict[tuple[int, int], str]]:
    """Runs of one kind compared: headers ("", "#id mode" per run), their tooltips (the
    runs' labels), rows of figures, and each cell's tooltip (its count). Probe runs: accuracy overall, without memory, on
    paraphrases, hit@k, then per relation (every relation any run has, "–" where a run has
    none); edit runs: efficacy, generalisation, locality, retrieval, before."""
    runs = sorted(runs, key=lambda r: r.id)  # oldest first, left to right
    heads = [""] + [r.short_label for r in runs]
    head_tips = [""] + [r.label for r in runs]
    rows: list[list[str]] = []
    tips: dict[tuple[int, int], str] = {}

    def add(name: str, cells: list[tuple[float | None, object]]) -> None:
        rows.append([name] + [_pct(v) for v, _ in cells])
        for j, (_, n) in enumerate(cells, 1):
            if n not in (None, ""):
                tips[(len(rows) - 1, j)] = f"n = {n}"

    res = [r.result for r in runs]
    if runs[0].kind == "edits":
        add("efficacy", [(r.get("efficacy"), r.get("n")) for r in res])
        add("generalisation (paraphrases)", [(r.get("generalization"), r.get("n_paraphrases")) for r in res])
        add("locality", [(r.get("locality"), r.get("n_locality")) for r in res])
        add("edited entry retrieved", [(r.get("edit_retrieved"), r.get("n")) for r in res])
        add("efficacy before the edits", [(r.get("efficacy_before"), r.get("n")) for r in res])
        return heads, head_tips, rows, tips
    add("all", [(r.get("accuracy"), r.get("n")) for r in res])
    add("all, without memory", [(r.get("accuracy_without_memory"), r.get("n")) for r in res])
    if any(r.get("n_paraphrases") for r in res):
        add("paraphrases", [(r.get("paraphrase_accuracy"), r.get("n_paraphrases")) for r in res])
    add("hit@k", [(r.get("hit_at_k"), r.get("n")) for r in res])
    names = list(dict.fromkeys(name for r in res for name in (r.get("by_relation") or {})))
    for name in names:
        cells = [((r.get("by_relation") or {}).get(name) or {}) for r in res]
        add(name, [(c.get("accuracy"), c.get("n")) for c in cells])
    return heads, head_tips, rows, tips


def _file_items(path: str, kind: str) -> list[tuple[str, str]] | None:
    """(prompt, expected answer) of each probe or edit of ``path`` in its order, as the
    evaluation read them; None when the file cannot be read any more."""
    from engine.evaluate import read_edits, read_probes

    try:
        if kind == "edits":
            return [(e.prompt, e.new) for e in read_edits(path)]
        return [(p.prompt, p.answer) for p in read_probes(path)]
    except (OSError, ValueError) as exc:
        log.info("comparing runs of %s item by item without their prompts: %s", path, exc)
        return None


def _changed_since(path: str, when: float) -> bool:
    try:
        return Path(path).stat().st_mtime > when
    except OSError:
        return False


class EvaluationView(QWidget):
    run_finished = Signal(object)  # EvalRun
    run_failed = Signal(str)
    write_patch_requested = Signal(object)  # {prompt, answer, old} of a wrong probe

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EvaluationView")
        self.ctx = ctx
        self.store = EvalStore(ctx.workspace.folder)
        self.runs: list[EvalRun] = self.store.load()
        self.job_id: str | None = None  # the running evaluation's job
        self._req: EvalRequest | None = None  # and what it evaluates
        self.redraws = 0

        self.file = QComboBox()
        self.file.setMinimumContentsLength(28)
        for label, path in demo_files():
            self.file.addItem(label, path)
            self.file.setItemData(self.file.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        self.file.addItem("Choose a file…", None)
        self.kind_label = QLabel()
        self.kind_label.setObjectName("KindLabel")
        self.mode = QComboBox()
        for label, key in MODES:
            self.mode.addItem(label, key)
        # the same mode and k as Ask and explain, and following it until chosen here
        self.mode.setCurrentIndex(max(0, self.mode.findData(ctx.settings.ask_mode)))
        self._mode_chosen = False
        self.mode.activated.connect(lambda _: setattr(self, "_mode_chosen", True))
        self.k = QSpinBox()
        self.k.setRange(1, 50)
        self.k.setValue(int(ctx.settings.ask_k))
        self.limit = QSpinBox()
        self.limit.setRange(0, 100_000)
        self.limit.setValue(100)
        self.limit.setSuffix(" probes")
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Evaluate only the first N records of the file (all = the whole file)")
        self.make_btn = QPushButton("Make probes from a pack…")
        self.make_btn.setToolTip("Cloze probes from the entries of a pack: check and edit them, save, run")
        self.help_btn = QToolButton(text="Formats")
        self.help_btn.setCheckable(True)
        self.help_btn.setToolTip("What a probe file and an edit file hold")
        self.help = QLabel(FORMATS_HELP)
        self.help.setObjectName("EvalHelp")
        self.help.setWordWrap(True)
        self.help.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.help.setVisible(False)
        self.help_btn.toggled.connect(self.help.setVisible)
        self.run_btn = QPushButton("Run")
        self.run_btn.setDefault(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setVisible(False)
        self.status = QLabel()
        self.status.setObjectName("EvalStatus")
        self.status.setWordWrap(True)

        # Two rows: in one, the controls alone made the window wider than a 1280-pixel screen.
        file_row = QHBoxLayout()
        file_row.addWidget(QLabel("File"))
        file_row.addWidget(self.file, 1)
        file_row.addWidget(self.kind_label)
        file_row.addWidget(self.make_btn)
        file_row.addWidget(self.help_btn)
        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Mode"))
        run_row.addWidget(self.mode)
        run_row.addWidget(QLabel("k"))
        run_row.addWidget(self.k)
        run_row.addWidget(QLabel("Limit"))
        run_row.addWidget(self.limit)
        run_row.addStretch(1)
        run_row.addWidget(self.run_btn)
        run_row.addWidget(self.cancel_btn)
        form = QVBoxLayout()
        form.addLayout(file_row)
        form.addLayout(run_row)

        self.table = QTableWidget(0, 9)
        self.table.setObjectName("EvalRuns")
        self.table.setHorizontalHeaderLabels(["when", "run", "kind", "packs", "n", "", "", "", "seconds"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # The figures (accuracy, without memory, hit@k, seconds) fit beside the names at 1280 px:
        # the run's name takes what is left and wraps, the packs wrap in a column of their
        # own width (in one line each they pushed the figures out of sight).
        self.table.setWordWrap(True)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        th = self.table.horizontalHeader()
        th.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        th.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        th.setSectionResizeMode(3, QHeaderView.ResizeMode.Interactive)
        th.setStretchLastSection(False)
        self.table.setToolTip("Past runs of this workspace. Select several to compare them in the chart.")

        self.detail = QTableWidget(0, 5)
        self.detail.setObjectName("EvalDetail")
        self.detail.verticalHeader().setVisible(False)
        self.detail.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        dh = self.detail.horizontalHeader()
        dh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background=None)
        self.plot.setObjectName("EvalChart")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=True, y=False, alpha=0.25)
        self.plot.setXRange(0, 1, padding=0.02)
        self.plot.setLabel("bottom", "share correct")
        # three ticks: at the chart's narrowest (beside the figures at 1280 px) "0.2 0.4 0.6 0.8" ran together
        self.plot.getAxis("bottom").setTicks([[(0, "0"), (0.5, "0.5"), (1, "1")]])
        self.legend = QLabel()
        self.legend.setObjectName("ChartLegend")
        self.legend.setWordWrap(True)  # on one line it made the chart at least 380 px wide, squeezing the table
        chart = QWidget()
        cl = QVBoxLayout(chart)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.legend)
        cl.addWidget(self.plot, 1)

        self.failures = QTableWidget(0, 3)
        self.failures.setObjectName("EvalFailures")
        self.failures.setHorizontalHeaderLabels(["prompt", "expected", "answer (first line)"])
        self.failures.verticalHeader().setVisible(False)
        self.failures.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.failures.setWordWrap(False)
        fh = self.failures.horizontalHeader()
        fh.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        fh.setStretchLastSection(True)
        self._shown_fails: list[dict[str, str]] = []  # the wrong answers listed (prompt, answer, old)
        self.failures.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.failures.customContextMenuRequested.connect(self._failure_menu)
        self.failures_label = QLabel("Wrong answers")
        self.failures_label.setObjectName("FailuresLabel")
        self.failures_label.setWordWrap(True)
        failures = QWidget()
        fl = QVBoxLayout(failures)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.addWidget(self.failures_label)
        fl.addWidget(self.failures, 1)

        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.detail)
        lower.addWidget(chart)
        lower.setStretchFactor(0, 1)
        lower.setStretchFactor(1, 1)
        lower.setSizes([460, 400])
        lower.setChildrenCollapsible(False)
        split = QSplitter(Qt.Orientation.Vertical)
        split.setObjectName("EvalSplitter")
        below = QSplitter(Qt.Orientation.Vertical)  # nested: the saved state of ``splitter`` keeps two panes
        below.addWidget(lower)
        below.addWidget(failures)
        below.setStretchFactor(0, 3)
        below.setStretchFactor(1, 1)
        below.setSizes([330, 170])  # about five wrong answers visible
        split.addWidget(self.table)
        split.addWidget(below)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        # the runs table shows its header and two runs whole (one, at 1280 x 800, before): runs
        # are picked there to be compared; a run's name wraps onto about three lines at 1280 px,
        # the figures' titles onto two
        fh = self.fontMetrics().height()
        # (a splitter scales the sizes asked to the room it has: 300 for the rest keeps the runs'
        # share at 1280 x 800, where 500 left them two thirds of it)
        split.setSizes([2 * fh + 12 + (3 * fh + 10) * 2 + 8, 300])
        self.splitter = split

        self.empty = QLabel(EMPTY_STATE)
        self.empty.setObjectName("EvalEmpty")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.empty.setContentsMargins(12, 12, 12, 12)
        self.pages = QStackedWidget()  # the empty state until a first run, then the figures
        self.pages.addWidget(self.empty)
        self.pages.addWidget(split)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(form)
        lay.addWidget(self.help)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addWidget(self.pages, 1)

        jobs = ctx.jobs
        jobs.progress.connect(self._job_progress)
        for kind in JOB_KINDS.values():  # "Resume" in the Jobs panel runs the same evaluation again
            jobs.register_rerun(kind, self._rerun)
        self.file.activated.connect(self._file_chosen)
        self.file.currentIndexChanged.connect(self._update_kind)
        self.run_btn.clicked.connect(lambda: self.run())
        self.make_btn.clicked.connect(self.make_probes)
        self.cancel_btn.clicked.connect(self.cancel)
        self.table.itemSelectionChanged.connect(self._show_selected)
        self._update_kind()
        self._fill_runs()
        if self.runs:
            self.table.selectRow(0)
        else:
            self._draw([])
        self.pages.setCurrentWidget(split if self.runs else self.empty)

    # ------------------------------------------------------------------ file
    def current_file(self) -> str | None:
        return self.file.currentData()

    def set_file(self, path: str) -> None:
        path = str(Path(path).resolve())
        i = self.file.findData(path)
        if i < 0:
            self.file.insertItem(self.file.count() - 1, Path(path).name, path)
            self.file.setItemData(self.file.count() - 2, path, Qt.ItemDataRole.ToolTipRole)
            i = self.file.count() - 2
        self.file.setCurrentIndex(i)

    def _file_chosen(self, index: int) -> None:
        if self.file.itemData(index) is not None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation file", "", "Probe or edit files (*.jsonl);;All files (*)")
        if path:
            self.set_file(path)
        else:
            self.file.setCurrentIndex(0)

    def _update_kind(self) -> None:
        f = self.current_file()
        kind = detect_kind(f) if f else "probes"
        self.kind_label.setText(f"({kind})" if f else "")
        self.limit.setSuffix(" edits" if kind == "edits" else " probes")  # "100 probes", not "100"

    def follow_ask(self, mode: str, k: int) -> None:
        """Ask and explain changed its mode or k: take them, unless a mode was chosen here."""
        if not self._mode_chosen and self.mode.findData(mode) >= 0:
            self.mode.setCurrentIndex(self.mode.findData(mode))
            self.k.setValue(k)

    def make_probes(self, pack: str | None = None):
        """Open the probe maker on ``pack`` (else the pack shown); saved probes become the file, and run if asked."""
        from app.views.probe_maker import ProbeMaker

        dlg = ProbeMaker(self.ctx, pack or self.ctx.current, self)
        dlg.saved.connect(self._probes_saved)
        dlg.finished.connect(dlg.deleteLater)
        self.maker = dlg
        dlg.open()
        return dlg

    def _probes_saved(self, path: str, run: bool) -> None:
        self.set_file(path)
        self._message(f"Probes saved to {path}." + ("" if run else " Press Run to evaluate them."))
        if run:
            self.run(path)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.job_id is not None

    def run(self, path: str | None = None) -> bool:
        """Start an evaluation of ``path`` (else the chosen file) as a job. False, with a message, if it cannot start."""
        if self.running:
            return False
        if path:
            self.set_file(path)
        path = self.current_file()
        if not path:
            self._message("Choose a probe or edit file first.", error=True)
            return False
        req = EvalRequest(str(path), detect_kind(path), self.mode.currentData(), self.k.value(), self.limit.value() or None)
        try:
            self.start(req)
        except EvalStartError as exc:
            self._message(str(exc), error=True)
            return False
        return True

    def start(self, req: EvalRequest) -> str:
        """Start ``req`` as a job (EvalStartError when it cannot start); returns the job id."""
        if self.running:
            raise EvalStartError("An evaluation is already running: wait for it or cancel it first.")
        jid = start_evaluation(self.ctx, req, self._ended)
        self.job_id, self._req = jid, req
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setValue(0)
        self.bar.setFormat("starting…")
        self.bar.setVisible(True)
        loading = self.ctx.model.state != "ready"
        self._message(f"{'Loading the reader, then evaluating' if loading else 'Evaluating'} as job #{jid} "
                      "(see the Jobs panel)…")
        return jid

    def _rerun(self, config: dict) -> str:
        req = EvalRequest.from_config(config)
        self.set_file(req.file)
        return self.start(req)

    def cancel(self) -> None:
        """Stop the running evaluation at its next batch (its edits are undone); nothing is kept."""
        if self.job_id is not None and self.ctx.jobs.cancel(self.job_id):
            self.cancel_btn.setEnabled(False)
            self._message("Cancelling at the next batch…")

    def _job_progress(self, jid: str, fraction: float, message: str, eta, metrics) -> None:
        if jid != self.job_id:
            return
        from app.views.jobs_panel import fmt_eta

        left = fmt_eta(eta)
        self.bar.setValue(int(fraction * 1000))
        self.bar.setFormat(f"{fraction * 100:.0f}%  {message}" + (f"  · {left} left" if left else ""))

    def _end(self) -> None:
        self.job_id, self._req = None, None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.bar.setVisible(False)

    def _ended(self, jid: str, status: str, outcome: Any, exc: BaseException | None) -> None:
        """The job's end (GUI thread): keep and show the figures, or say why there are none."""
        if jid != self.job_id:
            return
        req = self._req
        self._end()
        if status == "done":
            self._done(req, outcome)
            return
        if status == "cancelled":
            text = "Evaluation cancelled; nothing was kept" + (
                " (the edits it made were undone)." if req.kind == "edits" else ".")
        elif exc is not None and is_user_error(exc):
            text = str(exc)
        elif exc is not None:
            text = self.ctx.notifier.error("Evaluating", exc)
        else:
            text = f"Evaluation {status}."
        self._message(text, error=status != "cancelled")
        self.run_failed.emit(text)

    def _done(self, req: EvalRequest, outcome: dict) -> None:
        result, used, reader = outcome["result"], outcome["mode"], outcome["reader"]
        run = EvalRun(req.kind, req.file, used, req.k, list(outcome.get("packs") or []), reader, result, req.limit,
                      pkm=outcome.get("pkm"))
        try:
            run = self.store.append(run, self.runs)
        except OSError as exc:
            self.ctx.notifier.error("Saving the evaluation result", exc)
            run.id = max((r.id for r in self.runs), default=0) + 1
        self.runs.append(run)
        self.pages.setCurrentIndex(1)
        self._fill_runs()
        self.table.clearSelection()
        self.table.selectRow(0)  # the new run, newest first
        self._show_selected()
        extra = outcome.get("note") or ""
        restored = "" if req.kind != "edits" else (" Every edit was undone." if result.get("restored") else
                                                   " Warning: some edited entries were not restored; check their history.")
        self._message(f"Done in {result.get('seconds', 0):.1f} s.{restored} {extra}".strip(),
                      error=req.kind == "edits" and not result.get("restored"))
        self.run_finished.emit(run)

    def _message(self, text: str, error: bool = False) -> None:
        self.status.setProperty("error", error)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)
        self.status.setText(text)

    # ------------------------------------------------------------------ past runs
    def _fill_runs(self) -> None:
        runs = list(reversed(self.runs))  # newest first
        kinds = {r.kind for r in runs} or {"probes"}
        heads = list((runs[0] if runs else EvalRun("probes", "", "", 0, [], "", {})).headline())
        if len(kinds) > 1:
            heads = ["headline 1", "headline 2", "headline 3"]
        # two-word figure titles on two lines: "without memory" on one took the run's name's room
        self.table.setHorizontalHeaderLabels(["when", "run", "kind", "packs", "n"] + [h.replace(" ", "\n", 1) for h in heads[:3]]
                                             + ["seconds"])
        self.table.blockSignals(True)
        self.table.setRowCount(len(runs))
        for row, r in enumerate(runs):
            vals = list(r.headline().items())
            cells = [time.strftime("%m-%d %H:%M", time.localtime(r.time)), r.label, r.kind, ", ".join(r.packs) or "—",
                     str(r.result.get("n", ""))] + [f"{_pct(v)} {name}" if len(kinds) > 1 else _pct(v) for name, v in vals[:3]] \
                + [f"{r.result.get('seconds', 0):.1f}"]
            for col, text in enumerate(cells):
                # the run's name wraps after "/" and "_" too (a view cuts a word longer than its line)
                item = QTableWidgetItem(text.replace("/", "/\u200b").replace("_", "_\u200b") if col == 1 else text)
                item.setData(Qt.ItemDataRole.UserRole, r.id)
                item.setToolTip(f"{r.file}\nreader: {r.reader}")
                self.table.setItem(row, col, item)
        self.table.blockSignals(False)
        # packs: as wide as the longest list, up to an eighth of the table (then they wrap)
        room = max(self.table.viewport().width(), 480)
        self.table.setColumnWidth(3, min(max(self.table.sizeHintForColumn(3), 60), room // 8))

    def selected_runs(self) -> list[EvalRun]:
        ids = {self.table.item(i.row(), 0).data(Qt.ItemDataRole.UserRole) for i in self.table.selectionModel().selectedRows()}
        return [r for r in reversed(self.runs) if r.id in ids]

    def _show_selected(self) -> None:
        runs = self.selected_runs()
        self._fill_detail(runs[0] if len(runs) == 1 else None, runs)
        if len(runs) < 2 or not self._fill_differences(runs):
            self._fill_failures(runs[0] if len(runs) == 1 else None)
        self._draw(runs)

    def _fill_differences(self, runs: list[EvalRun]) -> bool:
        """Compared runs of one file: the probes (or edits) they answer differently, each with
        right / wrong per run. False (nothing shown) when the runs cannot be compared so:
        other files or kinds, or runs made before per-item results were kept."""
        runs = sorted(runs, key=lambda r: r.id)
        kind = runs[0].kind
        marks = [r.marks() for r in runs]
        if len({r.kind for r in runs}) > 1 or len({r.file for r in runs}) > 1 or None in marks:
            return False
        n = min(len(m) for m in marks)  # runs with other limits are compared on their common start
        differ = [i for i in range(n) if len({m[i] for m in marks}) > 1]
        items = _file_items(runs[0].file, kind)
        t = self.failures
        self._shown_fails = []  # marks of several runs, not wrong answers to write into the weights
        t.setColumnCount(2 + len(runs))
        t.setHorizontalHeaderLabels(["prompt", "expected"] + [r.short_label for r in runs])
        for j, r in enumerate(runs, 2):
            t.horizontalHeaderItem(j).setToolTip(r.label)
        t.setRowCount(len(differ))
        for row, i in enumerate(differ):
            prompt, expected = items[i] if items is not None and i < len(items) else (f"item {i + 1}", "")
            for col, text in enumerate([prompt, expected] + ["right" if m[i] == "1" else "wrong" for m in marks]):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                t.setItem(row, col, item)
        t.setColumnWidth(0, min(max(t.sizeHintForColumn(0), 160), 420))
        t.setColumnWidth(1, min(max(t.sizeHintForColumn(1), 90), 240))
        what = "edits" if kind == "edits" else "probes"
        note = ""
        if items is None:
            note = f" ({Path(runs[0].file).name} cannot be read now: items by number)"
        elif _changed_since(runs[0].file, min(r.time for r in runs)):
            note = f" ({Path(runs[0].file).name} has changed since: the prompts shown may not be those run)"
        self.failures_label.setText(f"Answered differently by the compared runs: {len(differ)} of {n} {what}{note}")
        return True

    def _fill_failures(self, run: EvalRun | None) -> None:
        """The run's wrong answers (the engine keeps the first 10): prompt, expected, the answer's
        first line — the whole continuation, and what was retrieved, in the tooltip. An edit run
        lists each kind of failure (edit prompt, paraphrase, locality) with the edited entry's rank."""
        if run is not None and run.kind == "edits":
            self._fill_edit_failures(run)
            return
        from app.views.explain import first_line

        t = self.failures
        t.setColumnCount(3)  # a comparison may have left more
        t.setHorizontalHeaderLabels(["prompt", "expected", "answer (first line)"])
        fails = [f for f in ((run.result.get("failures") or []) if run is not None else []) if isinstance(f, dict)]
        t.setRowCount(len(fails))
        self._shown_fails = []
        for row, f in enumerate(fails):
            got = str(f.get("got", ""))
            expected = str(f.get("answer", ""))
            self._shown_fails.append({"prompt": str(f.get("prompt", "")), "answer": expected,
                                      "old": first_line(got).strip(" .")})
            shown = first_line(got) or "(empty answer)"
            retrieved = [str(x) for x in f.get("retrieved") or []]
            tip = f"Full answer:\n{got}" + ("\n\nRetrieved:\n" + "\n".join(f"• {x}" for x in retrieved) if retrieved else "")
            for col, text in enumerate((str(f.get("prompt", "")), expected, shown)):
                item = QTableWidgetItem(text)
                item.setToolTip(tip if col == 2 else text)
                t.setItem(row, col, item)
        t.setColumnWidth(0, min(max(t.sizeHintForColumn(0), 160), 420))
        t.setColumnWidth(1, min(max(t.sizeHintForColumn(1), 90), 240))
        if run is None:
            self.failures_label.setText("Wrong answers (select one run)")
        elif not fails:
            self.failures_label.setText("Wrong answers: none" if run.result.get("n") else "Wrong answers")
        else:
            n_wrong = self._wrong_count(run)
            more = f" (the first {len(fails)} of {n_wrong})" if n_wrong and n_wrong > len(fails) else ""
            self.failures_label.setText(f"Wrong answers{more} — hover an answer for the whole continuation")

    def failure_menu(self, row: int):
        """The menu of a wrong answer's row: *Write this fact into the weights…* (prompt and
        expected answer); None where the table lists a comparison's marks, not wrong answers."""
        from PySide6.QtWidgets import QMenu

        if not 0 <= row < len(self._shown_fails):  # a comparison's marks list no wrong answers
            return None
        menu = QMenu(self)
        fact = dict(self._shown_fails[row])
        menu.addAction("Write this fact into the weights…", lambda: self.write_patch_requested.emit(fact))
        return menu

    def _failure_menu(self, pos) -> None:
        menu = self.failure_menu(self.failures.rowAt(pos.y()))
        if menu is not None:
            menu.exec(self.failures.viewport().mapToGlobal(pos))

    #: An edit run's failure kinds as the table names them (runs made before kinds were kept: efficacy).
    EDIT_FAILURE_KINDS = {"efficacy": "edit prompt", "paraphrase": "paraphrase", "locality": "locality"}

    def _fill_edit_failures(self, run: EvalRun) -> None:
        """kind | prompt | expected (locality: the answer before the edits) | answer | the edited
        entry's rank among those retrieved; the tooltip lists them all by rank, the edited one starred."""
        from app.views.explain import first_line

        t = self.failures
        t.setColumnCount(5)
        t.setHorizontalHeaderLabels(["kind", "prompt", "expected", "answer (first line)", "edited entry"])
        t.horizontalHeaderItem(4).setToolTip("The edited entry's rank among the retrieved entries after the edits")
        fails = [f for f in (run.result.get("failures") or []) if isinstance(f, dict)]
        t.setRowCount(len(fails))
        self._shown_fails = []
        for row, f in enumerate(fails):
            kind = str(f.get("kind") or "efficacy")
            got = str(f.get("got", ""))
            expected = str(f.get("expected", f.get("new", "")))
            # a locality failure's fact is the answer from before the edits
            self._shown_fails.append({"prompt": str(f.get("prompt", "")), "answer": first_line(expected) or expected,
                                      "old": first_line(got).strip(" .")})
            rank = f.get("edited_rank")
            retrieved = [r for r in f.get("retrieved") or [] if isinstance(r, dict)]
            rank_text = f"rank {rank} of {len(retrieved)}" if rank else ("not retrieved" if retrieved else "–")
            lines = [f"{r.get('rank')}.{' *' if r.get('edited') else ''} {r.get('text', '')}  ({r.get('score', 0):.3f})"
                     for r in retrieved]
            tip = (f"Full answer:\n{got}" + ("\n\nBefore the edits:\n" + str(f.get("before")) if kind == "locality" else "")
                   + ("\n\nRetrieved after the edits (* = edited):\n" + "\n".join(lines) if lines else ""))
            cells = (self.EDIT_FAILURE_KINDS.get(kind, kind), str(f.get("prompt", "")), first_line(expected) or expected,
                     first_line(got) or "(empty answer)", rank_text)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip if col in (3, 4) else text)
                if col == 0:
                    item.setData(Qt.ItemDataRole.UserRole, kind)
                t.setItem(row, col, item)
        hh = t.horizontalHeader()
        for col, (low, high) in enumerate(((80, 200), (160, 380), (90, 200), (120, 260))):
            # never narrower than the header's own label ("answer (first line)" was cut)
            t.setColumnWidth(col, max(min(max(t.sizeHintForColumn(col), low), high), hh.sectionSizeHint(col)))
        counts = run.result.get("n_failures")
        if not fails:
            self.failures_label.setText("Failures: none" if run.result.get("n") else "Failures")
        elif isinstance(counts, dict):
            parts = ", ".join(f"{n} {self.EDIT_FAILURE_KINDS.get(k, k)}" for k, n in counts.items() if n)
            self.failures_label.setText(f"Failures: {parts} (at most 10 of each kind) — hover an answer for "
                                        "the whole continuation and the retrieved entries")
        else:
            n_wrong = self._wrong_count(run)
            more = f" (the first {len(fails)} of {n_wrong})" if n_wrong and n_wrong > len(fails) else ""
            self.failures_label.setText(f"Edit prompts not followed{more} (this run kept no paraphrase or "
                                        "locality failures)")

    @staticmethod
    def _wrong_count(run: EvalRun) -> int | None:
        r = run.result
        acc = r.get("efficacy") if run.kind == "edits" else r.get("accuracy")
        n = r.get("n")
        return round(n * (1 - acc)) if isinstance(n, int) and isinstance(acc, (int, float)) else None

    def _fill_detail(self, run: EvalRun | None, runs: list[EvalRun]) -> None:
        t = self.detail
        tips: dict[tuple[int, int], str] = {}
        head_tips: list[str] = []
        if run is None and len(runs) > 1 and len({r.kind for r in runs}) == 1:
            # runs of one kind (e.g. the same probes in two modes): their figures side by side,
            # one column per run, one row per measure or relation
            heads, head_tips, rows, tips = _side_by_side(runs)
        elif run is None and runs:  # runs of both kinds: one row per run, their headline figures
            heads = ["run"] + list(runs[0].headline())
            rows = [[r.label] + [_pct(v) for v in r.headline().values()] for r in runs]
        elif run is None:
            heads, rows = ["relation", "n", "with memory", "without", "hit@k"], []
        elif run.kind == "edits":
            r = run.result
            heads = ["measure", "after the edits", "before", "n", ""]
            rows = [["efficacy (edit prompts give the new answer)", _pct(r.get("efficacy")), _pct(r.get("efficacy_before")), str(r.get("n", "")), ""],
                    ["generalisation (paraphrases)", _pct(r.get("generalization")), _pct(r.get("generalization_before")), str(r.get("n_paraphrases", "")), ""],
                    ["locality (other answers unchanged)", _pct(r.get("locality")), "", str(r.get("n_locality", "")), ""],
                    ["edited entry retrieved", _pct(r.get("edit_retrieved")), "", "", ""],
                    ["old answer still given", _pct(r.get("old_answer_after")), "", "", ""]]
        else:
            r = run.result
            # With knowledge plugins on, a column with the memory alone: the plugins' effect per relation.
            plug = bool(r.get("plugins"))
            with_ = "with plugins" if run.mode == "none" else "with memory + plugins"
            heads = (["relation", "n", with_, "without plugins", "without", "hit@k"] if plug
                     else ["relation", "n", "with memory", "without", "hit@k"])

            def row(name, n, v, acc, nomem, noplug, hit) -> list[str]:
                cells = [name, n, _pct(v.get(acc))] + ([_pct(v.get(noplug))] if plug else [])
                return cells + [_pct(v.get(nomem)), _pct(v.get(hit)) if hit else ""]

            rows = [row("all", str(r.get("n", "")), r, "accuracy", "accuracy_without_memory",
                        "accuracy_without_plugins", "hit_at_k")]
            if r.get("n_paraphrases"):
                rows.append(row("paraphrases", str(r["n_paraphrases"]), r, "paraphrase_accuracy",
                                "paraphrase_accuracy_without_memory", "paraphrase_accuracy_without_plugins", None))
            for name, v in (r.get("by_relation") or {}).items():
                rows.append(row(name, str(v.get("n", "")), v, "accuracy", "accuracy_without_memory",
                                "accuracy_without_plugins", "hit_at_k"))
        t.setColumnCount(len(heads))
        t.setHorizontalHeaderLabels(heads)
        # Every column as wide as its contents (the names first: a stretched first column
        # shrank to "…" in a narrow window); the last one takes what is left.
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setStretchLastSection(True)
        for j, tip in enumerate(head_tips):
            if tip:
                t.horizontalHeaderItem(j).setToolTip(tip)
        t.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                item = QTableWidgetItem(text)
                if j > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if (i, j) in tips:
                    item.setToolTip(tips[(i, j)])
                t.setItem(i, j, item)
        # The figures are read whole: the table never gets less than its columns need (the
        # chart beside it took half the width and cut "without" to "10.0'" and hit@k off);
        # a side-by-side of many runs may take at most three quarters of the tab and scroll.
        hh = t.horizontalHeader()
        need = sum(max(t.sizeHintForColumn(j), hh.sectionSizeHint(j)) for j in range(t.columnCount()))
        need += 2 * t.frameWidth() + t.verticalScrollBar().sizeHint().width()
        t.setMinimumWidth(min(need, int(0.75 * max(self.width(), 640))))

    def chart_data(self, runs: list[EvalRun]) -> tuple[list[str], list[float | None], list[float | None], tuple[str, str]]:
        """Categories and the two bar series the chart shows for the selected runs."""
        if len(runs) > 1:
            cats = [r.short_label for r in runs]  # a long label widens the axis, narrowing the table
            a = [list(r.headline().values())[0] for r in runs]
            b = [r.result.get("efficacy_before") if r.kind == "edits" else r.result.get("accuracy_without_memory") for r in runs]
            return cats, a, b, ("with memory / after edits", "without memory / before edits")
        if not runs:
            return [], [], [], ("with memory", "without memory")
        r = runs[0].result
        if runs[0].kind == "edits":
            return (["efficacy", "generalisation", "locality"],
                    [r.get("efficacy"), r.get("generalization"), r.get("locality")],
                    [r.get("efficacy_before"), r.get("generalization_before"), None], ("after the edits", "before"))
        cats, a, b = ["all"], [r.get("accuracy")], [r.get("accuracy_without_memory")]
        for name, v in (r.get("by_relation") or {}).items():
            cats.append(name)
            a.append(v.get("accuracy"))
            b.append(v.get("accuracy_without_memory"))
        return cats, a, b, ("with memory", "without memory")

    def _draw(self, runs: list[EvalRun]) -> None:
        import pyqtgraph as pg

        cats, a, b, (la, lb) = self.chart_data(runs)
        self.plot.clear()
        self.legend.setText(f"<span style='color:{WITH.name()}'>■</span> {la} &nbsp; "
                            f"<span style='color:{WITHOUT.name()}'>■</span> {lb}")
        n = len(cats)
        ys = list(range(n))  # category i at y = -i (top to bottom)
        for series, off, colour in ((a, -0.2, WITH), (b, 0.2, WITHOUT)):
            pts = [(-(i) + off, v) for i, v in zip(ys, series) if v is not None]
            if pts:
                self.plot.addItem(pg.BarGraphItem(x0=0, y=[p[0] for p in pts], height=0.38,
                                                  width=[p[1] for p in pts], brush=colour, pen=pg.mkPen(None)))
        # Labels in three levels (every 4th, every 2nd, the rest): pyqtgraph always draws the
        # first and leaves out the finer ones where they would overlap (17 relations in
        # 170 px wrote over each other).
        ticks = [(-i, c if len(c) <= 20 else c[:19] + "…") for i, c in enumerate(cats)]  # whole in the table beside
        self.plot.getAxis("left").setTicks([ticks[::4], [t for i, t in enumerate(ticks) if i % 4 == 2],
                                            [t for i, t in enumerate(ticks) if i % 2 == 1]])
        self.plot.setYRange(-(n - 1) - 0.6 if n else -1, 0.6, padding=0)
        self.plot.setXRange(0, 1, padding=0.02)
        self.redraws += 1

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: EvaluationView(ctx), "Evaluation")


if __name__ == "__main__":
    raise SystemExit(main())
