"""A reader and its active mechanisms (memory branch, entry-state store, knowledge plugins,
weight patches), assembled once.

The CLI's model commands, the app's model thread, the bundle's self-test, the prepare job
and the plugin evaluation all load the same things in the same order: the reader, then
the branch trained for it (the given folder, else the shipped one), then the on-disk
store of entry states for that reader and branch, then the plugins for that reader.
:func:`open_session` is that order, written once; ``Predictor.from_session`` answers with it.

``need_branch=False`` turns a missing or foreign branch into ``note`` (what the user is
told: 'dpm' is off, 'context' works) instead of an error.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: ``branch=DEFAULT``: the shipped branch of the default reader (``$PLUGMEM_DPM_BRANCH`` overrides).
DEFAULT = "default"


class Session:
    """The loaded reader + what is active on it. ``close()`` (or ``with``) closes the entry store."""

    def __init__(self, reader, branch=None, *, entry_store=None, plugins: Sequence[Any] = (), note: str = "",
                 pkm=None, patches: Sequence[Any] = ()) -> None:
        self.reader, self.branch, self.entry_store = reader, branch, entry_store
        self.plugins: list[Any] = list(plugins)
        self.pkm = pkm  # a PKMMechanism (a grown product-key memory layer) or None
        self.patches: list[Any] = list(patches)  # WeightPatch objects, in the order they are applied
        self.note = note

    def mechanisms(self) -> list:
        """The active mechanisms as ``engine.mechanisms.base.Mechanism`` objects, in the
        composition order (the weight patches, the product-key layer, the branch, then the
        plugins); the context mode needs nothing loaded."""
        from engine.mechanisms.base import composition_order

        mechs: list = [] if self.pkm is None else [self.pkm]
        if self.patches:
            from engine.mechanisms.weight_patches.mechanism import WeightPatchMechanism

            mechs.append(WeightPatchMechanism(self.patches))
        if self.branch is not None:
            from engine.mechanisms.dpm.mechanism import DPMMechanism

            mechs.append(DPMMechanism(self.branch, store=self.entry_store))
        if self.plugins:
            from engine.mechanisms.plugins.mechanism import PluginMechanism

            mechs.append(PluginMechanism(self.plugins))
        return composition_order(mechs)

    def add_plugin(self, folder: str | Path, pack=None):
        """Load the knowledge plugin in ``folder`` for this reader (checked against ``pack``'s
        entities when given) and make it active; returns it."""
        from engine.mechanisms.plugins.io import load_plugin

        plugin = load_plugin(folder, self.reader, pack)
        self.plugins.append(plugin)
        return plugin

    def add_pkm(self, folder: str | Path):
        """Load the product-key memory in ``folder`` for this reader and make it active (one at a time)."""
        from engine.mechanisms.pkm.mechanism import PKMMechanism

        self.pkm = PKMMechanism.load(folder, self.reader)
        return self.pkm

    def add_patch(self, folder: str | Path):
        """Load the weight patch in ``folder`` for this reader and make it active (applied
        after those already active, whenever the session's mechanisms are attached); returns it."""
        from engine.mechanisms.weight_patches import load

        patch = load(folder, self.reader)
        self.patches.append(patch)
        return patch

    def patches_mechanism(self):
        """The active weight patches as one mechanism (None when there are none): attach it
        around a whole prediction or evaluation (``engine.mechanisms.base.attached``)."""
        if not self.patches:
            return None
        from engine.mechanisms.weight_patches.mechanism import WeightPatchMechanism

        return WeightPatchMechanism(self.patches)

    def close(self) -> None:
        if self.entry_store is not None:
            self.entry_store.close()
            self.entry_store = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_entry_store(reader, branch, cache_dir: str | Path | None = None, *, required: bool = False):
    """The entry-state store of ``reader`` + ``branch`` (None without a branch; None with a
    warning when it cannot be opened and not ``required``: the states are then computed)."""
    if branch is None:
        return None
    from engine.mechanisms.dpm.entry_store import EntryStateStore

    try:
        return EntryStateStore.for_branch(reader, branch, cache_dir)
    except (OSError, ValueError) as exc:
        if required:
            raise
        log.warning("no entry-state store (%s); entries are read afresh each session", exc)
        return None


def open_session(reader: Any = None, *, device: str | None = None, branch: str | Path | None = DEFAULT,
                 need_branch: bool = True, entry_states: bool = False, cache_dir: str | Path | None = None,
                 plugins: Sequence[str | Path] = (), pack=None, pkm: str | Path | None = None,
                 patches: Sequence[str | Path] = ()) -> Session:
    """Load a session.

    ``reader``: a loaded reader, or a model folder / name for ``load_reader`` (None: the
    default SmolLM2). ``branch``: a branch folder, ``DEFAULT`` or None (no branch).
    ``need_branch``: a branch that cannot be loaded raises ``DPMError``; when False it is
    left out and ``note`` says why. ``entry_states``: open the entry-state store
    (``cache_dir`` overrides its folder). ``plugins``: plugin folders, loaded for the reader
    (and checked against ``pack``). ``pkm``: a product-key memory folder grown for the reader.
    ``patches``: weight patch folders, in the order they are applied."""
    if reader is None or isinstance(reader, (str, Path)):
        from engine.reader import load_reader

        reader = load_reader(None if reader is None else str(reader), device)
    loaded, note = None, ""
    if branch is not None:
        from engine.mechanisms import dpm

        try:
            folder = dpm.default_branch_path() if branch == DEFAULT else Path(branch)
            loaded = dpm.load(folder, reader)
        except ValueError as exc:  # DPMError: missing folder, another reader's branch, bad file
            if need_branch:
                raise
            note = f"No memory branch for this reader ({exc}); mode 'dpm' is off, 'context' works."
    store = open_entry_store(reader, loaded, cache_dir, required=need_branch) if entry_states else None
    session = Session(reader, loaded, entry_store=store, note=note)
    try:
        for folder in plugins:
            session.add_plugin(folder, pack)
        if pkm is not None:
            session.add_pkm(pkm)
        for folder in patches:
            session.add_patch(folder)
    except BaseException:
        session.close()
        raise
    return session
