"""Before Qt starts, the app says in one line why no window can open (not Qt's abort)."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from app import platform_check
from app.platform_check import debian_package, missing_xcb_libraries, window_problem


def test_debian_package_names():
    assert debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert debian_package("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert debian_package("libxcb-xinput.so.0.1.0") == "libxcb-xinput0"


def test_what_is_said_for_each_environment(monkeypatch):
    monkeypatch.setattr(platform_check, "missing_xcb_libraries", lambda: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    said = window_problem({"DISPLAY": ":0"}, "linux")
    assert said.startswith("Qt cannot open a window") and "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in said
    assert "DISPLAY is not set" in window_problem({}, "linux")
    assert window_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert window_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert window_problem({"DISPLAY": ":0"}, "darwin") is None
    monkeypatch.setattr(platform_check, "missing_xcb_libraries", lambda: [])
    assert window_problem({"DISPLAY": ":0"}, "linux") is None


@pytest.mark.skipif(sys.platform != "linux", reason="xcb is Linux's")
def test_the_libraries_named_missing_really_cannot_load():
    for soname in missing_xcb_libraries():
        with pytest.raises(OSError):
            ctypes.CDLL(soname)


@pytest.mark.skipif(sys.platform != "linux", reason="xcb is Linux's")
def test_the_app_exits_with_one_line_when_no_window_can_open(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PLUGMEM_HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "DISPLAY is not set" in r.stderr, r.stderr
