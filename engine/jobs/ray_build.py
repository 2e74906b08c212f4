"""Job: build (or extend) a domain memory on Ray Data — the ``scale`` extra.

The same import as :mod:`engine.jobs.build_memory`, with the work that grows spread over
a Ray cluster (a local one sized to this machine when no address is given):

1. **Validate.** Every input file is parsed whole by :func:`engine.store.corpus.parse_file`
   in a Ray task (one per file), with the same validation and ``FILE:LINE`` errors as a
   local import. One bad file refuses the whole run before anything is committed: a
   cluster job must not spend hours encoding a corpus the user still has to fix.
2. **Shard and encode.** The files are parsed again in Ray tasks (parsing costs ~1 % of
   encoding; keeping the parsed corpus in the object store between the two passes would
   cost its whole size), cut into shards of ``chunk_size`` records, and encoded by a pool
   of actors that each load the key encoder once (``num_gpus`` per actor where the cluster
   has GPUs). A shard comes back as a unit: records (text, metadata, file:line source)
   and their keys.
3. **Merge.** The driver is the pack's one writer: it takes finished shards in corpus
   order and commits each through :meth:`Memory.add_encoded` in one transaction with the
   file's ``rows_done`` checkpoint (the same import state a local import uses). A shard
   whose first record is not the file's next one is a duplicate (skipped) or a gap
   (refused), so a killed driver, a lost worker (Ray restarts the actor and retries its
   shard) or a cancelled job resumes with no entry lost and none duplicated.

Ray is imported lazily, so the engine and the desktop bundle work without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from engine.jobs.build_memory import BuildMemoryConfig, BuildMemoryResult, input_files
from engine.store.corpus import CorpusError, file_key, parse_file
from engine.progress import JobCancelled

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install plugmem-studio[scale]"


class ScaleExtraMissing(RuntimeError):
    """Ray Data is not installed; the message says how to get it, in one line."""


class RayBuildError(RuntimeError):
    """The cluster returned something the pack must not take (another encoder, a gap)."""


def require_ray():
    """``ray`` with Ray Data, or ScaleExtraMissing naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is what the build needs
    except ImportError as exc:
        raise ScaleExtraMissing(f"building on Ray needs Ray Data, which is not installed: {INSTALL_HINT}") from exc
    return ray


@dataclass
class RayBuildConfig(BuildMemoryConfig):
    """build_memory's config (``chunk_size`` records make a shard) and where to run:
    ``address`` None starts a local Ray sized to this machine (``num_cpus`` caps it);
    otherwise it is handed to ``ray.init`` ('auto', 'ray://host:10001')."""

    JOB: ClassVar[str] = "ray_build"

    address: str | None = None
    num_cpus: int | None = None
    workers: int | None = None  # encoder actors; default: one per GPU, else one per threads_per_worker CPUs
    threads_per_worker: int = 1
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0
    batch_size: int = 64  # texts per encoder forward pass inside a shard


@dataclass
class RayBuildResult(BuildMemoryResult):
    workers: int = 0
    gpus_per_worker: float = 0.0
    shards: int = 0
    duplicate_shards: int = 0
    encode_seconds: float = 0.0  # summed over workers: time inside KeyEncoder.encode
    merge_seconds: float = 0.0  # the driver's SQLite + index writes
    startup_seconds: float = 0.0  # connecting to / starting Ray


@dataclass
class _File:
    index: int
    path: str
    key: str
    total: int
    start: int = 0  # records already committed (the import's checkpoint)
    begun: bool = False


