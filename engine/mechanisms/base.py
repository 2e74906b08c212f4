"""The interface every knowledge mechanism implements, and the one order they compose in.

A mechanism (the plug-in memory branch, the entries in the context, knowledge plugins;
next product-key memory and weight patches) is one object that:

* says its ``name`` and ``kind`` (both from its :class:`~engine.mechanisms.registry.MechanismSpec`);
* attaches to a reader as a context manager: ``with mech.attach(reader) as handle:`` —
  ``handle`` answers with the mechanism (a fusion, an injector); leaving the ``with``
  detaches it and leaves the reader bit for bit as it was (parameters, buffers, hooks);
* measures the effect of leaving each of its parts out (``leave_one_out``): the retrieved
  entries for a retrieval mechanism, the injected entity vectors for a plugin, the layer's
  slots or the patched facts for the next two;
* saves and loads its artefact (``config.json`` with format and version +
  ``model.safetensors``; another reader's artefact is refused on load).

Several mechanisms are active at once in :data:`COMPOSITION_ORDER`, by kind: weight
changes first (everything else reads the patched weights), then added layers, then the
one mode that carries the retrieved entries (a branch's hooks, or the entries in the
prompt), and input injection last (the plugin vectors go before the entity mentions of
the prompt as the reader finally reads it). :func:`attached` enters them in that order and
leaves them in the reverse one, so the reader comes back as it was.

Nothing heavy is imported here: the registry, the GUI and the explanation record read it.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from engine.mechanisms.registry import KINDS, MechanismSpec

#: The order active mechanisms are attached in (their kinds); detached in the reverse order.
COMPOSITION_ORDER: tuple[str, ...] = ("weight change", "added layer", "retrieval-fused", "context", "input injection")
assert set(COMPOSITION_ORDER) == set(KINDS), "every kind of the registry has its place in the order"

#: Kinds that carry the retrieved entries: at most one of them is active (the answer's mode).
ENTRY_KINDS = ("retrieval-fused", "context")


class MechanismError(ValueError):
    """Mechanisms that cannot be active together, or a mechanism used wrongly."""


@dataclass
class LeaveOneOut:
    """Log-probability of the answer with all parts, without each one, and each part's fusion weight.

    The parts are the retrieved entries (retrieval mechanisms) or the injected entity
    vectors (plugins); ``parts`` names them when the mechanism chose them itself."""

    logp_all: float
    logp_without: list[float]  # [k]
    weights: list[float] | None  # [k]
    parts: list[str] | None = None  # [k]: what each row left out, when not the caller's entries


@runtime_checkable
class Mechanism(Protocol):
    """What every knowledge mechanism offers (see the module's docstring)."""

    spec: ClassVar[MechanismSpec]

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def attach(self, reader) -> AbstractContextManager[Any]:
        """Attach to ``reader``; the value answers with the mechanism; leaving detaches exactly."""
        ...

    def leave_one_out(self, reader, prompt: str, answer: str, *, texts: Sequence[str] = (),
                      scores: Sequence[float] = ()) -> LeaveOneOut:
        """log p(``answer``) with every part of the mechanism, and without each part."""
        ...

    def save(self, folder: str | Path) -> Path:
        """Write the artefact (``config.json`` + ``model.safetensors``) into ``folder``."""
        ...

    @classmethod
    def load(cls, folder: str | Path, reader) -> "Mechanism":
        """Read an artefact saved by :meth:`save` for ``reader`` (another reader's is refused)."""
        ...


class MechanismBase:
    """Name and kind from the class's ``spec``; subclasses add attach, leave_one_out, save, load."""

    spec: ClassVar[MechanismSpec]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.kind})>"


def composition_order(mechanisms: Iterable[Mechanism]) -> list[Mechanism]:
    """``mechanisms`` in :data:`COMPOSITION_ORDER` (stable within a kind); two entry-carrying
    mechanisms (two answer modes) are refused."""
    mechs = list(mechanisms)
    modes = [m.name for m in mechs if m.kind in ENTRY_KINDS]
    if len(modes) > 1:
        raise MechanismError(f"one answer mode at a time, not {' and '.join(modes)}")
    for m in mechs:
        if m.kind not in COMPOSITION_ORDER:
            raise MechanismError(f"mechanism {m.name!r} has the unknown kind {m.kind!r}")
    return sorted(mechs, key=lambda m: COMPOSITION_ORDER.index(m.kind))


@contextmanager
def attached(reader, mechanisms: Iterable[Mechanism]) -> Iterator[dict[str, Any]]:
    """Attach ``mechanisms`` to ``reader`` in the composition order; yields ``{name: handle}``.

    Leaving the ``with`` (or an error while attaching) detaches those attached, in reverse."""
    with ExitStack() as stack:
        handles: dict[str, Any] = {}
        for m in composition_order(mechanisms):
            handles[m.name] = stack.enter_context(m.attach(reader))
        yield handles


def active_names(mode: str, plugins: Sequence[Any] = ()) -> list[str]:
    """The mechanisms an answer in ``mode`` with ``plugins`` used, in the composition order
    (what the explanation record lists)."""
    from engine.mechanisms.registry import mechanism

    names = [] if mode == "none" else [mode]
    if plugins:
        names.append("plugins")
    return sorted(names, key=lambda n: COMPOSITION_ORDER.index(mechanism(n).kind))
