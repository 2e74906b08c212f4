"""The ``config.json`` that describes a saved artefact folder (a DPM branch, a knowledge
plugin, entity embeddings): read and checked the same way for each, each with its own
error type and wording."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence


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
