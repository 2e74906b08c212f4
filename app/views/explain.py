"""Ask and explain: a prompt, the answer with and without the plugged memories side by
side, and the retrieved entries that explain it (retrieval score, fusion weight and
leave-one-out effect drawn as bars). Click an entry to open it in the editor; after an
edit, "Ask again" shows how the answer follows.

Predictions run on the model thread (:class:`app.model_host.ModelHost`); the plugged
packs are searched on their writer threads. Nothing here blocks the event loop.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.models.explanation_table import BAR_ROLE, COLUMNS, ExplanationTableModel
from app.views.bars import BarDelegate
from app.views.elided import ElidedGroupBox
from app.views.fit import MenuToolButton, WrappedLabel, fit_placeholder
from engine.mechanisms import choose_mode, modes

log = logging.getLogger(__name__)

MODES = [(m.label, m.name, m.help) for m in modes()]
MAX_K = 50

HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PlugMem Studio explanation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
</style></head>
<body>
<h1>Explanation</h1>
{body}
<p style="color:#777">Exported from PlugMem Studio. Score: retrieval score (mean inner product with the entry's key and with its key without the object, plus a bonus for the share of the prompt's distinctive words the entry has in its title, text or tags); weight: fusion weight;
leave-one-out: change of log p(answer) when the entry is left out.</p>
</body></html>
"""


