"""Job: prepare some packs for fast answers.

1. Encode the statement prefix of every active entry (``engine.explain.predict.statement_prefix``)
   into the key encoder's key store (``engine.encode.key_store``), so that retrieval
   never encodes them at question time (the 5,724 demo entries: a few seconds).
2. Read every active entry through the reader once and keep the states in the
   entry-state store (``engine.mechanisms.dpm.entry_store``), so that the first DPM answer that
   retrieves them does not wait for the reader (~45 ms an entry read one question at a
   time on two cores; ~21 ms in this job's batches: the demo entries take 2 minutes and
   93 MB).

Config: ``{"packs": [path, ...], "reader": null | folder, "branch": null | folder,
"encoder": null | folder, "cache_dir": null | folder, "batch": 32, "threads": null,
"device": null}`` (null: the defaults the app and the CLI use). A pack made by another
key encoder gets no statement keys (it is named in the result). Keys and entries already
stored are skipped, so the job resumes where a cancelled or killed run stopped: each
batch is committed before the next starts. The packs are only read.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from engine.progress import JobCancelled

KEY_BATCH = 256  # statement prefixes encoded (and committed) at a time


def _texts(path: str):
    """The pack's active texts and the fingerprint of the encoder that made it (or None)."""
    from engine.store import Pack

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such memory pack")
    with Pack.open(p, readonly=True) as pack:
        return [e.text for e in pack.iter_entries(status="active") if e.text], pack.encoder


def _prepare_keys(packs: list[tuple[str, list[str], Any]], config: dict[str, Any], say, stop) -> dict[str, Any]:
    """Step 1: the statement keys of the packs made by the key encoder."""
    from engine.encode import KeyEncoder, get_default_encoder
    from engine.encode.key_store import KeyStore
    from engine.explain.predict import statement_prefix

    encoder = KeyEncoder(config["encoder"], config.get("device")) if config.get("encoder") \
        else get_default_encoder(config.get("device"))
    mine = encoder.fingerprint
    other = [Path(p).name for p, _, fp in packs if fp is not None and fp != mine]
    prefixes = list(dict.fromkeys(statement_prefix(t) for p, texts, fp in packs if fp is None or fp == mine
                                  for t in texts))
    with KeyStore.for_encoder(mine, config.get("cache_dir")) as store:
        todo = store.missing(prefixes)
        for s in range(0, len(todo), KEY_BATCH):
            if stop():
                raise JobCancelled(f"stopped after {len(prefixes) - len(todo) + s:,} of {len(prefixes):,} "
                                   "statement keys; what was encoded is kept, run it again to go on")
            part = todo[s:s + KEY_BATCH]
            store.put_many(dict(zip(part, encoder.encode(part))))
            say(0.05 * (s + len(part)) / len(todo), f"statement keys {len(prefixes) - len(todo) + s + len(part):,}"
                f"/{len(prefixes):,}")
        st = store.stats()
    return {"keys": len(prefixes), "keys_encoded": len(todo), "key_store": st["path"],
            "keys_skipped_packs": other}


def prepare_states(config: dict[str, Any], progress: Callable[..., None] | None = None,
                   should_stop: Callable[[], bool] | None = None, *, reader=None, branch=None) -> dict[str, Any]:
    """Fill the stores for ``config["packs"]``; returns ``{entries, read, already, store, store_entries,
    store_bytes, keys, keys_encoded, key_store, keys_skipped_packs, seconds}``. ``reader``/``branch``
    let a caller pass loaded ones (tests)."""
    import torch

    from engine.mechanisms.dpm.prepare import fill_entry_states
    from engine.session import DEFAULT, open_entry_store, open_session

    say = progress or (lambda *a, **k: None)
    stop = should_stop or (lambda: False)
    packs = config.get("packs")
    if not packs or not isinstance(packs, list) or not all(isinstance(p, str) for p in packs):
        raise ValueError("prepare_states: config 'packs' must be a non-empty list of pack paths")
    batch = config.get("batch", 32)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"prepare_states: batch must be a positive integer, got {batch!r}")
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    t0 = time.perf_counter()
    read = [(p, *_texts(p)) for p in packs]
    texts = list(dict.fromkeys(t for _, ts, _ in read for t in ts))
    say(0.0, f"{len(texts):,} entries in {len(packs)} pack(s)")
    keys = _prepare_keys(read, config, say, stop)
    if reader is None or branch is None:
        session = open_session(reader if reader is not None else config.get("reader"), device=config.get("device"),
                               branch=None if branch is not None else (config.get("branch") or DEFAULT))
        reader, branch = session.reader, branch if branch is not None else session.branch
    store = open_entry_store(reader, branch, config.get("cache_dir"), required=True)
    try:
        n_read, already = fill_entry_states(reader, branch, store, texts, batch=batch, say=say, stop=stop, start=0.05)
        st = store.stats()
    finally:
        store.close()
    say(1.0, f"{n_read:,} entries read, {already:,} were already stored; "
             f"{keys['keys_encoded']:,} statement keys encoded")
    return {"entries": len(texts), "read": n_read, "already": already, "store": st["path"],
            "store_entries": st["entries"], "store_bytes": st["bytes"], **keys,
            "seconds": round(time.perf_counter() - t0, 1)}
