"""Saved artefact folders (a DPM branch, a knowledge plugin, entity embeddings, a context
layout; next product-key memory and weight patches): one base, :class:`Artefact`, for all.

A folder holds ``config.json`` (``format``, ``format_version``, then the kind's fields) and
one safetensors weights file (``model.safetensors`` unless the kind says otherwise), plus
any JSON side files the kind needs. Writing is atomic per file (temporary file in the same
folder, fsync, ``os.replace``, fsync of the folder) and ``config.json`` is written last, so
a folder with a config is a complete one. Reading checks the format and version, the
kind's own fields, the reader fingerprint, the tensor shapes from the file header before
anything is allocated, and finite values; every problem raises the kind's own error naming
the file. The field and shape helpers below are what the kinds' checks are made of.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

#: The reader fingerprint fields an artefact must match (its name is informational).
READER_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size", "weights_sha256")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, flushed to disk, then renamed
    over ``path`` (a crash leaves the old file or the new one, never half of one). The
    file is made readable by others (an artefact is meant to be shared)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files that an :func:`atomic_write` of ``path`` killed mid-write
    (kill -9, power loss) left beside it; the caller is the folder's one writer. Returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(path.name + ".*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open a folder for this)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_reader(expected: Mapping[str, Any], reader, what: str, error: type[Exception], hint: str) -> None:
    """Raise ``error`` when an artefact made for the reader fingerprint ``expected`` does not
    fit ``reader``: every field of :data:`READER_KEYS` must be equal."""
    mine = reader.fingerprint
    diffs = [f"{k} {expected.get(k)!r} vs {mine.get(k)!r}" for k in READER_KEYS if expected.get(k) != mine.get(k)]
    if diffs:
        raise error(f"{what} was trained for the reader {expected.get('name', '?')!r}, not the loaded reader "
                    f"{mine.get('name', '?')!r} ({'; '.join(diffs)}); {hint}")


class Artefact:
    """One kind of artefact folder. A kind is a subclass setting the class attributes::

        class BranchFiles(Artefact):
            format, version = "plugmem-dpm-branch", 1
            what, error = "a DPM branch", DPMError
            remake = "train one with `plugmem train-branch`"

    then ``BranchFiles.save(folder, fields, tensors)`` and ``meta = BranchFiles.read_config(folder)``,
    ``BranchFiles.check_reader(meta["reader"], reader)``, ``BranchFiles.read_tensors(folder,
    expected_shapes)``. ``check_fields`` (override) checks the kind's own fields of config.json.
    """

    format: ClassVar[str]  # config.json's "format"
    version: ClassVar[int]  # the format_version written (and the newest read)
    what: ClassVar[str]  # "a DPM branch": "... does not describe a DPM branch"
    error: ClassVar[type[Exception]]  # this kind's error class
    remake: ClassVar[str] = ""  # how to make a new one, said when there is none or it cannot be read
    reader_hint: ClassVar[str] = ""  # what to do about an artefact of another reader
    weights: ClassVar[str | None] = "model.safetensors"  # None: config.json alone
    exact_version: ClassVar[bool] = False  # True: only ``version`` is read; False: any up to it
    missing: ClassVar[str] = "{folder} is not {what} folder: no config.json"
    not_found: ClassVar[str | None] = None  # said when the folder itself is missing (None: ``missing``)
    json_options: ClassVar[dict[str, Any]] = {"indent": 2}  # how config.json is written (kept as it always was)
    #: A config.json field (written last) holding the weights file's sha256: a save killed
    #: between the two renames, or files mixed from two folders, is then refused by name.
    weights_hash: ClassVar[str | None] = None

    # ---------------------------------------------------------------- writing
    @classmethod
    def save(cls, folder: str | Path, fields: Mapping[str, Any], tensors: Mapping[str, Any] | None = None,
             *, files: Mapping[str, str] | None = None) -> Path:
        """Write ``tensors`` (torch tensors or numpy arrays) into the weights file, each of
        ``files`` (name -> text), then ``config.json`` = format, version and ``fields``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if cls.weights is not None:
            tensors = dict(tensors or {})
            meta = {"format": cls.format}
            if any(type(v).__module__.startswith("torch") for v in tensors.values()):
                from safetensors.torch import save_file
            else:
                from safetensors.numpy import save_file
            atomic_write(folder / cls.weights, lambda p: save_file(tensors, str(p), metadata=meta))
        for name, text in (files or {}).items():
            atomic_write(folder / name, lambda p, t=text: p.write_text(t, encoding="utf-8"))
        config = {"format": cls.format, "format_version": cls.version, **fields}
        if cls.weights_hash:
            config[cls.weights_hash] = file_sha256(folder / str(cls.weights))
        atomic_write(folder / "config.json",
                     lambda p: p.write_text(json.dumps(config, **cls.json_options), encoding="utf-8"))
        return folder

    # ---------------------------------------------------------------- reading
    @classmethod
    def read_config(cls, folder: str | Path) -> dict[str, Any]:
        """``config.json`` of ``folder``, checked: format, version, then :meth:`check_fields`."""
        folder = Path(folder)
        path = folder / "config.json"  # a missing folder is told as a missing config.json
        missing = (cls.not_found if cls.not_found and not folder.is_dir() else cls.missing).format(
            folder=folder, what=cls.what)
        meta, version = read_format_config(path, cls.format, cls.what, cls.error,
                                           f"{missing}; {cls.remake}" if cls.remake else missing)
        if version > cls.version or (cls.exact_version and version != cls.version):
            why = "newer than this program reads" if version > cls.version else "not the one this program reads"
            raise cls.error(f"{path}: format version {version} is {why} ({cls.version})"
                            f"{'; ' + cls.remake if cls.remake else ''}")
        cls.check_fields(meta, path)
        return meta

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        """Check the kind's own fields of ``config.json`` (``path``); raise ``cls.error``."""

    @classmethod
    def check_reader(cls, expected: Mapping[str, Any], reader, what: str) -> None:
        """Refuse ``reader`` unless it is the one ``expected`` (an artefact's "reader" field) names."""
        check_reader(expected, reader, what, cls.error, cls.reader_hint)

    @classmethod
    def tensor_shapes(cls, folder: str | Path) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape from the weights file's header (nothing is read)."""
        return tensor_shapes(cls._weights_path(folder), cls.error)

    @classmethod
    def read_tensors(cls, folder: str | Path, expected: dict[str, tuple[int, ...]] | None = None,
                     *, framework: str = "pt", sha256: str | None = None) -> dict[str, Any]:
        """The weights file's tensors (``framework``: 'pt' torch, 'np' numpy). With
        ``expected`` (name -> shape) the header is checked first, then with ``sha256`` (the
        config's :attr:`weights_hash` field) the file's hash; non-finite values are refused."""
        weights = cls._weights_path(folder)
        if expected is not None:
            check_shapes(expected, tensor_shapes(weights, cls.error), weights, cls.error)
        if sha256 is not None and file_sha256(weights) != sha256:
            raise cls.error(f"{weights} is not the file {Path(folder) / 'config.json'} was written with "
                            f"({cls.weights_hash} differs): a save was interrupted or the files were mixed"
                            f"{'; ' + cls.remake if cls.remake else ''}")
        from safetensors import SafetensorError

        if framework == "np":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise cls.error(f"{weights} is unreadable: {exc}") from None
        bad = [k for k, v in state.items() if _is_float(v) and not _all_finite(v)]
        if bad:
            raise cls.error(f"{weights}: non-finite values in {bad[:3]}")
        return state

    @classmethod
    def _weights_path(cls, folder: str | Path) -> Path:
        weights = Path(folder) / str(cls.weights)
        if not weights.is_file():
            raise cls.error(f"{folder}: no {cls.weights}")
        return weights


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_float(v: Any) -> bool:
    kind = getattr(v, "dtype", None)
    return bool(getattr(kind, "is_floating_point", False)) or getattr(kind, "kind", "") == "f"


