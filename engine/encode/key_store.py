"""Keys of texts kept on disk, one file per key encoder: the statement keys of retrieval.

Retrieval re-scores its candidates with the key of each entry's statement prefix
(``engine.explain.predict.statement_prefix``). Those keys are not in the pack: a new
session would encode the prefixes of every entry it meets again (~90 ms per question
on two cores, one encoder call). This store keeps them by the sha256 of the prefix
text (an edited entry has a new prefix, so there is nothing to invalidate), as
float32 (exactly what the encoder gave: a score does not depend on where its key came
from), ~1.5 KB a key at 384 dimensions, at most 256 MB by default.

The file is ``<entry-states folder>/keys-<encoder name>-<hash>.sqlite`` (the folder of
``engine.mechanisms.dpm.entry_store``: ``$PLUGMEM_ENTRY_STATES`` or ``<cache>/entry-states``);
its identity is the encoder's fingerprint, so another encoder's keys are never read.
Damage is survived as in every :class:`~engine.text_store.TextStore`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.text_store import TextStore, store_file, stores_root

FORMAT = 1
DEFAULT_MAX_BYTES = 256 << 20


def identity_of(fingerprint) -> dict:
    """What a stored key depends on: the encoder's name, weights, dimension and pooling."""
    return {"format": FORMAT, "kind": "text-keys", "encoder": fingerprint.to_dict()}


class KeyStore(TextStore):
    """``get_many(texts) -> {text: float32 [dim]}`` / ``put_many({text: key})`` for one encoder."""

    WHAT = "key store"
    MISMATCH = "it holds the keys of another encoder"

    def __init__(self, path: str | Path, identity: dict, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.dim = int(identity["encoder"]["dim"])
        super().__init__(path, identity, max_bytes=max_bytes)

    @classmethod
    def for_encoder(cls, fingerprint, root: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
                    ) -> "KeyStore":
        """The store of the encoder with ``fingerprint`` under ``root`` (default: the user cache)."""
        ident = identity_of(fingerprint)
        return cls(store_file(stores_root(root), f"keys-{fingerprint.name}", ident), ident, max_bytes=max_bytes)

    def _row_bytes(self, dim: int) -> int:
        return dim * 4 if dim == self.dim else -1

    def _decode(self, dim: int, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.float32).copy()

    def _encode(self, key) -> tuple[int, bytes]:
        vec = np.ascontiguousarray(np.asarray(key, dtype=np.float32).reshape(-1))
        if vec.shape[0] != self.dim:
            raise ValueError(f"key store: a key of {vec.shape[0]} dimensions, expected {self.dim}")
        return self.dim, vec.tobytes()
