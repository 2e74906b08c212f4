"""The ``config.json`` that describes a saved artefact folder (a DPM branch, a knowledge
plugin, entity embeddings): read and checked the same way for each, each with its own
error type and wording."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_format_config(path: str | Path, fmt: str, what: str, error: type[Exception],
                       missing: str) -> tuple[dict[str, Any], int]:
    """The JSON object in ``path`` and its ``format_version``, checked: the file exists
    (else ``error(missing)``), is JSON, is an object whose ``format`` is ``fmt`` (else
    "... does not describe {what}"), and its version is a whole number. Which versions a
    reader accepts is the caller's rule. Every problem raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise error(f"{path} does not describe {what} (format {got!r}, expected {fmt!r})")
    raw = meta.get("format_version", 0)
    try:
        if isinstance(raw, bool):
            raise TypeError
        version = int(raw)
    except (TypeError, ValueError):
        raise error(f"{path}: format_version {raw!r} is not a number") from None
    return meta, version
