"""AppContext: what every panel shares — workspace, change hub, writers, readers, jobs, notifier.

Panels receive the context and never open packs themselves, so that each pack has
exactly one writer (:class:`~app.writer.PackWriter`) and one GUI-thread reader (a
read-only ``Pack``). ``AppContext.close()`` shuts everything down explicitly (PySide6
can abort at interpreter exit when connections or models are still alive).
"""
from __future__ import annotations

import getpass
import logging
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from app.hub import ChangeHub
from app.notifier import Notifier
from app.settings import AppSettings
from app.workspace import Workspace
from app.writer import PackWriter

log = logging.getLogger(__name__)


def default_workspace_folder() -> Path:
    from engine.resources import user_data_dir

    return user_data_dir()


def author_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user name on this system
        return "user"


class AppContext(QObject):
    """Shared state of one window (or one standalone panel)."""

    workspace_changed = Signal()  # packs attached/detached/plugged, current pack changed
    current_changed = Signal(str)  # path of the pack shown in the browser ("" = none)
    encoder_ready = Signal(str)  # device description
    demo_progress = Signal(float, str)
    busy_changed = Signal(str, bool)  # pack path, busy (an outside job writes it)

    def __init__(self, workspace: Workspace, notifier: Notifier | None = None, settings: AppSettings | None = None,
                 jobs_db: Path | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.hub = ChangeHub()
        self.notifier = notifier or Notifier()
        self.settings = settings or AppSettings()
        self.author = author_name()
        self._writers: dict[str, PackWriter] = {}
        self._readers: dict[str, Any] = {}
        self._busy: dict[str, str] = {}  # pack path -> why it cannot be edited now
        self._workers: list[Any] = []
        self.encoder = None
        self.device = ""
        self.jobs_db = Path(jobs_db) if jobs_db else workspace.folder / "jobs.sqlite"
        self._jobs = None
        self._model = None
        self._reads = None
        #: How the model host loads the reader and branch; tests put a tiny reader here.
        self.model_loader = None
        self.closed = False

    # ------------------------------------------------------------------ packs
    @property
    def current(self) -> str | None:
        return self.workspace.current

    def set_current(self, path: str | None) -> None:
        if path == self.workspace.current:
            return
        self.workspace.current = path
        self._save_workspace()
        self.current_changed.emit(path or "")

    def writer(self, path: str, create: bool = False) -> PackWriter:
        """The pack's one writer, started (opening in the background) on first use."""
        w = self._writers.get(path)
        if w is None or w.state == "closed":
            w = PackWriter(path, self.hub, self.encoder_provider, self.notifier.error, create=create)
            self._writers[path] = w
        return w

    def writer_if_open(self, path: str) -> PackWriter | None:
        return self._writers.get(path)

    def reader(self, path: str | None):
        """A read-only Pack on the GUI thread (None when the file is not readable yet)."""
        if not path:
            return None
        r = self._readers.get(path)
        if r is not None:
            return r
        w = self._writers.get(path)
        if not Path(path).exists() or (w is not None and w.creating):  # not a pack yet: nothing to read
            return None
        from engine.store import Pack

        try:
            r = Pack.open(path, readonly=True)
        except Exception as exc:
            log.warning("cannot open %s for reading: %s", path, exc)
            return None
        self._readers[path] = r
        return r

    def _drop_reader(self, path: str) -> None:
        """Reopen the reader lazily (after a writer (re)opened, e.g. migrations ran)."""
        r = self._readers.pop(path, None)
        if r is not None:
            r.close()
        if self._reads is not None:
            self._reads.forget(path)

    def is_busy(self, path: str) -> bool:
        return path in self._busy

    def busy_reason(self, path: str) -> str:
        """What keeps the pack from being edited now ("importing", "evaluating edits"), or ""."""
        return self._busy.get(path, "")

    def set_busy(self, path: str, busy: bool, reason: str = "importing") -> None:
        """Mark a pack as written by something else than the user (an import job, an edit
        evaluation): the views refuse edits to it meanwhile."""
        if busy:
            self._busy[path] = reason
        else:
            self._busy.pop(path, None)
        self.busy_changed.emit(path, busy)

    def attach(self, path: str | Path, plugged: bool = True, create: bool = False) -> str:
        ref = self.workspace.attach(path, plugged)
        if create or not Path(ref.path).exists():
            self.writer(ref.path, create=True)
        self._save_workspace()
        self.workspace_changed.emit()
        return ref.path

    def detach(self, path: str) -> None:
        w = self._writers.pop(path, None)
        if w is not None:
            w.close()
        self._drop_reader(path)
        was_current = self.workspace.current == path
        self.workspace.detach(path)
        self._save_workspace()
        self.workspace_changed.emit()
        if was_current:
            self.current_changed.emit(self.workspace.current or "")

    def set_plugged(self, path: str, plugged: bool) -> None:
        self.workspace.set_plugged(path, plugged)
        self._save_workspace()
        self.workspace_changed.emit()

    def _save_workspace(self) -> None:
        try:
            self.workspace.save()
        except OSError as exc:
            self.notifier.error("Saving the workspace", exc)

    # ------------------------------------------------------------------ encoder
    def encoder_provider(self):
        """Called on writer threads: the process-wide encoder (loaded once, thread-safe)."""
        from engine.encode import get_default_encoder

        return get_default_encoder()

    def load_encoder(self) -> None:
        """Load the key encoder in the background; ``encoder_ready`` tells the device."""

        def load():
            enc = self.encoder_provider()
            return enc, device_name(enc)

        def done(res):
            self.encoder, self.device = res
            self.encoder_ready.emit(self.device)

        self.run_in_thread(load, done, "Loading the key encoder")

    # ------------------------------------------------------------------ background work
    def run_in_thread(self, fn: Callable[..., Any], on_done: Callable[[Any], None] | None = None,
                      what: str = "Working", *, progress: bool = False) -> Any:
        """Short/medium work in a superqt worker; errors go to the notifier.

        With ``progress=True`` ``fn`` receives a ``progress(fraction, message)`` callback
        whose calls arrive on the GUI thread as the worker's ``progressed`` signal.
        """
        from superqt.utils import create_worker

        relay = _ProgressRelay()
        args = (relay.progress.emit,) if progress else ()
        worker = create_worker(fn, *args, _start_thread=False)
        worker.relay = relay  # keep alive with the worker
        if on_done is not None:
            worker.returned.connect(lambda res: None if self.closed else on_done(res))
        worker.errored.connect(lambda exc: None if self.closed else self.notifier.error(what, exc))
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        worker.start()
        return worker

    def wait_workers(self, timeout_ms: int = 60_000) -> None:
        from PySide6.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(timeout_ms)

    # ------------------------------------------------------------------ jobs
    @property
    def jobs(self):
        """The JobWatcher over the engine's process runner (created on first use)."""
        if self._jobs is None:
            from app.jobs import JobWatcher

            self._jobs = JobWatcher(self.jobs_db, self.notifier)
        return self._jobs

    # ------------------------------------------------------------------ background reads
    @property
    def reads(self):
        """The ReadService: slow reads (id lists, full-text search, counts) off the GUI thread."""
        if self._reads is None:
            from app.reads import ReadService

            self._reads = ReadService()
        return self._reads

    # ------------------------------------------------------------------ reader model
    @property
    def model(self):
        """The ModelHost (reader + DPM branch on their own thread), created on first use."""
        if self._model is None:
            from app.model_host import ModelHost, default_loader

            loader = self.model_loader or default_loader(self.workspace.reader, self.workspace.dpm_branch)
            self._model = ModelHost(loader, self.notifier.error)
            self._model.competing_work = lambda: self._jobs is not None and self._jobs.process_jobs_running()
        return self._model

    def use_dpm_branch(self, folder: str | None) -> None:
        """Make ``folder`` the workspace's memory branch (None: the shipped one) and reload the model."""
        self.workspace.dpm_branch = folder
        self._save_workspace()
        if self._model is not None:
            from app.model_host import default_loader

            self._model.set_loader(self.model_loader or default_loader(self.workspace.reader, folder))
            self._model.load()

    def model_if_created(self):
        return self._model

    def plugged_memories(self) -> tuple[list, list[str]]:
        """The plugged packs as memories for a prediction (built here, on the GUI thread),
        and a note for each plugged pack that cannot take part (missing, refused, busy)."""
        from app.model_host import PluggedMemory

        mems, skipped, names = [], [], set()
        for path in self.workspace.plugged():
            name = Path(path).stem
            if not Path(path).exists():
                skipped.append(f"{name}: the file is missing")
                continue
            if self.is_busy(path):
                skipped.append(f"{name}: {self.busy_reason(path)}")
                continue
            w = self.writer(path)
            if w.state == "failed":
                skipped.append(f"{name}: {w.error}")
                continue
            reader = self.reader(path)
            try:
                shown = reader.name if reader is not None else name
            except Exception:
                shown = name
            if shown in names:  # two packs of the same name: tell them apart by file
                shown = f"{shown} ({Path(path).name})"
            names.add(shown)
            mems.append(PluggedMemory(path, shown or name, w, self.encoder_provider))
        return mems, skipped

    # ------------------------------------------------------------------ demo
    def build_demo(self, on_done: Callable[[dict], None] | None = None, folder: Path | None = None):
        """Build (once) the bundled demo packs in the background and attach them, plugged."""
        from engine.demo import ensure_demo_workspace

        def work(progress):
            return ensure_demo_workspace(progress=progress, folder=folder)

        def done(info: dict) -> None:
            for p in info.get("packs", []):
                self.workspace.attach(p, plugged=True)
            if info.get("packs") and not self.workspace.current:
                self.workspace.current = str(Path(info["packs"][0]).resolve())
            self._save_workspace()
            self.workspace_changed.emit()
            self.current_changed.emit(self.workspace.current or "")
            if on_done:
                on_done(info)

        w = self.run_in_thread(work, done, "Building the demo workspace", progress=True)
        w.relay.progress.connect(self.demo_progress)
        return w

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop jobs polling, close writers (waiting for queued writes), close readers."""
        if self.closed:
            return
        self.closed = True
        if self._jobs is not None:
            self._jobs.close()
        if self._model is not None:
            self._model.close()
        if self._reads is not None:
            self._reads.close()
        for w in list(self._writers.values()):
            w.close(wait=True)
        self._writers.clear()
        for r in list(self._readers.values()):
            try:
                r.close()
            except Exception:  # pragma: no cover
                pass
        self._readers.clear()
        self.wait_workers()


class _ProgressRelay(QObject):
    progress = Signal(float, str)


def device_name(encoder: Any = None) -> str:
    """"CPU" or the GPU's name (torch.cuda)."""
    try:
        import torch

        dev = getattr(encoder, "device", None)
        if torch.cuda.is_available() and (dev is None or getattr(dev, "type", "cuda") == "cuda"):
            return f"GPU: {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover
        pass
    return "CPU"
