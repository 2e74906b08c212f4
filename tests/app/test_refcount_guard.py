"""The app survives PySide6 6.12.0's reference leak on None (tens of thousands of void Qt
calls would otherwise abort the interpreter: "Fatal Python error: none_dealloc")."""
from __future__ import annotations

import subprocess
import sys


def test_many_void_qt_calls_do_not_abort_the_interpreter():
    code = (
        "import os; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "import app\n"
        "from PySide6.QtWidgets import QApplication, QComboBox, QWidget\n"
        "a = QApplication([]); w = QWidget(); c = QComboBox(); c.addItem('all', None)\n"
        "for _ in range(200_000):\n"
        "    w.setObjectName('x'); c.currentData()\n"
        "print('survived')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-1000:]
