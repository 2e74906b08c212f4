"""sha256 of a weights file, cached in the user cache keyed by path, size and mtime.

Hashing 90 MB costs ~0.3 s; the fingerprint is needed on every start, so the hash is
remembered in ``<user cache>/weights_sha256.json`` and recomputed only when the file's
size or modification time changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_CACHE_NAME = "weights_sha256.json"


def _cache_file() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("plugmem-studio")) / _CACHE_NAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: str | Path, cache_file: Path | None = None) -> str:
    """sha256 hex digest of ``path``, from the cache when size and mtime still match."""
    path = Path(path).resolve()
    st = path.stat()
    key = str(path)
    sig = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache_file = cache_file or _cache_file()
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == sig["size"] and hit.get("mtime_ns") == sig["mtime_ns"]:
        digest = hit.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    digest = sha256_file(path)
    cache[key] = {**sig, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError as exc:  # a read-only cache only costs time
        log.warning("Could not write the weights hash cache %s: %s", cache_file, exc)
    return digest
