"""Filling an ``EntryStateStore`` with the entry states of many texts (the DPM part of the
``engine.jobs.prepare_states`` job, which adds the statement keys and the loading)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from engine.mechanisms.dpm.fusion import DPMFusion, EntryCache
from engine.progress import JobCancelled


def fill_entry_states(reader, branch, store, texts: Sequence[str], *, batch: int = 32,
                      say: Callable[..., None] = lambda *a, **k: None, stop: Callable[[], bool] = lambda: False,
                      start: float = 0.0) -> tuple[int, int]:
    """Read the texts ``store`` lacks through ``reader`` below ``branch``, ``batch`` at a time,
    reporting progress from ``start`` to 1; returns ``(read, already)``. A stop raises
    ``JobCancelled`` after the last whole batch: what was read is kept, so a rerun goes on."""
    texts = list(texts)
    fusion = DPMFusion(reader, branch, EntryCache(batch), store=store)
    todo = store.missing(texts)
    already = len(texts) - len(todo)
    # Similar lengths together: less padding in each batch.
    lengths = [len(r) for r in branch.tokenize_entries(reader, todo)]
    todo = [t for _, t in sorted(zip(lengths, todo), key=lambda lt: lt[0])]
    done = 0
    with torch.inference_mode():
        for s in range(0, len(todo), batch):
            if stop():
                raise JobCancelled(f"stopped after {already + done:,} of {len(texts):,} entries; "
                                   "what was read is kept, run it again to go on")
            part = todo[s:s + batch]
            fusion.read_entries(part)
            done += len(part)
            say(start + (1 - start) * (already + done) / max(len(texts), 1),
                f"read {already + done:,}/{len(texts):,} entries", entries=already + done)
    return len(todo), already
