"""The reader model on its own thread: loaded once, then predictions and evaluations run
there one after another, never on the GUI thread.

One thread because the reader is one torch module: the DPM branch hooks into it and
context-mode leave-one-out switches its attention implementation, so two predictions
at once would step on each other. Plugged packs are searched through their writers
(:class:`PluggedMemory`), which own the packs' SQLite connections and indexes.
Knowledge plugins (``<pack>.plugin/``) are loaded here too, on the model thread, for the
loaded reader (:meth:`LoadedModel.plugins_for`), and handed to ``Predictor.predict``.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)

SEARCH_TIMEOUT_S = 300.0  # a writer still opening a 1M-entry pack may need a while


@dataclass
class LoadedModel:
    """What the model thread holds: the reader, the DPM branch (None: 'dpm' mode is off) and
    a note for the user when something was left out."""

    reader: Any
    branch: Any = None
    note: str = ""
    _predictor: Any = None
    #: knowledge plugins loaded for this reader: pack path -> (files' stamp, KnowledgePlugin)
    plugins: dict[str, tuple[tuple, Any]] = field(default_factory=dict)
    #: the product-key memory plugged into the reader (a PKMMechanism; app.pkm_layers), or None
    pkm: Any = None

    @property
    def predictor(self):
        """The engine's Predictor for this reader and branch, made once (on the model thread):
        it caches entries' reader states between questions."""
        if self._predictor is None:
            from engine.explain import PredictError, Predictor

            try:
                self._predictor = Predictor(self.reader, self.branch, entry_store=self._entry_store())
            except PredictError as exc:  # a branch the reader cannot take: keep 'context' working
                self.note = f"The memory branch cannot be used ({exc}); mode 'dpm' is off."
                self.branch = None
                self._predictor = Predictor(self.reader, None)
        return self._predictor

    def _entry_store(self):
        """The on-disk store of entries' reader states for this reader and branch (None when
        it cannot be opened: the states are then computed each session). None while a
        product-key memory is plugged: the states it changes must not be stored as the reader's."""
        from engine.session import open_entry_store

        if self.pkm is not None:
            return None
        return open_entry_store(self.reader, self.branch)

    def describe(self) -> str:
        name = getattr(self.reader, "name", "reader")
        return f"{name} + memory branch" if self.branch is not None else str(name)

    # ------------------------------------------------------------------ knowledge plugins
    def plugins_for(self, pack_paths: list[str]) -> tuple[list, list[str]]:
        """The knowledge plugins of ``pack_paths`` (in that order), loading the missing ones
        (model thread only), and one note per pack whose plugin cannot be used.

        A plugin is reloaded when its files change (map-tuned again) or the pack's entities
        do (a triples import added aliases it should link); plugins of packs no longer asked
        for are dropped, so unplugging frees them.
        """
        from engine.mechanisms.plugins.io import load_plugin, plugged_plugin_dir
        from engine.store import Pack, PackError

        plugins, notes = [], []
        for path in pack_paths:
            name = Path(path).stem
            folder = plugged_plugin_dir(path)
            stamp = _stamp(folder)
            if stamp is not None:
                stamp += (_entities_version(path),)
            have = self.plugins.get(path)
            if have is not None and have[0] == stamp:
                plugins.append(have[1])
                continue
            self.plugins.pop(path, None)
            if stamp is None:
                notes.append(f"{name}: no trained knowledge plugin in {folder}")
                continue
            if not Path(path).exists():
                notes.append(f"{name}: the pack file is missing, so its plugin cannot link entities")
                continue
            try:
                with Pack.open(path, readonly=True) as pack:  # the plugin links with the pack's aliases
                    plugin = load_plugin(folder, self.reader, pack)
            except (ValueError, PackError) as exc:  # PluginError, PackError: another reader's plugin, damaged files...
                notes.append(f"{name}: {exc}")
                continue
            self.plugins[path] = (stamp, plugin)
            plugins.append(plugin)
        for path in set(self.plugins) - set(pack_paths):
            del self.plugins[path]
        return plugins, notes


def _stamp(folder: Path) -> tuple | None:
    """What identifies a plugin's files on disk (None: no plugin there)."""
    try:
        return tuple((f, (folder / f).stat().st_mtime_ns, (folder / f).stat().st_size)
                     for f in ("config.json", "model.safetensors", "entities.json"))
    except OSError:
        return None


def _entities_version(path: str) -> int | None:
    """The pack's ``entities_version`` (None when it cannot be read: the plugin's load says why)."""
    from engine.store import Pack, PackError

    try:
        with Pack.open(path, readonly=True) as pack:
            return pack.entities_version
    except (OSError, ValueError, PackError):
        return None


Loader = Callable[[], LoadedModel]


