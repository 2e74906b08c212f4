"""Product-key memory in the app: *Grow a product-key memory…* (the dialog and the job it starts
in the Jobs panel, whose live loss curve shows the training) and the usage view (the figures,
a histogram of slot weights and the sqrt(slots) x sqrt(slots) heat map of the product-key grid),
and the Product-key memory panel (one checkbox per known layer: tick to plug it into the reader).

The layer of a pack ``P.plugmem`` is grown into ``P.pkm/`` (``config.json``, ``model.safetensors``,
``usage.safetensors``: the held-out per-slot weights the view draws).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.jobs import ended_text
from app.pkm_layers import PKMLayers, default_pkm_dir
from app.views.fit import WrappedLabel

log = logging.getLogger(__name__)

GROW_TARGET = "engine.mechanisms.pkm.train:grow"

#: Seconds per training step of the job's default 8 windows x 128 tokens (SmolLM2-135M, layer 20),
#: measured by ``bench/bench_pkm.py --step-time`` on the development machine's 2 cores while shared
#: with other jobs (an upper bound; bench/RESULTS.md). 'large' (262k slots) is for a GPU: not timed.
SECONDS_PER_STEP = {"quick": 72.8, "standard": 126.9}


def estimate(preset: str, steps: int) -> str:
    """The time estimate the dialog shows for ``steps`` steps of ``preset``."""
    per = SECONDS_PER_STEP.get(preset)
    if per is None:
        return "not measured on a CPU: this size is for a GPU"
    s = per * steps
    return f"at most about {s / 3600:.1f} h on a 2-core CPU" if s >= 5400 else f"at most about {s / 60:.0f} min on a 2-core CPU"


class PKMGrower(QObject):
    """Starts grow jobs through the app's job watcher; ``grown(pack, folder)`` when one ends well."""

    grown = Signal(str, str)
    job_started = Signal(str, str)  # pack, job id

    def __init__(self, ctx: AppContext, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.running: dict[str, str] = {}

    def start(self, pack: str, config: dict[str, Any]) -> str | None:
        name = Path(pack).stem
        if pack in self.running:
            self.ctx.notifier.error(f"Growing a product-key memory for {name}", "one is already growing (Jobs panel)")
            return None
        title = f"Grow a product-key memory for {name} ({config['steps']} steps)"

        def ended(job_id: str, status: str, result: Any) -> None:
            self.running.pop(pack, None)
            if status == "done":
                self.grown.emit(pack, config["out"])
            elif status == "cancelled":
                self.ctx.notifier.info(f"{title}: cancelled; start it again with the same options to resume.")
            else:
                self.ctx.notifier.error(title, ended_text(status, self.ctx.jobs.end_message(job_id)))

        try:
            from engine.mechanisms.pkm.train import GrowConfig

            GrowConfig.from_dict(config)  # a bad option is said here, not in a failed job
            jid = self.ctx.jobs.start("pkm_grow", GROW_TARGET, config, title=title, on_end=ended)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.ctx.notifier.error(title, exc)
            return None
        self.running[pack] = jid
        self.job_started.emit(pack, jid)
        return jid


class GrowPKMDialog(QDialog):
    """Size preset (with its time estimate), layer and steps of a product-key memory for one pack."""

    def __init__(self, ctx: AppContext, pack: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from engine.mechanisms.pkm.config import PRESETS

        self.setObjectName("GrowPKMDialog")
        self.ctx, self.pack = ctx, pack
        name = Path(pack).stem
        self.setWindowTitle(f"Grow a product-key memory for {name}")
        intro = QLabel(f"Grows a layer of learned slots beside one feed-forward block of the reader, on the text of "
                       f"<b>{name}</b>'s entries (a fifth of its documents held out to measure it). The reader is "
                       "unchanged until the layer is trained. Runs in the background (Jobs panel: live loss, cancel, "
                       "resume).")
        intro.setWordWrap(True)
        self.preset = QComboBox()
        for key, slots in PRESETS.items():
            self.preset.addItem(f"{key} — {slots:,} slots", key)
        self.preset.setCurrentIndex(1)
        self.layer = QSpinBox()
        self.layer.setRange(-1, 255)
        self.layer.setValue(-1)
        self.layer.setSpecialValueText("auto (first layer of the upper third)")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(200)
        self.estimate = QLabel()
        self.estimate.setObjectName("CountLabel")
        self.preset.currentIndexChanged.connect(self._update)
        self.steps.valueChanged.connect(self._update)
        form = QFormLayout()
        form.addRow("Size", self.preset)
        form.addRow("Layer", self.layer)
        form.addRow("Steps", self.steps)
        form.addRow("", self.estimate)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Grow")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(buttons)
        self._update()

    def _update(self) -> None:
        self.estimate.setText(f"Estimated time: {estimate(self.preset.currentData(), self.steps.value())}")

    def config(self) -> dict[str, Any]:
        from engine.mechanisms.pkm.config import PRESETS

        return {"out": str(default_pkm_dir(self.pack)), "corpus": [self.pack], "reader": self.ctx.workspace.reader,
                "slots": PRESETS[self.preset.currentData()], "layer": self.layer.value(), "steps": self.steps.value()}


class PKMUsageView(QWidget):
    """A grown layer's memory usage: the figures, a histogram of slot weights, the product-key grid."""

    def __init__(self, folder: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        from engine.mechanisms.pkm import io
        from engine.mechanisms.pkm.usage import usage_of

        self.setObjectName("PKMUsageView")
        self.folder = Path(folder)
        meta = io.read_config(self.folder)
        slots = int(meta["config"]["slots"])
        loaded = io.load_usage(self.folder, slots)
        self.figures = QLabel()
        self.figures.setObjectName("PKMUsageFigures")
        self.figures.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.figures)
        if loaded is None:
            self.figures.setText(f"{self.folder}: no usage recorded (grown before usage was saved)")
            self.usage = None
            return
        weights, counts = loaded
        self.usage = u = usage_of(weights, counts)
        tr = meta.get("training") or {}
        ppl = (f"; held-out perplexity {tr['heldout_ppl_without']:.2f} → {tr['heldout_ppl_with']:.2f}"
               if tr.get("heldout_ppl_without") and tr.get("heldout_ppl_with") else "")
        self.figures.setText(
            f"<b>{slots:,} slots</b> at layer {meta['layer']}{ppl}<br>"
            f"slots used <b>{u.used:.1%}</b> · top-1 used {u.top1_used:.1%} · KL to uniform {u.kl_weights:.3f} "
            f"(counts {u.kl_counts:.3f}; {math.log(slots):.2f} = one slot takes all) · Gini {u.gini:.3f} · "
            f"50 / 90 / 99 % of the weight in {u.slots_50:,} / {u.slots_90:,} / {u.slots_99:,} slots")
        # histogram of the used slots' weights (log10: they span orders of magnitude)
        self.hist = pg.PlotWidget(title="slot weights (log10, used slots)")
        used = weights[weights > 0]
        if used.size:
            y, x = np.histogram(np.log10(used), bins=50)
            self.hist.plot(x, y, stepMode="center", fillLevel=0, brush=(80, 120, 200, 160))
        self.hist.setLabel("left", "slots")
        # the product-key grid: slot i*n + j sits at row i (first half's key) and column j
        n = math.isqrt(slots)
        self.grid = pg.PlotWidget(title=f"product-key grid {n} × {n} (log10 weight)")
        self.grid.setAspectLocked(True)
        img = np.log10(weights.reshape(n, n) + 1e-6).astype(np.float32)
        self.image = pg.ImageItem(img.T)
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.grid.addItem(self.image)
        lay.addWidget(self.hist, 1)
        lay.addWidget(self.grid, 2)


def run_dialog(ctx: AppContext, grower: PKMGrower, pack: str | None, parent: QWidget | None = None) -> str | None:
    if not pack:
        ctx.notifier.error("Growing a product-key memory", "select a pack in the Workspace panel first")
        return None
    dlg = GrowPKMDialog(ctx, pack, parent)
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    return grower.start(pack, dlg.config())


class PKMUsageWindow(QDialog):
    """The usage view of one pack's layer, in a window of its own."""

    def __init__(self, folder: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Product-key memory usage — {Path(folder).name}")
        self.view = PKMUsageView(folder, self)
        lay = QVBoxLayout(self)
        lay.addWidget(self.view)
        self.resize(760, 720)


def show_usage(ctx: AppContext, pack: str | None, parent: QWidget | None = None) -> PKMUsageWindow | None:
    """Open the usage view of ``pack``'s layer (``P.pkm/``); an error is reported, not raised."""
    if not pack:
        ctx.notifier.error("Product-key memory usage", "select a pack in the Workspace panel first")
        return None
    folder = default_pkm_dir(pack)
    try:
        win = PKMUsageWindow(folder, parent)
    except ValueError as exc:  # PKMError: no layer grown yet, a bad file
        ctx.notifier.error("Product-key memory usage", exc)
        return None
    win.show()
    return win


FOLDER_ROLE = Qt.ItemDataRole.UserRole


class PKMPanel(QWidget):
    """The product-key memories the app knows, one checkbox each (one plugged at a time), and
    *Add a product-key memory folder…*; a refusal unticks the layer and is said below the list."""

    def __init__(self, layers: PKMLayers, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("PKMPanel")
        self.layers = layers
        self._filling = False
        self.list = QListWidget()
        self.list.setObjectName("PKMList")
        self.list.setToolTip("Tick a product-key memory to plug it into the reader (one at a time); every answer "
                             "then reads it. Unticking takes it off and leaves the reader exactly as it was.")
        self.add_btn = QPushButton("Add a product-key memory folder…")
        self.add_btn.clicked.connect(self._add_dialog)
        self.status = WrappedLabel()
        self.status.setObjectName("PKMStatus")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.status)
        lay.addWidget(self.add_btn)
        self.list.itemChanged.connect(self._item_changed)
        layers.changed.connect(self.refresh)
        self._refusal = ""  # the last refusal, shown until the next tick
        layers.refused.connect(self._refused)
        layers.ctx.current_changed.connect(lambda _p: self.refresh())
        self.refresh()

    def item_for(self, folder: str) -> QListWidgetItem | None:
        for i in range(self.list.count()):
            if self.list.item(i).data(FOLDER_ROLE) == folder:
                return self.list.item(i)
        return None

    def refresh(self) -> None:
        self._filling = True
        self.list.clear()
        plugged = self.layers.plugged
        for info in self.layers.infos():
            it = QListWidgetItem(info.describe())
            it.setData(FOLDER_ROLE, info.folder)
            flags = it.flags() | Qt.ItemFlag.ItemIsUserCheckable
            if info.meta is None and info.folder != plugged:
                flags &= ~Qt.ItemFlag.ItemIsEnabled
            it.setFlags(flags)
            it.setCheckState(Qt.CheckState.Checked if info.folder == plugged else Qt.CheckState.Unchecked)
            corpus = (info.meta or {}).get("corpus") or {}
            grown = f"\ngrown on {', '.join(map(str, corpus.get('files') or corpus.get('sources') or []))}" if corpus else ""
            it.setToolTip(f"{info.folder}{grown}" if info.meta else f"{info.folder}\n{info.error}")
            self.list.addItem(it)
        if not self.list.count():
            self.status.setText("No product-key memory yet: Tools › Grow a product-key memory… on a pack, "
                                "or add a folder grown with `plugmem pkm grow`.")
        elif plugged:
            self.status.setText(f"Plugged into the reader: {Path(plugged).name} (every answer reads it).")
        else:
            self.status.setText("None plugged: the reader answers alone.")
        if self._refusal:
            self.status.setText(f"{self.status.text()}\n{self._refusal}")
        self._filling = False

    def _refused(self, folder: str, why: str) -> None:
        self._refusal = f"Not plugged: {Path(folder).name}: {why}"
        self.refresh()

    def _item_changed(self, it: QListWidgetItem) -> None:
        if self._filling:
            return
        self._refusal = ""
        self.status.setText("Plugging…" if it.checkState() == Qt.CheckState.Checked else "Unplugging…")
        self.layers.set_plugged(it.data(FOLDER_ROLE), it.checkState() == Qt.CheckState.Checked)

    def _add_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a product-key memory folder",
                                                  str(self.layers.ctx.workspace.folder))
        if folder:
            self.layers.add_folder(folder)
