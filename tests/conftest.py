"""Test-wide settings: offscreen Qt, offline models, engine tests collected before app tests."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_API", "pyside6")
# Entry states computed by tests go to a throw-away folder, not the user's cache.
_STATES = None
if not os.environ.get("PLUGMEM_ENTRY_STATES"):
    _STATES = os.environ["PLUGMEM_ENTRY_STATES"] = tempfile.mkdtemp(prefix="plugmem-test-states-")
# Keep tests on two cores from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(session, config, items):
    """Engine tests first, then app tests, then end-to-end (stable within each group)."""
    def rank(item) -> int:
        path = str(item.fspath)
        if f"{os.sep}tests{os.sep}engine{os.sep}" in path:
            return 0
        if f"{os.sep}tests{os.sep}app{os.sep}" in path:
            return 1
        return 2
    items.sort(key=rank)


def pytest_sessionfinish(session, exitstatus):
    if _STATES:
        shutil.rmtree(_STATES, ignore_errors=True)


@pytest.fixture
def evaluating_elsewhere():
    """``with evaluating_elsewhere(pack_path): ...`` -- another process holds the pack's edit
    evaluation lock (as a running ``plugmem eval-edits`` does) for the block."""
    import subprocess
    import sys
    from contextlib import contextmanager

    from engine.store.locks import lock_path

    @contextmanager
    def hold(pack_path):
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
             "print('held', flush=True); sys.stdin.read()", str(lock_path(pack_path))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            yield
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)

    return hold
