"""Entries' reader states on disk: the precomputed memory of PlugLM.

A DPM answer needs, for each retrieved entry, the frozen reader's states of the
entry's tokens at the branch's key layer(s) (``MemoryBranch.entry_states``). For five
entries never read before that is ~230 ms on two cores (26 layers over ~80 token
rows, compute-bound); reading them back from this store takes about a millisecond.

One SQLite file per identity (reader weights, key layers, hidden size, token limit),
under ``<cache>/entry-states/``, keyed by the sha256 of the entry's text:

* an edited entry is simply a new key (the old row ages out), so there is nothing to
  invalidate and no rebuild after an edit;
* the same text in two packs is stored once; a reopened or rebuilt pack finds its
  states again;
* another reader or branch shape uses another file: states are never mixed up.

States are kept as float16 (half the size: ~13 KB for a 12-token entry at d = 576);
``DPMFusion`` rounds freshly computed states the same way, so an answer never depends
on whether they came from the store or from the reader.

Size is bounded (``max_bytes``, 1 GiB by default; checked each time another 1/16 of
it was written): beyond it the least recently used rows go. A store problem never
fails a prediction: a file SQLite cannot read is renamed aside (``.corrupt``) and
started afresh, a row of the wrong size is dropped and recomputed, and any other error
is logged and the states are computed instead (``engine.text_store.TextStore``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from engine.text_store import TextStore, store_file, stores_root

FORMAT = 1
DEFAULT_MAX_BYTES = 1 << 30


def round_states(x: torch.Tensor) -> torch.Tensor:
    """What the store keeps of a state tensor (float16), back as float32."""
    return x.to(torch.float16).to(torch.float32)


def identity_of(reader, branch) -> dict:
    """What a stored state depends on: the reader's weights and the branch's key layers and token limit."""
    return {
        "format": FORMAT,
        "reader": reader.fingerprint,
        "layers": [int(i) for i in branch.key_layers],
        "hidden_size": int(reader.hidden_size),
        "max_value_tokens": int(branch.config.max_value_tokens),
    }


def store_path_for(identity: dict, root: str | Path | None = None) -> Path:
    """``<root>/<reader name>-<hash>.sqlite`` for an identity (see :func:`identity_of`); root:
    see :func:`stores_root`."""
    return store_file(stores_root(root), identity["reader"].get("name") or "reader", identity)


class EntryStateStore(TextStore):
    """``get_many`` / ``put_many`` of entries' key-layer states by text; safe from several threads."""

    WHAT = "entry-state store"
    MISMATCH = "it holds the states of another reader or branch"

    def __init__(self, path: str | Path, identity: dict, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.layers = [int(i) for i in identity["layers"]]
        self.hidden = int(identity["hidden_size"])
        super().__init__(path, identity, max_bytes=max_bytes)

    @classmethod
    def for_branch(cls, reader, branch, root: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> "EntryStateStore":
        """The store of ``reader`` with ``branch`` under ``root`` (default: the user cache)."""
        ident = identity_of(reader, branch)
        return cls(store_path_for(ident, root), ident, max_bytes=max_bytes)

    # States are ``{layer: float32 [tokens, hidden]}``, kept as the key layers' float16
    # blocks in ascending layer order; the row's shape is the number of tokens.
    def _row_bytes(self, tokens: int) -> int:
        return tokens * self.hidden * 2 * len(self.layers)

    def _decode(self, tokens: int, data: bytes) -> dict[int, torch.Tensor]:
        arr = np.frombuffer(data, dtype=np.float16).reshape(len(self.layers), tokens, self.hidden)
        return {layer: torch.from_numpy(arr[n].astype(np.float32)) for n, layer in enumerate(self.layers)}

    def _encode(self, states: Mapping[int, torch.Tensor]) -> tuple[int, bytes]:
        blocks = [states[layer].detach().to("cpu", torch.float16).contiguous() for layer in self.layers]
        tokens = int(blocks[0].shape[0])
        if any(tuple(b.shape) != (tokens, self.hidden) for b in blocks):
            raise ValueError(f"entry-state store: states of shape {[tuple(b.shape) for b in blocks]} "
                             f"for layers {self.layers}, expected [tokens, {self.hidden}] each")
        return tokens, b"".join(b.numpy().tobytes() for b in blocks)
