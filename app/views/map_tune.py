"""Map-tune a pack's knowledge plugin: the dialog (main options) and the trainer that runs
the work as background jobs in the Jobs panel.

Two jobs, one after the other, through the engine's process runner (the Jobs panel shows
their progress, log and live loss curve, and can cancel or resume them):

1. ``train_transe`` (skipped when the user picks embeddings already beside the pack,
   imported or trained before): TransE entity embeddings from the pack's triples into
   ``<pack>.embeddings/``;
2. ``map_tune``: the mapping network, reader frozen, saved as ``<pack>.plugin/``.

When the second ends well the pack's "plugin" checkbox in the Workspace panel becomes
enabled (:attr:`PluginTrainer.plugin_ready`). Cancelling either stops the chain; both
jobs resume from their checkpoints when started again with the same options.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.context import AppContext
from app.jobs import ended_text

log = logging.getLogger(__name__)

TRANSE_TARGET = "engine.mechanisms.plugins.transe:train_transe"
MAP_TUNE_TARGET = "engine.mechanisms.plugins.map_tune:map_tune"


@dataclass
class MapTuneOptions:
    """What the dialog asks; turned into the two jobs' configs by :class:`PluginTrainer`."""

    train_transe: bool = True  # False: use the embeddings already in <pack>.embeddings/
    transe_dim: int = 64
    transe_epochs: int = 300
    lr: float = 3e-3
    batch: int = 16
    epochs: int = 3
    max_steps: int = 0  # 0: all epochs
    dropout: float = 0.0  # inside the reader while training
    holdout_probes: list[str] = field(default_factory=list)
    start_over: bool = False  # ignore checkpoints (and replace a trained plugin)

    def check(self) -> None:
        """Raise ValueError naming the option that is wrong."""
        for p in self.holdout_probes:
            if not Path(p).is_file():
                raise ValueError(f"held-out probes file {p}: no such file")
        if self.lr <= 0:
            raise ValueError(f"mapping learning rate must be > 0, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def embeddings_status(pack_path: str | Path) -> tuple[str | None, str]:
    """The source of the embeddings beside the pack ('imported' / 'transe' / None) and a description."""
    from engine.mechanisms.plugins.embeddings import EntityEmbeddings, default_embeddings_dir
    from engine.mechanisms.plugins.errors import PluginError

    folder = default_embeddings_dir(pack_path)
    if not (folder / "config.json").is_file():
        return None, f"no entity embeddings in {folder.name} yet"
    try:
        emb = EntityEmbeddings.load(folder)
    except PluginError as exc:
        return None, f"the embeddings in {folder.name} are unusable: {exc}"
    return emb.source, f"{emb.source} embeddings in {folder.name}: {len(emb):,} entities, dimension {emb.dim}"


def needs_force(folder: Path) -> bool:
    """Whether a new run into ``folder`` must be forced: it holds a finished result (imported or
    trained embeddings, a trained plugin) that the run replaces. Not when it is empty or holds
    an interrupted run: then the job starts or resumes on its own, and the Jobs panel's Resume
    (the same config again) resumes instead of starting over."""
    return (folder / "config.json").is_file() and not interrupted_run(folder)


def interrupted_run(folder: Path) -> bool:
    """Whether ``folder`` holds the checkpoint of an unfinished run (to resume), not the one a
    finished run leaves behind: a finished run writes its ``config.json`` after its last
    checkpoint, an interrupted one has a checkpoint newer than any ``config.json``."""
    ckpt, cfg = folder / "checkpoint.pt", folder / "config.json"
    if not ckpt.is_file():
        return False
    return not cfg.is_file() or ckpt.stat().st_mtime_ns > cfg.stat().st_mtime_ns


class PluginTrainer(QObject):
    """Starts TransE then map-tuning as jobs; says when a pack's plugin is ready."""

    job_started = Signal(str, str, str)  # pack path, job id, kind ('train_transe' | 'map_tune')
    plugin_ready = Signal(str)  # pack path: <pack>.plugin/ now holds a trained plugin
    stopped = Signal(str, str)  # pack path, status ('cancelled', 'failed', ...) of the job that ended the chain

    def __init__(self, ctx: AppContext, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.running: dict[str, str] = {}  # pack path -> id of its running job

    def is_running(self, pack: str) -> bool:
        return pack in self.running

    def start(self, pack: str, options: MapTuneOptions) -> str | None:
        """Start the chain for ``pack``; returns the first job's id (None: refused, reported)."""
        name = Path(pack).stem
        if pack in self.running:
            self.ctx.notifier.error(f"Map-tuning {name}", "a map-tuning of this pack is already running")
            return None
        try:
            options.check()
        except ValueError as exc:
            self.ctx.notifier.error(f"Map-tuning {name}", exc)
            return None
        if options.train_transe:
            from engine.mechanisms.plugins.embeddings import default_embeddings_dir

            config = {"pack": pack, "dim": options.transe_dim, "epochs": options.transe_epochs,
                      "force": bool(options.start_over or needs_force(default_embeddings_dir(pack)))}
            return self._start(pack, "train_transe", TRANSE_TARGET, config,
                               f"TransE embeddings for {name} ({options.transe_epochs} epochs)",
                               lambda: self._start_map_tune(pack, options))
        return self._start_map_tune(pack, options)

    def _start_map_tune(self, pack: str, options: MapTuneOptions) -> str | None:
        from engine.mechanisms.plugins.io import default_plugin_dir

        out = default_plugin_dir(pack)
        config = {"pack": pack, "reader": self.ctx.workspace.reader, "lr": options.lr, "batch": options.batch,
                  "epochs": options.epochs, "max_steps": options.max_steps, "reader_dropout": options.dropout,
                  "holdout_probes": list(options.holdout_probes),
                  # an interrupted run resumes; a trained plugin is replaced by a new run (the dialog says so)
                  "force": bool(options.start_over or needs_force(out))}
        steps = f"{options.max_steps} steps" if options.max_steps else f"{options.epochs} epochs"
        return self._start(pack, "map_tune", MAP_TUNE_TARGET, config, f"Map-tune the plugin of {Path(pack).stem} ({steps})",
                           lambda: self.plugin_ready.emit(pack))

    def _start(self, pack: str, kind: str, target: str, config: dict[str, Any], title: str, then) -> str | None:
        def ended(job_id: str, status: str, result: Any) -> None:
            self.running.pop(pack, None)
            if status == "done":
                then()
                return
            msg = ended_text(status, self.ctx.jobs.end_message(job_id))
            self.stopped.emit(pack, status)
            if status == "cancelled":
                self.ctx.notifier.info(f"{title}: cancelled; start it again with the same options to resume.")
            else:
                self.ctx.notifier.error(title, msg)

        try:
            jid = self.ctx.jobs.start(kind, target, config, title=title, on_end=ended)
        except Exception as exc:
            self.ctx.notifier.error(f"Starting: {title}", exc)
            self.stopped.emit(pack, "failed")
            return None
        self.running[pack] = jid
        self.job_started.emit(pack, jid, kind)
        return jid


class MapTuneDialog(QDialog):
    """The main options of map-tuning one pack's knowledge plugin."""

    def __init__(self, ctx: AppContext, pack: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MapTuneDialog")
        self.ctx = ctx
        self.pack = pack
        name = Path(pack).stem
        self.setWindowTitle(f"Map-tune the knowledge plugin of {name}")
        source, emb_text = embeddings_status(pack)
        from app.workspace import plugin_status

        has_plugin, plugin_text = plugin_status(pack)

        intro = QLabel(f"Trains a mapping from <b>{name}</b>'s entity embeddings into the reader's input space, "
                       "the reader frozen. Runs in the background (Jobs panel: progress, loss curve, cancel); "
                       "when it is done, tick the pack's <i>plugin</i> box to use it.")
        intro.setWordWrap(True)

        # ---- embeddings
        emb_box = QGroupBox("Entity embeddings")
        self.train_radio = QRadioButton("Train TransE embeddings from the pack's triples")
        self.use_radio = QRadioButton(f"Use the {emb_text}" if source else f"Use existing embeddings ({emb_text})")
        self.use_radio.setEnabled(source is not None)
        group = QButtonGroup(self)
        group.addButton(self.train_radio)
        group.addButton(self.use_radio)
        (self.use_radio if source == "imported" else self.train_radio).setChecked(True)
        self.dim = QSpinBox()
        self.dim.setRange(4, 1024)
        self.dim.setValue(64)
        self.dim.setToolTip("Size of each entity vector")
        self.transe_epochs = QSpinBox()
        self.transe_epochs.setRange(1, 100_000)
        self.transe_epochs.setValue(300)
        self.transe_epochs.setToolTip("Passes over the triples (a few thousand triples: well under a second each)")
        tform = QFormLayout()
        tform.setContentsMargins(24, 0, 0, 0)
        tform.addRow("Dimension", self.dim)
        tform.addRow("Epochs", self.transe_epochs)
        self.replace_note = QLabel("Training replaces the imported embeddings." if source == "imported" else "")
        self.replace_note.setObjectName("CountLabel")
        self.replace_note.setVisible(bool(self.replace_note.text()))
        el = QVBoxLayout(emb_box)
        el.addWidget(self.train_radio)
        el.addLayout(tform)
        el.addWidget(self.replace_note)
        el.addWidget(self.use_radio)

        # ---- mapping
        map_box = QGroupBox("Mapping network")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0.00001, 1.0)
        self.lr.setSingleStep(0.0005)
        self.lr.setValue(3e-3)
        self.batch = QSpinBox()
        self.batch.setRange(1, 1024)
        self.batch.setValue(16)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(3)
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 1_000_000)
        self.max_steps.setSpecialValueText("all epochs")
        self.max_steps.setToolTip("Stop after this many steps whatever the epochs (0: all epochs)")
        self.dropout = QDoubleSpinBox()
        self.dropout.setDecimals(2)
        self.dropout.setRange(0.0, 0.9)
        self.dropout.setSingleStep(0.05)
        self.dropout.setToolTip("Dropout inside the frozen reader while training (SmolLM2 was trained without: 0 is safest)")
        self.probes = QLineEdit(placeholderText="optional: probes JSONL whose held-out subjects are kept out of training")
        self.probes.setObjectName("ProbesFile")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_probes)
        prow = QHBoxLayout()
        prow.addWidget(self.probes, 1)
        prow.addWidget(browse)
        mform = QFormLayout(map_box)
        mform.addRow("Learning rate", self.lr)
        mform.addRow("Batch", self.batch)
        mform.addRow("Epochs", self.epochs)
        mform.addRow("Max steps", self.max_steps)
        mform.addRow("Reader dropout", self.dropout)
        mform.addRow("Held-out probes", prow)

        self.start_over = QCheckBox("Start over (ignore checkpoints of an interrupted run)")
        reader = ctx.workspace.reader or "the default reader (SmolLM2-135M-Instruct)"
        self.info = QLabel((f"{plugin_text}. A new run replaces it." if has_plugin else
                            "No plugin yet: it will be saved beside the pack.") + f"\nReader: {reader}.")
        self.info.setObjectName("CountLabel")
        self.info.setWordWrap(True)
        self.error = QLabel()
        self.error.setObjectName("ValidationMessage")
        self.error.setWordWrap(True)
        self.error.setVisible(False)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start_btn = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start_btn.setDefault(True)
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)

        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(emb_box)
        lay.addWidget(map_box)
        lay.addWidget(self.start_over)
        lay.addWidget(self.info)
        lay.addWidget(self.error)
        lay.addWidget(self.buttons)
        self.train_radio.toggled.connect(self._update)
        self.probes.textChanged.connect(lambda _: self.error.setVisible(False))
        self._update()
        self.setMinimumWidth(520)

    def _update(self) -> None:
        on = self.train_radio.isChecked()
        self.dim.setEnabled(on)
        self.transe_epochs.setEnabled(on)

    def _browse_probes(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Held-out probes", str(Path(self.pack).parent),
                                           "JSON lines (*.jsonl);;All files (*)")
        if f:
            self.probes.setText(f)

    def options(self) -> MapTuneOptions:
        probes = [p.strip() for p in self.probes.text().split(";") if p.strip()]
        return MapTuneOptions(train_transe=self.train_radio.isChecked(), transe_dim=self.dim.value(),
                              transe_epochs=self.transe_epochs.value(), lr=self.lr.value(), batch=self.batch.value(),
                              epochs=self.epochs.value(), max_steps=self.max_steps.value(),
                              dropout=self.dropout.value(), holdout_probes=probes,
                              start_over=self.start_over.isChecked())

    def _accept(self) -> None:
        try:
            self.options().check()
        except ValueError as exc:
            self.error.setText(str(exc)[:1].upper() + str(exc)[1:])
            self.error.setVisible(True)
            return
        self.accept()


def run_dialog(ctx: AppContext, trainer: PluginTrainer, pack: str | None, parent: QWidget | None = None) -> str | None:
    """Ask the options for ``pack`` and start the jobs; returns the first job's id (None: not started)."""
    if not pack:
        ctx.notifier.error("Map-tuning a plugin", "select a pack in the Workspace panel first")
        return None
    if trainer.is_running(pack):
        ctx.notifier.error(f"Map-tuning {Path(pack).stem}", "a map-tuning of this pack is already running (Jobs panel)")
        return None
    dlg = MapTuneDialog(ctx, pack, parent)
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    log.info("map-tuning %s with %s", pack, asdict(dlg.options()))
    return trainer.start(pack, dlg.options())


def main() -> int:
    """Open the dialog alone on the demo workspace's current pack (``python -m app.views.map_tune``)."""
    from app.preview import run_panel

    def make(ctx: AppContext) -> QWidget:
        return MapTuneDialog(ctx, ctx.current or (ctx.workspace.paths() or [""])[0])

    return run_panel(make, "Map-tune")


if __name__ == "__main__":
    raise SystemExit(main())
