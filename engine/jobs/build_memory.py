"""Job: build (or extend) a domain memory from a corpus.

Every record of every input file is parsed and validated first, against the pack's
limits too: one malformed record anywhere is reported with file and line and nothing
at all is imported (no entry, no import record), so fixing the file and running the
same command again imports everything once. Then the files are imported in chunks.
Every chunk is encoded and committed in ONE SQLite transaction together with the
import's ``rows_done`` checkpoint, so a build interrupted by cancel, crash, ``kill -9``
or a full disk resumes at the next chunk when started again: no entry lost, none
duplicated. A file already imported completely (same name and content hash) is skipped.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

from engine.progress import JobCancelled, wrap_progress
from engine.store.corpus import CorpusError, corpus_files, load_file
from engine.store.errors import DiskFullError, is_disk_full

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
    as_examples: bool = False  # the inputs are probe files, imported as worked examples

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
    notes: list[str] = field(default_factory=list)  # what the memory said: a cache not saved, rebuilt
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


# Share of the progress bar for validating the inputs: parsing is ~1000x faster than encoding.
VALIDATE_SHARE = 0.05


def build_memory(
    config: BuildMemoryConfig | dict[str, Any],
    progress: Callable[..., None],
    should_stop: Callable[[], bool],
    *,
    memory=None,
) -> dict[str, Any]:
    """Import ``config.inputs`` into ``config.pack``; returns a BuildMemoryResult dict.

    With any input refused (``errors`` not empty) nothing is imported and the pack is
    not created. A full disk raises :class:`DiskFullError` (a one-line reason; the pack
    keeps its last checkpoint). ``memory`` lets a caller that already holds the pack
    open (the one writer) pass it in; otherwise the job opens it and closes it at the end.
    """
    cfg = config if isinstance(config, BuildMemoryConfig) else BuildMemoryConfig.from_dict(config)
    t0 = time.perf_counter()
    result = BuildMemoryResult(pack=cfg.pack)
    files = _validated_inputs(cfg, result, wrap_progress(progress, 0.0, VALIDATE_SHARE), should_stop)
    if result.errors:
        progress(1.0, f"nothing imported: {len(result.errors)} input(s) rejected")
        return result.to_dict()
    try:
        _import_files(cfg, files, result, wrap_progress(progress, VALIDATE_SHARE, 1.0), should_stop, memory)
    except (sqlite3.OperationalError, OSError) as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(f"disk full while importing into {cfg.pack}: free space and run the same command "
                            "again to resume") from exc
    result.seconds = round(time.perf_counter() - t0, 3)
    result.entries_per_second = round(result.entries_added / result.seconds, 1) if result.seconds else 0.0
    progress(1.0, f"added {result.entries_added:,} entries from {len(result.files_imported)} file(s)")
    return result.to_dict()


def _validated_inputs(cfg: BuildMemoryConfig, result: BuildMemoryResult, progress,
                      should_stop) -> list[tuple[Path, str]]:
    """(file, import key) of every input, each file parsed and validated whole; a refused
    input goes to ``result.errors``. Records are not kept: holding every file's records at
    once would cost the memory of the whole corpus, and parsing again is cheap."""
    files, missing = input_files(cfg.inputs)
    result.errors.extend(missing)
    checked: list[tuple[Path, str]] = []
    for n, path in enumerate(files):
        if should_stop():
            raise JobCancelled(f"cancelled while checking {path.name}; nothing was imported")
        try:
            parsed = load_file(path, progress=wrap_progress(progress, n / len(files), (n + 1) / len(files)),
                               as_examples=cfg.as_examples)
        except CorpusError as exc:
            result.errors.append(str(exc))
            log.info("refused %s: %s", path, exc)  # the caller reports result.errors
            continue
        checked.append((path, parsed.key))
    return checked


def _import_files(cfg: BuildMemoryConfig, files: list[tuple[Path, str]], result: BuildMemoryResult, progress,
                  should_stop, memory) -> None:
    from engine.memory import Memory

    progress(0.0, "opening memory")
    own = memory is None
    mem = memory or Memory.open(cfg.pack, create=True, name=cfg.name, on_message=result.notes.append)
    try:
        for n, (path, key) in enumerate(files):
            sub = wrap_progress(progress, n / len(files), (n + 1) / len(files))
            state = mem.pack.import_state(key)
            if state is not None and state.state == "done":
                result.files_skipped.append(str(path))
                sub(1.0, f"{path.name}: already imported")
                continue
            parsed = load_file(path, progress=wrap_progress(sub, 0.0, 0.0),  # its message, not its fraction
                               as_examples=cfg.as_examples)
            if parsed.key != key:  # the records checked are not the ones that would be imported
                raise CorpusError(path, None, "changed while being imported; run the import again")
            added = _import_file(mem, path, key, parsed.records, cfg, sub, should_stop)
            if added is None:
                result.files_skipped.append(str(path))
            else:
                result.files_imported.append(str(path))
                result.entries_added += added
        mem.save_index()
    finally:
        if own:
            mem.close()


def _import_file(mem, path: Path, key: str, records: list[dict], cfg: BuildMemoryConfig, progress,
                 should_stop) -> int | None:
    """Import one validated file in checkpointed chunks. None when it was already complete."""
    state = mem.pack.begin_import(key, str(path), total=len(records),
                                  what="import examples from" if cfg.as_examples else "import")
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
    if result["errors"]:  # one refused record stops the whole import: nothing was committed
        n = len(result["errors"])
        raise ImportRefused(f"{n} input(s) refused, nothing imported: {result['errors'][0]}")
    return result
