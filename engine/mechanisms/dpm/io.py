"""A memory branch's artefact: ``config.json`` (format, version, config, the reader it was
trained for) + ``model.safetensors``; another reader's branch is refused."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from engine.artefacts import check_fields, check_shapes, module_shapes, read_format_config, tensor_shapes
from engine.mechanisms.dpm.config import DEFAULT_BRANCH, FORMAT, FORMAT_VERSION, DPMConfig, DPMError
from engine.mechanisms.dpm.module import MemoryBranch

_CHECKED_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")


def check_compatible(expected: dict, reader, what: str = "this DPM branch") -> None:
    """Raise ``DPMError`` when a branch made for the reader ``expected`` does not fit ``reader``.

    The reader's name is informational; architecture, sizes and weights hash must match.
    """
    if not expected:
        return
    mine = reader.fingerprint
    diffs = [
        f"{key} {expected.get(key)!r} vs {mine.get(key)!r}"
        for key in _CHECKED_KEYS
        if key in expected and expected.get(key) != mine.get(key)
    ]
    if diffs:
        raise DPMError(
            f"{what} was trained for the reader {expected.get('name', '?')!r}, not the loaded reader "
            f"{mine.get('name', '?')!r} ({'; '.join(diffs)}); train a branch for this reader"
        )


def save(branch: MemoryBranch, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (config + the reader fingerprint + ``extra``) and ``model.safetensors``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": asdict(branch.config),
        "hidden_size": branch.hidden_size,
        "num_layers": branch.num_layers,
        "reader": branch.reader_fingerprint,
    }
    if extra:
        meta["training"] = extra
    state = {k: v.detach().float().cpu().contiguous() for k, v in branch.state_dict().items()}
    _atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    _atomic_write(folder / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """The saved ``config.json`` of a branch folder, validated (raises ``DPMError``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DPMError(f"DPM branch folder not found: {folder}")
    path = folder / "config.json"
    meta, version = read_format_config(path, FORMAT, "a DPM branch", DPMError,
                                       f"{folder} is not a DPM branch folder: no config.json")
    if version != FORMAT_VERSION:
        raise DPMError(
            f"{path}: branch format version {version} is not the one this program reads ({FORMAT_VERSION}); "
            "retrain the branch with `plugmem train-branch`"
        )
    # 'reader' must be an object: a string once slipped past the compatibility check.
    check_fields(meta, {"config": "dict", "reader": "dict", "hidden_size": "int?", "num_layers": "int?",
                        "training": "dict?"}, DPMError, str(path), required=("config", "reader"))
    DPMConfig.from_dict(meta["config"], f"{path}: config")
    return meta


def load(folder: str | Path, reader) -> MemoryBranch:
    """Load a branch saved by :func:`save` for ``reader``; another reader's branch is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_config(folder)
    check_compatible(meta["reader"], reader, what=f"The DPM branch in {folder}")
    cfg = DPMConfig.from_dict(meta["config"])  # checked, naming the file, by read_config
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DPMError(f"{folder}: no model.safetensors")
    # Shapes first, from the file header and a meta-device branch: nothing is allocated
    # for a config that asks for more than the file holds.
    try:
        expected = module_shapes(lambda: MemoryBranch(cfg, reader))
    except DPMError as exc:  # e.g. more layers than the reader has
        raise DPMError(f"{folder / 'config.json'}: {exc}") from None
    check_shapes(expected, tensor_shapes(weights, DPMError), weights, DPMError)
    branch = MemoryBranch(cfg, reader)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DPMError(f"{weights} is unreadable: {exc}") from exc
    bad_values = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad_values:
        raise DPMError(f"{weights}: non-finite values in {bad_values[:3]}")
    branch.load_state_dict(state)
    branch.to(reader.device)
    branch.eval()
    return branch


def default_branch_path() -> Path:
    """The branch shipped with the app (trained for the default reader, SmolLM2-135M-Instruct).

    ``$PLUGMEM_DPM_BRANCH`` overrides it (a branch folder).
    """
    env = os.environ.get("PLUGMEM_DPM_BRANCH")
    if env:
        return Path(env).expanduser()
    from engine.resources import resources_dir

    return resources_dir() / "branches" / DEFAULT_BRANCH


def load_default_branch(reader) -> MemoryBranch:
    """The shipped branch for ``reader``; ``DPMError`` names the folder when missing or for another reader."""
    return load(default_branch_path(), reader)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an artefact is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
