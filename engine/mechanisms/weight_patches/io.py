"""A weight patch's folder: ``config.json`` (format ``plugmem-weight-patch``, version, the
reader's fingerprint, each changed tensor's shape and base sha256, the config, the facts,
who, when, the metrics) + ``delta.safetensors`` (the deltas only; never a pickle).

Everything is checked before a tensor is allocated or applied: the config's types and
ranges, the tensors the config names against the file's header (missing, extra, shape),
then the values (finite, inside the bound). Every refusal names the file and the field.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from engine.artefacts import Artefact, check_fields
from engine.mechanisms.weight_patches.attach import parameters
from engine.mechanisms.weight_patches.config import (CONFIG_FILE, DELTA_FILE, FORMAT, FORMAT_VERSION, PatchConfig,
                                                     PatchError)
from engine.mechanisms.weight_patches.module import Fact, WeightPatch

_SHA = re.compile(r"^[0-9a-f]{64}$")
#: Config fields added after the first patches were written, with the value those patches were
#: made with: absent means that value (not today's default), and it is written only when it differs.
LEGACY = {"optimizer": "adam", "context_prefixes": 0, "neurons": 0, "preserve": 0.0}
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
#: float32 rounding of (theta0 + delta) - theta0 may exceed delta by an ulp of the weight.
_BOUND_SLACK = 1e-6


class PatchFiles(Artefact):
    """A weight patch folder (``engine.artefacts.Artefact``): ``delta.safetensors``, only its own version."""

    format, version, exact_version = FORMAT, FORMAT_VERSION, True
    what, error = "a weight patch", PatchError
    weights = DELTA_FILE
    not_found = "weight patch folder not found: {folder}"
    remake = "make one with `plugmem patch create`"
    reader_hint = "make the patch again for this reader with `plugmem patch create`"

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        check_fields(meta, {"name": "str", "reader": "dict", "config": "dict", "tensors": "dict", "on_top_of": "list",
                            "facts": "list", "who": "str", "when": "str", "metrics": "dict"}, PatchError, str(path),
                     required=("name", "reader", "config", "tensors", "facts"))
        cfg = PatchConfig.from_dict({**LEGACY, **meta["config"]}, f"{path}: field 'config'")
        for n, t in meta["tensors"].items():
            where = f"{path}: field 'tensors'[{n!r}]"
            check_fields(t, {"shape": "list", "base_sha256": "str"}, PatchError, where,
                         required=("shape", "base_sha256"))
            if not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 1 << 20 for s in t["shape"]):
                raise PatchError(f"{where}: 'shape' must be a list of positive whole numbers, got {t['shape']!r}")
            if not _SHA.match(t["base_sha256"]):
                raise PatchError(f"{where}: 'base_sha256' must be 64 hexadecimal digits, got {t['base_sha256'][:80]!r}")
        if sorted(meta["tensors"]) != sorted(cfg.tensor_names()):
            raise PatchError(f"{path}: field 'tensors' names {sorted(meta['tensors'])}, but the config's layers and "
                             f"targets make {cfg.tensor_names()}")
        if not meta["facts"]:
            raise PatchError(f"{path}: field 'facts' is empty: a patch writes at least one fact")
        meta["_facts"] = [fact_from_dict(d, f"{path}: field 'facts'[{i}]") for i, d in enumerate(meta["facts"])]
        meta["_config"] = cfg
        if not all(isinstance(x, str) for x in meta.get("on_top_of", [])):
            raise PatchError(f"{path}: field 'on_top_of' must be a list of patch names")


def save(patch: WeightPatch, folder: str | Path) -> Path:
    """Write the patch into ``folder`` (made if needed): the deltas first, then the config,
    each atomically (``engine.artefacts.atomic_write``), so a folder with a config is whole."""
    fields = {
        "name": patch.name,
        "reader": patch.reader,
        "config": {k: v for k, v in asdict(patch.config).items() if k not in LEGACY or v != LEGACY[k]},
        "tensors": {n: {"shape": list(d.shape), "base_sha256": patch.base[n]} for n, d in sorted(patch.deltas.items())},
        "on_top_of": list(patch.on_top_of),
        "facts": [f.to_dict() for f in patch.facts],
        "who": patch.who,
        "when": patch.when,
        "metrics": patch.metrics,
    }
    state = {n: d.detach().to("cpu", torch.float32).contiguous() for n, d in patch.deltas.items()}
    return PatchFiles.save(folder, fields, state)


def fact_from_dict(d: Any, where: str) -> Fact:
    check_fields(d, {"prompt": "str", "answer": "str", "paraphrase": "str", "old": "str", "source": "str"},
                 PatchError, where, required=("prompt", "answer"))
    unknown = set(d) - {"prompt", "answer", "paraphrase", "old", "source"}
    if unknown:
        raise PatchError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    f = Fact(**d)
    f.check(where)
    return f


def read_config(folder: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a patch folder (raises ``PatchError`` naming the file and field)."""
    return PatchFiles.read_config(folder)


def load(folder: str | Path, reader=None) -> WeightPatch:
    """Read a patch saved by :func:`save`; with ``reader``, also refuse one made for another
    reader or whose tensors the reader does not have in that shape."""
    folder = Path(folder)
    meta = read_config(folder)
    weights = folder / DELTA_FILE
    pickled = sorted(p.name for pat in _PICKLES for p in folder.glob(pat)) if not weights.is_file() else []
    if pickled:
        raise PatchError(f"{weights}: missing; the folder has only pickle files ({', '.join(pickled)}), which can "
                         "run code when loaded: a patch is read from safetensors only")
    expected = {n: tuple(t["shape"]) for n, t in meta["tensors"].items()}
    PatchFiles.tensor_shapes(folder)  # no weights file, or an unreadable one: named before the reader
    if reader is not None:
        PatchFiles.check_reader(meta["reader"], reader, f"The weight patch in {folder}")
        params = parameters(reader, sorted(expected), f"{folder / CONFIG_FILE}: field 'tensors'")
        for n, p in params.items():
            if tuple(p.shape) != expected[n]:
                raise PatchError(f"{folder / CONFIG_FILE}: field 'tensors'[{n!r}]: shape {list(expected[n])}, "
                                 f"the reader's is {list(p.shape)}")
    state = PatchFiles.read_tensors(folder, expected)
    delta = float(meta["_config"].delta)
    for n, d in state.items():
        if d.dtype != torch.float32:
            raise PatchError(f"{weights}: tensor {n} is {d.dtype}, a patch's deltas are float32")
        worst = float(d.abs().max()) if d.numel() else 0.0
        if worst > delta * (1 + 1e-4) + _BOUND_SLACK:
            raise PatchError(f"{weights}: tensor {n} changes a weight by {worst:.3g}, beyond the bound delta "
                             f"{delta:g} of {CONFIG_FILE}")
    return WeightPatch(config=meta["_config"], deltas=state,
                       base={n: t["base_sha256"] for n, t in meta["tensors"].items()}, reader=meta["reader"],
                       facts=meta["_facts"], name=meta["name"], on_top_of=list(meta.get("on_top_of", [])),
                       who=meta.get("who", ""), when=meta.get("when", ""), metrics=dict(meta.get("metrics", {})))


def is_patch_folder(folder: str | Path) -> bool:
    p = Path(folder) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
