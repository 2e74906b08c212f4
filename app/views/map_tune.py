"""Train a pack's knowledge plugin: the dialog (what to train in the expert's words, presets
with a time estimate, the ML fields under *Custom*) and the trainer that runs the work as
background jobs in the Jobs panel.

Two jobs, one after the other, through the engine's process runner (the Jobs panel shows
their progress, log and live loss curve, and can cancel or resume them):

1. ``train_transe`` (skipped when the user picks embeddings already beside the pack,
   imported or trained before): TransE entity embeddings from the pack's triples into
   ``<pack>.embeddings/``;
2. either ``map_tune`` (the general plugin: which entity a mention is), saved as
   ``<pack>.plugin/``, or ``task_tune`` (the task plugin: the loss of the answers of the
   pack's probe questions), saved as ``<pack>.task-plugin/``; the reader frozen in both.

When the second ends well the pack's "plugin" checkbox in the Workspace panel becomes
enabled (:attr:`PluginTrainer.plugin_ready`). Cancelling either stops the chain; both
jobs resume from their checkpoints when started again with the same options.
"""
from __future__ import annotations

import logging
import math
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
    QGridLayout,
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
TASK_TUNE_TARGET = "engine.mechanisms.plugins.task_tune:task_tune"

KINDS = ("general", "task")
#: What each preset sets (bench/RESULTS.md, "Knowledge plugins"): quick is about the
#: 20-minute runs measured there (general: 100 steps of 16 took 27 min, so 75; task: the
#: 20-minute answer-slot run did 45 steps of 32), standard one full epoch.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("general", "quick"): {"lr": 0.01, "batch": 16, "epochs": 1, "max_steps": 75},
    ("general", "standard"): {"lr": 0.01, "batch": 16, "epochs": 1, "max_steps": 0},
    ("task", "quick"): {"lr": 5e-3, "batch": 32, "epochs": 1, "max_steps": 45},
    ("task", "standard"): {"lr": 5e-3, "batch": 32, "epochs": 1, "max_steps": 0},
}


@dataclass(frozen=True)
class StepTime:
    """A measured wall time per training example and the share of the pack's rows that become
    training examples (both from one run on the geography demo, named in ``source``)."""

    seconds_per_example: float
    train_share: float  # training examples / pack rows (entries for general, triples for task)
    rows: str  # what the pack rows are
    source: str


#: Measured by the quick presets' own jobs on the geography demo (bench/RESULTS.md, 2026-12-08: the
#: shared 2-core box at load 2-6, both jobs at once, 1 thread each), evaluations and checkpoints included.
STEP_TIMES = {
    "general": StepTime(252.9 / (75 * 16), 2508 / 3411, "active entries",
                        "the quick preset's 75 steps of batch 16 in 253 s, 2026-12-08; 2,508 training sentences "
                        "from 3,411 geography entries"),
    "task": StepTime(469.8 / (45 * 32), 2615 / 3411, "triples",
                     "the quick preset's 45 steps of batch 32 in 470 s, 2026-12-08; 2,615 training questions "
                     "from 3,411 geography triples"),
}


def pack_rows(pack: str | Path) -> dict[str, int]:
    """The pack's active entries and triples: what the estimate scales with (0, 0 when unreadable)."""
    from engine.store import Pack

    try:
        with Pack.open(str(pack), readonly=True) as p:
            return {"general": p.count(status="active"), "task": len(p.triples())}
    except Exception as exc:  # noqa: BLE001 - the estimate then says it has nothing to go on
        log.warning("cannot count the rows of %s: %s", pack, exc)
        return {"general": 0, "task": 0}


def planned_steps(kind: str, rows: int, batch: int, epochs: int, max_steps: int) -> int:
    """Training steps the job will run on a pack of ``rows`` (entries or triples), as the job counts them."""
    examples = max(1, round(rows * STEP_TIMES[kind].train_share))
    total = epochs * math.ceil(examples / max(1, batch))
    return min(total, max_steps) if max_steps else total


