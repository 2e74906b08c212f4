"""One list of the knowledge mechanisms and of the answer modes built from them.

The CLI's ``--mode`` choices, the GUI's mode lists, the settings' validation and the
evaluation code read this module instead of writing the names down again, and the one
fallback rule (a memory branch missing for the reader → the entries in the context) is
:func:`choose_mode`. A new mechanism adds its :class:`MechanismSpec` here.

A *mode* says how the retrieved entries reach the reader: fused by a mechanism of kind
``retrieval-fused`` or ``context``, or not at all (``none``). Mechanisms of the other
kinds (input injection, an added layer, a weight change) compose with any mode and are
plugged separately.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

KINDS = ("retrieval-fused", "context", "input injection", "added layer", "weight change")


@dataclass(frozen=True)
class MechanismSpec:
    name: str  # what --mode and saved settings say
    kind: str  # one of KINDS
    label: str  # what a menu says
    help: str  # one sentence for a tooltip
    brief: str = ""  # a few words for --help
    artefact: str = ""  # the trained artefact it needs ("" when none)
    fallback: str = ""  # the mode used when that artefact is missing


MECHANISMS: tuple[MechanismSpec, ...] = (
    MechanismSpec("dpm", "retrieval-fused", "Memory branch (dpm)",
                  "The retrieved entries enter the reader's last layers through the trained memory branch.",
                  brief="the trained memory branch", artefact="memory branch", fallback="context"),
    MechanismSpec("context", "context", "In the context",
                  "The retrieved entries are written before the prompt (no training needed).",
                  brief="the entries before the prompt"),
    MechanismSpec("plugins", "input injection", "Knowledge plugins",
                  "Map-tuned entity vectors are placed before the entities the prompt mentions.",
                  brief="entity vectors before their mentions", artefact="knowledge plugin"),
    MechanismSpec("pkm", "added layer", "Product-key memory",
                  "A layer of learned slots grown on the domain's text, beside one feed-forward block of the reader.",
                  brief="a grown product-key memory layer", artefact="product-key memory"),
    MechanismSpec("weight_patches", "weight change", "Weight patches",
                  "Facts written into the reader's own weights by constrained fine-tuning; applied in order, "
                  "removed exactly.",
                  brief="facts fine-tuned into the weights", artefact="weight patch"),
)
_NONE = MechanismSpec("none", "none", "No memory", "The bare reader: nothing is retrieved.", brief="the bare reader")

_BY_NAME = {m.name: m for m in MECHANISMS}


def modes() -> tuple[MechanismSpec, ...]:
    """The answer modes in menu order: every mechanism that carries the retrieved entries, then 'none'."""
    return tuple(m for m in MECHANISMS if m.kind in ("retrieval-fused", "context")) + (_NONE,)


def mode_names() -> tuple[str, ...]:
    return tuple(m.name for m in modes())


MODES = mode_names()


def mechanism(name: str) -> MechanismSpec:
    """The spec of a mechanism or mode by name; KeyError names the choices."""
    if name == _NONE.name:
        return _NONE
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown mechanism {name!r}; choose one of {', '.join(_BY_NAME)}") from None


class ModeChoice(NamedTuple):
    used: str  # the mode the answer is made in
    note: str = ""  # said to the user when it differs from the one asked for


def choose_mode(asked: str, *, has_branch: bool, doing: str = "answered") -> ModeChoice:
    """The mode to run ``asked`` in, given what is loaded: a mode whose artefact is missing
    falls back (dpm without a branch → context) and says so."""
    spec = mechanism(asked)
    if spec.fallback and not has_branch:  # only the memory branch has a fallback
        fb = mechanism(spec.fallback)
        return ModeChoice(fb.name, f"No {spec.artefact} for this reader: {doing} with the entries "
                                   f"{fb.label[0].lower()}{fb.label[1:]}.")
    return ModeChoice(spec.name)
