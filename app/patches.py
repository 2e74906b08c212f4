"""The workspace's weight patches (``<workspace>/patches/<name>/``) and the ones applied to the
reader the app holds, in their order.

Applying and removing run on the model thread (the reader is one torch module, used there
by every prediction); the order the user applied them in is kept in ``workspace.json``
(``patches``) and applied again, each re-checked, whenever a reader is loaded (also after a
restart), before any question reaches it. A refusal (another reader's patch, base tensors
that no longer match) unticks the patch and names both. Making a patch is a job in a child
process (``engine.jobs.weight_patch``) with the applied patches below it; deleting one moves
its folder aside (``patches/.deleted/``) through an undo stack, so it can be undone.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from app.jobs import ended_text

log = logging.getLogger(__name__)

JOB_TARGET = "engine.jobs.weight_patch:run"
TRASH = ".deleted"


@dataclass
class PatchInfo:
    """One patch folder as the list shows it: its checked config, or why it cannot be read."""

    name: str
    folder: Path
    meta: dict[str, Any] | None
    error: str = ""

    @property
    def facts(self) -> list[dict[str, Any]]:
        return list((self.meta or {}).get("facts") or [])

    @property
    def size_bytes(self) -> int:
        try:
            return (self.folder / "delta.safetensors").stat().st_size
        except OSError:
            return 0


def slug(text: str, limit: int = 40) -> str:
    """A folder name from an answer ("Porto-Novo" -> "porto-novo")."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "patch"


