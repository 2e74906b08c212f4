"""Entity embeddings beside a pack: one vector per entity, trained (TransE) or imported.

A folder (by default ``<pack>.embeddings/`` beside the pack) holds ``config.json``
(source, dimension, the entity-set fingerprint) and ``embeddings.safetensors`` with
``vectors`` float32 ``[n, dim]`` and ``entity_ids`` int64 ``[n]`` (pack entity ids).
Names are stored in ``config.json`` too, so a mismatch with the pack can be named.

Imports accept a ``.npy`` (loaded with ``allow_pickle=False``) or a safetensors file,
plus an id list (one entity name per line, or a JSON list of names or pack ids);
a safetensors file may carry its own ``entity_ids`` tensor instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.artefacts import Artefact, check_fields, check_size
from engine.jsonl import JsonlError, read_text
from engine.mechanisms.plugins.errors import EmbeddingError

log = logging.getLogger(__name__)

FORMAT = "plugmem-entity-embeddings"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "embeddings.safetensors"


def default_embeddings_dir(pack_path: str | Path) -> Path:
    p = Path(pack_path)
    return p.with_name(p.name + ".embeddings")


def entity_set_fingerprint(ids: Sequence[int], names: Sequence[str]) -> str:
    """sha256 of the sorted ``id<TAB>name`` lines: identifies which entities a vector table covers."""
    h = hashlib.sha256()
    for i, n in sorted(zip((int(x) for x in ids), names)):
        h.update(f"{i}\t{n}\n".encode())
    return h.hexdigest()


class EmbeddingFiles(Artefact):
    """An entity-embeddings folder (``engine.artefacts.Artefact``); made for no reader."""

    format, version, weights = FORMAT, FORMAT_VERSION, WEIGHTS
    what, error = "entity embeddings", EmbeddingError
    missing = "{folder}: no entity embeddings here (no config.json)"
    remake = "train them with `plugmem train-transe` or import them"
    json_options = {"ensure_ascii": False, "indent": 1}

    @classmethod
    def check_fields(cls, meta: dict[str, Any], path: Path) -> None:
        check_fields(meta, {"names": "list", "dim": "int?", "count": "int?", "source": "str?", "entity_set": "str?",
                            "meta": "dict?"}, EmbeddingError, str(path), required=("names",))
        if not all(isinstance(n, str) for n in meta["names"]):
            raise EmbeddingError(f"{path}: field 'names' must be a list of strings")


def check_entity_set(ids: Sequence[int], names: Sequence[str], pack, what: str) -> list[int]:
    """Raise when an entity of ``ids``/``names`` is not in ``pack`` under the same id and name.

    Returns the pack's entity ids that the table does not cover (new since; not injected).
    """
    pack_names = {int(e["id"]): e["name"] for e in pack.entities()}
    wrong = [(int(i), n) for i, n in zip(ids, names) if pack_names.get(int(i)) != n]
    if wrong:
        i, n = wrong[0]
        found = pack_names.get(i)
        detail = f"entity #{i} is {found!r} in the pack" if found else f"the pack has no entity #{i}"
        raise EmbeddingError(
            f"{what} was made for another entity set: {len(wrong)} of its {len(ids)} entities do not match "
            f"{pack.path} (e.g. {n!r}: {detail}); retrain or re-import it for this pack")
    covered = {int(i) for i in ids}
    return sorted(set(pack_names) - covered)


@dataclass
class EntityEmbeddings:
    """``vectors[i]`` is the embedding of pack entity ``entity_ids[i]`` (named ``names[i]``)."""

    entity_ids: np.ndarray  # int64 [n]
    names: list[str]
    vectors: np.ndarray  # float32 [n, dim]
    source: str = "imported"  # 'transe' | 'imported'
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.entity_ids = np.asarray(self.entity_ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.entity_ids) != self.vectors.shape[0] or len(self.names) != len(self.entity_ids):
            raise EmbeddingError(f"entity embeddings: {len(self.entity_ids)} ids, {len(self.names)} names and vectors of "
                                 f"shape {tuple(self.vectors.shape)} do not line up")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def fingerprint(self) -> str:
        return entity_set_fingerprint(self.entity_ids.tolist(), self.names)

    def save(self, folder: str | Path) -> Path:
        fields = {"source": self.source, "dim": self.dim, "count": len(self), "entity_set": self.fingerprint,
                  "names": self.names, "meta": self.meta}
        return EmbeddingFiles.save(folder, fields, {"vectors": self.vectors, "entity_ids": self.entity_ids})

    @classmethod
    def load(cls, folder: str | Path) -> "EntityEmbeddings":
        folder = Path(folder)
        cfg = EmbeddingFiles.read_config(folder)
        _check_header(cfg, EmbeddingFiles.tensor_shapes(folder), folder / CONFIG, folder / WEIGHTS)
        t = EmbeddingFiles.read_tensors(folder, framework="np")
        emb = cls(t["entity_ids"], cfg["names"], t["vectors"], str(cfg.get("source") or "imported"),
                  dict(cfg.get("meta") or {}))
        if cfg.get("entity_set") and cfg["entity_set"] != emb.fingerprint:
            raise EmbeddingError(f"{folder}: {CONFIG} and {WEIGHTS} disagree on the entity set (damaged folder)")
        return emb

    def check_pack(self, pack, what: str = "these entity embeddings") -> list[int]:
        return check_entity_set(self.entity_ids.tolist(), self.names, pack, what)


def _check_header(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], cfg_path: Path, weights: Path) -> None:
    """Refuse a folder whose config and tensor shapes (from the file header) disagree, before reading them."""
    vec, ids = shapes.get("vectors"), shapes.get("entity_ids")
    if vec is None or ids is None:
        raise EmbeddingError(f"{weights}: expected tensors 'vectors' and 'entity_ids'")
    if len(vec) != 2 or ids != vec[:1]:
        raise EmbeddingError(f"{weights}: vectors {list(vec)} and entity_ids {list(ids)} do not line up")
    check_size(vec[1], "the vectors' dimension", EmbeddingError, str(weights))
    for name, found in (("dim", vec[1]), ("count", vec[0])):
        if cfg.get(name) is not None and cfg[name] != found:
            raise EmbeddingError(f"{cfg_path}: field {name!r} is {cfg[name]}, but {weights} holds {found}")
    if len(cfg["names"]) != vec[0]:
        raise EmbeddingError(f"{cfg_path}: the name list ({len(cfg['names'])}) does not match {weights} ({vec[0]} rows)")


# --------------------------------------------------------------------------- import
def _read_ids(path: Path) -> list[Any]:
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such id list")
    try:
        text = read_text(path)  # bad bytes: 'FILE:LINE: not valid UTF-8', not a traceback
    except JsonlError as exc:
        raise EmbeddingError(str(exc)) from None
    if path.suffix.lower() == ".json":
        try:
            ids = json.loads(text)
        except ValueError as exc:
            raise EmbeddingError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(ids, list):
            raise EmbeddingError(f"{path}: expected a JSON list of entity names or ids")
        return ids
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def _read_matrix(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such embeddings file")
    suffix = path.suffix.lower()
    ids = None
    if suffix == ".npy":
        try:
            arr = np.load(str(path), allow_pickle=False)
        except ValueError as exc:
            raise EmbeddingError(f"{path}: not a plain numeric .npy array ({exc})") from None
        except OSError as exc:
            raise EmbeddingError(f"{path}: unreadable ({exc})") from None
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            t = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EmbeddingError(f"{path}: unreadable safetensors file ({exc})") from None
        if "embeddings" in t:
            arr = t["embeddings"]
        elif "vectors" in t:
            arr = t["vectors"]
        else:
            mats = [k for k, v in t.items() if v.ndim == 2]
            if len(mats) != 1:
                raise EmbeddingError(f"{path}: expected one 2-D tensor (or one named 'embeddings'); found "
                                     f"{', '.join(f'{k} {tuple(v.shape)}' for k, v in t.items()) or 'none'}")
            arr = t[mats[0]]
        for key in ("entity_ids", "ids"):
            if key in t:
                ids = t[key]
                break
    else:
        raise EmbeddingError(f"{path}: embeddings must be a .npy or .safetensors file")
    if arr.dtype.kind not in "fiu":
        raise EmbeddingError(f"{path}: embeddings must be numbers, found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise EmbeddingError(f"{path}: embeddings must be a 2-D array [entities, dim], found shape {tuple(arr.shape)}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise EmbeddingError(f"{path}: row {bad} holds NaN or infinite values")
    return arr, ids


def import_embeddings(
    pack,
    matrix_path: str | Path,
    ids_path: str | Path | None = None,
    *,
    dim: int | None = None,
    by_pack_id: bool = False,
) -> EntityEmbeddings:
    """Read and check imported embeddings against ``pack``'s entities (nothing is written).

    Rows are matched to entities by the id list: names (or pack ids with
    ``by_pack_id`` / integers in a JSON list). ``dim`` demands a dimension (the one a
    plugin expects). Errors name the file, the row and the entity.
    """
    matrix_path = Path(matrix_path)
    arr, inner_ids = _read_matrix(matrix_path)
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingError(f"{matrix_path}: embeddings have dimension {arr.shape[1]}, expected {dim}")
    if ids_path is not None:
        raw = _read_ids(Path(ids_path))
        where = str(ids_path)
    elif inner_ids is not None:
        raw, by_pack_id, where = [int(x) for x in np.asarray(inner_ids).reshape(-1)], True, f"{matrix_path} (entity_ids)"
    else:
        raise EmbeddingError(f"{matrix_path}: give an id list (one entity name per line) to say which row is which entity")
    if len(raw) != arr.shape[0]:
        raise EmbeddingError(f"{where} lists {len(raw)} entities but {matrix_path} has {arr.shape[0]} rows")
    ents = pack.entities()
    by_name = {e["name"]: e for e in ents}
    by_id = {int(e["id"]): e for e in ents}
    ids: list[int] = []
    seen: dict[int, int] = {}
    for row, x in enumerate(raw):
        if by_pack_id or (isinstance(x, int) and not isinstance(x, bool)):
            try:
                e = by_id.get(int(x))
            except (TypeError, ValueError):
                e = None
        else:
            e = by_name.get(str(x).strip())
        if e is None:
            raise EmbeddingError(f"{where}: entry {row + 1} ({x!r}) is not an entity of {pack.path}")
        eid = int(e["id"])
        if eid in seen:
            raise EmbeddingError(f"{where}: entity {e['name']!r} is listed twice (entries {seen[eid] + 1} and {row + 1})")
        seen[eid] = row
        ids.append(eid)
    return EntityEmbeddings(np.array(ids, dtype=np.int64), [by_id[i]["name"] for i in ids], arr, "imported",
                            {"file": str(matrix_path)})


def save_embeddings(emb: EntityEmbeddings, folder: str | Path, *, force: bool = False) -> Path:
    """Save into ``folder``, refusing to replace different existing embeddings unless ``force``."""
    folder = Path(folder)
    if (folder / CONFIG).exists() and not force:
        raise EmbeddingError(f"{folder} already holds entity embeddings; not overwritten (use --force to replace them)")
    return emb.save(folder)
