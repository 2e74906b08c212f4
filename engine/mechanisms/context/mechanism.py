"""The entries in the context as a :class:`~engine.mechanisms.base.Mechanism`: no weights;
its artefact is the prompt layout (``config.json`` alone)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from engine.artefacts import Artefact, check_fields
from engine.mechanisms.base import LeaveOneOut, MechanismBase, MechanismError
from engine.mechanisms.context.fusion import TEMPLATES, ContextFusion
from engine.mechanisms.registry import mechanism

FORMAT = "plugmem-context"
FORMAT_VERSION = 1


class LayoutFiles(Artefact):
    """A context layout folder: ``config.json`` alone (no weights, made for any reader)."""

    format, version, exact_version, weights = FORMAT, FORMAT_VERSION, True, None
    what, error = "a context layout", MechanismError

    @classmethod
    def check_fields(cls, meta: dict, path: Path) -> None:
        check_fields(meta, {"style": "str"}, MechanismError, str(path), required=("style",))


class ContextMechanism(MechanismBase):
    """The retrieved entries written before the prompt in ``style`` (see ``TEMPLATES``)."""

    spec = mechanism("context")

    def __init__(self, style: str = "facts") -> None:
        if style not in TEMPLATES:
            raise MechanismError(f"unknown context style {style!r}; known: {', '.join(TEMPLATES)}")
        self.style = style

    def fusion(self, reader) -> ContextFusion:
        """The context fusion on ``reader`` (nothing to cache: it is made afresh)."""
        return ContextFusion(reader, style=self.style)

    @contextmanager
    def attach(self, reader) -> Iterator[ContextFusion]:
        # Nothing on the reader changes: the entries go into the prompt.
        yield self.fusion(reader)

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        ids = reader.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ContextFusion(reader, style=self.style).leave_one_out(prompt, list(texts), list(scores), ids)

    def save(self, folder: str | Path) -> Path:
        return LayoutFiles.save(folder, {"style": self.style})

    @classmethod
    def load(cls, folder: str | Path, reader=None) -> "ContextMechanism":
        return cls(LayoutFiles.read_config(folder)["style"])
