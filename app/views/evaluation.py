"""Evaluation view: run fact-probe or edit evaluations (engine.evaluate, the same code as
the CLI and the benchmarks) on a chosen file with the plugged packs; see the figures
with and without memory, per relation, as a table and a bar chart; past runs are kept
in the workspace (``evaluations.jsonl``) and several can be compared.

Runs happen on the model thread (after any question being answered), report progress
here and can be cancelled. An edit evaluation edits the plugged packs through their
writers and undoes every edit at the end; the packs refuse the user's edits meanwhile.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
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
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.evaluations import EvalRun, EvalStore

log = logging.getLogger(__name__)

WITH = QColor(47, 123, 216)
WITHOUT = QColor(150, 150, 150)
PROGRESS_EVERY_S = 0.1
MODES = [("Memory branch (dpm)", "dpm"), ("In the context", "context"), ("No memory", "none")]
DEMO_FILES = [("probes_heldout.jsonl", "held-out probes"), ("probes_train.jsonl", "training probes"),
              ("edits.jsonl", "edits")]


def detect_kind(path: str | Path) -> str:
    """'edits' when the file's first record has ``old_text``, else 'probes'."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    return "edits" if isinstance(rec, dict) and "old_text" in rec else "probes"
    except (OSError, ValueError, UnicodeDecodeError):
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


class _Relay(QObject):
    """Progress from the model thread, delivered on the GUI thread (queued signal)."""

    progress = Signal(float, str)


