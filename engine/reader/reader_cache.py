"""A converted-model cache folder that is either complete or rebuilt, never half-used.

The default reader ships as a GGUF file that takes ~20 s to de-quantise; it is
converted once into ``<cache>/readers/<entry>/`` (``config.json`` +
``model.safetensors`` + tokenizer files). A folder is trusted only when its
``complete.json`` marker (written last, inside a temporary folder that is then
renamed into place) lists every file with its size and the sha256 of
``config.json``, and its safetensors headers can be read. Anything else (no marker,
a size mismatch, an unreadable header) is logged and the folder is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MARKER = "complete.json"
MARKER_FORMAT = 1
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_marker(folder: Path, source: dict) -> None:
    """Record every file's size and the config's sha256; call it after everything else is written."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}
    config = folder / "config.json"
    marker = {
        "format": MARKER_FORMAT,
        "files": files,
        "config_sha256": _sha256_bytes(config.read_bytes()) if config.is_file() else None,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1), encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file cannot be used, or None when its header reads."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if not list(f.keys()):
                return f"{path.name} holds no tensors"
    except Exception as exc:  # SafetensorError, OSError, ...: all mean "unreadable"
        return f"{path.name} is unreadable ({type(exc).__name__}: {exc})"
    return None


def folder_problem(folder: Path, require_weights: bool = True) -> str | None:
    """Why ``folder`` is not a complete cache entry, or None when it is."""
    if not folder.is_dir():
        return "not built yet"
    marker_path = folder / MARKER
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MARKER} marker (an interrupted conversion?)"
    except (OSError, ValueError) as exc:
        return f"{MARKER} is unreadable ({exc})"
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or not isinstance(marker.get("files"), dict):
        return f"{MARKER} has an unknown layout"
    for name, size in marker["files"].items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        actual = p.stat().st_size
        if actual != size:
            return f"{name} is {actual} bytes, expected {size}"
    config = folder / "config.json"
    if not config.is_file():
        return "config.json is missing"
    if _sha256_bytes(config.read_bytes()) != marker.get("config_sha256"):
        return "config.json changed since the conversion"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and require_weights:
        return "no .safetensors weights"
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            return problem
    return None


def discard(folder: Path, reason: str) -> None:
    """Remove a broken cache entry (after saying why)."""
    log.warning("Reader cache %s is unusable (%s); rebuilding it.", folder, reason)
    shutil.rmtree(folder, ignore_errors=True)


def ensure_folder(folder: Path, build: Callable[[Path], dict], require_weights: bool = True) -> Path:
    """Return ``folder`` complete, building it with ``build(tmp_folder) -> source info`` if needed.

    ``build`` writes the model files into the temporary folder it is given and returns
    a small JSON-able dict describing the source (kept in the marker). The temporary
    folder is renamed into place only after the marker is written, so a crash or kill
    at any moment leaves either no entry or a complete one (plus a stray ``.tmp-*``
    folder that the next build sweeps away).
    """
    problem = folder_problem(folder, require_weights)
    if problem is None:
        return folder
    if folder.exists():
        discard(folder, problem)
    else:
        log.info("Reader cache %s: %s; building it.", folder, problem)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
        # Left by a killed build; a live concurrent build's folder is young, leave it.
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        t0 = time.perf_counter()
        source = build(tmp)
        write_marker(tmp, source)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished the same entry first; keep theirs if it is sound.
            if folder_problem(folder, require_weights) is None:
                log.info("Reader cache %s was built concurrently; using that one.", folder)
                return folder
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        log.info("Reader cache %s built in %.1f s.", folder, time.perf_counter() - t0)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
