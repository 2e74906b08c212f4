"""Values derived from a text, kept on disk by the text's sha256: the base of the
entry-state store (``engine.mechanisms.dpm.entry_store``) and of the statement-key store
(``engine.encode.key_store``).

One SQLite file per *identity* (what the values depend on: a reader and branch shape,
an encoder's weights), so values of two identities are never mixed up:

* the key is the sha256 of the text, so an edited entry is simply a new key (the old
  row ages out): nothing to invalidate, no rebuild after an edit;
* the same text in two packs is stored once; a reopened or rebuilt pack finds its
  values again.

Size is bounded (``max_bytes``; checked each time another 1/16 of it was written):
beyond it the least recently used rows go. A store problem never fails its caller: a
file SQLite cannot read, or one of another identity, is renamed aside (``.corrupt``)
and started afresh; a row of the wrong size is dropped (the caller computes it again);
any other error is logged and the caller computes the values instead.

A subclass says how a value becomes bytes and back (``_encode`` / ``_decode``) and
what size a row of a given shape has (``_row_bytes``).
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
from typing import Any, Iterable, Mapping, Sequence

from engine.resources import cache_root

log = logging.getLogger(__name__)

ENV_DIR = "PLUGMEM_ENTRY_STATES"  # the stores' folder (default: <cache>/entry-states)

# The table keeps the name and columns of the first entry-state stores, so their files stay valid.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states(
    key BLOB PRIMARY KEY,      -- sha256 of the text
    tokens INTEGER NOT NULL,   -- the value's shape (rows of a state block, a vector's length)
    data BLOB NOT NULL,        -- the value's bytes
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


class TextStore:
    """``get_many`` / ``put_many`` of values by text; safe from several threads."""

    WHAT = "store"  # how log messages name it
    MISMATCH = "it holds the values of something else"  # why a file of another identity is set aside

    def __init__(self, path: str | Path, identity: dict, *, max_bytes: int) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._written = 0  # bytes written since the last size check
        self._clock = 0  # last 'used' stamp given: strictly increasing within a process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    # ------------------------------------------------------------------ values
    def _row_bytes(self, shape: int) -> int:
        raise NotImplementedError

    def _decode(self, shape: int, data: bytes) -> Any:
        raise NotImplementedError

    def _encode(self, value: Any) -> tuple[int, bytes]:
        raise NotImplementedError

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
            raise sqlite3.DatabaseError(self.MISMATCH)
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
        log.warning("%s %s is unusable (%s); moved to %s and started afresh", self.WHAT, self.path, exc, aside.name)
        try:
            if self.path.exists():
                self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._con = self._connect()
        except (OSError, sqlite3.Error) as exc2:
            log.error("%s %s cannot be used (%s); values will be computed each time", self.WHAT, self.path, exc2)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ rows
    def _stamp(self) -> int:
        self._clock = max(int(time.time() * 1000), self._clock + 1)
        return self._clock

    def get_many(self, texts: Iterable[str]) -> dict[str, Any]:
        """``{text: value}`` for the texts stored (others are absent)."""
        keys = {text_key(t): t for t in dict.fromkeys(texts)}
        if not keys:
            return {}
        found: dict[str, Any] = {}
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
                for key, shape, data in rows:
                    if not isinstance(shape, int) or shape < 1 or len(data) != self._row_bytes(shape):
                        bad.append(key)
                        continue
                    found[keys[bytes(key)]] = self._decode(shape, data)
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
            log.warning("%s %s: read failed (%s); computing the values", self.WHAT, self.path, exc)
            return {}
        if bad:
            log.warning("%s %s: dropped %d row(s) of the wrong size", self.WHAT, self.path, len(bad))
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        """Keep ``{text: value}``."""
        if not items or self._con is None:  # closed, or unusable: computed each time
            return
        now = self._stamp()
        rows = [(text_key(text), *self._encode(value), now) for text, value in items.items()]
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
            log.warning("%s %s: write failed (%s); values not kept", self.WHAT, self.path, exc)

    def discard_many(self, texts: Iterable[str]) -> None:
        """Forget the values of ``texts`` (the next read computes them again)."""
        keys = [(text_key(t),) for t in dict.fromkeys(texts)]
        if not keys or self._con is None:
            return
        try:
            with self._lock, _tx(self._con):
                self._con.executemany("DELETE FROM states WHERE key=?", keys)
        except sqlite3.Error as exc:
            log.warning("%s %s: delete failed (%s)", self.WHAT, self.path, exc)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The texts (in order, once each) that have no stored value."""
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
            log.warning("%s %s: read failed (%s)", self.WHAT, self.path, exc)
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
        log.info("%s %s: %d least recently used rows dropped (%.0f MB freed)",
                 self.WHAT, self.path, len(drop), freed / 1e6)


def store_file(root: Path, name: str, identity: dict) -> Path:
    """``<root>/<name>-<hash of identity>.sqlite`` (the name made file-safe)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name or "store"))
    return Path(root).expanduser() / f"{safe[:40]}-{digest}.sqlite"


def stores_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$PLUGMEM_ENTRY_STATES``, else ``<cache>/entry-states``: where the
    stores of values derived from entries' texts live."""
    if root is None:
        root = os.environ.get(ENV_DIR) or cache_root() / "entry-states"
    return Path(root).expanduser()