def has_gpu() -> bool:
    """Whether the jobs will train on a GPU (they pick CUDA at run time when there is one)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch build with CUDA: a CPU
        return False


def estimate(kind: str, rows: int, batch: int, epochs: int, max_steps: int, *, gpu: bool = False) -> tuple[str, str]:
    """The estimate the dialog shows beside a preset, and its tooltip naming the figure it rests on.
    ``gpu``: the measured figure is a CPU's, so it is then only an upper bound."""
    t = STEP_TIMES[kind]
    if rows <= 0:
        return "no estimate (the pack has nothing to train on)", f"The pack has no {t.rows}."
    steps = planned_steps(kind, rows, batch, epochs, max_steps)
    minutes = max(1, round(steps * batch * t.seconds_per_example / 60))
    span = f"{minutes} minute{'s' if minutes != 1 else ''}" if minutes < 90 else f"{minutes / 60:.1f} hours"
    text = f"at most {span} (measured on a CPU; this computer's GPU is faster)" if gpu else \
        f"about {span} on this computer"
    tip = (f"{steps:,} steps of {batch} = {steps * batch:,} examples x {t.seconds_per_example:.2f} s each. "
           f"The {t.seconds_per_example:.2f} s per example was measured on a 2-core CPU shared with other jobs "
           f"(bench/RESULTS.md, Knowledge plugins: {t.source}); under heavier load it took up to 4 times "
           f"longer, on a GPU far less. "
           f"Training examples: about {t.train_share:.0%} of the pack's {rows:,} {t.rows}.")
    return text, tip


