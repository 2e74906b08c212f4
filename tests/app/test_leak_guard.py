"""The leak guard itself: what it must catch is caught (so a test that leaks cannot pass)."""
from __future__ import annotations

import threading

from .conftest import running_leftovers


def test_guard_sees_an_active_timer_and_a_new_thread(qtbot):
    from PySide6.QtCore import QTimer

    before = {t.ident for t in threading.enumerate()}
    timer = QTimer()
    timer.start(1000)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="some-worker")
    t.start()
    try:
        leaks = running_leftovers(before)
        assert any(x.startswith("QTimer(interval=1000") for x in leaks), leaks
        assert "thread some-worker" in leaks
    finally:
        timer.stop()
        stop.set()
        t.join()
    assert running_leftovers(before) == []


def test_guard_sees_an_open_pack_writer(qtbot, make_ctx, small_pack):
    from .conftest import wait_ready

    ctx = make_ctx([str(small_pack)])
    wait_ready(qtbot, ctx, str(small_pack.resolve()))
    assert any(x.startswith("thread plugmem-writer") for x in running_leftovers())
    ctx.close()
    assert not any(x.startswith("thread plugmem-writer") for x in running_leftovers())