def default_loader(reader_path: str | None = None, branch_path: str | None = None) -> Loader:
    """Load the workspace's reader (default SmolLM2) and its DPM branch (else the shipped one)."""

    def load() -> LoadedModel:
        from engine.encode import get_default_encoder
        from engine.session import DEFAULT, open_session

        # transformers' lazy module is not safe to import from two threads at once: let the
        # key encoder (loading on another thread at start-up) finish its import first.
        get_default_encoder()
        # need_branch=False: a missing or foreign branch turns 'dpm' off with a note; the
        # entry store is opened later, with the predictor, on the model thread.
        session = open_session(reader_path, branch=branch_path or DEFAULT, need_branch=False)
        return LoadedModel(session.reader, session.branch, session.note)

    return load


class PluggedMemory:
    """A plugged pack as the engine's prediction and evaluation code sees a memory, usable
    from the model thread: every call runs on the pack's writer thread (the owner of its
    connection, encoder and index) and is waited for here. Edits made this way (an edit
    evaluation) are broadcast like the user's, so the views follow.

    Built on the GUI thread (it needs the pack's writer); used on the model thread.
    """

    def __init__(self, path: str, name: str, writer, encoder_provider: Callable[[], Any]) -> None:
        self.path = path
        self.name = name
        self._writer = writer
        self._encoder_provider = encoder_provider
        self.pack = _WriterPackView(name, Path(path), self._call)

    @property
    def encoder(self):
        """The key encoder (the process-wide one, loaded on first use: on the model thread)."""
        return self._encoder_provider()

    def _call(self, fn: Callable[[Any], Any], what: str, broadcast: bool = False):
        fut = self._writer.submit(fn, what=f"{what} {self.name} in", on_error=lambda exc: None, broadcast=broadcast)
        try:
            return fut.result(timeout=SEARCH_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: its pack did not answer within {SEARCH_TIMEOUT_S:.0f} s (still opening?)") from None

    def search_vectors(self, queries, k: int):
        return self._call(lambda m: m.search_vectors(queries, k), "Searching")

    def edit(self, entry_id: int, **fields: Any):
        return self._call(lambda m: m.edit(entry_id, **fields), "Editing", broadcast=True)

    def undo(self):
        return self._call(lambda m: m.undo(), "Undoing in", broadcast=True)

    def end_redo(self) -> int:
        return self._call(lambda m: m.end_redo(), "Ending redo in", broadcast=True)


class _WriterPackView:
    """The read side of a pack that the engine's evaluation uses, answered by the writer thread."""

    def __init__(self, name: str, path: Path, call: Callable[..., Any]) -> None:
        self.name = name
        self.path = path
        self._call = call

    def page(self, after: int = 0, limit: int = 100, status: str | None = None, tag: str | None = None):
        return self._call(lambda m: m.pack.page(after, limit, status=status, tag=tag), "Reading")

    def get(self, entry_id: int):
        return self._call(lambda m: m.pack.get(entry_id), "Reading")

    def top_undo_author(self):
        return self._call(lambda m: m.pack.top_undo_author(), "Reading")


class ReaderUnavailable(ValueError):
    """The reader could not be loaded; the message says why (shown inline, not as a crash)."""


class ModelHost(QObject):
    """States: idle (nothing loaded yet), loading, ready, failed, closed."""

    state_changed = Signal(str)
    ready = Signal(str)  # description ("SmolLM2-135M-Instruct + memory branch")
    failed = Signal(object)  # the loading exception
    #: knowledge plugins synced: {pack path: plugin name} loaded, [notes] for those left out
    plugins_loaded = Signal(object, object)
    _deliver = Signal(object)

    def __init__(self, loader: Loader, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        super().__init__()
        self._loader = loader
        self._on_error = on_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugmem-model")
        self._lock = threading.Lock()
        self._pending = 0
        self.model: LoadedModel | None = None
        self.state = "idle"
        self.error: BaseException | None = None
        self.wanted_plugins: list[str] = []  # packs whose knowledge plugin is plugged in
        #: returns True while other work competes for the cores (a job in a child process)
        self.competing_work: Callable[[], bool] | None = None
        self._threads: int | None = None  # torch's thread count when nothing competes
        self._stale = False
        #: called on the model thread with each freshly loaded model, before any queued task
        #: runs (the weight patches the workspace has on are applied there)
        self.after_load: list[Callable[[LoadedModel], None]] = []
        self._deliver.connect(self._on_deliver)

    # ------------------------------------------------------------------ public
    @property
    def busy(self) -> bool:
        return self._pending > 0

    @property
    def description(self) -> str:
        return self.model.describe() if self.model else ""

    @property
    def has_branch(self) -> bool:
        return self.model is not None and self.model.branch is not None

    def load(self) -> None:
        """Start loading (once; again after a failure)."""
        if self.state in ("loading", "ready", "closed"):
            return
        self._set_state("loading")
        self._run(lambda _: self._load(), None, None, what="Loading the reader")

    def set_plugins(self, pack_paths: list[str]) -> Future | None:
        """Plug the knowledge plugins of ``pack_paths`` (and unplug the others): loaded on the
        model thread, the reader first if needed; ``plugins_loaded`` says what came of it.
        Predictions load whatever is still missing themselves, so this is only a head start."""
        self.wanted_plugins = list(pack_paths)
        if self.state == "closed" or (self.state == "idle" and not pack_paths):
            return None
        wanted = list(pack_paths)

        def sync(model: LoadedModel):
            plugins, notes = model.plugins_for(wanted)
            return {p: pl.name for p, pl in zip([p for p in wanted if p in model.plugins], plugins)}, notes

        def done(res) -> None:
            loaded, notes = res
            self.plugins_loaded.emit(loaded, notes)

        return self.submit(sync, done, on_error=lambda exc: self.plugins_loaded.emit({}, [str(exc)]),
                           what="Loading knowledge plugins")

    def set_loader(self, loader: Loader) -> None:
        """Use another reader / branch from now on (loaded again on the next request)."""
        self._loader = loader
        if self.state == "loading":
            self._stale = True  # load again once the running load is done
        if self.state in ("ready", "failed"):
            self._run(lambda _: self._unload(), None, None, what="Unloading the reader")
            self.model = None
            self._set_state("idle")

    def submit(self, task: Callable[[LoadedModel], Any], on_done: Callable[[Any], None] | None = None, *,
               on_error: Callable[[BaseException], None] | None = None, what: str = "Working") -> Future:
        """Run ``task(model)`` on the model thread (loading the model first when needed)."""
        if self.state == "closed":
            raise RuntimeError("the model host is closed")
        self.load()

        def call(_):
            if self._model is None:
                why = self._load_error or "it is not loaded"
                raise ReaderUnavailable(f"The reader could not be loaded: {why}")
            return task(self._model)

        return self._run(call, on_done, on_error, what=what)

    def close(self) -> None:
        """Finish the running task, drop the queued ones, free the model."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None
        self.model = None

    # ------------------------------------------------------------------ thread side
    _model: LoadedModel | None = None
    _load_error: str | None = None

    def _load(self) -> LoadedModel:
        try:
            m = self._loader()
        except BaseException as exc:
            self._load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
            raise
        for hook in self.after_load:
            try:
                hook(m)
            except Exception:  # noqa: BLE001 - a hook says its own errors; the reader is loaded
                log.exception("after-load hook %r failed", hook)
        self._model, self._load_error = m, None
        return m

    def _unload(self) -> None:
        self._model = None

    def _pick_threads(self) -> None:
        """On the model thread, before each task: one torch thread while a job runs beside it.

        With two busy processes on the same cores, OpenMP threads that spin at every barrier
        take turns in scheduler quanta: an explained answer that takes 1.3 s alone took
        26-36 s beside a training job with 2 threads, 3.5-4.4 s with one (bench/bench_threads.py).
        Alone, all threads are used again (spinning is the fastest when nothing competes).
        """
        import torch

        if self._threads is None:
            self._threads = torch.get_num_threads()
        busy = False
        if self.competing_work is not None:
            try:
                busy = bool(self.competing_work())
            except Exception:  # noqa: BLE001 - a GUI-side check must not stop a prediction
                busy = False
        want = 1 if busy else self._threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
            log.info("model thread: %d torch thread(s)%s", want, " while a job runs" if busy else "")

    def _run(self, fn, on_done, on_error, *, what: str) -> Future:
        with self._lock:
            self._pending += 1

        def job():
            try:
                self._pick_threads()
                res = fn(None)
            except BaseException as exc:
                self._deliver.emit((fn, None, exc, on_done, on_error, what))
                raise
            self._deliver.emit((fn, res, None, on_done, on_error, what))
            return res

        return self._executor.submit(job)

    # ------------------------------------------------------------------ GUI side
    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    @Slot(object)
    def _on_deliver(self, payload) -> None:
        fn, res, exc, on_done, on_error, what = payload
        with self._lock:
            self._pending -= 1
        if self.state == "closed":
            return
        if what == "Loading the reader":
            if self._stale:
                self._stale = False
                self._set_state("ready" if exc is None else "failed")
                self.set_loader(self._loader)
                self.load()
                return
            if exc is None:
                self.model, self.error = res, None
                self._set_state("ready")
                if res.note:
                    log.info("%s", res.note)
                self.ready.emit(res.describe())
            else:
                self.error = exc
                self._set_state("failed")
                self.failed.emit(exc)
                if self._on_error:
                    self._on_error("Loading the reader", exc)
            return
        if exc is not None:
            if on_error is not None:
                on_error(exc)
            elif self._on_error is not None:
                self._on_error(what, exc)
        elif on_done is not None:
            on_done(res)
