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
is logged and the states are computed instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT = 1
ENV_DIR = "PLUGMEM_ENTRY_STATES"  # the stores' folder (default: <cache>/entry-states)
DEFAULT_MAX_BYTES = 1 << 30
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states(
    key BLOB PRIMARY KEY,      -- sha256 of the entry text
    tokens INTEGER NOT NULL,   -- rows of each layer's [tokens, hidden] float16 block
    data BLOB NOT NULL,        -- the key layers' blocks, ascending layer order
    used INTEGER NOT NULL      -- last read or write, ms since the epoch
);
CREATE INDEX IF NOT EXISTS states_used ON states(used);
"""


@contextmanager
def _tx(con: sqlite3.Connection):
    """One transaction (the connection is in autocommit mode: each statement would be its own)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


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
    ``root``, else ``$PLUGMEM_ENTRY_STATES``, else ``<cache>/entry-states``."""
    from engine.models.reader_cache import cache_root

    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(identity["reader"].get("name") or "reader"))
    if root is None:
        root = os.environ.get(ENV_DIR) or cache_root() / "entry-states"
    base = Path(root).expanduser()
    return base / f"{name[:40]}-{digest}.sqlite"


class EntryStateStore:
    """``get_many`` / ``put_many`` of entries' key-layer states by text; safe from several threads."""

    def __init__(self, path: str | Path, identity: dict, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.layers = [int(i) for i in identity["layers"]]
        self.hidden = int(identity["hidden_size"])
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._written = 0  # bytes written since the last size check
        self._clock = 0  # last 'used' stamp given: strictly increasing within a process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    @classmethod
    def for_branch(cls, reader, branch, root: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> "EntryStateStore":
        """The store of ``reader`` with ``branch`` under ``root`` (default: the user cache)."""
        ident = identity_of(reader, branch)
        return cls(store_path_for(ident, root), ident, max_bytes=max_bytes)

    # ------------------------------------------------------------------ file
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
        con.execute("PRAGMA auto_vacuum=INCREMENTAL")  # effective for a new file: pruning gives space back
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.executescript(_SCHEMA)
        row = con.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        mine = json.dumps(self.identity, sort_keys=True)
        if row is None:
            con.execute("INSERT INTO meta(key, value) VALUES ('identity', ?)", (mine,))
        elif json.loads(row[0]) != self.identity:
            con.close()
            raise sqlite3.DatabaseError("it holds the states of another reader or branch")
        return con

    def _open(self) -> None:
        try:
            self._con = self._connect()
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)

    def _set_aside(self, exc: Exception) -> None:
        """Rename an unusable file to ``*.corrupt`` (kept for inspection) and start a new one."""
        if self._con is not None:
            try:
                self._con.close()
            except sqlite3.Error:
                pass
            self._con = None
        aside = self.path.with_name(self.path.name + f".{time.strftime('%Y%m%d-%H%M%S')}.corrupt")
        log.warning("entry-state store %s is unusable (%s); moved to %s and started afresh", self.path, exc, aside.name)
        try:
            if self.path.exists():
                self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._con = self._connect()
        except (OSError, sqlite3.Error) as exc2:
            log.error("entry-state store %s cannot be used (%s); states will be computed each time", self.path, exc2)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> "EntryStateStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ rows
    def _stamp(self) -> int:
        self._clock = max(int(time.time() * 1000), self._clock + 1)
        return self._clock

    def _block_bytes(self, tokens: int) -> int:
        return tokens * self.hidden * 2 * len(self.layers)

    def _decode(self, tokens: int, data: bytes) -> dict[int, torch.Tensor]:
        arr = np.frombuffer(data, dtype=np.float16).reshape(len(self.layers), tokens, self.hidden)
        return {layer: torch.from_numpy(arr[n].astype(np.float32)) for n, layer in enumerate(self.layers)}

    def get_many(self, texts: Iterable[str]) -> dict[str, dict[int, torch.Tensor]]:
        """``{text: {layer: float32 [tokens, hidden]}}`` for the texts stored (others are absent)."""
        keys = {text_key(t): t for t in dict.fromkeys(texts)}
        if not keys:
            return {}
        found: dict[str, dict[int, torch.Tensor]] = {}
        bad: list[bytes] = []
        try:
            with self._lock:
                con = self._con
                if con is None:
                    return {}
                rows = []
                klist = list(keys)
                for s in range(0, len(klist), 500):
                    part = klist[s:s + 500]
                    rows += con.execute(
                        f"SELECT key, tokens, data FROM states WHERE key IN ({','.join('?' * len(part))})", part
                    ).fetchall()
                for key, tokens, data in rows:
                    if not isinstance(tokens, int) or tokens < 1 or len(data) != self._block_bytes(tokens):
                        bad.append(key)
                        continue
                    found[keys[bytes(key)]] = self._decode(tokens, data)
                now = self._stamp()
                good = [k for k, *_ in rows if k not in bad]
                if good or bad:
                    with _tx(con):
                        con.executemany("UPDATE states SET used=? WHERE key=?", [(now, k) for k in good])
                        con.executemany("DELETE FROM states WHERE key=?", [(k,) for k in bad])
        except sqlite3.DatabaseError as exc:
            with self._lock:
                self._set_aside(exc)
            return {}
        except sqlite3.Error as exc:  # locked for too long, disk full...: compute instead
            log.warning("entry-state store %s: read failed (%s); computing the states", self.path, exc)
            return {}
        if bad:
            log.warning("entry-state store %s: dropped %d row(s) of the wrong size", self.path, len(bad))
        return found

    def put_many(self, items: Mapping[str, Mapping[int, torch.Tensor]]) -> None:
        """Keep ``{text: {layer: [tokens, hidden]}}`` (every key layer; float16 on disk)."""
        if not items or self._con is None:  # closed, or unusable: computed each time
            return
        now = self._stamp()
        rows = []
        for text, states in items.items():
            blocks = [states[layer].detach().to("cpu", torch.float16).contiguous() for layer in self.layers]
            tokens = int(blocks[0].shape[0])
            if any(tuple(b.shape) != (tokens, self.hidden) for b in blocks):
                raise ValueError(f"entry-state store: states of shape {[tuple(b.shape) for b in blocks]} "
                                 f"for layers {self.layers}, expected [tokens, {self.hidden}] each")
            rows.append((text_key(text), tokens, b"".join(b.numpy().tobytes() for b in blocks), now))
        try:
            with self._lock:
                con = self._con
                if con is None:
                    return
                with _tx(con):
                    con.executemany("INSERT OR REPLACE INTO states(key, tokens, data, used) VALUES (?, ?, ?, ?)", rows)
                self._written += sum(len(r[2]) for r in rows)
                if self._written * 16 >= self.max_bytes:  # checked every 1/16 of the limit written
                    self._written = 0
                    self._prune(con)
        except sqlite3.DatabaseError as exc:
            with self._lock:
                self._set_aside(exc)
        except sqlite3.Error as exc:
            log.warning("entry-state store %s: write failed (%s); states not kept", self.path, exc)

    def discard_many(self, texts: Iterable[str]) -> None:
        """Forget the states of ``texts`` (the next read computes them again)."""
        keys = [(text_key(t),) for t in dict.fromkeys(texts)]
        if not keys or self._con is None:
            return
        try:
            with self._lock, _tx(self._con):
                self._con.executemany("DELETE FROM states WHERE key=?", keys)
        except sqlite3.Error as exc:
            log.warning("entry-state store %s: delete failed (%s)", self.path, exc)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The texts (in order, once each) that have no stored states."""
        texts = list(dict.fromkeys(texts))
        if self._con is None:
            return texts
        have: set[bytes] = set()
        keys = [text_key(t) for t in texts]
        try:
            with self._lock:
                for s in range(0, len(keys), 500):
                    part = keys[s:s + 500]
                    have.update(bytes(r[0]) for r in self._con.execute(
                        f"SELECT key FROM states WHERE key IN ({','.join('?' * len(part))})", part))
        except sqlite3.Error as exc:
            log.warning("entry-state store %s: read failed (%s)", self.path, exc)
            return texts
        return [t for t, k in zip(texts, keys) if k not in have]

    def stats(self) -> dict:
        """``{path, entries, bytes}``."""
        if self._con is None:
            return {"path": str(self.path), "entries": 0, "bytes": 0}
        with self._lock:
            n, size = self._con.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM states").fetchone()
        return {"path": str(self.path), "entries": int(n), "bytes": int(size)}

    def __len__(self) -> int:
        return self.stats()["entries"]

    def _prune(self, con: sqlite3.Connection) -> None:
        """Drop the least recently used rows until the data fits in 90 % of ``max_bytes``."""
        total = con.execute("SELECT coalesce(sum(length(data)), 0) FROM states").fetchone()[0]
        if total <= self.max_bytes:
            return
        target = int(self.max_bytes * 0.9)
        drop, freed = [], 0
        for key, size in con.execute("SELECT key, length(data) FROM states ORDER BY used"):
            if total - freed <= target:
                break
            drop.append((key,))
            freed += size
        with _tx(con):
            con.executemany("DELETE FROM states WHERE key=?", drop)
        con.execute("PRAGMA incremental_vacuum")
        log.info("entry-state store %s: %d least recently used rows dropped (%.0f MB freed)",
                 self.path, len(drop), freed / 1e6)
