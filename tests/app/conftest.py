"""App test fixtures: isolated user folders, tiny packs, the real encoder (once), leak checks."""
from __future__ import annotations

import gc
import os
import tempfile
import threading
from pathlib import Path

import pytest

# Before Qt or platformdirs read them: settings and logs of tests never touch the user's.
_TMP = Path(tempfile.mkdtemp(prefix="plugmem-app-tests-"))
os.environ["XDG_CONFIG_HOME"] = str(_TMP / "config")
os.environ["XDG_STATE_HOME"] = str(_TMP / "state")
os.environ["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
os.environ.setdefault("QT_API", "pyside6")

FACTS = [
    ("Paris is the capital of France.", "France", "geography"),
    ("Tokyo is the capital of Japan.", "Japan", "geography"),
    ("Canberra is the capital of Australia.", "Australia", "geography"),
    ("The chemical symbol of gold is Au.", "Gold", "chemistry"),
    ("Iron has the atomic number 26.", "Iron", "chemistry"),
    ("Water boils at 100 degrees Celsius at sea level.", "Water", "physics"),
    ("The Nile is the longest river in Africa.", "Nile", "geography"),
    ("Mount Everest is the highest mountain on Earth.", "Everest", "geography"),
    ("Helium is a noble gas with atomic number 2.", "Helium", "chemistry"),
    ("The currency of Japan is the yen.", "Japan", "economy"),
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_qsettings(qapp):
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(_TMP / "qsettings"))
    QSettings.setDefaultFormat(QSettings.Format.NativeFormat)
    yield


@pytest.fixture(autouse=True)
def plugmem_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PLUGMEM_HOME", str(home))
    return home


def _running_qt_objects() -> list[str]:
    """Active QTimers and running QThreads that Python holds a wrapper of."""
    from PySide6.QtCore import QThread, QTimer

    found = []
    for obj in gc.get_objects():
        kind = type(obj)  # not isinstance: that would touch lazy module attributes (warnings)
        try:
            if issubclass(kind, QTimer) and obj.isActive():
                found.append(f"QTimer(interval={obj.interval()}, parent={type(obj.parent()).__name__})")
            elif issubclass(kind, QThread) and obj.isRunning():
                found.append(f"QThread({obj.objectName() or type(obj).__name__})")
        except RuntimeError:  # C++ object already deleted
            continue
    return found


def running_leftovers(threads_before: set[int] | frozenset = frozenset()) -> list[str]:
    """Everything a test may leave running: Qt timers/threads, pool workers, the app's own
    threads (pack writers, the model host), Python threads started since ``threads_before``
    and job worker processes."""
    import multiprocessing

    from PySide6.QtCore import QThreadPool

    leaks = _running_qt_objects()
    n = QThreadPool.globalInstance().activeThreadCount()
    if n:
        leaks.append(f"{n} QThreadPool worker(s)")
    for t in threading.enumerate():
        if not t.is_alive() or t is threading.main_thread():
            continue
        if t.name.startswith("plugmem-") or (threads_before and t.ident not in threads_before and not t.daemon):
            leaks.append(f"thread {t.name}")
    leaks += [f"process {p.name} (pid {p.pid})" for p in multiprocessing.active_children()]
    return leaks


@pytest.fixture(autouse=True)
def no_leaked_threads_or_timers(qapp):
    """Fail a test that leaves a QThread, an active QTimer, a pool worker, a writer or model
    thread, a new non-daemon thread or a job process running."""
    before = {t.ident for t in threading.enumerate()}
    yield
    from PySide6.QtCore import QCoreApplication, QThreadPool

    QThreadPool.globalInstance().waitForDone(10_000)
    QCoreApplication.processEvents()
    leaks = running_leftovers(before)
    assert not leaks, f"left running after the test: {', '.join(leaks)}"


@pytest.fixture(scope="session")
def encoder():
    from engine.encode import get_default_encoder

    return get_default_encoder()


def make_pack(path: Path, encoder, facts=FACTS) -> Path:
    """A small pack with vectors and its index cache, built through Memory (the real path)."""
    from engine.memory import Memory

    path.parent.mkdir(parents=True, exist_ok=True)
    mem = Memory.open(path, encoder, create=True, name=path.stem)
    try:
        mem.add_many([{"text": t, "title": title, "tags": [tag], "source": f"facts.jsonl:{n + 1}"}
                      for n, (t, title, tag) in enumerate(facts)], author="test")
    finally:
        mem.close()
    return path


@pytest.fixture
def small_pack(tmp_path, encoder) -> Path:
    return make_pack(tmp_path / "ws" / "facts.plugmem", encoder)


@pytest.fixture
def make_ctx(tmp_path):
    """Build an AppContext over a workspace folder; closed at the end of the test."""
    from app.context import AppContext
    from app.notifier import Notifier
    from app.workspace import Workspace

    made = []

    def make(packs=(), folder: Path | None = None):
        folder = folder or tmp_path / "ws"
        folder.mkdir(parents=True, exist_ok=True)
        ws = Workspace.load(folder)
        for p in packs:
            ws.attach(p, plugged=True)
        ctx = AppContext(ws, Notifier(dialogs=False))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


def wait_ready(qtbot, ctx, path, timeout: int = 60_000):
    """Wait until the pack's writer has opened its Memory (encoder + index)."""
    w = ctx.writer(str(path))
    qtbot.waitUntil(lambda: w.state in ("ready", "failed"), timeout=timeout)
    assert w.state == "ready", f"writer failed: {w.error}"
    return w


def ask(qtbot, panel, prompt=None, again=False, timeout=60_000):
    """Ask (or ask again) in the Ask-and-explain panel and return the Explanation it shows."""
    from PySide6.QtCore import Qt

    with qtbot.waitSignal(panel.answered, timeout=timeout) as sig:
        if again:
            assert panel.ask_again()
        else:
            panel.prompt.setText(prompt)
            qtbot.keyClick(panel.prompt, Qt.Key.Key_Return)
    return sig.args[0]


def open_window(qtbot, ctx, path):
    """The real main window on ``path`` (a pack of ``FACTS``) once its rows are shown."""
    from app.main_window import MainWindow

    win = MainWindow(ctx, restore=False)
    qtbot.addWidget(win)
    win.show()
    ctx.current_changed.emit(path)
    wait_ready(qtbot, ctx, path)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == len(FACTS), timeout=10_000)
    return win


def open_on_explain(qtbot, ctx, path):
    """``open_window`` on the Ask-and-explain tab."""
    win = open_window(qtbot, ctx, path)
    win.tabs.setCurrentWidget(win.explain)
    return win


@pytest.fixture(scope="session")
def tiny_reader():
    """A tiny randomly initialised reader (real tokenizer): predictions in milliseconds."""
    from engine.reader.tiny import make_tiny_reader

    return make_tiny_reader(0)


@pytest.fixture
def tiny_loader(tiny_reader):
    """A model loader for AppContext.model_loader: the tiny reader, no DPM branch."""
    from app.model_host import LoadedModel
    from engine.mechanisms import dpm
    from engine.mechanisms.weight_patches import PatchStack

    def load():
        from engine.mechanisms.pkm.attach import attachment

        dpm.detach(tiny_reader)  # never inherit hooks (or weight patches, a product-key memory) from another test
        PatchStack.of(tiny_reader).clear()
        if attachment(tiny_reader) is not None:
            attachment(tiny_reader).detach()
        return LoadedModel(tiny_reader, None, "No memory branch for the tiny test reader.")

    return load