@dataclass
class MapTuneOptions:
    """What the dialog asks; turned into the two jobs' configs by :class:`PluginTrainer`."""

    kind: str = "general"  # "general": map-tuning (<pack>.plugin); "task": task-tuning (<pack>.task-plugin)
    train_transe: bool = True  # False: use the embeddings already in <pack>.embeddings/
    transe_dim: int = 64
    transe_epochs: int = 300
    lr: float = 3e-3
    batch: int = 16
    epochs: int = 3
    max_steps: int = 0  # 0: all epochs
    dropout: float = 0.0  # inside the reader while training
    holdout_probes: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)  # task plugin: the probe files its questions come from
    answer_slot: bool = True  # task plugin: a second vector where the answer begins (+7 points, RESULTS.md)
    start_over: bool = False  # ignore checkpoints (and replace a trained plugin)

    def check(self) -> None:
        """Raise ValueError naming the option that is wrong."""
        if self.kind not in KINDS:
            raise ValueError(f"what to train must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "task":
            if not self.probes:
                raise ValueError("questions file: a task plugin needs a probe file to learn the pack's questions "
                                 "from (e.g. the domain's probes_train.jsonl)")
            for p in self.probes:
                if not Path(p).is_file():
                    raise ValueError(f"questions file {p}: no such file")
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

    job_started = Signal(str, str, str)  # pack path, job id, kind ('train_transe' | 'map_tune' | 'task_tune')
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
                               lambda: self._start_plugin(pack, options))
        return self._start_plugin(pack, options)

    def _start_plugin(self, pack: str, options: MapTuneOptions) -> str | None:
        return self._start_task_tune(pack, options) if options.kind == "task" else self._start_map_tune(pack, options)

    def _start_task_tune(self, pack: str, options: MapTuneOptions) -> str | None:
        from engine.mechanisms.plugins.io import default_plugin_dir, default_task_plugin_dir

        out = default_task_plugin_dir(pack)
        general = default_plugin_dir(pack)
        # From the general plugin when there is one on these embeddings; new TransE vectors mean a fresh mapping.
        start = None if (not options.train_transe and (general / "config.json").is_file()) else "none"
        config = {"pack": pack, "reader": self.ctx.workspace.reader, "probes": list(options.probes),
                  "holdout_probes": list(options.holdout_probes), "answer_slot": options.answer_slot,
                  "start": start, "lr": options.lr, "batch": options.batch, "epochs": options.epochs,
                  "max_steps": options.max_steps, "force": bool(options.start_over or needs_force(out))}
        steps = f"{options.max_steps} steps" if options.max_steps else f"{options.epochs} epochs"
        return self._start(pack, "task_tune", TASK_TUNE_TARGET, config,
                           f"Task-tune the plugin of {Path(pack).stem} ({steps})", lambda: self.plugin_ready.emit(pack))

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
    """What to train (in the expert's words), a preset with its time estimate, and under
    *Custom* the ML fields, for one pack's knowledge plugin."""

    KIND_TEXT = {
        "general": "Teach the model which entity a mention is (general plugin, map-tuning)",
        "task": "Teach the model to answer this pack's questions\n(task plugin, needs a probe file; "
                "recommended: +7 points on held-out entities, bench/RESULTS.md)",
    }
    PRESET_TEXT = {"quick": "Quick", "standard": "Standard (one full pass over the pack)", "custom": "Custom"}

    def __init__(self, ctx: AppContext, pack: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MapTuneDialog")
        self.ctx = ctx
        self.pack = pack
        name = Path(pack).stem
        self.setWindowTitle(f"Train the knowledge plugin of {name}")
        source, emb_text = embeddings_status(pack)
        from app.workspace import plugin_status

        has_plugin, plugin_text = plugin_status(pack)
        self.rows = pack_rows(pack)
        self.gpu = has_gpu()

        intro = QLabel(f"Teaches the frozen reader <b>{name}</b>'s entities from their embeddings (the reader itself "
                       "is not changed). Runs in the background (Jobs panel: progress, loss curve, cancel); "
                       "when it is done, tick the pack's <i>plugin</i> box to use it.")
        intro.setWordWrap(True)

        # ---- what to train
        kind_box = QGroupBox("What to train")
        self.kind_radios: dict[str, QRadioButton] = {}
        kl = QVBoxLayout(kind_box)
        kinds = QButtonGroup(self)
        for k in KINDS:
            r = QRadioButton(self.KIND_TEXT[k])
            r.setObjectName(f"Kind_{k}")
            kinds.addButton(r)
            self.kind_radios[k] = r
            kl.addWidget(r)
        self.kind_radios["general"].setChecked(True)
        self.task_fields = QWidget()
        tf = QFormLayout(self.task_fields)
        tf.setContentsMargins(24, 0, 0, 0)
        self.questions = QLineEdit(placeholderText="probe file whose questions the plugin learns to answer (JSONL)")
        self.questions.setObjectName("QuestionsFile")
        qbrowse = QPushButton("Browse…")
        qbrowse.clicked.connect(lambda: self._browse(self.questions, "Questions (probe file)"))
        qrow = QHBoxLayout()
        qrow.addWidget(self.questions, 1)
        qrow.addWidget(qbrowse)
        tf.addRow("Questions file", qrow)
        self.answer_slot = QCheckBox("Also place the answer's entity where the answer begins (answer slot)")
        self.answer_slot.setChecked(True)
        self.answer_slot.setToolTip("A second vector where the answer begins: 3.6 % -> 10.8 % on held-out entities "
                                    "(bench/RESULTS.md, bench_task_plugin.py)")
        tf.addRow(self.answer_slot)
        kl.addWidget(self.task_fields)

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

        # ---- how long: presets, each with its estimate beside it
        preset_box = QGroupBox("How long")
        pg = QGridLayout(preset_box)
        presets = QButtonGroup(self)
        self.preset_radios: dict[str, QRadioButton] = {}
        self.estimates: dict[str, QLabel] = {}
        for i, key in enumerate(("quick", "standard", "custom")):
            r = QRadioButton(self.PRESET_TEXT[key])
            r.setObjectName(f"Preset_{key}")
            presets.addButton(r)
            est = QLabel()
            est.setObjectName("CountLabel")
            self.preset_radios[key], self.estimates[key] = r, est
            pg.addWidget(r, i, 0)
            pg.addWidget(est, i, 1)
        pg.setColumnStretch(1, 1)
        self.probes = QLineEdit(placeholderText="optional: probes JSONL whose held-out subjects are kept out of training")
        self.probes.setObjectName("ProbesFile")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(self.probes, "Held-out probes"))
        prow = QHBoxLayout()
        prow.addWidget(QLabel("Keep out to test on"))
        prow.addWidget(self.probes, 1)
        prow.addWidget(browse)
        pg.addLayout(prow, 3, 0, 1, 2)

        # ---- advanced: the ML fields (shown with Custom; filled by the other presets)
        self.advanced = QGroupBox("Advanced")
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
        mform = QFormLayout(self.advanced)
        mform.addRow("Learning rate", self.lr)
        mform.addRow("Batch", self.batch)
        mform.addRow("Epochs", self.epochs)
        mform.addRow("Max steps", self.max_steps)
        mform.addRow("Reader dropout", self.dropout)

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
        lay.addWidget(kind_box)
        lay.addWidget(preset_box)
        lay.addWidget(self.advanced)
        lay.addWidget(emb_box)
        lay.addWidget(self.start_over)
        lay.addWidget(self.info)
        lay.addWidget(self.error)
        lay.addWidget(self.buttons)
        self.train_radio.toggled.connect(self._update)
        for r in (*self.kind_radios.values(), *self.preset_radios.values()):
            r.toggled.connect(lambda on: on and self._preset_changed())
        for w in (self.batch, self.epochs, self.max_steps):
            w.valueChanged.connect(lambda _: self._update_estimates())
        for w in (self.probes, self.questions):
            w.textChanged.connect(lambda _: self.error.setVisible(False))
        self.preset_radios["quick"].setChecked(True)
        self._update()
        self.setMinimumWidth(620)

    # ------------------------------------------------------------------ state
    def kind(self) -> str:
        return next(k for k, r in self.kind_radios.items() if r.isChecked())

    def preset(self) -> str:
        return next(k for k, r in self.preset_radios.items() if r.isChecked())

    def _preset_changed(self) -> None:
        """Fill the ML fields from the preset (Custom keeps them and shows them)."""
        kind, preset = self.kind(), self.preset()
        values = PRESETS.get((kind, preset))
        if values:
            self.lr.setValue(values["lr"])
            self.batch.setValue(values["batch"])
            self.epochs.setValue(values["epochs"])
            self.max_steps.setValue(values["max_steps"])
            self.dropout.setValue(0.0)
        self.advanced.setVisible(preset == "custom")
        self.task_fields.setVisible(kind == "task")
        self.dropout.setEnabled(kind == "general")  # task-tuning has no reader dropout
        self._update_estimates()
        if self.layout() is not None:  # grow or shrink with the fields shown, never squeezing them
            self.layout().activate()
            self.resize(self.width(), self.sizeHint().height())

    def _update_estimates(self) -> None:
        kind, rows = self.kind(), self.rows[self.kind()]
        for key, label in self.estimates.items():
            v = PRESETS.get((kind, key)) or {"batch": self.batch.value(), "epochs": self.epochs.value(),
                                              "max_steps": self.max_steps.value()}
            text, tip = estimate(kind, rows, v["batch"], v["epochs"], v["max_steps"], gpu=self.gpu)
            label.setText(text)
            label.setToolTip(tip)
            self.preset_radios[key].setToolTip(tip)

    def _update(self) -> None:
        on = self.train_radio.isChecked()
        self.dim.setEnabled(on)
        self.transe_epochs.setEnabled(on)

    def _browse(self, edit: QLineEdit, title: str) -> None:
        f, _ = QFileDialog.getOpenFileName(self, title, str(Path(self.pack).parent), "JSON lines (*.jsonl);;All files (*)")
        if f:
            edit.setText(f)

    def options(self) -> MapTuneOptions:
        split = lambda text: [p.strip() for p in text.split(";") if p.strip()]  # noqa: E731
        kind = self.kind()
        return MapTuneOptions(kind=kind, train_transe=self.train_radio.isChecked(), transe_dim=self.dim.value(),
                              transe_epochs=self.transe_epochs.value(), lr=self.lr.value(), batch=self.batch.value(),
                              epochs=self.epochs.value(), max_steps=self.max_steps.value(),
                              dropout=self.dropout.value() if kind == "general" else 0.0,
                              holdout_probes=split(self.probes.text()),
                              probes=split(self.questions.text()) if kind == "task" else [],
                              answer_slot=self.answer_slot.isChecked(), start_over=self.start_over.isChecked())

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
