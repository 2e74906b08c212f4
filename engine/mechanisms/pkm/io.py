"""A product-key memory's artefact (``engine.artefacts.Artefact``): ``config.json`` (format
``plugmem-pkm``, version, the layer's config and resolved layer, the reader fingerprint, the
corpus it was grown on, the training figures, and the sha256 of the weights file) +
``model.safetensors``, + ``usage.safetensors`` (the usage view's figures).

The weights are written first and their sha256 goes into config.json last: a run killed
between the two renames leaves a config whose ``weights_sha256`` no longer matches the
weights, which :func:`load` refuses by name rather than reading a mixture."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.artefacts import Artefact, atomic_write, check_fields, module_shapes
from engine.mechanisms.pkm.config import FORMAT, FORMAT_VERSION, PKMConfig, PKMError
from engine.mechanisms.pkm.module import ProductKeyMemory

CONFIG, WEIGHTS, USAGE = "config.json", "model.safetensors", "usage.safetensors"


class PKMFiles(Artefact):
    """A product-key memory folder: only its own format version is read."""

    format, version, exact_version = FORMAT, FORMAT_VERSION, True
    what, error = "a product-key memory", PKMError
    not_found = "product-key memory folder not found: {folder}"
    remake = "grow one with `plugmem pkm grow`"
    reader_hint = "grow one for this reader with `plugmem pkm grow`"
    weights_hash = "weights_sha256"

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        check_fields(meta, {"config": "dict", "layer": "int", "hidden_size": "int", "reader": "dict", "corpus": "dict?",
                            "training": "dict?", "weights_sha256": "str"}, PKMError, str(path),
                     required=("config", "layer", "hidden_size", "reader", "weights_sha256"))
        PKMConfig.from_dict(meta["config"], f"{path}: config")


class UsageFiles(PKMFiles):
    """``usage.safetensors`` beside the layer (read with the layer's checks; no config of its own)."""

    weights = USAGE


def check_reader(expected: dict, reader, what: str) -> None:
    """``PKMError`` when ``expected`` (a saved reader fingerprint) is not ``reader``'s."""
    PKMFiles.check_reader(expected, reader, what)


def save(memory: ProductKeyMemory, folder: str | Path, *, reader_fingerprint: dict, layer: int,
         corpus: dict[str, Any] | None = None, training: dict[str, Any] | None = None) -> Path:
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in memory.state_dict().items()}
    fields = {"config": memory.config.to_dict(), "layer": int(layer), "hidden_size": memory.hidden_size,
              "slots": memory.config.slots, "value_parameters": memory.values.weight.numel(),
              "reader": dict(reader_fingerprint), "corpus": corpus or {}, "training": training or {}}
    return PKMFiles.save(folder, fields, state)  # weights_sha256 last, from the file written


def read_config(folder: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a memory folder (``PKMError`` names file and field)."""
    return PKMFiles.read_config(folder)


def load(folder: str | Path, reader) -> tuple[ProductKeyMemory, dict[str, Any]]:
    """The memory in ``folder`` for ``reader`` and its config.json; another reader's is refused,
    and so are shapes other than the config implies, a weights file that is not safetensors
    (a pickle is never unpickled) and one that is not the file the config was written with."""
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
    expected = module_shapes(lambda: ProductKeyMemory(cfg, reader.hidden_size))
    state = PKMFiles.read_tensors(folder, expected, sha256=meta["weights_sha256"])
    memory = ProductKeyMemory(cfg, reader.hidden_size, seed=0)
    memory.load_state_dict(state)
    memory.to(reader.device).eval()
    return memory, meta


def save_usage(folder: str | Path, weights, counts) -> Path:
    """The per-slot held-out weights and access counts (what the usage view draws), beside the layer."""
    from safetensors.numpy import save_file

    path = Path(folder) / USAGE
    data = {"weights": np.asarray(weights, dtype=np.float64), "counts": np.asarray(counts, dtype=np.int64)}
    atomic_write(path, lambda p: save_file(data, str(p), metadata={"format": FORMAT}))
    return path


def load_usage(folder: str | Path, slots: int):
    """(weights, counts) saved by :func:`save_usage`, or None when absent; ``PKMError`` for a bad file."""
    if not (Path(folder) / USAGE).is_file():
        return None
    data = UsageFiles.read_tensors(folder, framework="np")
    w, c = data.get("weights"), data.get("counts")
    if w is None or c is None or w.shape != (slots,) or c.shape != (slots,):
        raise PKMError(f"{Path(folder) / USAGE}: expected 'weights' and 'counts' of {slots:,} slots")
    return w, c
