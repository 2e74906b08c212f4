"""A product-key memory's artefact: ``config.json`` (format ``plugmem-pkm``, version, the
layer's config and resolved layer, the reader fingerprint, the corpus it was grown on, the
training figures, and the sha256 of the weights file) + ``model.safetensors``.

Each file is written to a temporary name and renamed into place, weights first: a run killed
between the two renames leaves a config.json whose ``weights_sha256`` no longer matches the
weights, which :func:`load` refuses by name rather than reading a mixture."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from engine.artefacts import check_fields, check_shapes, module_shapes, read_format_config, tensor_shapes
from engine.mechanisms.pkm.config import FORMAT, FORMAT_VERSION, PKMConfig, PKMError
from engine.mechanisms.pkm.module import ProductKeyMemory

CONFIG, WEIGHTS, USAGE = "config.json", "model.safetensors", "usage.safetensors"
_CHECKED_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then ``os.replace(tmp, path)``: ``path`` is the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an artefact is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_reader(expected: dict, reader, what: str) -> None:
    """``PKMError`` when ``expected`` (a saved reader fingerprint) is not ``reader``'s."""
    mine = reader.fingerprint
    diffs = [f"{k} {expected.get(k)!r} vs {mine.get(k)!r}" for k in _CHECKED_KEYS if expected.get(k) != mine.get(k)]
    if diffs:
        raise PKMError(f"{what} was grown for the reader {expected.get('name', '?')!r}, not the loaded reader "
                       f"{mine.get('name', '?')!r} ({'; '.join(diffs)}); grow one for this reader with `plugmem pkm grow`")


def save(memory: ProductKeyMemory, folder: str | Path, *, reader_fingerprint: dict, layer: int,
         corpus: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in memory.state_dict().items()}
    weights = folder / WEIGHTS
    atomic_write(weights, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": memory.config.to_dict(), "layer": int(layer), "hidden_size": memory.hidden_size,
        "slots": memory.config.slots, "value_parameters": memory.values.weight.numel(),
        "reader": dict(reader_fingerprint), "corpus": corpus or {}, "training": training or {},
        "weights_sha256": file_sha256(weights),
    }
    atomic_write(folder / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a memory folder (``PKMError`` names file and field)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PKMError(f"product-key memory folder not found: {folder}")
    path = folder / CONFIG
    meta, version = read_format_config(path, FORMAT, "a product-key memory", PKMError,
                                       f"{folder} is not a product-key memory folder: no {CONFIG}")
    if version != FORMAT_VERSION:
        raise PKMError(f"{path}: format_version {version} is not the one this program reads ({FORMAT_VERSION}); "
                       "grow the memory again with `plugmem pkm grow`")
    check_fields(meta, {"config": "dict", "layer": "int", "hidden_size": "int", "reader": "dict", "corpus": "dict?",
                        "training": "dict?", "weights_sha256": "str"}, PKMError, str(path),
                 required=("config", "layer", "hidden_size", "reader", "weights_sha256"))
    PKMConfig.from_dict(meta["config"], f"{path}: config")
    return meta


def load(folder: str | Path, reader) -> tuple[ProductKeyMemory, dict[str, Any]]:
    """The memory in ``folder`` for ``reader`` and its config.json; another reader's is refused,
    and so are shapes other than the config implies, a weights file that is not safetensors
    (a pickle is never unpickled) and one that is not the file the config was written with."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_config(folder)
    path = folder / CONFIG
    check_reader(meta["reader"], reader, f"The product-key memory in {folder}")
    cfg = PKMConfig.from_dict(meta["config"])
    layer = meta["layer"]
    if not 0 <= layer < reader.num_layers:
        raise PKMError(f"{path}: layer {layer} is out of range: the reader has layers 0 to {reader.num_layers - 1}")
    if meta["hidden_size"] != reader.hidden_size:
        raise PKMError(f"{path}: hidden_size {meta['hidden_size']} is not the reader's {reader.hidden_size}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise PKMError(f"{folder}: no {WEIGHTS}")
    expected = module_shapes(lambda: ProductKeyMemory(cfg, reader.hidden_size))
    check_shapes(expected, tensor_shapes(weights, PKMError), weights, PKMError)
    if file_sha256(weights) != meta["weights_sha256"]:
        raise PKMError(f"{weights} is not the file {path} was written with (weights_sha256 differs): "
                       "a save was interrupted or the files were mixed; grow or copy the memory again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PKMError(f"{weights} is unreadable: {exc}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PKMError(f"{weights}: non-finite values in {bad[:3]}")
    memory = ProductKeyMemory(cfg, reader.hidden_size, seed=0)
    memory.load_state_dict(state)
    memory.to(reader.device).eval()
    return memory, meta


def save_usage(folder: str | Path, weights, counts) -> Path:
    """The per-slot held-out weights and access counts (what the usage view draws), beside the layer."""
    import numpy as np
    from safetensors.numpy import save_file

    path = Path(folder) / USAGE
    data = {"weights": np.asarray(weights, dtype=np.float64), "counts": np.asarray(counts, dtype=np.int64)}
    atomic_write(path, lambda p: save_file(data, str(p), metadata={"format": FORMAT}))
    return path


def load_usage(folder: str | Path, slots: int):
    """(weights, counts) saved by :func:`save_usage`, or None when absent; ``PKMError`` for a bad file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / USAGE
    if not path.is_file():
        return None
    try:
        data = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PKMError(f"{path} is unreadable: {exc}") from None
    w, c = data.get("weights"), data.get("counts")
    if w is None or c is None or w.shape != (slots,) or c.shape != (slots,):
        raise PKMError(f"{path}: expected 'weights' and 'counts' of {slots:,} slots")
    return w, c
