"""A memory branch's artefact: ``config.json`` (format, version, config, the reader it was
trained for) + ``model.safetensors``; another reader's branch is refused."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.artefacts import Artefact, check_fields
from engine.mechanisms.dpm.config import DEFAULT_BRANCH, FORMAT, FORMAT_VERSION, DPMConfig, DPMError
from engine.mechanisms.dpm.module import MemoryBranch


class BranchFiles(Artefact):
    """A branch folder (``engine.artefacts.Artefact``): only its own format version is read."""

    format, version, exact_version = FORMAT, FORMAT_VERSION, True
    what, error = "a DPM branch", DPMError
    missing = "DPM branch folder not found (or it has no config.json): {folder}"
    remake = "retrain the branch with `plugmem train-branch`"
    reader_hint = "train a branch for this reader"

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        # 'reader' must be an object: a string once slipped past the compatibility check.
        check_fields(meta, {"config": "dict", "reader": "dict", "hidden_size": "int?", "num_layers": "int?",
                            "training": "dict?"}, DPMError, str(path), required=("config", "reader"))
        DPMConfig.from_dict(meta["config"], f"{path}: config")


def check_compatible(expected: dict, reader, what: str = "this DPM branch") -> None:
    """Raise ``DPMError`` when a branch made for the reader ``expected`` does not fit ``reader``
    (nothing to check when ``expected`` is empty: a branch made before fingerprints)."""
    if expected:
        BranchFiles.check_reader(expected, reader, what)


def save(branch: MemoryBranch, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (config + the reader fingerprint + ``extra``) and ``model.safetensors``."""
    fields: dict[str, Any] = {"config": asdict(branch.config), "hidden_size": branch.hidden_size,
                              "num_layers": branch.num_layers, "reader": branch.reader_fingerprint}
    if extra:
        fields["training"] = extra
    state = {k: v.detach().float().cpu().contiguous() for k, v in branch.state_dict().items()}
    return BranchFiles.save(folder, fields, state)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The saved ``config.json`` of a branch folder, validated (raises ``DPMError``)."""
    return BranchFiles.read_config(folder)


def load(folder: str | Path, reader) -> MemoryBranch:
    """Load a branch saved by :func:`save` for ``reader``; another reader's branch is refused."""
    folder = Path(folder)
    meta = read_config(folder)
    check_compatible(meta["reader"], reader, what=f"The DPM branch in {folder}")
    cfg = DPMConfig.from_dict(meta["config"])  # checked, naming the file, by read_config
    # Shapes first, from the file header and a meta-device branch: nothing is allocated
    # for a config that asks for more than the file holds.
    from engine.artefacts import module_shapes

    BranchFiles.tensor_shapes(folder)  # no weights file, or an unreadable one: named before the config's sizes
    try:
        expected = module_shapes(lambda: MemoryBranch(cfg, reader))
    except DPMError as exc:  # e.g. more layers than the reader has
        raise DPMError(f"{folder / 'config.json'}: {exc}") from None
    state = BranchFiles.read_tensors(folder, expected)
    branch = MemoryBranch(cfg, reader)
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
