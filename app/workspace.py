"""The workspace: a folder with ``workspace.json`` listing attached packs, which are plugged in,
which have their knowledge plugin switched on, the weight patches (``patches/``) applied
to the reader, in their order, and the product-key memory folders the user added (``pkm_folders``)
with the one plugged into the reader (``pkm``).

The file is versioned (``version``) and migrated on load; an unreadable file is kept
aside as ``workspace.json.bad`` and a clear message is raised, so nothing is lost.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKSPACE_VERSION = 5
PATCHES_DIR = "patches"  # weight patch folders, beside the packs
FILE_NAME = "workspace.json"


class WorkspaceError(ValueError):
    """The workspace file cannot be read; the message names the file and the problem."""


@dataclass
class PackRef:
    path: str
    plugged: bool = True
    plugin: bool = False  # the pack's knowledge plugin (<pack>.plugin/) is plugged into the reader

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "plugged": self.plugged}
        if self.plugin:  # written only when on: files of packs without plugins stay as they were
            d["plugin"] = True
        return d


@dataclass
class Workspace:
    folder: Path
    packs: list[PackRef] = field(default_factory=list)
    current: str | None = None
    version: int = WORKSPACE_VERSION
    reader: str | None = None  # None = the default reader; else a local model folder
    dpm_branch: str | None = None  # None = the branch shipped for the default reader
    patches: list[str] = field(default_factory=list)  # names of the applied patches in PATCHES_DIR, in order
    pkm_folders: list[str] = field(default_factory=list)  # product-key memory folders added by the user
    pkm: str | None = None  # the product-key memory folder plugged into the reader (one at a time)

    @property
    def patches_folder(self) -> Path:
        return self.folder / PATCHES_DIR

    @property
    def file(self) -> Path:
        return self.folder / FILE_NAME

    # ------------------------------------------------------------------ queries
    def paths(self) -> list[str]:
        return [p.path for p in self.packs]

    def plugged(self) -> list[str]:
        return [p.path for p in self.packs if p.plugged]

    def plugins(self) -> list[str]:
        """Packs whose knowledge plugin is switched on (whether or not the pack is plugged)."""
        return [p.path for p in self.packs if p.plugin]

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

    def set_plugin(self, path: str | Path, on: bool) -> None:
        ref = self.find(path)
        if ref is None:
            raise WorkspaceError(f"{path} is not attached to the workspace {self.file}")
        ref.plugin = bool(on)

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "packs": [p.to_dict() for p in self.packs],
            "current": self.current,
            "reader": self.reader,
            "dpm_branch": self.dpm_branch,
            "patches": list(self.patches),
            "pkm_folders": list(self.pkm_folders),
            "pkm": self.pkm,
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
            packs = [PackRef(str(p["path"]), bool(p.get("plugged", True)), _flag(p.get("plugin", False), "plugin"))
                     for p in data.get("packs", [])]
            reader, branch = _opt_str(data.get("reader")), _opt_str(data.get("dpm_branch"))
            patches = data.get("patches", [])
            if not isinstance(patches, list) or not all(isinstance(n, str) and n for n in patches):
                raise ValueError(f"patches must be a list of patch names, got {patches!r}")
            pkm_folders = data.get("pkm_folders", [])
            if not isinstance(pkm_folders, list) or not all(isinstance(n, str) and n for n in pkm_folders):
                raise ValueError(f"pkm_folders must be a list of folder paths, got {pkm_folders!r}")
            pkm = _opt_str(data.get("pkm"))
        except (ValueError, KeyError, TypeError) as exc:
            bad = f.with_suffix(".json.bad")
            os.replace(f, bad)
            raise WorkspaceError(f"{f}: not a readable workspace file ({exc}); kept it as {bad.name} and started empty") from None
        return cls(folder, packs, data.get("current"), WORKSPACE_VERSION, reader, branch, list(patches),
                   list(pkm_folders), pkm)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / FILE_NAME).exists()


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Older workspace files: version 0 was a bare list of pack paths under "attached";
    version 1 had no reader / DPM branch (the defaults); version 2 had no knowledge plugins (all off);
    version 3 had no weight patches (none applied); version 4 had no product-key memories (none plugged)."""
    v = int(d.get("version", 0))
    if v < 1:
        plugged = set(d.get("plugged", []))
        d["packs"] = [{"path": p, "plugged": p in plugged} for p in d.get("attached", [])]
        v = 1
    if v < 2:
        d.setdefault("reader", None)
        d.setdefault("dpm_branch", None)
        v = 2
    if v < 3:
        for p in d.get("packs", []):
            if isinstance(p, dict):
                p.setdefault("plugin", False)
        v = 3
    if v < 4:
        d.setdefault("patches", [])
        v = 4
    if v < 5:
        d.setdefault("pkm_folders", [])
        d.setdefault("pkm", None)
        v = 5
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


def _flag(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{what} must be true or false, got {v!r}")
    return v


def plugin_folder(pack_path: str | Path) -> Path:
    """The knowledge plugin the pack plugs: ``<pack>.task-plugin/`` if one was task-tuned, else ``<pack>.plugin/``."""
    from engine.mechanisms.plugins.io import plugged_plugin_dir

    return plugged_plugin_dir(pack_path)


def plugin_status(pack_path: str | Path) -> tuple[bool, str]:
    """Whether the pack has a trained knowledge plugin, and a sentence saying which (or why not).

    Reads only the plugin's ``config.json`` (cheap: called for every pack on refresh).
    """
    from engine.mechanisms.plugins.errors import PluginError
    from engine.mechanisms.plugins.io import read_plugin_config

    folder = plugin_folder(pack_path)
    if not (folder / "config.json").is_file():
        return False, (f"No knowledge plugin trained for this pack yet (none in {folder}): "
                       "right-click the pack → Train a knowledge plugin…")
    try:
        meta = read_plugin_config(folder)
    except PluginError as exc:
        return False, f"The knowledge plugin cannot be used: {exc}"
    reader = (meta.get("reader") or {}).get("name", "?")
    training = meta.get("training") or {}
    bits = [f"{int(meta.get('entities', 0)):,} entities", f"for the reader {reader}"]
    if training.get("steps_done"):
        n = int(training["steps_done"])
        bits.append(f"{n:,} training step{'' if n == 1 else 's'}")
    task = training.get("objective") == "task"
    if isinstance(training.get("best_val_loss"), (int, float)):
        bits.append(f"validation {'answer' if task else 'mention'} loss {training['best_val_loss']:.3f}")
    if meta.get("answer_slot"):
        bits.append("with an answer slot")
    if task and isinstance(training.get("relations"), list):
        n = len(training["relations"])
        gate = "offered only for questions of" if training.get("gate") else "applied to every question; trained on"
        bits.append(f"{gate} {n} relation{'' if n == 1 else 's'}")
    return True, f"Knowledge plugin {meta.get('name') or folder.name!r} in {folder}: " + ", ".join(bits)
