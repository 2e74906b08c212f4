"""Weight patches in the app: *Write this fact into the weights…* (the dialog and the job it
starts in the Jobs panel, whose live loss curve shows the training; Cancel there leaves no
patch) and the Patches panel (one row per patch: tick to apply it on the reader, in the
order shown; its facts, delta, size and metrics below; Delete, undoable).

The dialog is prefilled from an entry (cut as the probe maker cuts it,
``engine.evaluate.cloze``), from a wrong answer in Ask and explain, or from a wrong probe of
an evaluation.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.patches import PatchInfo, PatchLibrary
from app.views.fit import WrappedLabel

log = logging.getLogger(__name__)

NAME_ROLE = Qt.ItemDataRole.UserRole


def prefill_from_entry(pack, entry_id: int) -> dict[str, str]:
    """Prompt and answer of an entry, cut where the probe maker cuts it (its triple's tail,
    else after the last linking word); the whole text as the prompt when it cannot be cut."""
    from engine.evaluate.cloze import make_cloze, triples_of

    e = pack.get(int(entry_id))
    source = f"{Path(str(getattr(pack, 'path', 'pack'))).name}:{int(entry_id)}"
    got = make_cloze([e], triples_of(pack, [e.title]))
    if not got:
        return {"prompt": e.text.strip(), "answer": "", "source": source}
    c = got[0]
    return {"prompt": c.prompt, "answer": c.answer, "paraphrase": c.paraphrases[0] if c.paraphrases else "",
            "source": source}


class WritePatchDialog(QDialog):
    """The fact (prompt, new answer), optional paraphrase and locality probes, and under
    "Advanced" the bound, steps, blocks and learning rate. OK checks the fields (the engine's
    own checks, naming the field) before the job starts; a refusal keeps the dialog open."""

    def __init__(self, lib: PatchLibrary, prefill: dict[str, str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from engine.mechanisms.weight_patches import PatchConfig

        self.setObjectName("WritePatchDialog")
        self.setWindowTitle("Write this fact into the weights")
        self.lib = lib
        self.jid: str | None = None
        p = dict(prefill or {})
        self.source = p.get("source", "")
        intro = WrappedLabel("Fine-tunes a few weights of the reader so that the prompt is continued by the new "
                             "answer, each weight moving at most δ. The change is kept as a weight patch you can take "
                             "off again (Patches panel); the pack is not changed. Runs in the background (Jobs panel: "
                             "live loss, Cancel leaves no patch).")
        self.prompt = QLineEdit(p.get("prompt", ""))
        self.prompt.setObjectName("PatchPrompt")
        self.answer = QLineEdit(p.get("answer", ""))
        self.answer.setObjectName("PatchAnswer")
        self.old = QLineEdit(p.get("old", ""))
        self.old.setPlaceholderText("optional: the wrong answer the reader gives now")
        self.paraphrase = QLineEdit(p.get("paraphrase", ""))
        self.paraphrase.setPlaceholderText("optional: the same question in other words (measured, not trained on)")
        self.locality = QPlainTextEdit()
        self.locality.setObjectName("PatchLocality")
        self.locality.setPlaceholderText("optional, one a line: prompts whose answers must not move")
        self.locality.setMaximumHeight(70)
        self.name = QLineEdit(p.get("name", "") or p.get("answer", ""))
        self.name.setPlaceholderText("the patch's name (a folder in the workspace's patches/)")
        form = QFormLayout()
        form.addRow("Prompt", self.prompt)
        form.addRow("New answer", self.answer)
        form.addRow("Wrong answer now", self.old)
        form.addRow("Paraphrase", self.paraphrase)
        form.addRow("Locality probes", self.locality)
        form.addRow("Name", self.name)

        d = PatchConfig()
        self.advanced = QGroupBox("Advanced")
        self.advanced.setObjectName("PatchAdvanced")
        self.advanced.setCheckable(True)
        self.advanced.setChecked(False)  # the defaults, unless the user opens it
        self.delta = QDoubleSpinBox()
        self.delta.setDecimals(4)
        self.delta.setRange(0.0, 1.0)  # the engine refuses 0 and more than its bound, naming 'delta'
        self.delta.setSingleStep(0.001)
        self.delta.setValue(d.delta)
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(d.steps)
        self.layers = QLineEdit(", ".join(str(i) for i in d.layers))
        self.layers.setToolTip("Decoder blocks whose MLP down-projection is trained, e.g. 3, or 0, 29;\n"
                               "-1 is the last block")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(4)
        self.lr.setRange(0.0, 1.0)
        self.lr.setSingleStep(0.001)
        self.lr.setValue(d.lr)
        self.neurons = QSpinBox()
        self.neurons.setObjectName("PatchNeurons")
        self.neurons.setRange(0, 100_000)  # the engine refuses more than its bound, naming 'neurons'
        self.neurons.setValue(d.neurons)
        self.neurons.setSpecialValueText("all")
        self.neurons.setToolTip("MLP neurons trained per fact: those the prompt drives most above their\n"
                                "mean on generic text; the other weights stay exactly as they are")
        self.preserve = QDoubleSpinBox()
        self.preserve.setObjectName("PatchPreserve")
        self.preserve.setDecimals(4)
        self.preserve.setRange(0.0, 1.0)  # the engine refuses 1 (nothing left to write in), naming 'preserve'
        self.preserve.setSingleStep(0.01)
        self.preserve.setValue(d.preserve)
        self.preserve.setSpecialValueText("off")
        self.preserve.setToolTip("Share of the MLP activations' energy on generic text the change stays off\n"
                                 "(0: off); prompts like that keep their answers")
        self.loc_weight = QDoubleSpinBox()
        self.loc_weight.setRange(0.0, 100.0)
        self.loc_weight.setValue(1.0)
        self.loc_weight.setToolTip("Weight of the locality term (used only when locality probes are given)")
        af = QFormLayout(self.advanced)
        af.addRow("Bound δ (L∞)", self.delta)
        af.addRow("Steps (at most)", self.steps)
        af.addRow("Blocks", self.layers)
        af.addRow("Learning rate", self.lr)
        af.addRow("Neurons per fact", self.neurons)
        af.addRow("Preserve (generic text)", self.preserve)
        af.addRow("Locality weight", self.loc_weight)
        self._show_advanced(False)
        self.advanced.toggled.connect(self._show_advanced)

        self.error = WrappedLabel()
        self.error.setObjectName("PatchError")
        self.error.setProperty("error", True)
        self.error.setVisible(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Write into the weights")
        buttons.accepted.connect(self.start)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.advanced)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.resize(620, self.sizeHint().height())

    def _show_advanced(self, on: bool) -> None:
        for w in (self.delta, self.steps, self.layers, self.lr, self.neurons, self.preserve, self.loc_weight):
            w.setVisible(on)
            lbl = self.advanced.layout().labelForField(w)
            if lbl is not None:
                lbl.setVisible(on)

    def config(self) -> dict[str, Any]:
        """The job's config (``engine.jobs.weight_patch``); raises ``PatchError`` on unreadable blocks."""
        from engine.mechanisms.weight_patches import PatchError

        fact = {"prompt": self.prompt.text().strip(), "answer": self.answer.text().strip()}
        for key, w in (("paraphrase", self.paraphrase), ("old", self.old)):
            if w.text().strip():
                fact[key] = w.text().strip()
        if self.source:
            fact["source"] = self.source
        locality = [ln.strip() for ln in self.locality.toPlainText().splitlines() if ln.strip()]
        patch: dict[str, Any] = {}
        if self.advanced.isChecked():
            try:
                layers = [int(x) for x in self.layers.text().replace(",", " ").split()]
            except ValueError:
                raise PatchError(f"Advanced: field 'layers' must be block numbers such as 3 or 0, 29; "
                                 f"got {self.layers.text()!r}") from None
            patch = {"delta": self.delta.value(), "steps": self.steps.value(), "layers": layers,
                     "lr": self.lr.value(), "neurons": self.neurons.value(),
                     "preserve": self.preserve.value()}
        if locality:
            patch["locality_weight"] = self.loc_weight.value()
        name = self.name.text().strip() or fact["answer"] or "patch"
        cfg: dict[str, Any] = {"facts": [fact], "out": str(self.lib.new_folder(name)), "patch": patch}
        if locality:
            cfg["locality"] = locality
        return cfg

    def start(self) -> None:
        """Check and start the job; on a refusal say it here (naming the field) and stay open."""
        try:
            cfg = self.config()
            self.jid = self.lib.start(cfg)
        except ValueError as exc:  # PatchError: the engine's message names the field
            self.error.setText(str(exc))
            self.error.setVisible(True)
            return
        self.accept()


