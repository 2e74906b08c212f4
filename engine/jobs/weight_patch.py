"""Job: write facts into the reader's weights as one weight patch (the app's *Write this
fact into the weights…*).

Config: ``{"facts": [{prompt, answer, paraphrase?, old?, source?}], "out": folder,
"name"?: str, "reader"?: null | folder, "patch"?: {layers, targets, delta, lr, steps, ...},
"locality"?: [prompts], "on_top_of"?: [patch folders, in the order they are applied]}``.

The child process loads its own reader, so the patches the user has on are applied to it
first (``on_top_of``, each checked as on the app's reader): the new patch is then made on
top of them and applies on the app's reader after them. A fact the reader (with those
patches) already answers is refused, naming it; a cancelled job writes nothing; an
existing ``out`` is never overwritten.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from engine.progress import wrap_progress


def check_config(config: Any):
    """The job's facts and patch config, checked without a reader (the app calls it before
    starting the job, so a bad field is said at once): ``(facts, PatchConfig)``."""
    from engine.mechanisms.weight_patches import PatchConfig, PatchError
    from engine.mechanisms.weight_patches.io import fact_from_dict

    if not isinstance(config, dict):
        raise PatchError("patch job: the config must be an object")
    out = config.get("out")
    if not isinstance(out, str) or not out:
        raise PatchError("patch job: field 'out' (the patch folder) must be a non-empty string")
    if Path(out).exists():
        raise PatchError(f"patch job: field 'out': {out} exists already; a patch is never overwritten")
    raw = config.get("facts")
    if not isinstance(raw, list) or not raw:
        raise PatchError("patch job: field 'facts' must be a non-empty list of {prompt, answer} objects")
    facts = [fact_from_dict(d, f"patch job: facts[{i}]") for i, d in enumerate(raw)]  # each checked there
    cfg = PatchConfig.from_dict(config.get("patch") or {}, "patch job: field 'patch'")  # validated
    for name in ("locality", "on_top_of"):
        v = config.get(name) or []
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise PatchError(f"patch job: field {name!r} must be a list of non-empty strings")
    return facts, cfg


def run(config: dict[str, Any], progress: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None, *, reader=None) -> dict[str, Any]:
    """Make and save the patch; ``{"out", "name", "metrics", "bytes"}``. ``reader``: use this
    one instead of loading ``config['reader']`` (tests; it is given back unpatched)."""
    from engine.mechanisms.weight_patches import applied, io, make_patch
    from engine.reader import load_reader

    facts, cfg = check_config(config)
    say = wrap_progress(progress, 0.0, 0.05)
    say(0.0, "loading the reader")
    if reader is None:
        reader = load_reader(config.get("reader"))
    below = [io.load(f, reader) for f in config.get("on_top_of") or []]
    name = str(config.get("name") or Path(config["out"]).name)
    with applied(reader, below):
        patch = make_patch(reader, facts, cfg, name=name, locality=list(config.get("locality") or []),
                           progress=wrap_progress(progress, 0.05, 1.0), should_stop=should_stop)
    folder = io.save(patch, config["out"])
    return {"out": str(folder), "name": patch.name, "metrics": patch.metrics, "bytes": patch.size_bytes}
