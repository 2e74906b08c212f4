"""Where the bundled resources (demo data, styles, icons, shipped artefacts) are, and the
user's data and cache folders (here, below every layer: readers, entry states and keys all
keep their caches under one root).

In a checkout or editable install they sit in ``resources/`` at the repo root; in a
PyInstaller bundle they are unpacked under ``sys._MEIPASS/resources``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def resources_dir() -> Path:
    env = os.environ.get("PLUGMEM_RESOURCES")
    if env:
        return Path(env)
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parents[1] / "resources"


def demo_dir() -> Path:
    return resources_dir() / "demo"


def user_data_dir() -> Path:
    """Per-user data folder (workspaces, job records); PLUGMEM_HOME overrides it (tests)."""
    env = os.environ.get("PLUGMEM_HOME")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("plugmem-studio", appauthor=False))


ENV_CACHE_DIR = "PLUGMEM_CACHE_DIR"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$PLUGMEM_CACHE_DIR``, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("plugmem-studio"))