def encoder_id(fp) -> str:
    """A short digest of an encoder fingerprint: what each shard carries so the driver
    never mixes keys of another encoder (another model, a worker with other weights)."""
    return hashlib.sha256(json.dumps(fp.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- cluster side
def _validate(row: dict[str, Any]) -> dict[str, Any]:
    """Parse one file whole on a worker: its record count and content key, or its error."""
    try:
        n, err = len(parse_file(row["path"])), ""
    except CorpusError as exc:
        n, err = 0, str(exc)
    return {"index": row["index"], "key": "" if err else file_key(row["path"]), "count": n, "error": err}


def _shards(batch: dict[str, np.ndarray], shard_size: int) -> dict[str, list]:
    """The shards of a batch of files: one row per ``shard_size`` records of a file from its
    ``start`` on, records as JSON (they differ in their optional fields, which Arrow columns
    would not tolerate)."""
    out: dict[str, list] = {"file": [], "lo": [], "records": []}
    for index, path, key, start in zip(batch["index"], batch["path"], batch["key"], batch["start"]):
        if file_key(path) != key:
            raise RayBuildError(f"{path} changed while it was being imported; run the import again")
        recs = parse_file(path)
        for lo in range(int(start), len(recs), shard_size):
            out["file"].append(int(index))
            out["lo"].append(lo)
            out["records"].append(json.dumps(recs[lo : lo + shard_size], ensure_ascii=False))
    return out


class ShardEncoder:
    """A Ray Data actor: loads the key encoder once, then encodes one shard per call."""

    def __init__(self, threads: int, batch_size: int) -> None:
        import torch

        from engine.encode import get_default_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = get_default_encoder()  # on the actor's GPU when Ray gave it one
        self.encoder_id = encoder_id(self.encoder.fingerprint)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys, seconds = [], []
        for records in batch["records"]:
            t0 = time.perf_counter()
            k = self.encoder.encode([r["text"] for r in json.loads(records)], batch_size=self.batch_size)  # [n, dim]
            seconds.append(time.perf_counter() - t0)
            keys.append(np.ascontiguousarray(k, dtype=np.float32).tobytes())
        n = len(keys)
        return {**batch, "keys": np.array(keys, dtype=object), "encoder": np.full(n, self.encoder_id),
                "encode_s": np.array(seconds)}


# ---------------------------------------------------------------------------- driver side
def _connect(ray, cfg: RayBuildConfig) -> bool:
    """Join or start Ray; True when this job started it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if cfg.address in (None, "", "local"):
        kw["num_cpus"] = cfg.num_cpus or os.cpu_count() or 1
        ray.init(address="local", **kw)
    else:
        ray.init(address=cfg.address, **kw)
    return True


def _pool(ray, cfg: RayBuildConfig) -> tuple[int, float]:
    """(actors, GPUs per actor) for the encoder pool, from the cluster's resources."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    per = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if cfg.workers:
        return cfg.workers, per
    if per > 0:
        return max(1, int(gpus / per)), per
    return max(1, int(res.get("CPU", 1) // max(1, cfg.threads_per_worker))), per


def ray_build(config: RayBuildConfig | dict[str, Any], progress: Callable[..., None],
              should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Import ``config.inputs`` into ``config.pack`` on Ray; returns a RayBuildResult dict.

    Same result fields as build_memory plus the pool's figures; ``errors`` non-empty means
    the inputs were refused and nothing was committed.
    """
    cfg = config if isinstance(config, RayBuildConfig) else RayBuildConfig.from_dict(config)
    ray = require_ray()
    t0 = time.perf_counter()
    result = RayBuildResult(pack=cfg.pack)
    files, result.errors = input_files(cfg.inputs)
    if result.errors:
        return _finish(result, t0, progress)
    progress(0.0, "starting Ray")
    started = _connect(ray, cfg)
    result.startup_seconds = round(time.perf_counter() - t0, 3)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.target_max_block_size, ctx.enable_progress_bars)
    try:
        ctx.execution_options.preserve_order = True  # shards reach the writer in corpus order
        # one shard (row) per block: the block is what Ray hands to an actor, retries and streams back
        ctx.target_max_block_size = 1
        ctx.enable_progress_bars = False  # progress goes through the job's callback
        progress(0.01, f"validating {len(files)} file(s)")
        items = [{"index": i, "path": str(p)} for i, p in enumerate(files)]
        checked = sorted(ray.data.from_items(items, override_num_blocks=len(items)).map(_validate).take_all(),
                         key=lambda r: r["index"])
        result.errors = [r["error"] for r in checked if r["error"]]
        if result.errors:
            return _finish(result, t0, progress)
        from engine.memory import Memory

        progress(0.02, "opening memory")
        with Memory.open(cfg.pack, create=True, name=cfg.name) as mem:
            todo = _plan(mem, files, checked, result, cfg.author)
            if todo:
                _encode_and_merge(ray, mem, todo, cfg, result, progress, should_stop)
            mem.save_index()
    finally:
        ctx.execution_options.preserve_order, ctx.target_max_block_size, ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()
    return _finish(result, t0, progress)


def _finish(result: RayBuildResult, t0: float, progress) -> dict[str, Any]:
    result.seconds = round(time.perf_counter() - t0, 3)
    result.entries_per_second = round(result.entries_added / result.seconds, 1) if result.seconds else 0.0
    result.encode_seconds = round(result.encode_seconds, 3)
    result.merge_seconds = round(result.merge_seconds, 3)
    if not result.errors:
        progress(1.0, f"added {result.entries_added:,} entries from {len(result.files_imported)} file(s)")
    return result.to_dict()


def _plan(mem, files: list[Path], checked: list[dict], result: RayBuildResult, author: str | None) -> list[_File]:
    """The files still to import and where each resumes (as build_memory decides it: a file
    whose import is done, or has every record, is skipped)."""
    todo: list[_File] = []
    planned: set[str] = set()
    for path, row in zip(files, checked):
        f = _File(row["index"], str(path), row["key"], int(row["count"]))
        st = mem.pack.import_state(f.key)
        if f.key in planned or (st is not None and st.state == "done"):  # a file named twice: once
            result.files_skipped.append(f.path)
            continue
        if st is not None and st.state == "running":
            f.start, f.begun = st.rows_done, True
        if f.start >= f.total:
            if not f.begun:
                mem.pack.begin_import(f.key, f.path, total=f.total, author=author)
            mem.pack.finish_import(f.key)
            result.files_skipped.append(f.path)
            continue
        if f.start:
            log.info("resuming %s at record %d of %d", f.path, f.start + 1, f.total)
        todo.append(f)
        planned.add(f.key)
    return todo


def ray_import_job(config: RayBuildConfig | dict[str, Any], progress: Callable[..., None],
                   should_stop: Callable[[], bool]) -> dict[str, Any]:
    """ray_build as a job of the app: refused inputs end the job as *failed*, with the reason
    (file:line) as its error, as ``build_memory.import_job`` does for a local import."""
    from engine.jobs.build_memory import ImportRefused

    result = ray_build(config, progress, should_stop)
    if result["errors"]:  # one refused record stops the whole import: nothing was committed
        raise ImportRefused(f"{len(result['errors'])} input(s) refused, nothing imported: {result['errors'][0]}")
    return result


def _encode_and_merge(ray, mem, todo: list[_File], cfg: RayBuildConfig, result: RayBuildResult,
                      progress, should_stop) -> None:
    actors, gpus = _pool(ray, cfg)
    result.workers, result.gpus_per_worker = actors, gpus
    want = encoder_id(mem.pack.encoder or mem.encoder.fingerprint)
    items = [{"index": f.index, "path": f.path, "key": f.key, "start": f.start} for f in todo]
    ds = (ray.data.from_items(items, override_num_blocks=len(items))
          # parsing is light and must not wait behind encoder actors holding every CPU (no CPU
          # asked), so the number of files parsed at once is bounded instead
          .map_batches(_shards, batch_size=1, batch_format="numpy", num_cpus=0,
                       compute=ray.data.TaskPoolStrategy(size=min(len(items), max(2, actors))),
                       fn_kwargs={"shard_size": cfg.chunk_size})
          .map_batches(ShardEncoder, batch_size=1, batch_format="numpy",
                       fn_constructor_kwargs={"threads": cfg.threads_per_worker, "batch_size": cfg.batch_size},
                       compute=ray.data.ActorPoolStrategy(size=actors),
                       num_cpus=cfg.threads_per_worker, num_gpus=gpus or None))
    by_index = {f.index: f for f in todo}
    total = sum(f.total - f.start for f in todo)
    dim = mem.encoder.dim
    done = 0
    progress(0.03, f"encoding {total:,} records on {actors} worker(s)")
    it = ds.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for block in it:
            if should_stop():
                raise JobCancelled(f"cancelled after {done:,} of {total:,} records; run again to resume")
            bad = set(block["encoder"].tolist()) - {want}
            if bad:
                raise RayBuildError(f"a worker's key encoder ({bad.pop()}) differs from the pack's ({want}); "
                                    "install the same encoder on every node")
            t = time.perf_counter()
            for f, lo, records, keys in zip(block["file"], block["lo"], block["records"], block["keys"]):
                done += _commit(mem, by_index[int(f)], int(lo), json.loads(records),
                                np.frombuffer(keys, dtype=np.float32).reshape(-1, dim), cfg, result)
            result.merge_seconds += time.perf_counter() - t
            result.encode_seconds += float(np.sum(block["encode_s"]))
            progress(0.03 + 0.97 * done / total, f"{done:,} of {total:,} records", entries=done)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # stops the streaming execution at once on cancel or error
    left = [f.path for f in todo if f.start < f.total]
    if left:
        raise RayBuildError(f"the cluster returned no records for the end of {left[0]}; run the import again")


def _commit(mem, f: _File, lo: int, records: list[dict], keys: np.ndarray, cfg: RayBuildConfig,
            result: RayBuildResult) -> int:
    """Commit one finished shard (records lo.. of file ``f`` and their keys [n, dim]) at the
    file's checkpoint, in one transaction. Returns how many records were added."""
    result.shards += 1
    if lo + len(records) <= f.start:  # delivered twice (a retried task): already in the pack
        result.duplicate_shards += 1
        log.warning("skipped a duplicate shard of %s (records %d-%d)", f.path, lo + 1, lo + len(records))
        return 0
    if lo > f.start:
        raise RayBuildError(f"records {f.start + 1}-{lo} of {f.path} are missing from the cluster's output; "
                            "run the import again to resume")
    skip = f.start - lo  # overlapping what is committed: take only the new part
    records, keys = records[skip:], keys[skip:]
    if not f.begun:
        mem.pack.begin_import(f.key, f.path, total=f.total, author=cfg.author)
        f.begun = True
    mem.add_encoded(records, keys, import_key=f.key, author=cfg.author)
    f.start += len(records)
    result.entries_added += len(records)
    if f.start == f.total:
        mem.pack.finish_import(f.key)
        result.files_imported.append(f.path)
    return len(records)