class EvaluationView(QWidget):
    run_finished = Signal(object)  # EvalRun
    run_failed = Signal(str)

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EvaluationView")
        self.ctx = ctx
        self.store = EvalStore(ctx.workspace.folder)
        self.runs: list[EvalRun] = self.store.load()
        self._stop: threading.Event | None = None
        self._busy_paths: list[str] = []
        self._gen = 0
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
        self.mode.setCurrentIndex(self.mode.findData("context"))
        self.k = QSpinBox()
        self.k.setRange(1, 50)
        self.k.setValue(5)
        self.limit = QSpinBox()
        self.limit.setRange(0, 100_000)
        self.limit.setValue(100)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Evaluate only the first N records of the file (0 = all of them)")
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

        form = QHBoxLayout()
        form.addWidget(QLabel("File"))
        form.addWidget(self.file, 2)
        form.addWidget(self.kind_label)
        form.addSpacing(8)
        form.addWidget(QLabel("Mode"))
        form.addWidget(self.mode)
        form.addWidget(QLabel("k"))
        form.addWidget(self.k)
        form.addWidget(QLabel("Limit"))
        form.addWidget(self.limit)
        form.addWidget(self.run_btn)
        form.addWidget(self.cancel_btn)

        self.table = QTableWidget(0, 9)
        self.table.setObjectName("EvalRuns")
        self.table.setHorizontalHeaderLabels(["when", "run", "kind", "packs", "n", "", "", "", "seconds"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)
        th = self.table.horizontalHeader()
        th.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        th.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip("Past runs of this workspace. Select several to compare them in the chart.")

        self.detail = QTableWidget(0, 5)
        self.detail.setObjectName("EvalDetail")
        self.detail.verticalHeader().setVisible(False)
        self.detail.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        dh = self.detail.horizontalHeader()
        dh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        dh.setStretchLastSection(False)

        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background=None)
        self.plot.setObjectName("EvalChart")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=True, y=False, alpha=0.25)
        self.plot.setXRange(0, 1, padding=0.02)
        self.plot.setLabel("bottom", "share correct")
        self.legend = QLabel()
        self.legend.setObjectName("ChartLegend")
        chart = QWidget()
        cl = QVBoxLayout(chart)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.legend)
        cl.addWidget(self.plot, 1)

        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.detail)
        lower.addWidget(chart)
        lower.setStretchFactor(0, 2)
        lower.setStretchFactor(1, 3)
        lower.setSizes([440, 560])
        split = QSplitter(Qt.Orientation.Vertical)
        split.setObjectName("EvalSplitter")
        split.addWidget(self.table)
        split.addWidget(lower)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        self.splitter = split

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(form)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addWidget(split, 1)

        self._relay = _Relay()
        self._relay.progress.connect(self._progress)
        self.file.activated.connect(self._file_chosen)
        self.file.currentIndexChanged.connect(self._update_kind)
        self.run_btn.clicked.connect(lambda: self.run())
        self.cancel_btn.clicked.connect(self.cancel)
        self.table.itemSelectionChanged.connect(self._show_selected)
        self._update_kind()
        self._fill_runs()
        if self.runs:
            self.table.selectRow(0)
        else:
            self.status.setText("Choose a probe or edit file and press Run: the figures with and without memory "
                                "appear below, per relation, and stay here for comparison.")
            self._draw([])

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
        self.kind_label.setText(f"({detect_kind(f)})" if f else "")

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._stop is not None

    def run(self, path: str | None = None) -> bool:
        """Start an evaluation of ``path`` (else the chosen file). False, with a message, if it cannot start."""
        if self.running:
            return False
        if path:
            self.set_file(path)
        path = self.current_file()
        if not path:
            self._message("Choose a probe or edit file first.", error=True)
            return False
        kind = detect_kind(path)
        mode, k, limit = self.mode.currentData(), self.k.value(), self.limit.value() or None
        mems, skipped = self.ctx.plugged_memories() if mode != "none" or kind == "edits" else ([], [])
        if kind == "edits" and not mems:
            self._message("An edit evaluation edits the plugged packs (and undoes its edits after): plug one in first.",
                          error=True)
            return False
        locality = Path(path).with_name("probes_heldout.jsonl") if kind == "edits" else None
        stop = threading.Event()
        self._stop = stop
        self._gen += 1
        gen = self._gen
        if kind == "edits":
            self._busy_paths = [m.path for m in mems]
            for p in self._busy_paths:
                self.ctx.set_busy(p, True, "evaluating edits")
        relay = self._relay
        last = [0.0]

        def progress(fraction: float, message: str = "", **_: Any) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or fraction >= 1.0:
                last[0] = now
                relay.progress.emit(float(fraction), str(message))

        def task(model):
            from engine.evaluate import evaluate_edits, evaluate_probes, read_edits, read_probes

            used, note = mode, ""
            if mode == "dpm" and model.branch is None:
                used, note = "context", "No memory branch for this reader: evaluated with the entries in the context."
            predictor = model.predictor
            if kind == "edits":
                loc = read_probes(locality) if locality is not None and locality.is_file() else []
                res = evaluate_edits(predictor, mems, read_edits(path), loc, used, k=k, limit=limit,
                                     progress=progress, should_stop=stop.is_set)
            else:
                res = evaluate_probes(predictor, mems, read_probes(path), used, k=k, limit=limit,
                                      progress=progress, should_stop=stop.is_set)
            return res, used, note, model.describe()

        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setValue(0)
        self.bar.setVisible(True)
        note = ("Left out: " + "; ".join(skipped) + ". ") if skipped else ""
        host = self.ctx.model
        self._message(note + ("Loading the reader, then evaluating…" if host.state != "ready" else "Evaluating…"))
        host.submit(task, lambda res: self._done(gen, kind, path, k, limit, mems, res, note),
                    on_error=lambda exc: self._failed(gen, exc), what="Evaluating")
        return True

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self.cancel_btn.setEnabled(False)
            self._message("Cancelling…")

    def _progress(self, fraction: float, message: str) -> None:
        if self.running:
            self.bar.setValue(int(fraction * 1000))
            self.bar.setFormat(f"{fraction * 100:.0f}%  {message}")

    def _end(self) -> None:
        self._stop = None
        for p in self._busy_paths:
            self.ctx.set_busy(p, False)
        self._busy_paths = []
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.bar.setVisible(False)

    def _done(self, gen: int, kind: str, path: str, k: int, limit: int | None, mems, res, note: str) -> None:
        if gen != self._gen:
            return
        self._end()
        result, used, fell_back, reader = res
        run = EvalRun(kind, str(path), used, k, [m.name for m in mems] if used != "none" or kind == "edits" else [],
                      reader, result, limit)
        try:
            run = self.store.append(run, self.runs)
        except OSError as exc:
            self.ctx.notifier.error("Saving the evaluation result", exc)
            run.id = max((r.id for r in self.runs), default=0) + 1
        self.runs.append(run)
        self._fill_runs()
        self.table.clearSelection()
        self.table.selectRow(0)  # the new run, newest first
        self._show_selected()
        extra = " ".join(x for x in (fell_back, note) if x)
        restored = "" if kind != "edits" else (" Every edit was undone." if result.get("restored") else
                                               " Warning: some edited entries were not restored; check their history.")
        self._message(f"Done in {result.get('seconds', 0):.1f} s.{restored} {extra}".strip(),
                      error=kind == "edits" and not result.get("restored"))
        self.run_finished.emit(run)

    def _failed(self, gen: int, exc: BaseException) -> None:
        if gen != self._gen:
            return
        self._end()
        from app.notifier import is_user_error
        from engine.jobs.progress import JobCancelled

        if isinstance(exc, JobCancelled):
            text = "Evaluation cancelled; nothing was kept (edits made by it were undone)."
        elif is_user_error(exc):
            text = str(exc)
        else:
            text = self.ctx.notifier.error("Evaluating", exc)
        self._message(text, error=not isinstance(exc, JobCancelled))
        self.run_failed.emit(text)

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
        self.table.setHorizontalHeaderLabels(["when", "run", "kind", "packs", "n"] + heads[:3] + ["seconds"])
        self.table.blockSignals(True)
        self.table.setRowCount(len(runs))
        for row, r in enumerate(runs):
            vals = list(r.headline().items())
            cells = [time.strftime("%m-%d %H:%M", time.localtime(r.time)), r.label, r.kind, ", ".join(r.packs) or "—",
                     str(r.result.get("n", ""))] + [f"{_pct(v)} {name}" if len(kinds) > 1 else _pct(v) for name, v in vals[:3]] \
                + [f"{r.result.get('seconds', 0):.1f}"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, r.id)
                item.setToolTip(f"{r.file}\nreader: {r.reader}")
                self.table.setItem(row, col, item)
        self.table.blockSignals(False)

    def selected_runs(self) -> list[EvalRun]:
        ids = {self.table.item(i.row(), 0).data(Qt.ItemDataRole.UserRole) for i in self.table.selectionModel().selectedRows()}
        return [r for r in reversed(self.runs) if r.id in ids]

    def _show_selected(self) -> None:
        runs = self.selected_runs()
        self._fill_detail(runs[0] if len(runs) == 1 else None, runs)
        self._draw(runs)

    def _fill_detail(self, run: EvalRun | None, runs: list[EvalRun]) -> None:
        t = self.detail
        if run is None and runs:  # comparison: one row per run
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
            heads = ["relation", "n", "with memory", "without", "hit@k"]
            rows = [["all", str(r.get("n", "")), _pct(r.get("accuracy")), _pct(r.get("accuracy_without_memory")), _pct(r.get("hit_at_k"))]]
            if r.get("n_paraphrases"):
                rows.append(["paraphrases", str(r["n_paraphrases"]), _pct(r.get("paraphrase_accuracy")),
                             _pct(r.get("paraphrase_accuracy_without_memory")), ""])
            for name, v in (r.get("by_relation") or {}).items():
                rows.append([name, str(v.get("n", "")), _pct(v.get("accuracy")), _pct(v.get("accuracy_without_memory")), _pct(v.get("hit_at_k"))])
        t.setColumnCount(len(heads))
        t.setHorizontalHeaderLabels(heads)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        t.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                item = QTableWidgetItem(text)
                if j > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                t.setItem(i, j, item)

    def chart_data(self, runs: list[EvalRun]) -> tuple[list[str], list[float | None], list[float | None], tuple[str, str]]:
        """Categories and the two bar series the chart shows for the selected runs."""
        if len(runs) > 1:
            cats = [r.label for r in runs]
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
        self.plot.getAxis("left").setTicks([[(-i, c[:28]) for i, c in enumerate(cats)]])
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