class PatchLibrary(QObject):
    """The patches of one workspace and the stack applied to the app's reader."""

    changed = Signal()  # the list of folders or the applied stack changed
    refused = Signal(str, str)  # patch name, the engine's message
    made = Signal(str)  # a new patch's name (its job ended well)
    _synced = Signal(object, object)  # (applied names, [(name, why)]) from the model thread

    def __init__(self, ctx, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.undo_stack = QUndoStack(self)
        self.running: dict[str, str] = {}  # patch name -> job id
        self._synced.connect(self._after_sync)
        ctx.model.after_load.append(self._apply_saved)

    # ------------------------------------------------------------------ folders
    @property
    def folder(self) -> Path:
        return self.ctx.workspace.patches_folder

    def infos(self) -> list[PatchInfo]:
        """Every patch folder, the applied ones first in their order, then the others by date."""
        from engine.mechanisms.weight_patches import PatchError
        from engine.mechanisms.weight_patches.io import read_config

        found: list[PatchInfo] = []
        if self.folder.is_dir():
            for d in sorted(self.folder.iterdir()):
                if not d.is_dir() or d.name.startswith(".") or not (d / "config.json").is_file():
                    continue
                try:
                    found.append(PatchInfo(d.name, d, read_config(d)))
                except (PatchError, OSError, ValueError) as exc:
                    found.append(PatchInfo(d.name, d, None, str(exc)))
        order = {n: i for i, n in enumerate(self.applied)}
        return sorted(found, key=lambda p: (order.get(p.name, len(order)), str((p.meta or {}).get("when", "")), p.name))

    @property
    def applied(self) -> list[str]:
        """The names applied to the reader (or to be, once it loads), in their order."""
        return list(self.ctx.workspace.patches)

    def new_folder(self, name: str) -> Path:
        """A folder for a new patch called ``name`` (``name-2``... when taken)."""
        base = slug(name)
        taken = {p.name for p in self.folder.iterdir()} if self.folder.is_dir() else set()
        taken |= set(self.running)
        n, cand = 1, base
        while cand in taken:
            n += 1
            cand = f"{base}-{n}"
        return self.folder / cand

    # ------------------------------------------------------------------ applying (model thread)
    def _set_applied(self, names: list[str]) -> None:
        self.ctx.workspace.patches = list(names)
        self.ctx._save_workspace()

    def _apply_saved(self, model) -> None:
        """After-load hook (model thread): apply the workspace's patches in order, each checked."""
        from engine.mechanisms.weight_patches import PatchStack

        stack = PatchStack.of(model.reader)
        stack.clear()
        done, refused = [], []
        for name in self.applied:
            try:
                stack.apply(self._load(name, model.reader))
                done.append(name)
            except (ValueError, OSError) as exc:  # PatchError, ReaderError: says file, field, both readers
                refused.append((name, str(exc)))
        self._synced.emit(done, refused)

    def _load(self, name: str, reader):
        from engine.mechanisms.weight_patches import load

        folder = self.folder / name
        if not folder.is_dir():
            raise FileNotFoundError(f"weight patch {name!r}: its folder {folder} is missing")
        return load(folder, reader)

    def _after_sync(self, done: list[str], refused: list[tuple[str, str]]) -> None:
        if refused or done != self.applied:
            self._set_applied(done)
        for name, why in refused:
            self._refuse(name, why)
        self.changed.emit()

    def _refuse(self, name: str, why: str) -> None:
        self.refused.emit(name, why)
        self.ctx.notifier.error(f"Applying the weight patch {name!r}", why)

    def set_applied(self, name: str, on: bool, on_done: Callable[[], None] | None = None):
        """Apply ``name`` on top of the stack or remove it (the later ones re-checked), on the
        model thread; ``changed`` follows, ``refused`` names a refusal."""
        host = self.ctx.model

        def task(model):
            from engine.mechanisms.weight_patches import PatchStack

            stack = PatchStack.of(model.reader)
            if on:
                if name in stack.names():
                    return stack.names(), []
                stack.apply(self._load(name, model.reader))
                return stack.names(), []
            if name not in stack.names():
                return stack.names(), []
            return _removed(stack, name)

        def done(res) -> None:
            names, dropped = res
            self._set_applied(names)
            for n, why in dropped:
                self._refuse(n, f"taken off after {name!r} was removed: {why}")
            self.changed.emit()
            if on_done:
                on_done()

        def failed(exc: BaseException) -> None:
            self._refuse(name, str(exc))
            self.changed.emit()

        return host.submit(task, done, on_error=failed, what="Applying a weight patch")

    # ------------------------------------------------------------------ deleting (undoable)
    def delete(self, name: str) -> None:
        """Delete a patch (taken off the reader first when applied): one step of ``undo_stack``."""
        if not (self.folder / name / "config.json").is_file():  # not every patch's config read for one name
            self.ctx.notifier.error("Deleting a weight patch", f"{name!r}: no such patch in {self.folder}")
            return
        self.undo_stack.push(_DeletePatch(self, name))

    def _trash_path(self, name: str) -> Path:
        return self.folder / TRASH / f"{name}-{time.time_ns()}"

    # ------------------------------------------------------------------ making (job)
    def start(self, config: dict[str, Any], title: str = "") -> str | None:
        """Start the job that makes a patch (``config`` as ``engine.jobs.weight_patch`` reads it;
        ``out`` and ``on_top_of`` are filled here); a bad field is said at once, not in a job."""
        from engine.jobs.weight_patch import check_config

        config = dict(config)
        config.setdefault("reader", self.ctx.workspace.reader)
        config["on_top_of"] = [str(self.folder / n) for n in self.applied]
        name = Path(config["out"]).name
        title = title or f"Write {len(config.get('facts') or [])} fact(s) into the weights ({name})"
        check_config(config)  # raises PatchError naming the field

        def ended(job_id: str, status: str, result: Any) -> None:
            self.running.pop(name, None)
            if status == "done":
                self.changed.emit()
                self.made.emit(name)
                m = (result or {}).get("metrics") or {}
                eff = f"efficacy {m['efficacy']:.0%}" if isinstance(m.get("efficacy"), (int, float)) else ""
                self.ctx.notifier.info(f"Weight patch {name!r} made ({eff}); applying it on top of the others.")
                self.set_applied(name, True)
            elif status == "cancelled":
                self.ctx.notifier.info(f"{title}: cancelled; no patch was made.")
            else:
                self.ctx.notifier.error(title, ended_text(status, self.ctx.jobs.end_message(job_id)))

        jid = self.ctx.jobs.start("weight_patch", JOB_TARGET, config, title=title, on_end=ended)
        self.running[name] = jid
        return jid


def _removed(stack, name: str) -> tuple[list[str], list[tuple[str, str]]]:
    dropped = stack.remove(name)
    return stack.names(), dropped


class _DeletePatch(QUndoCommand):
    """Move a patch folder into ``patches/.deleted/`` (and back on undo, applied again if it was)."""

    def __init__(self, lib: PatchLibrary, name: str) -> None:
        super().__init__(f"Delete weight patch {name!r}")
        self.lib, self.name = lib, name
        self.was_applied = name in lib.applied
        self.trash: Path | None = None

    def redo(self) -> None:
        lib = self.lib

        def move() -> None:
            self.trash = lib._trash_path(self.name)
            self.trash.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(lib.folder / self.name), str(self.trash))
            lib.changed.emit()

        if self.name in lib.applied:
            lib.set_applied(self.name, False, on_done=move)
        else:
            move()

    def undo(self) -> None:
        lib = self.lib
        if self.trash is None or not self.trash.exists():
            lib.ctx.notifier.error("Undoing a weight patch deletion", f"{self.trash}: the deleted folder is gone")
            return
        dest = lib.folder / self.name
        if dest.exists():
            lib.ctx.notifier.error("Undoing a weight patch deletion", f"{dest} exists again: not overwritten")
            return
        shutil.move(str(self.trash), str(dest))
        self.trash = None
        lib.changed.emit()
        if self.was_applied:
            lib.set_applied(self.name, True)