def _all_finite(v: Any) -> bool:
    if hasattr(v, "isfinite"):  # torch
        return bool(v.isfinite().all())
    import numpy as np

    return bool(np.isfinite(v).all())


def read_format_config(path: str | Path, fmt: str, what: str, error: type[Exception],
                       missing: str) -> tuple[dict[str, Any], int]:
    """The JSON object in ``path`` and its ``format_version``, checked: the file exists
    (else ``error(missing)``), is JSON, is an object whose ``format`` is ``fmt`` (else
    "... does not describe {what}"), and its version is a whole number. Which versions a
    reader accepts is the caller's rule. Every problem raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise error(f"{path} does not describe {what} (format {got!r}, expected {fmt!r})")
    raw = meta.get("format_version", 0)
    try:
        if isinstance(raw, bool):
            raise TypeError
        version = int(raw)
    except (TypeError, ValueError):
        raise error(f"{path}: format_version {raw!r} is not a number") from None
    return meta, version


# ---------------------------------------------------------------------------- field and shape checks
# An artefact folder is something strangers share: every field is checked for its type and
# range, and every tensor shape the config implies against the weights file's header,
# before anything is allocated (a plugin's embed_dim of 10**9 once asked for terabytes).

#: No dimension of an artefact comes near this (readers' hidden sizes are <= 16,384).
MAX_SIZE = 1 << 16

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,),
}
_JSON_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "an object", "list": "a list"}


def check_fields(d: Any, spec: dict[str, str], error: type[Exception], where: str,
                 required: Sequence[str] = ()) -> None:
    """Raise ``error("{where}: ...")`` unless ``d`` is a JSON object holding every
    ``required`` field and each field named in ``spec`` has its JSON type ('int', 'float',
    'bool', 'str', 'dict', 'list'; a trailing '?' also allows null). Other fields pass."""
    if not isinstance(d, dict):
        raise error(f"{where} must be a JSON object, got {_json_name(d)}")
    missing = [name for name in required if name not in d]
    if missing:
        raise error(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}")
    for name, kind in spec.items():
        if name not in d or (kind.endswith("?") and d[name] is None):
            continue
        kind = kind.rstrip("?")
        v = d[name]
        if not isinstance(v, _JSON_TYPES[kind]) or (kind in ("int", "float") and isinstance(v, bool)):
            raise error(f"{where}: field {name!r} must be {_JSON_NAMES[kind]}, got {_json_name(v)}")


def _json_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bool, int, float)):
        return repr(v)
    return {dict: "an object", list: "a list", str: "a string"}.get(type(v), type(v).__name__)


def config_from_dict(cls: type, d: Any, error: type[Exception], where: str):
    """A config dataclass from its JSON object: no unknown field, every field without a
    default present, each of the JSON type its annotation names, then ``validate(where)``."""
    fields = dataclasses.fields(cls)
    kinds = {f.name: getattr(f.type, "__name__", f.type) for f in fields}  # 'int' (a string under PEP 563) or int
    check_fields(d, {k: v for k, v in kinds.items() if v in _JSON_TYPES}, error, where,
                 required=[f.name for f in fields
                           if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING])
    unknown = set(d) - {f.name for f in fields}
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    cfg = cls(**d)
    cfg.validate(where)
    return cfg


def check_size(value: Any, name: str, error: type[Exception], where: str, low: int = 1, high: int = MAX_SIZE) -> None:
    """Raise ``error`` unless ``value`` is a whole number in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise error(f"{where}: {name} must be a whole number from {low:,} to {high:,}, got {value!r}")


def tensor_shapes(path: str | Path, error: type[Exception]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header; no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path} is unreadable: {exc}") from None


def module_shapes(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the ``nn.Module`` that ``build()`` makes, built on torch's
    meta device: sizes are known, nothing is allocated."""
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: str | Path,
                 error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` and the first tensors that are missing, unexpected
    or of another shape than the config implies."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [f"{k} {list(found[k])} (the config implies {list(expected[k])})"
             for k in expected if k in found and found[k] != expected[k]]
    if missing or extra or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
                 f"wrong shape: {'; '.join(wrong[:3])}" if wrong else ""]
        raise error(f"{path} does not match its config.json: {', '.join(p for p in parts if p)}")
