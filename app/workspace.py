"""The workspace: a folder with ``workspace.json`` listing attached packs and which are plugged in.

The file is versioned (``version``) and migrated on load; an unreadable file is kept
aside as ``workspace.json.bad`` and a clear message is raised, so nothing is lost.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKSPACE_VERSION = 2
FILE_NAME = "workspace.json"


class WorkspaceError(ValueError):
    """The workspace file cannot be read; the message names the file and the problem."""


@dataclass
class PackRef:
    path: str
    plugged: bool = True


@dataclass
class Workspace:
    folder: Path
    packs: list[PackRef] = field(default_factory=list)
    current: str | None = None
    version: int = WORKSPACE_VERSION
    reader: str | None = None  # None = the default reader; else a local model folder
    dpm_branch: str | None = None  # None = the branch shipped for the default reader

    @property
    def file(self) -> Path:
        return self.folder / FILE_NAME

    # ------------------------------------------------------------------ queries
    def paths(self) -> list[str]:
        return [p.path for p in self.packs]

    def plugged(self) -> list[str]:
        return [p.path for p in self.packs if p.plugged]

    def find(self, path: str | Path) -> PackRef | None:
        key = _norm(path)
        return next((p for p in self.packs if _norm(p.path) == key), None)

    # ------------------------------------------------------------------ changes
    def attach(self, path: str | Path, plugged: bool = True) -> PackRef:
        ref = self.find(path)
        if ref is None:
            ref = PackRef(str(Path(path).resolve()), plugged)
            self.packs.append(ref)
        if self.current is None:
            self.current = ref.path
        return ref

    def detach(self, path: str | Path) -> None:
        ref = self.find(path)
        if ref is not None:
            self.packs.remove(ref)
            if self.current and _norm(self.current) == _norm(ref.path):
                self.current = self.packs[0].path if self.packs else None

    def set_plugged(self, path: str | Path, plugged: bool) -> None:
        ref = self.find(path)
        if ref is None:
            raise WorkspaceError(f"{path} is not attached to the workspace {self.file}")
        ref.plugged = bool(plugged)

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "packs": [{"path": p.path, "plugged": p.plugged} for p in self.packs],
            "current": self.current,
            "reader": self.reader,
            "dpm_branch": self.dpm_branch,
        }

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, self.file)

    @classmethod
    def load(cls, folder: str | Path) -> "Workspace":
        """Read ``folder/workspace.json``; a new empty workspace when there is none."""
        folder = Path(folder)
        f = folder / FILE_NAME
        if not f.exists():
            return cls(folder)
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            data = migrate(data)
            packs = [PackRef(str(p["path"]), bool(p.get("plugged", True))) for p in data.get("packs", [])]
            reader, branch = _opt_str(data.get("reader")), _opt_str(data.get("dpm_branch"))
        except (ValueError, KeyError, TypeError) as exc:
            bad = f.with_suffix(".json.bad")
            os.replace(f, bad)
            raise WorkspaceError(f"{f}: not a readable workspace file ({exc}); kept it as {bad.name} and started empty") from None
        return cls(folder, packs, data.get("current"), WORKSPACE_VERSION, reader, branch)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / FILE_NAME).exists()


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Older workspace files: version 0 was a bare list of pack paths under "attached";
    version 1 had no reader / DPM branch (the defaults)."""
    v = int(d.get("version", 0))
    if v < 1:
        plugged = set(d.get("plugged", []))
        d["packs"] = [{"path": p, "plugged": p in plugged} for p in d.get("attached", [])]
        v = 1
    if v < 2:
        d.setdefault("reader", None)
        d.setdefault("dpm_branch", None)
        v = 2
    if v > WORKSPACE_VERSION:
        raise ValueError(f"made by a newer PlugMem Studio (version {v}; this one reads up to {WORKSPACE_VERSION})")
    d["version"] = v
    return d


def _norm(path: str | Path) -> str:
    return os.path.normcase(str(Path(path).resolve()))


def _opt_str(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if not isinstance(v, str):
        raise ValueError(f"expected a folder path, got {type(v).__name__}")
    return v
