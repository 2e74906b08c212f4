"""Job: build (or extend) a domain memory from a corpus.

Each input file is parsed and validated whole first (a malformed file is reported
with file and line and nothing of it is imported), then imported in chunks. Every
chunk is encoded and committed in ONE SQLite transaction together with the import's
``rows_done`` checkpoint, so a build interrupted by cancel, crash or ``kill -9``
resumes at the next chunk when started again: no entry lost, none duplicated. A file
already imported completely (same path and same content hash) is skipped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

from engine.jobs.corpus import CorpusError, corpus_files, file_key, parse_file
from engine.jobs.progress import JobCancelled, wrap_progress

log = logging.getLogger(__name__)


@dataclass
class BuildMemoryConfig:
    """What to build: the pack to write (created when missing) and the inputs to import."""

    JOB: ClassVar[str] = "build_memory"

    pack: str
    inputs: list[str]
    name: str | None = None
    chunk_size: int = 512  # records per committed chunk (per shard on Ray)
    author: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{cls.JOB} config: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class BuildMemoryResult:
    pack: str
    files_imported: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    entries_added: int = 0
    seconds: float = 0.0
    entries_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_files(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """The corpus files named by ``inputs`` (files or folders) in import order, and one
    error per input that does not exist (or one when no supported file was found)."""
    files: list[Path] = []
    errors: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            errors.append(f"{p}: no such file or folder")
            continue
        files.extend(corpus_files(p))
    if not files and not errors:
        errors.append("no .jsonl, .csv, .txt or .md files found in the inputs")
    return files, errors


def build_memory(
    config: BuildMemoryConfig | dict[str, Any],
    progress: Callable[..., None],
    should_stop: Callable[[], bool],
    *,
    memory=None,
) -> dict[str, Any]:
    """Import ``config.inputs`` into ``config.pack``; returns a BuildMemoryResult dict.

    ``memory`` lets a caller that already holds the pack open (the one writer) pass it
    in; otherwise the job opens it and closes it at the end.
    """
    from engine.memory import Memory

    cfg = config if isinstance(config, BuildMemoryConfig) else BuildMemoryConfig.from_dict(config)
    t0 = time.perf_counter()
    result = BuildMemoryResult(pack=cfg.pack)
    files, result.errors = input_files(cfg.inputs)

    progress(0.0, "opening memory")
    own = memory is None
    mem = memory or Memory.open(cfg.pack, create=True, name=cfg.name)
    try:
        total_files = max(1, len(files))
        for n, path in enumerate(files):
            sub = wrap_progress(progress, n / total_files, (n + 1) / total_files)
            try:
                records = parse_file(path)
            except CorpusError as exc:
                result.errors.append(str(exc))
                log.warning("skipped %s: %s", path, exc)
                continue
            added = _import_file(mem, path, records, cfg, sub, should_stop)
            if added is None:
                result.files_skipped.append(str(path))
            else:
                result.files_imported.append(str(path))
                result.entries_added += added
        mem.save_index()
    finally:
        if own:
            mem.close()
    result.seconds = round(time.perf_counter() - t0, 3)
    result.entries_per_second = round(result.entries_added / result.seconds, 1) if result.seconds else 0.0
    progress(1.0, f"added {result.entries_added:,} entries from {len(result.files_imported)} file(s)")
    return result.to_dict()


def _import_file(mem, path: Path, records: list[dict], cfg: BuildMemoryConfig, progress, should_stop) -> int | None:
    """Import one validated file in checkpointed chunks. None when it was already complete."""
    key = file_key(path)
    state = mem.pack.begin_import(key, str(path), total=len(records))
    if state.state == "done" or state.rows_done >= len(records):
        if state.state != "done":
            mem.pack.finish_import(key)
        progress(1.0, f"{path.name}: already imported")
        return None
    start = state.rows_done
    if start:
        log.info("resuming %s at record %d of %d", path, start + 1, len(records))
    added = 0
    total = len(records)
    for lo in range(start, total, cfg.chunk_size):
        if should_stop():
            raise JobCancelled(f"cancelled after {lo:,} of {total:,} records of {path.name}; run again to resume")
        chunk = records[lo : lo + cfg.chunk_size]
        mem.add_many(chunk, import_key=key, author=cfg.author)
        added += len(chunk)
        done = lo + len(chunk)
        progress(done / total, f"{path.name}: {done:,} of {total:,}")
    mem.pack.finish_import(key)
    return added


class ImportRefused(ValueError):
    """An import job whose inputs were refused; the message names the first file and line."""


def import_job(config: BuildMemoryConfig | dict[str, Any], progress: Callable[..., None],
               should_stop: Callable[[], bool]) -> dict[str, Any]:
    """build_memory as a job of the app: refused inputs end the job as *failed*, with the
    reason (file:line) as its error, instead of a "done" that added nothing."""
    result = build_memory(config, progress, should_stop)
    if result["errors"]:
        n = len(result["errors"])
        kept = f"; {result['entries_added']:,} entries of the other files were added" if result["entries_added"] else ""
        raise ImportRefused(f"{n} input(s) refused, nothing of them imported{kept}: {result['errors'][0]}")
    return result
