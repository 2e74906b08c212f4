"""`python -m app --screenshot`: the real window opens on a workspace, paints rows, saves a PNG."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_screenshot_of_a_workspace(tmp_path, small_pack):
    out = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PLUGMEM_HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_STATE_HOME=str(tmp_path / "state"))
    r = subprocess.run([sys.executable, "-m", "app", "--workspace", str(small_pack.parent), "--screenshot", str(out),
                        "--timeout", "90"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 10_000
    from PySide6.QtGui import QImage

    img = QImage(str(out))
    assert img.width() >= 800 and img.height() >= 500
    # the workspace remembers the attached pack
    ws = (small_pack.parent / "workspace.json").read_text()
    assert "facts.plugmem" in ws
    assert "Traceback" not in r.stderr


def test_the_window_fits_a_1280_by_800_screen(qtbot, make_ctx, small_pack):
    """Every tab, dock and control shown at once still fits a common laptop screen (the
    evaluation controls in one row made the window 1,542 pixels wide at least)."""
    from .conftest import open_window

    path = str(small_pack.resolve())
    win = open_window(qtbot, make_ctx([path]), path)
    hint = win.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 800, hint
    win.resize(1280, 800)
    assert win.width() == 1280
    for i in range(win.tabs.count()):  # no tab asks for more than the window leaves it
        assert win.tabs.widget(i).minimumSizeHint().width() <= win.tabs.width(), win.tabs.tabText(i)
