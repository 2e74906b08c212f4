"""SQLite connections to pack files, with SQLite's defences against hostile database files.

A pack is a file strangers share, so everything in it is untrusted input, its schema
included: a trigger or view stored in the file runs inside our own statements. The
defences set on every connection (see SQLite's "Defense Against The Dark Arts"):

* ``PRAGMA trusted_schema=OFF``: schema objects may not call functions or virtual
  tables that are not marked innocuous;
* ``SQLITE_DBCONFIG_DEFENSIVE`` where Python exposes it (3.12+: ``setconfig``): no
  writes to the schema or to shadow tables from SQL; on older Pythons the schema check
  on open (``engine.store.schema.verify_schema``) is what stands in for it;
* extension loading off (Python's default; set again in case a build differs);
* ``PRAGMA cell_size_check=ON``: damaged b-tree pages are noticed before they are used;
* a progress handler that aborts a statement running longer than
  :data:`STATEMENT_LIMIT_S` (``sqlite3.OperationalError: interrupted``), so nothing a
  file holds can make a command spin for ever.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

# A statement's time limit. The longest legitimate statements on a million-entry pack
# (FTS rebuild 30 s, quick_check of 4 GB) run under `long_statements`, which allows
# MAINTENANCE_LIMIT_S; everything else a command does takes well under a second.
def _limit_from_env(default: float = 60.0) -> float:
    try:
        value = float(os.environ.get("PLUGMEM_SQL_TIME_LIMIT", default))
    except ValueError:
        return default
    return value if value > 0 else default


STATEMENT_LIMIT_S = _limit_from_env()
MAINTENANCE_LIMIT_S = 30 * 60.0
_PROGRESS_OPS = 100_000  # VM steps between two looks at the clock (about a millisecond)


class PackConnection(sqlite3.Connection):
    """A connection whose statements are timed from their ``execute`` call.

    SQLite's progress handler does not know where one statement ends and the next
    begins, so the execute methods note the start time the handler compares against
    (a trace callback would do it too, but Python 3.11 expands every bound value for it:
    4x slower blob inserts, measured).
    """

    limit_s: float = STATEMENT_LIMIT_S

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._t0 = time.monotonic()
        self.set_progress_handler(self._too_long, _PROGRESS_OPS)

    def _too_long(self) -> int:
        return int(time.monotonic() - self._t0 > self.limit_s)

    def execute(self, *args, **kw):  # type: ignore[override]
        self._t0 = time.monotonic()
        return super().execute(*args, **kw)

    def executemany(self, *args, **kw):  # type: ignore[override]
        self._t0 = time.monotonic()
        return super().executemany(*args, **kw)

    def executescript(self, *args, **kw):  # type: ignore[override]
        self._t0 = time.monotonic()
        return super().executescript(*args, **kw)

    def cursor(self, factory=None):  # type: ignore[override]
        return super().cursor(factory or _TimedCursor)

    @contextlib.contextmanager
    def long_statements(self, limit_s: float = MAINTENANCE_LIMIT_S) -> Iterator[None]:
        """Allow the statements run inside to take up to ``limit_s`` each (rebuilds, checks)."""
        old, self.limit_s = self.limit_s, max(limit_s, self.limit_s)
        try:
            yield
        finally:
            self.limit_s = old


class _TimedCursor(sqlite3.Cursor):
    """Cursors made with ``con.cursor()`` (sqlite-utils uses them) start the clock too."""

    def execute(self, *args, **kw):  # type: ignore[override]
        self.connection._t0 = time.monotonic()
        return super().execute(*args, **kw)

    def executemany(self, *args, **kw):  # type: ignore[override]
        self.connection._t0 = time.monotonic()
        return super().executemany(*args, **kw)


def harden(con: sqlite3.Connection) -> None:
    """Set the defences that do not depend on the connection's class (see the module doc)."""
    con.execute("PRAGMA trusted_schema = OFF")
    con.execute("PRAGMA cell_size_check = ON")
    if hasattr(con, "setconfig"):  # Python 3.12+
        con.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
    if hasattr(con, "enable_load_extension"):
        con.enable_load_extension(False)


def connect(path: Path, *, readonly: bool, create: bool = False, timeout: float = 30.0) -> PackConnection:
    """Open ``path`` with the defences set.

    Read-only, a WAL pack needs a ``-shm`` file beside it; in a folder that cannot be
    written (read-only media) SQLite cannot create one, and the file is then opened
    ``immutable`` (no locks, no -shm). Only then: a folder that is merely not writable by
    this user may have a writer, whose changes an immutable reader would misread.
    """
    con = _connect(path, readonly=readonly, create=create, immutable=False, timeout=timeout)
    if readonly:
        try:
            con.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            if os.access(Path(path).parent, os.W_OK):
                raise
            con.close()
            con = _connect(path, readonly=True, create=False, immutable=True, timeout=timeout)
    return con


def _connect(path: Path, *, readonly: bool, create: bool, immutable: bool, timeout: float) -> PackConnection:
    uri = Path(path).resolve().as_uri()
    if immutable:
        uri += "?immutable=1"
    elif readonly:
        uri += "?mode=ro"
    else:
        uri += "?mode=rwc" if create else "?mode=rw"
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout, check_same_thread=not readonly,
                          factory=PackConnection)
    try:
        harden(con)
        con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    except BaseException:
        con.close()
        raise
    return con  # type: ignore[return-value]
