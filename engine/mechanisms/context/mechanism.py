"""The entries in the context as a :class:`~engine.mechanisms.base.Mechanism`: no weights;
its artefact is the prompt layout (``config.json`` alone)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from engine.artefacts import check_fields, read_format_config
from engine.mechanisms.base import LeaveOneOut, MechanismBase, MechanismError
from engine.mechanisms.context.fusion import TEMPLATES, ContextFusion
from engine.mechanisms.registry import mechanism

FORMAT = "plugmem-context"
FORMAT_VERSION = 1


class ContextMechanism(MechanismBase):
    """The retrieved entries written before the prompt in ``style`` (see ``TEMPLATES``)."""

    spec = mechanism("context")

    def __init__(self, style: str = "facts") -> None:
        if style not in TEMPLATES:
            raise MechanismError(f"unknown context style {style!r}; known: {', '.join(TEMPLATES)}")
        self.style = style

    @contextmanager
    def attach(self, reader) -> Iterator[ContextFusion]:
        # Nothing on the reader changes: the entries go into the prompt.
        yield ContextFusion(reader, style=self.style)

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        ids = reader.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ContextFusion(reader, style=self.style).leave_one_out(prompt, list(texts), list(scores), ids)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "style": self.style}
        (folder / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, reader=None) -> "ContextMechanism":
        path = Path(folder) / "config.json"
        meta, version = read_format_config(path, FORMAT, "a context layout", MechanismError,
                                           f"{folder} is not a context layout folder: no config.json")
        if version != FORMAT_VERSION:
            raise MechanismError(f"{path}: context layout version {version} is not {FORMAT_VERSION}")
        check_fields(meta, {"style": "str"}, MechanismError, str(path), required=("style",))
        return cls(meta["style"])
