"""Job records: one small SQLite table that outlives the app.

The parent process (the runner) is the only writer; the child never touches it. WAL
and a busy timeout let a second app instance read the table while the first writes.
Every statement uses bound parameters.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.processes import pid_alive  # noqa: F401 - re-exported: the job records' liveness check

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = frozenset({"done", "failed", "cancelled", "interrupted"})
RESUMABLE = frozenset({"failed", "cancelled", "interrupted"})
SCHEMA_VERSION = 1
STALE_QUEUED_S = 60.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,
    title     TEXT,
    fn        TEXT NOT NULL,
    config    TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    created   REAL NOT NULL,
    started   REAL,
    finished  REAL,
    fraction  REAL NOT NULL DEFAULT 0,
    message   TEXT NOT NULL DEFAULT '',
    error     TEXT,
    traceback TEXT,
    result    TEXT,
    pid       INTEGER,
    exit_code INTEGER,
    attempts  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""

_COLUMNS = ("id", "kind", "title", "fn", "config", "status", "created", "started", "finished", "fraction",
            "message", "error", "traceback", "result", "pid", "exit_code", "attempts")


@dataclass
class JobRecord:
    """One row of the jobs table. ``config`` and ``result`` are decoded JSON;
    ``error`` is a one-line reason, ``traceback`` the full text (failed jobs only)."""

    id: int
    kind: str
    title: str | None
    fn: str
    config: dict[str, Any]
    status: str
    created: float
    started: float | None
    finished: float | None
    fraction: float
    message: str
    error: str | None
    traceback: str | None
    result: Any
    pid: int | None
    exit_code: int | None
    attempts: int

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class JobRecords:
    """The jobs table of one SQLite file (``':memory:'`` for throw-away records)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: job records of a newer version ({version}) than this app knows ({SCHEMA_VERSION})")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    # ------------------------------------------------------------------ writes
    def insert(self, kind: str, fn: str, config_json: str, title: str | None = None) -> int:
        cur = self._exec(
            "INSERT INTO jobs(kind, title, fn, config, status, created) VALUES (?, ?, ?, ?, 'queued', ?)",
            (kind, title, fn, config_json, time.time()),
        )
        return int(cur.lastrowid)

    def requeue(self, job_id: int) -> None:
        """Prepare a resumable record to run again (same id, same config)."""
        self._exec(
            "UPDATE jobs SET status='queued', finished=NULL, error=NULL, traceback=NULL, result=NULL, "
            "exit_code=NULL, pid=NULL, message='resuming' WHERE id=?",
            (job_id,),
        )

    def set_running(self, job_id: int, pid: int | None) -> None:
        self._exec(
            "UPDATE jobs SET status='running', started=?, pid=?, attempts=attempts+1 WHERE id=?",
            (time.time(), pid, job_id),
        )

    def set_progress(self, job_id: int, fraction: float, message: str) -> None:
        self._exec("UPDATE jobs SET fraction=?, message=? WHERE id=?", (float(fraction), message, job_id))

    def finish(self, job_id: int, status: str, *, fraction: float | None = None, message: str | None = None,
               error: str | None = None, traceback: str | None = None, result_json: str | None = None,
               exit_code: int | None = None) -> None:
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        self._exec(
            "UPDATE jobs SET status=?, finished=?, fraction=COALESCE(?, fraction), message=COALESCE(?, message), "
            "error=?, traceback=?, result=?, exit_code=? WHERE id=?",
            (status, time.time(), fraction, message, error, traceback, result_json, exit_code, job_id),
        )

    def mark_stale(self) -> list[int]:
        """Mark 'running' records whose process is gone (and long-'queued' ones) 'interrupted'.

        They are what a crash of the app, a ``kill -9`` of the worker or a power cut
        leaves behind. A pid reused by an unrelated process keeps a record 'running'
        until that process ends (rare; documented, not guarded against).
        """
        now = time.time()
        stale: list[int] = []
        rows = self._exec("SELECT id, status, pid, created FROM jobs WHERE status IN ('running', 'queued')").fetchall()
        for job_id, status, pid, created in rows:
            if (status == "running" and not pid_alive(pid)) or (status == "queued" and now - created > STALE_QUEUED_S):
                stale.append(job_id)
                self._exec(
                    "UPDATE jobs SET status='interrupted', finished=?, error=? WHERE id=? AND status=?",
                    (now, "the job stopped without reporting (the app or its worker was killed); "
                          "resume it to continue from its last checkpoint", job_id, status),
                )
        if stale:
            log.info("marked %d stale job record(s) interrupted: %s", len(stale), stale)
        return stale

    # ------------------------------------------------------------------ reads
    def get(self, job_id: int | str) -> JobRecord | None:
        try:
            key = int(job_id)
        except (TypeError, ValueError):
            return None
        row = self._exec(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (key,)).fetchone()
        return self._record(row) if row else None

    def list(self, limit: int = 100) -> list[JobRecord]:
        rows = self._exec(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row: tuple) -> JobRecord:
        d = dict(zip(_COLUMNS, row))
        d["config"] = _loads(d["config"]) or {}
        d["result"] = _loads(d["result"])
        return JobRecord(**d)
