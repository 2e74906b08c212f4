"""The product-key memory layers the app knows (the one grown for the current pack,
``<pack>.pkm/``, and the folders the user added) and the one plugged into the reader.

Plugging and unplugging run on the model thread (the reader is one torch module, used there
by every prediction), through the mechanism's own attach / detach: detaching takes the hook
off and leaves the reader bit for bit as it was. The plugged folder is kept in
``workspace.json`` (``pkm``) and plugged again, re-checked, whenever a reader is loaded. A
refusal (another reader's layer, a damaged folder: the artefact's own message) unticks it
and says why; the folder stays listed, so nothing is lost.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


def default_pkm_dir(pack: str | Path) -> Path:
    """Where *Grow a product-key memory…* puts the layer of pack ``P.plugmem``: ``P.pkm/``."""
    p = Path(pack)
    return p.with_name(p.stem + ".pkm")


@dataclass
class PKMInfo:
    """One known folder as the list shows it: its checked config, or why it cannot be read."""

    folder: str
    meta: dict[str, Any] | None
    error: str = ""

    @property
    def name(self) -> str:
        return Path(self.folder).name

    def describe(self) -> str:
        if self.meta is None:
            return f"{self.name} — cannot be used: {self.error}"
        m = self.meta
        return f"{self.name} — {int(m['config']['slots']):,} slots at layer {m['layer']}"


def _norm(folder: str | Path) -> str:
    return str(Path(folder).resolve())


class PKMLayers(QObject):
    """The known product-key memory folders and the one plugged into the app's reader."""

    changed = Signal()  # the list or the plugged layer changed
    refused = Signal(str, str)  # folder, the engine's message
    _synced = Signal(object, object)  # (plugged folder or None, [(folder, why)]) from the model thread

    def __init__(self, ctx, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._synced.connect(self._after_sync)
        ctx.model.after_load.append(self._plug_saved)

    # ------------------------------------------------------------------ folders
    @property
    def plugged(self) -> str | None:
        return self.ctx.workspace.pkm

    def folders(self) -> list[str]:
        """The current pack's grown layer (when there is one), the added folders, the plugged one."""
        ws = self.ctx.workspace
        found: list[str] = []
        if ws.current and (default_pkm_dir(ws.current) / "config.json").is_file():
            found.append(_norm(default_pkm_dir(ws.current)))
        for f in [*ws.pkm_folders, *([ws.pkm] if ws.pkm else [])]:
            if _norm(f) not in found:
                found.append(_norm(f))
        return found

    def infos(self) -> list[PKMInfo]:
        from engine.mechanisms.pkm.io import read_config

        out = []
        for f in self.folders():
            try:
                out.append(PKMInfo(f, read_config(f)))
            except (ValueError, OSError) as exc:  # PKMError names the file and the field
                out.append(PKMInfo(f, None, str(exc)))
        return out

    def add_folder(self, folder: str | Path) -> bool:
        """List ``folder`` (checked first: a folder that is no product-key memory is said, not listed)."""
        from engine.mechanisms.pkm.io import read_config

        try:
            read_config(folder)
        except (ValueError, OSError) as exc:
            self.ctx.notifier.error("Adding a product-key memory folder", exc)
            return False
        ws = self.ctx.workspace
        if _norm(folder) not in [_norm(f) for f in ws.pkm_folders]:
            ws.pkm_folders.append(_norm(folder))
            self.ctx._save_workspace()
        self.changed.emit()
        return True

    # ------------------------------------------------------------------ plugging (model thread)
    def _set_plugged(self, folder: str | None) -> None:
        self.ctx.workspace.pkm = folder
        self.ctx._save_workspace()

    @staticmethod
    def _swap(model, folder: str | None) -> None:
        """Unplug the layer on ``model``'s reader, then plug ``folder``'s (model thread)."""
        from engine.mechanisms.pkm.attach import attachment
        from engine.mechanisms.pkm.mechanism import PKMMechanism

        mech = PKMMechanism.load(folder, model.reader) if folder else None  # refused before anything changes
        att = attachment(model.reader)
        if att is not None:
            att.detach()
        model.pkm = None
        model._predictor = None  # its caches (answers, entry states) were read by the other reader
        if mech is not None:
            mech.plug(model.reader)
            model.pkm = mech

    def _plug_saved(self, model) -> None:
        """After-load hook (model thread): plug the workspace's layer again, checked for this reader."""
        folder = self.plugged
        if not folder:
            return
        try:
            self._swap(model, folder)
            self._synced.emit(folder, [])
        except (ValueError, OSError) as exc:  # PKMError, ReaderError: names file, field, both readers
            self._synced.emit(None, [(folder, str(exc))])

    def _after_sync(self, plugged: str | None, refused: list[tuple[str, str]]) -> None:
        if plugged != self.plugged:
            self._set_plugged(plugged)
        for folder, why in refused:
            self._refuse(folder, why)
        self.changed.emit()

    def _refuse(self, folder: str, why: str) -> None:
        self.refused.emit(folder, why)
        self.ctx.notifier.error(f"Plugging the product-key memory {Path(folder).name!r}", why)

    def set_plugged(self, folder: str, on: bool, on_done: Callable[[], None] | None = None):
        """Plug ``folder``'s layer into the reader (the one plugged before comes off) or unplug it,
        on the model thread; ``changed`` follows, ``refused`` names a refusal."""
        folder = _norm(folder)
        want = folder if on else None

        def task(model):
            self._swap(model, want)
            return want

        def done(plugged) -> None:
            self._set_plugged(plugged)
            if plugged and plugged not in [_norm(f) for f in self.ctx.workspace.pkm_folders]:
                self.ctx.workspace.pkm_folders.append(plugged)
                self.ctx._save_workspace()
            self.changed.emit()
            if on_done:
                on_done()

        def failed(exc: BaseException) -> None:
            self._refuse(folder, str(exc))
            self.changed.emit()

        if not on and (not self.plugged or _norm(self.plugged) != folder):
            self.changed.emit()
            return None
        return self.ctx.model.submit(task, done, on_error=failed, what="Plugging a product-key memory")
