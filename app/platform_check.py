"""Before Qt starts: can it open a window here? One line saying what is missing, instead of
Qt's abort (whose message blames libxcb-cursor0 even when other libraries are missing)."""
from __future__ import annotations

import ctypes.util
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def debian_package(soname: str) -> str:
    """'libxcb-icccm.so.4' -> 'libxcb-icccm4' (Debian's naming of shared-library packages)."""
    m = re.fullmatch(r"(lib[\w+.-]+?)\.so\.(\d+)(?:\.\d+)*", soname)
    if not m:
        return soname
    name, major = m.groups()
    return f"{name}-{major}" if name[-1].isdigit() else f"{name}{major}"


def missing_xcb_libraries() -> list[str]:
    """Shared libraries Qt's xcb platform plugin needs that this system lacks ([] if unknown)."""
    spec = importlib.util.find_spec("PySide6")
    ldd = shutil.which("ldd")
    if spec is None or not spec.submodule_search_locations or ldd is None:
        return []
    plugin = Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.is_file():
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = list(dict.fromkeys(re.findall(r"^\s*(\S+) => not found", out, flags=re.M)))
    if ctypes.util.find_library("xcb-cursor") is None:  # Qt >= 6.5 dlopens it at start
        missing.append("libxcb-cursor.so.0")
    return missing


def window_problem(environ=os.environ, platform: str = sys.platform) -> str | None:
    """Why no window can open here, in one line, or None when nothing is known to be wrong."""
    qpa = environ.get("QT_QPA_PLATFORM", "")
    if platform != "linux" or (qpa and not qpa.startswith("xcb")) or (not qpa and environ.get("WAYLAND_DISPLAY")):
        return None
    if not environ.get("DISPLAY"):
        return ("no display to open a window on (DISPLAY is not set): start PlugMem Studio from a desktop session "
                "or under Xvfb; --screenshot and --self-test also run with QT_QPA_PLATFORM=offscreen")
    missing = missing_xcb_libraries()
    if missing:
        pkgs = " ".join(debian_package(s) for s in missing)
        return (f"Qt cannot open a window: the system lacks {', '.join(missing)}; "
                f"on Debian or Ubuntu install them with: sudo apt-get install {pkgs}")
    return None
