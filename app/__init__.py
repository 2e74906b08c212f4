"""PlugMem Studio's desktop front end (PySide6). The only package that imports Qt."""
import os

# superqt and pyqtgraph pick their Qt binding from QT_API; PySide6 is the only one installed.
os.environ.setdefault("QT_API", "pyside6")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# PySide6 6.12.0 on Python 3.11 drops a reference to None on every void Qt call and aborts
# the interpreter within seconds of use; see app/refcount_guard.py.
from app.refcount_guard import install as _install_refcount_guard  # noqa: E402

_install_refcount_guard()
