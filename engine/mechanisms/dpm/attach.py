"""Hooking a memory branch onto a reader's feed-forward blocks, and taking it off again."""
from __future__ import annotations

from engine.mechanisms.dpm.config import DPMError
from engine.mechanisms.dpm.io import check_compatible
from engine.mechanisms.dpm.module import MemoryBranch

class Attachment:
    """Hooks of a branch on a reader; :meth:`detach` (or leaving the ``with``) removes them."""

    def __init__(self, reader, branch: MemoryBranch, handles: list, *, owner: bool = True) -> None:
        self.reader, self.branch, self._handles, self._owner = reader, branch, handles, owner

    def detach(self) -> None:
        """Remove the hooks (a no-op for a nested attach of an already attached branch)."""
        if not self._owner:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.reader, "_dpm_attachment", None) is self:
            setattr(self.reader, "_dpm_attachment", None)

    def __enter__(self) -> MemoryBranch:
        return self.branch

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach(reader, branch: MemoryBranch) -> Attachment:
    """Hook ``branch`` onto the FFN of the reader's last M layers; returns an ``Attachment``.

    The branch is moved to the reader's device (float32). Only one branch can be
    attached to a reader at a time; attaching the attached branch again is a no-op.
    """
    check_compatible(branch.reader_fingerprint, reader, what="this DPM branch")
    current = getattr(reader, "_dpm_attachment", None)
    if current is not None:
        if current.branch is branch:
            return Attachment(reader, branch, [], owner=False)
        raise DPMError("another DPM branch is already attached to this reader; detach it first")
    branch.to(reader.device)
    handles = []
    for i in branch.layer_ids:
        mlp = reader.layers[i].mlp

        def hook(module, inputs, output, _i=i):
            extra = branch._branch(_i, inputs[0])
            return output if extra is None else output + extra

        handles.append(mlp.register_forward_hook(hook))
    att = Attachment(reader, branch, handles)
    setattr(reader, "_dpm_attachment", att)
    return att


def detach(reader) -> None:
    """Remove whatever DPM branch is attached to ``reader`` (no-op when none)."""
    att = getattr(reader, "_dpm_attachment", None)
    if att is not None:
        att.detach()