class PatchesPanel(QWidget):
    """The workspace's weight patches: tick to apply on the reader (top first), details, delete/undo."""

    write_requested = Signal()

    def __init__(self, lib: PatchLibrary, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("PatchesPanel")
        self.lib = lib
        self._filling = False
        self.hint = WrappedLabel("Applied in the order shown, top first. Tick a patch to apply it on the reader, untick "
                                 "to take it off.")
        self.hint.setObjectName("CountLabel")
        self.list = QListWidget()
        self.list.setObjectName("PatchList")
        self.detail = QTextBrowser()
        self.detail.setObjectName("PatchDetail")
        self.detail.setOpenLinks(False)
        self.status = WrappedLabel()
        self.status.setObjectName("PatchStatus")
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.setToolTip("Delete the selected patch (taken off the reader first; Undo brings it back)")
        self.undo_btn = QToolButton()
        self.undo_btn.setDefaultAction(lib.undo_stack.createUndoAction(self, "Undo"))
        self.redo_btn = QToolButton()
        self.redo_btn.setDefaultAction(lib.undo_stack.createRedoAction(self, "Redo"))
        self.new_btn = QPushButton("New…")
        self.new_btn.setToolTip("Write a fact into the weights (a new patch)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.new_btn)
        buttons.addWidget(self.delete_btn)
        buttons.addStretch(1)
        buttons.addWidget(self.undo_btn)
        buttons.addWidget(self.redo_btn)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.list)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        split.setSizes([60, 240])  # a few rows; the detail of the selected patch gets the room
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.hint)
        lay.addWidget(split, 1)
        lay.addWidget(self.status)
        lay.addLayout(buttons)
        self.list.itemChanged.connect(self._toggled)
        self.list.currentItemChanged.connect(lambda *_: self._show_detail())
        self.delete_btn.clicked.connect(self.delete_selected)
        self.new_btn.clicked.connect(self.write_requested)
        lib.changed.connect(self.refresh)
        lib.refused.connect(lambda name, why: self._say(f"{name}: {why}", error=True))
        self.refresh()

    # ------------------------------------------------------------------ list
    def names(self) -> list[str]:
        return [self.list.item(i).data(NAME_ROLE) for i in range(self.list.count())]

    def checked(self) -> list[str]:
        return [self.list.item(i).data(NAME_ROLE) for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def item(self, name: str) -> QListWidgetItem | None:
        return next((self.list.item(i) for i in range(self.list.count()) if self.list.item(i).data(NAME_ROLE) == name), None)

    def refresh(self) -> None:
        current = self.list.currentItem().data(NAME_ROLE) if self.list.currentItem() else None
        applied = self.lib.applied
        self._filling = True
        self.list.clear()
        self._infos = {p.name: p for p in self.lib.infos()}
        for p in self._infos.values():
            n = len(p.facts)
            pos = f"{applied.index(p.name) + 1}. " if p.name in applied else ""
            text = f"{pos}{p.name} — {n} fact{'' if n == 1 else 's'}" if p.meta else f"{p.name} — unreadable"
            it = QListWidgetItem(text)
            it.setData(NAME_ROLE, p.name)
            flags = it.flags() | Qt.ItemFlag.ItemIsUserCheckable
            if p.meta is None:
                flags &= ~Qt.ItemFlag.ItemIsUserCheckable
                it.setToolTip(p.error)
            it.setFlags(flags)
            it.setCheckState(Qt.CheckState.Checked if p.name in applied else Qt.CheckState.Unchecked)
            self.list.addItem(it)
            if p.name == current:
                self.list.setCurrentItem(it)
        if self.list.currentItem() is None and self.list.count():
            self.list.setCurrentRow(0)
        self._filling = False
        self.delete_btn.setEnabled(self.list.currentItem() is not None)
        if not self._infos:
            self.detail.setHtml("<p>No weight patch yet. Right-click an entry, a wrong answer in Ask and explain or a "
                                "wrong probe in Evaluation → <b>Write this fact into the weights…</b></p>")
        self._show_detail()

    def _toggled(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        name, on = item.data(NAME_ROLE), item.checkState() == Qt.CheckState.Checked
        self._say(("Applying " if on else "Taking off ") + f"{name}…")
        self.lib.set_applied(name, on, on_done=lambda: self._say(
            f"{name} {'applied' if on else 'taken off'}; applied now: {', '.join(self.lib.applied) or 'none'}."))

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setProperty("error", error)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)
        self.status.setText(text)

    def delete_selected(self) -> None:
        it = self.list.currentItem()
        if it is not None:
            name = it.data(NAME_ROLE)  # the list is refilled by the deletion
            self._say(f"Deleted {name} (Undo brings it back).")
            self.lib.delete(name)

    # ------------------------------------------------------------------ detail
    def _show_detail(self) -> None:
        it = self.list.currentItem()
        self.delete_btn.setEnabled(it is not None)
        if it is None:
            return
        p = self._infos.get(it.data(NAME_ROLE))
        if p is not None:
            self.detail.setHtml(detail_html(p, p.name in self.lib.applied))


def detail_html(p: PatchInfo, applied: bool) -> str:
    """A patch's facts, bound, blocks, size and metrics, as the detail view shows them."""
    e = html.escape
    if p.meta is None:
        return f"<p><b>{e(p.name)}</b> cannot be read: {e(p.error)}</p>"
    m, cfg = p.meta.get("metrics") or {}, p.meta.get("config") or {}

    def pct(k: str) -> str:
        v = m.get(k)
        return f"{v:.0%}" if isinstance(v, (int, float)) else "–"

    facts = "".join(
        f"<li>{e(f.get('prompt', ''))} → <b>{e(f.get('answer', ''))}</b>"
        + (f" (was {e(f['old'])})" if f.get("old") else "")
        + (f"<br><i>paraphrase:</i> {e(f['paraphrase'])}" if f.get("paraphrase") else "")
        + (f"<br><i>from</i> {e(f['source'])}" if f.get("source") else "") + "</li>"
        for f in p.facts)
    blocks = ", ".join(str(i) for i in cfg.get("layers", []))
    under = ", ".join(p.meta.get("on_top_of") or []) or "nothing (the bare reader)"
    secs = m.get("train_seconds")
    return (
        f"<p><b>{e(p.name)}</b> — {'applied' if applied else 'not applied'}</p><ul>{facts}</ul>"
        f"<p>δ {cfg.get('delta', '–')} on block(s) {e(blocks)} ({e(', '.join(cfg.get('targets', [])))}), "
        f"lr {cfg.get('lr', '–')}, {m.get('steps', '–')} of {cfg.get('steps', '–')} steps"
        + (f", {secs:.1f} s" if isinstance(secs, (int, float)) else "") + "<br>"
        f"size {p.size_bytes / 1024:,.0f} KiB · made on top of {e(under)}<br>"
        f"efficacy {pct('efficacy')} · paraphrase {pct('paraphrase')} · loss "
        f"{_num(m.get('loss_first'))} → {_num(m.get('loss_last'))}<br>"
        f"by {e(p.meta.get('who') or '?')}, {e(p.meta.get('when') or '?')} · reader "
        f"{e((p.meta.get('reader') or {}).get('name', '?'))}</p>")


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


def main() -> int:
    from app.preview import run_panel

    return run_panel(lambda ctx: PatchesPanel(PatchLibrary(ctx)), "Weight patches")


if __name__ == "__main__":
    raise SystemExit(main())