class ExplainPanel(QWidget):
    answered = Signal(object)  # the Explanation shown
    failed = Signal(str)  # the message shown
    entry_activated = Signal(str, int)  # pack path, entry id
    write_patch_requested = Signal(object)  # {prompt, answer, old}: "Write the right answer into the weights…"
    without_done = Signal(object)  # the Explanation, its answers without each weight patch filled in
    without_pkm_done = Signal(object)  # the Explanation, its answers without the product-key memory filled in

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ExplainPanel")
        self.ctx = ctx
        self.explanation = None
        self._gen = 0
        self._pending = False
        self._pack_paths: dict[str, str] = {}  # pack name in the record -> file
        self._asked_plugged: list[str] = []

        # short enough to be read whole beside the buttons at 1280 px; the long form in the tooltip
        self.prompt = QLineEdit(placeholderText="Ask, or type the start of a sentence to complete…")
        self.prompt.setToolTip("Ask the model, or type the start of a sentence for it to complete (Enter)")
        self.prompt.setObjectName("PromptBox")
        fit_placeholder(self.prompt)
        self.prompt.setClearButtonEnabled(True)
        self.ask_btn = QPushButton("Ask")
        self.ask_btn.setDefault(True)
        self.ask_btn.setToolTip("Answer with the plugged memories and explain the answer (Enter)")
        self.again_btn = QPushButton("Ask again")
        self.again_btn.setToolTip("Ask the last question again (after editing entries or plugging packs)")
        self.again_btn.setEnabled(False)

        self.mode = QComboBox()
        for label, key, tip in MODES:
            self.mode.addItem(label, key)
            self.mode.setItemData(self.mode.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.k = QSpinBox()
        self.k.setRange(1, MAX_K)
        self.k.setToolTip("How many entries are retrieved (top-k over all plugged packs)")
        self.tokens = QSpinBox()
        self.tokens.setRange(1, 64)
        self.tokens.setValue(8)
        self.tokens.setToolTip("Longest answer, in tokens (an answer also ends with its first sentence or line)")
        self.export_btn = MenuToolButton(text="Export")  # room for its menu arrow
        self.export_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.export_btn.setToolTip("Save this explanation as JSON or HTML")
        menu = QMenu(self)
        menu.addAction("As JSON…", lambda: self._export_dialog("json"))
        menu.addAction("As HTML…", lambda: self._export_dialog("html"))
        self.export_btn.setMenu(menu)
        self.export_btn.setEnabled(False)

        row1 = QHBoxLayout()
        row1.addWidget(self.prompt, 1)
        row1.addWidget(self.ask_btn)
        row1.addWidget(self.again_btn)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Mode"))
        row2.addWidget(self.mode)
        row2.addSpacing(12)
        row2.addWidget(QLabel("Entries (k)"))
        row2.addWidget(self.k)
        row2.addSpacing(12)
        row2.addWidget(QLabel("Answer tokens"))
        row2.addWidget(self.tokens)
        row2.addStretch(1)
        row2.addWidget(self.export_btn)

        self.with_box, self.with_text = self._answer_box("With memory")
        # the plugged packs on a line of their own that wraps: in the box's title they were cut
        # to "…" beside a short answer box at 1280 px
        self.packs_label = WrappedLabel()
        self.packs_label.setObjectName("AnswerPacks")
        self.with_box.layout().insertWidget(0, self.packs_label)
        self.without_box, self.without_text = self._answer_box("Without memory")
        answers = QHBoxLayout()
        answers.addWidget(self.with_box, 1)
        answers.addWidget(self.without_box, 1)
        self.verdict = QLabel()
        self.verdict.setObjectName("Verdict")
        self._build_plugin_box()
        self._build_patch_box()
        self._build_pkm_box()

        self.model = ExplanationTableModel(self)
        self.table = QTableView()
        self.table.setObjectName("RetrievedTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # An entry is what explains the answer: its text wraps onto as many lines as it needs
        # rather than being cut to the column (the numbers beside it need little room).
        self.table.setWordWrap(True)
        self.table.setMouseTracking(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setMinimumSectionSize(self.fontMetrics().height() + 12)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.bar_delegate = BarDelegate(self.table)
        hh = self.table.horizontalHeader()
        fm = self.fontMetrics()
        for i, name in enumerate(COLUMNS):
            if name in ("score", "weight", "leave-one-out"):  # as wide as the header or "+0.000", and the bar's margins
                self.table.setItemDelegateForColumn(i, self.bar_delegate)
                self.table.setColumnWidth(i, max(fm.horizontalAdvance(name), fm.horizontalAdvance("+0.000")) + 28)
        self.table.setColumnWidth(COLUMNS.index("#"), 34)
        self.table.setColumnWidth(COLUMNS.index("pack"), 90)
        hh.setMinimumSectionSize(30)
        hh.setSectionResizeMode(COLUMNS.index("entry"), QHeaderView.ResizeMode.Stretch)
        self.table.setCursor(Qt.CursorShape.PointingHandCursor)

        self.status = QLabel()
        self.status.setObjectName("ExplainStatus")
        self.status.setWordWrap(True)
        self.stale = QLabel()
        self.stale.setObjectName("StaleNotice")
        self.stale.setWordWrap(True)
        self.stale.setVisible(False)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(row1)
        tl.addLayout(row2)
        tl.addLayout(answers, 1)
        tl.addWidget(self.verdict)
        tl.addWidget(self.plugin_box)
        tl.addWidget(self.patch_box)
        tl.addWidget(self.pkm_box)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        self.retrieved_label = QLabel("Retrieved entries")
        self.retrieved_label.setObjectName("SectionLabel")
        bl.addWidget(self.retrieved_label)
        bl.addWidget(self.table, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.setObjectName("ExplainSplitter")
        split.addWidget(top)
        split.addWidget(bottom)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setChildrenCollapsible(False)  # the answers keep their lines; the table gives way
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split, 1)
        lay.addWidget(self.stale)
        lay.addWidget(self.status)

        s = ctx.settings
        self.mode.setCurrentIndex(max(0, self.mode.findData(getattr(s, "ask_mode", "dpm"))))
        self.k.setValue(int(getattr(s, "ask_k", 5)))
        self.prompt.returnPressed.connect(self.ask)
        self.ask_btn.clicked.connect(self.ask)
        self.again_btn.clicked.connect(self.ask_again)
        self.mode.currentIndexChanged.connect(self._options_changed)
        self.k.valueChanged.connect(self._options_changed)
        self.table.clicked.connect(self._clicked)
        self.table.activated.connect(self._clicked)
        ctx.hub.changed.connect(self._pack_changed)
        ctx.workspace_changed.connect(self._plugged_changed)
        host = ctx.model
        host.state_changed.connect(self._model_state)
        host.ready.connect(lambda desc: self._model_state(host.state))
        self._clear_answers()
        self._model_state(host.state)

    # ------------------------------------------------------------------ layout helpers
    def _answer_box(self, title: str) -> tuple[QGroupBox, QLabel]:
        box = ElidedGroupBox(title)  # the title names the plugged packs: cut, not widening the window
        text = WrappedLabel()  # every line of the answer, however small its pane is made
        text.setObjectName("AnswerText")
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        lay = QVBoxLayout(box)
        lay.addWidget(text, 1)
        return box, text

    def _clear_answers(self) -> None:
        self.with_text.setText("")
        self.without_text.setText("")
        self.verdict.setText("")
        self.with_box.setTitle("With memory")
        self.packs_label.setText("")
        self.packs_label.setVisible(False)
        self.model.set_entries([])
        self.plugin_box.setVisible(False)
        self.injected.setRowCount(0)
        self.patches_label.setText("Weight patches: none applied")
        self.without_patches_text.setText("")
        self.without_patches_btn.setEnabled(False)
        self.write_patch_btn.setEnabled(False)
        self.pkm_box.setVisible(False)
        self.pkm_slots.setRowCount(0)

    # ------------------------------------------------------------------ asking
    def current_mode(self) -> str:
        return self.mode.currentData()

    def ask(self) -> bool:
        """Ask the prompt in the box. False (with an inline message) when it cannot be asked."""
        prompt = self.prompt.text()
        if not prompt.strip():
            self._error("Type a question or the start of a sentence first.")
            return False
        mode, k, n = self.current_mode(), self.k.value(), self.tokens.value()
        host = self.ctx.model
        if mode == "dpm" and host.state == "ready" and not host.has_branch:
            self._error("Mode “memory branch” needs a trained memory branch, and this reader has none: "
                        "choose “In the context”, or train one from the Jobs panel.")
            return False
        mems, skipped = self.ctx.plugged_memories() if mode != "none" else ([], [])
        self._gen += 1
        gen = self._gen
        self._pending = True
        self._asked = (prompt, mode, k, n)
        self._asked_plugged = list(self.ctx.workspace.plugged())
        plugin_paths = list(self.ctx.workspace.plugins())
        self._asked_plugins = plugin_paths
        paths = {m.name: m.path for m in mems}
        note = ""
        if mode != "none" and not mems:
            note = "No pack is plugged in: the answer is the bare reader's. Tick a pack in the Workspace panel."
        if skipped:
            note = (note + " " if note else "") + "Left out: " + "; ".join(skipped) + "."

        def task(model):
            predictor = model.predictor
            # the reader's branch is known only now that the reader loaded
            used, fell_back = choose_mode(mode, has_branch=model.branch is not None)
            plugins, plugin_notes = model.plugins_for(plugin_paths)  # loads missing ones; [] frees unplugged ones
            if plugin_notes:
                fell_back = " ".join(x for x in (fell_back, "Knowledge plugins left out: " + "; ".join(plugin_notes) + ".") if x)
            return predictor.predict(prompt, mems, mode=used, k=k, max_new_tokens=n, plugins=plugins), fell_back

        self._set_busy(True, "Loading the reader, then answering…" if host.state != "ready" else "Answering…")
        host.submit(task, lambda res: self._done(gen, res[0], paths, " ".join(x for x in (res[1], note) if x)),
                    on_error=lambda exc: self._failed(gen, exc), what="Answering")
        return True

    def ask_again(self) -> bool:
        if not getattr(self, "_asked", None):
            return False
        prompt, *_ = self._asked
        if self.prompt.text() != prompt:
            self.prompt.setText(prompt)
        return self.ask()

    def _done(self, gen: int, expl, paths: dict[str, str], note: str) -> None:
        if gen != self._gen:
            return  # a newer question was asked meanwhile
        self._pending = False
        self._set_busy(False)
        self.explanation = expl
        self._pack_paths = paths
        self.stale.setVisible(False)
        mode_label = next((label for label, key, _ in MODES if key == expl.mode), expl.mode)
        packs = ", ".join(expl.packs) if expl.packs else "no pack plugged"
        self.with_box.setTitle(f"With memory ({expl.mode})")  # the mode's full name is in the tooltip
        self.with_box.setToolTip(f"With memory — {mode_label}; {packs}")
        self.packs_label.setText(f"from {packs}" if expl.packs else packs)
        self.packs_label.setVisible(True)
        for label, answer in ((self.with_text, expl.answer), (self.without_text, expl.answer_without_memory)):
            label.setText(_shown(answer))  # the first line; the whole continuation in the tooltip
            label.setToolTip(answer)
        if expl.mode == "none":
            self.verdict.setText("Mode “No memory”: both answers are the bare reader's.")
        elif not expl.retrieved:
            self.verdict.setText("Nothing was retrieved: both answers are the bare reader's.")
        elif expl.answer.strip() == expl.answer_without_memory.strip():
            self.verdict.setText("The memory did not change the answer.")
        elif first_line(expl.answer) == first_line(expl.answer_without_memory):
            # what is shown is the same: say so, instead of "changed" beside two equal answers
            self.verdict.setText("The memory did not change the answer (only what the reader went on to "
                                 "write after it: see the tooltips).")
        else:
            self.verdict.setText("The memory changed the answer.")
        self.model.set_entries(expl.retrieved)
        self._show_injected(expl)
        self._show_patches(expl)
        self._show_pkm(expl)
        n = len(expl.retrieved)
        self.retrieved_label.setText(f"Retrieved entries ({n}, best first) — click one to open it in the editor"
                                     if n else "Retrieved entries (none)")
        secs = f" in {expl.seconds:.1f} s" if expl.seconds is not None else ""
        lp = f" · log p(answer) {expl.answer_logprob:.2f}" if expl.answer_logprob is not None else ""
        self.status.setProperty("error", False)
        self._repolish(self.status)
        self.status.setText(f"Answered{secs}{lp}." + (f" {note}" if note else ""))
        self.again_btn.setEnabled(True)
        self.export_btn.setEnabled(True)
        self.answered.emit(expl)

    def _failed(self, gen: int, exc: BaseException) -> None:
        if gen != self._gen:
            return
        self._pending = False
        self._set_busy(False)
        from app.notifier import is_user_error

        if is_user_error(exc):
            self._error(str(exc))
        else:
            self._error(self.ctx.notifier.error("Answering", exc))
        self.again_btn.setEnabled(bool(getattr(self, "_asked", None)))

    def _error(self, text: str) -> None:
        self.status.setProperty("error", True)
        self._repolish(self.status)
        self.status.setText(text)
        self.failed.emit(text)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.ask_btn.setEnabled(not busy)
        self.again_btn.setEnabled(not busy and bool(getattr(self, "_asked", None)))
        if busy:
            self.status.setProperty("error", False)
            self._repolish(self.status)
            self.status.setText(text)

    @property
    def busy(self) -> bool:
        return self._pending

    @staticmethod
    def _repolish(w: QWidget) -> None:
        w.style().unpolish(w)
        w.style().polish(w)

    # ------------------------------------------------------------------ options / model state
    def _options_changed(self) -> None:
        self.ctx.settings.ask_mode = self.current_mode()
        self.ctx.settings.ask_k = self.k.value()

    def _model_state(self, state: str) -> None:
        host = self.ctx.model
        i = self.mode.findData("dpm")
        item = self.mode.model().item(i)
        if state == "ready" and not host.has_branch:
            item.setEnabled(False)
            item.setToolTip(host.model.note if host.model else "")
            if self.current_mode() == "dpm":
                self.mode.setCurrentIndex(self.mode.findData("context"))
        else:
            item.setEnabled(True)
        if self._pending:
            return
        if state == "loading":
            self.status.setText("Loading the reader in the background…")
        elif state == "ready":
            note = host.model.note if host.model else ""
            self.status.setText(f"Reader ready: {host.description}." + (f" {note}" if note else ""))
        elif state == "failed":
            self._error(f"The reader could not be loaded: {host.error}")

    # ------------------------------------------------------------------ staleness
    def _pack_changed(self, path: str, change) -> None:
        if self.explanation is None:
            return
        names = [n for n, p in self._pack_paths.items() if p == path]
        ids = {int(i) for i in getattr(change, "ids", ())}
        if any(self.model.mark_changed(n, ids) for n in names):
            self.stale.setText("An entry used in this answer was edited: press “Ask again” to see the answer follow.")
            self.stale.setVisible(True)
            self._warm_edited(path, ids)

    def _warm_edited(self, path: str, ids: set[int]) -> None:
        """Read the edited entries' new texts through the reader now, in the background, so
        that “Ask again” in the memory-branch mode does not wait for it (~0.15 s per entry)."""
        host = self.ctx.model
        if self.explanation is None or self.explanation.mode != "dpm" or host.state != "ready" or not ids:
            return

        def texts(pack) -> list[str]:
            return [e.text for e in pack.get_many(sorted(ids)) if e.status == "active"]

        def warm(found: list[str]) -> None:
            if found and host.state == "ready":
                host.submit(lambda model: model.predictor.warm_entries(found), what="Reading the edited entries",
                            on_error=lambda exc: log.info("Could not read the edited entries ahead: %s", exc))

        self.ctx.reads.submit(path, texts, warm, on_error=lambda exc: log.info("Could not read the edited entries: %s", exc))

    def _plugged_changed(self) -> None:
        if self.explanation is not None and self.ctx.workspace.plugged() != self._asked_plugged:
            self.stale.setText("The plugged packs changed since this answer: press “Ask again”.")
            self.stale.setVisible(True)
        elif self.explanation is not None and self.ctx.workspace.plugins() != getattr(self, "_asked_plugins", []):
            self.stale.setText("The plugged knowledge plugins changed since this answer: press “Ask again”.")
            self.stale.setVisible(True)

    # ------------------------------------------------------------------ weight patches
    def _build_patch_box(self) -> None:
        """The weight patches the answer was read with, the answer without each (on request),
        and the way to write the right answer into the weights."""
        self.patch_box = QWidget()
        self.patch_box.setObjectName("PatchBox")
        self.patches_label = WrappedLabel("Weight patches: none applied")
        self.patches_label.setObjectName("AnswerPatches")
        self.without_patches_btn = QPushButton("Answer without each patch")
        self.without_patches_btn.setToolTip("Ask again with each applied weight patch taken off in turn")
        self.without_patches_btn.clicked.connect(self.answer_without_patches)
        self.write_patch_btn = QPushButton("Write the right answer into the weights…")
        self.write_patch_btn.setToolTip("A wrong answer? Fine-tune the reader so that it gives the right one "
                                        "(a weight patch, which can be taken off again)")
        self.write_patch_btn.clicked.connect(self._write_patch)
        self.without_patches_text = WrappedLabel()
        self.without_patches_text.setObjectName("AnswersWithoutPatch")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.without_patches_btn)
        row.addWidget(self.write_patch_btn)
        row.addStretch(1)
        lay = QVBoxLayout(self.patch_box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.patches_label)
        lay.addWidget(self.without_patches_text)
        lay.addLayout(row)

    def _show_patches(self, expl) -> None:
        names = list(getattr(expl, "weight_patches", None) or [])
        self.patches_label.setText("Weight patches: " + (", ".join(names) + " (both answers read the patched weights)"
                                                          if names else "none applied"))
        self.without_patches_btn.setEnabled(bool(names))
        self._show_without(expl)
        self.write_patch_btn.setEnabled(True)

    def _show_without(self, expl) -> None:
        left = getattr(expl, "answers_without_patch", None) or {}
        lines = []
        for n, a in left.items():
            mem, bare = a.get("answer", ""), a.get("answer_without_memory", "")
            same = " (the patch did not change it)" if first_line(mem) == first_line(expl.answer) else ""
            lines.append(f"without {n}: {_shown(mem)}{same} — without memory: {_shown(bare)}"
                         if expl.mode != "none" else f"without {n}: {_shown(mem)}{same}")
        self.without_patches_text.setText("\n".join(lines))
        self.without_patches_text.setVisible(bool(left))

    def answer_without_patches(self) -> bool:
        """The shown answer again with each applied patch taken off in turn (into the record)."""
        expl = self.explanation
        if expl is None or not expl.weight_patches or self._pending:
            return False

        def done(left: dict) -> None:
            expl.answers_without_patch = dict(left)
            self._show_without(expl)
            self._set_busy(False)
            self.status.setText(f"Answered without each of {len(left)} weight patch(es).")
            self.without_done.emit(expl)

        return self._answer_again("answers_without_patches", done, "without each weight patch",
                                  "without the weight patches")

    def _answer_again(self, method: str, done, busy: str, what: str) -> bool:
        """Ask the shown question again through ``Predictor.<method>`` (same packs, k, length and
        plugins) on the model thread; ``done(result)`` runs only if that answer is still shown."""
        expl = self.explanation
        prompt, _, k, n = self._asked
        mode = expl.mode
        mems, _ = self.ctx.plugged_memories() if mode != "none" else ([], [])
        plugin_paths = list(self._asked_plugins)

        def task(model):
            plugins, _ = model.plugins_for(plugin_paths)
            return getattr(model.predictor, method)(prompt, mems, mode=mode, k=k, max_new_tokens=n, plugins=plugins)

        def still_shown(result) -> None:
            if self.explanation is expl:
                done(result)

        self._set_busy(True, f"Answering {busy}…")
        self.ctx.model.submit(task, still_shown, on_error=lambda exc: (self._set_busy(False), self._error(str(exc))),
                              what=f"Answering {what}")
        return True

    def patches_changed(self, applied: list[str]) -> None:
        """The applied weight patches changed: the answer shown was read by other weights."""
        expl = self.explanation
        if expl is not None and list(applied) != list(expl.weight_patches):
            self.stale.setText("The weight patches changed since this answer: press “Ask again”.")
            self.stale.setVisible(True)

    def _write_patch(self) -> None:
        expl = self.explanation
        if expl is None:
            return
        # a memory that changed the answer most likely gave the right one: offer it as the new answer
        changed = first_line(expl.answer) != first_line(expl.answer_without_memory)
        self.write_patch_requested.emit({"prompt": expl.prompt.strip(),
                                         "answer": first_line(expl.answer).strip(" .") if changed else "",
                                         "old": first_line(expl.answer_without_memory).strip(" .")})

    # ------------------------------------------------------------------ product-key memory
    def _build_pkm_box(self) -> None:
        """The product-key memory the answer was read with, the answer without it (on request),
        and the slots it read most for the answer with their top tokens; shown only when a
        layer was plugged."""
        self.pkm_box = QGroupBox("Product-key memory")
        self.pkm_box.setObjectName("PKMBox")
        self.pkm_label = WrappedLabel()
        self.pkm_label.setObjectName("AnswerPKM")
        self.without_pkm_btn = QPushButton("Answer without the product-key memory")
        self.without_pkm_btn.setToolTip("Ask again with the layer taken off (it is plugged again after)")
        self.without_pkm_btn.clicked.connect(self.answer_without_pkm)
        self.without_pkm_text = WrappedLabel()
        self.without_pkm_text.setObjectName("AnswerWithoutPKM")
        self.pkm_slots = QTableWidget(0, 3)
        self.pkm_slots.setObjectName("PKMSlotsTable")
        self.pkm_slots.setHorizontalHeaderLabels(["slot", "weight", "top tokens"])
        self.pkm_slots.horizontalHeaderItem(1).setToolTip(
            "The layer's softmax weight on this slot, summed over the heads and the answer's positions")
        self.pkm_slots.horizontalHeaderItem(2).setToolTip(
            "What the slot's value row pushes the output towards: its top 5 tokens through the unembedding")
        self.pkm_slots.verticalHeader().setVisible(False)
        self.pkm_slots.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.pkm_slots.setItemDelegateForColumn(1, BarDelegate(self.pkm_slots))
        self.pkm_slots.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.pkm_slots.setColumnWidth(0, 70)
        self.pkm_slots.setColumnWidth(1, 110)
        self.pkm_slots.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.pkm_slots.setMaximumHeight(6 * (self.fontMetrics().height() + 10))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.pkm_label, 1)
        row.addWidget(self.without_pkm_btn)
        lay = QVBoxLayout(self.pkm_box)
        lay.addLayout(row)
        lay.addWidget(self.without_pkm_text)
        lay.addWidget(self.pkm_slots)
        self.pkm_box.setVisible(False)

    def _show_pkm(self, expl) -> None:
        layer = getattr(expl, "pkm_layer", None)
        self.pkm_slots.setRowCount(0)
        self.pkm_box.setVisible(bool(layer))
        if not layer:
            return
        name = Path(str(layer.get("folder") or "layer")).name
        self.pkm_label.setText(f"Product-key memory <b>{name}</b> was plugged in (layer {layer.get('layer')}, "
                               f"{int(layer.get('slots') or 0):,} slots): both answers read it.")
        self.without_pkm_btn.setEnabled(True)
        self._show_without_pkm(expl)
        slots = list(getattr(expl, "pkm_slots", None) or [])
        scale = max((float(s.weight) for s in slots), default=0.0)
        self.pkm_slots.setRowCount(len(slots))
        for r, s in enumerate(slots):
            self.pkm_slots.setItem(r, 0, QTableWidgetItem(str(s.slot)))
            cell = QTableWidgetItem(f"{float(s.weight):.3f}")
            cell.setData(BAR_ROLE, (float(s.weight), scale, False))
            self.pkm_slots.setItem(r, 1, cell)
            tokens = QTableWidgetItem("  ·  ".join(repr(t)[1:-1] for t in s.tokens))
            tokens.setToolTip(" · ".join(repr(t) for t in s.tokens))
            self.pkm_slots.setItem(r, 2, tokens)

    def _show_without_pkm(self, expl) -> None:
        left = getattr(expl, "answers_without_pkm", None) or {}
        if not left:
            self.without_pkm_text.setVisible(False)
            return
        mem, bare = left.get("answer", ""), left.get("answer_without_memory", "")
        same = " (the layer did not change it)" if first_line(mem) == first_line(expl.answer) else " (the layer changed it)"
        self.without_pkm_text.setText(f"Without the product-key memory: {_shown(mem)}{same}"
                                      + (f" — without memory: {_shown(bare)}" if expl.mode != "none" else ""))
        self.without_pkm_text.setVisible(True)

    def answer_without_pkm(self) -> bool:
        """The shown answer again with the product-key memory taken off (into the record)."""
        expl = self.explanation
        if expl is None or not getattr(expl, "pkm_layer", None) or self._pending:
            return False

        def done(left: dict) -> None:
            self._set_busy(False)
            if not left:
                self._error("The product-key memory is no longer plugged in: press “Ask again”.")
                return
            expl.answers_without_pkm = dict(left)
            self._show_without_pkm(expl)
            self.status.setText("Answered without the product-key memory.")
            self.without_pkm_done.emit(expl)

        return self._answer_again("answers_without_pkm", done, "without the product-key memory",
                                  "without the product-key memory")

    def pkm_changed(self, plugged: str | None) -> None:
        """The plugged product-key memory changed: the answer shown was read by another reader."""
        expl = self.explanation
        if expl is None:
            return
        was = (getattr(expl, "pkm_layer", None) or {}).get("folder")
        if (was or None) != (plugged or None):
            self.stale.setText("The plugged product-key memory changed since this answer: press “Ask again”.")
            self.stale.setVisible(True)

    # ------------------------------------------------------------------ knowledge plugins
    def _build_plugin_box(self) -> None:
        """Injected entities of the knowledge plugins (mention → entity, leave-one-out bar) and
        the answer without the plugins; shown only when plugins took part in the answer."""
        self.plugin_box = QGroupBox("Knowledge plugins")
        self.plugin_box.setObjectName("PluginBox")
        self.without_plugins_text = QLabel()
        self.without_plugins_text.setObjectName("AnswerWithoutPlugins")
        self.without_plugins_text.setWordWrap(True)
        self.without_plugins_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.injected = QTableWidget(0, 3)
        self.injected.setObjectName("InjectedTable")
        self.injected.setHorizontalHeaderLabels(["plugin", "mention → entity", "leave-one-out"])
        self.injected.horizontalHeaderItem(2).setToolTip(
            "Change of the answer's log-probability when this injected entity vector is left out: "
            "positive = it supported the answer.")
        self.injected.verticalHeader().setVisible(False)
        self.injected.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.injected.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.injected.setItemDelegateForColumn(2, BarDelegate(self.injected))
        ih = self.injected.horizontalHeader()
        ih.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.injected.setColumnWidth(0, 110)
        self.injected.setColumnWidth(2, 120)
        self.injected.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.injected.setMaximumHeight(6 * (self.fontMetrics().height() + 10))
        lay = QVBoxLayout(self.plugin_box)
        lay.addWidget(self.without_plugins_text)
        lay.addWidget(self.injected)
        self.plugin_box.setVisible(False)

    def _show_injected(self, expl) -> None:
        plugins = list(getattr(expl, "plugins", None) or [])
        injected = list(getattr(expl, "injected", None) or [])
        self.injected.setRowCount(0)
        self.plugin_box.setVisible(bool(plugins))
        if not plugins:
            return
        self.plugin_box.setTitle(f"Knowledge plugins — {', '.join(plugins)}; {len(injected)} entity vector(s) injected")
        without = getattr(expl, "answer_without_plugins", None)
        if without is None:
            self.without_plugins_text.setText("Answer without plugins: (not computed)")
        else:
            same = without.strip() == expl.answer.strip()
            self.without_plugins_text.setText(f"Answer without plugins: {_shown(without)}"
                                              + ("  (the plugins did not change it)" if same else "  (the plugins changed it)"))
        gates = [str(g.get("message", "")) for g in (getattr(expl, "plugin_gates", None) or [])]
        if gates:  # a task plugin's relation gate: applied or not, and why
            self.without_plugins_text.setText(self.without_plugins_text.text() + "\n" + "\n".join(gates))
        vals = [abs(float(i.loo_delta)) for i in injected if getattr(i, "loo_delta", None) is not None]
        scale = max(vals) if vals else 0.0
        self.injected.setRowCount(len(injected))
        for row, inj in enumerate(injected):
            self.injected.setItem(row, 0, QTableWidgetItem(str(getattr(inj, "plugin", ""))))
            slot = getattr(inj, "kind", "mention") == "slot"
            ent = f"{'answer slot' if slot else getattr(inj, 'mention', '')} → {getattr(inj, 'entity', '')}"
            it = QTableWidgetItem(ent)
            it.setToolTip(f"{ent} (entity #{getattr(inj, 'entity_id', '?')})" + (
                ": a vector of the question's subject placed where the answer begins" if slot else ""))
            self.injected.setItem(row, 1, it)
            d = getattr(inj, "loo_delta", None)
            cell = QTableWidgetItem("–" if d is None else f"{float(d):+.3f}")
            if d is not None:
                cell.setData(BAR_ROLE, (float(d), scale, True))
            self.injected.setItem(row, 2, cell)

    # ------------------------------------------------------------------ entries
    def _clicked(self, index) -> None:
        if not index.isValid():
            return
        r = self.model.entry(index.row())
        path = self._pack_paths.get(r.pack)
        if path:
            self.entry_activated.emit(path, int(r.id))

    # ------------------------------------------------------------------ export
    def export(self, dest: str | Path) -> Path:
        """Write the shown explanation as JSON (``.json``) or an HTML page (``.html``/``.htm``)."""
        if self.explanation is None:
            raise ValueError("there is no answer to export yet: ask something first")
        dest = Path(dest)
        suffix = dest.suffix.lower()
        if suffix == ".json":
            text = self.explanation.to_json(indent=2) + "\n"
        elif suffix in (".html", ".htm"):
            text = HTML_PAGE.format(body=self.explanation.to_html())
        else:
            raise ValueError(f"{dest.name}: choose a .json or .html file name")
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(dest)
        return dest

    def _export_dialog(self, kind: str) -> None:
        flt = "JSON (*.json)" if kind == "json" else "HTML page (*.html)"
        start = str(self.ctx.workspace.folder / f"explanation.{kind}")
        dest, _ = QFileDialog.getSaveFileName(self, "Export the explanation", start, flt)
        if not dest:
            return
        if not Path(dest).suffix:
            dest += f".{kind}"
        try:
            self.export(dest)
        except (OSError, ValueError) as exc:
            self.ctx.notifier.error("Exporting the explanation", exc)
            return
        self.ctx.notifier.info(f"Explanation saved to {dest}")


def first_line(answer: str) -> str:
    """An answer as the user reads it: the continuation up to its first line break.

    The reader keeps generating after it has answered (a new line, a next question, a
    list); the probe rule judges only the start, so that is what is shown. Leading white
    space (line breaks included) is skipped first. The full text stays in the records.
    """
    lines = answer.lstrip().splitlines()
    return lines[0].rstrip() if lines else ""


def _shown(answer: str) -> str:
    a = first_line(answer)
    return a if a else "(empty answer)"


def main() -> int:
    from app.preview import run_panel

    def make(ctx: AppContext) -> ExplainPanel:
        ctx.model.load()
        return ExplainPanel(ctx)

    return run_panel(make, "Ask and explain")


if __name__ == "__main__":
    raise SystemExit(main())
