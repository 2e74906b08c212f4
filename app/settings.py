"""Typed, versioned application settings (JSON in QSettings) with an explicit migrate step.

Window geometry, dock/splitter state and table header state are stored separately as
QSettings byte arrays (they are opaque Qt blobs); everything the app itself decides on
lives in :class:`AppSettings`, whose ``version`` is bumped whenever a field changes
meaning, with the conversion written in :func:`migrate`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

from engine.mechanisms import mode_names

log = logging.getLogger(__name__)

SETTINGS_VERSION = 2
ORG = "plugmem"
APP = "plugmem-studio"


@dataclass
class AppSettings:
    version: int = SETTINGS_VERSION
    last_workspace: str = ""  # folder holding workspace.json; "" = the default one
    search_mode: str = "text"  # "text" (FTS5) or "semantic"
    search_k: int = 200
    status_filter: str = "all"  # "all" | "active" | "disabled"
    sort: str = "id"  # "id" | "-id" | "-updated" | "updated"
    ask_mode: str = "dpm"  # one of engine.mechanisms.mode_names()
    ask_k: int = 5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AppSettings":
        d = migrate(dict(d))
        known = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in d.items() if k in known})
        if s.search_mode not in ("text", "semantic"):
            s.search_mode = "text"
        if s.status_filter not in ("all", "active", "disabled"):
            s.status_filter = "all"
        if s.sort not in ("id", "-id", "updated", "-updated"):
            s.sort = "id"
        s.search_k = max(1, min(int(s.search_k), 10_000))
        if s.ask_mode not in mode_names():
            s.ask_mode = mode_names()[0]
        s.ask_k = max(1, min(int(s.ask_k), 50))
        return s


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Bring a settings dict of any older version up to SETTINGS_VERSION."""
    v = int(d.get("version", 1))
    if v < 2:
        # v1 stored the search mode as a bool "semantic" and the workspace as "workspace".
        d["search_mode"] = "semantic" if d.pop("semantic", False) else "text"
        if "workspace" in d:
            d["last_workspace"] = d.pop("workspace")
        v = 2
    d["version"] = v
    return d


def qsettings() -> QSettings:
    return QSettings(ORG, APP)


def load_settings(qs: QSettings | None = None) -> AppSettings:
    qs = qs or qsettings()
    raw = qs.value("settings/json", "")
    if not raw:
        return AppSettings()
    try:
        return AppSettings.from_dict(json.loads(str(raw)))
    except (ValueError, TypeError) as exc:
        log.warning("settings unreadable (%s); using defaults", exc)
        return AppSettings()


def save_settings(s: AppSettings, qs: QSettings | None = None) -> None:
    qs = qs or qsettings()
    qs.setValue("settings/json", json.dumps(asdict(s)))


def save_state(key: str, data: QByteArray, qs: QSettings | None = None) -> None:
    (qs or qsettings()).setValue(f"state/{key}", data)


def load_state(key: str, qs: QSettings | None = None) -> QByteArray | None:
    v = (qs or qsettings()).value(f"state/{key}")
    return v if isinstance(v, QByteArray) and not v.isEmpty() else None
