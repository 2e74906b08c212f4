"""A weight patch's configuration and file format names (see engine.mechanisms.weight_patches)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from engine.artefacts import config_from_dict

FORMAT = "plugmem-weight-patch"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
DELTA_FILE = "delta.safetensors"

#: Where a patch's tensors sit in each decoder block (``model.layers.{i}.{target}.weight``).
TARGETS = ("mlp.down_proj", "mlp.up_proj", "mlp.gate_proj",
           "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")

#: The bound is on each weight's change; SmolLM2's weights are ~0.02-0.1 in size, so a
#: bound above this is no constraint at all (the model would simply be retrained).
MAX_DELTA = 0.1

OPTIMIZERS = ("adam", "gd")

#: More neurons per fact than any reader's MLP has is a typo, not a choice.
MAX_NEURONS = 65_536
#: Protecting all of generic text's activation energy leaves no direction to write in.
MAX_PRESERVE = 0.9999

#: First words of the contexts the reader continues for ``context_prefixes`` (ROME's list).
PREFIX_STARTS = ("The", "Therefore", "However", "Because", "I", "You", "It", "When", "In", "This")


class PatchError(ValueError):
    """A weight patch cannot be made, read or applied (the message names the file and field)."""


def tensor_name(layer: int, target: str) -> str:
    return f"model.layers.{layer}.{target}.weight"


@dataclass
class PatchConfig:
    """What is fine-tuned and how. The defaults are the calibrated ones for SmolLM2-135M
    (bench/RESULTS.md, "Weight patches calibrated"): the rule fixed before the grid (best
    efficacy + paraphrase at locality >= 95 %, else >= 80 %, else the best sum of the three)
    fell to its last tier and picked the last block's down-projection at delta 1e-2 with 3
    context prefixes, the best at paraphrase; it moves most unrelated continuations."""

    #: decoder blocks whose ``targets`` are trained; -1 is the last block (so the default fits
    #: any reader), and a patch records the numbers it resolved to
    layers: list = field(default_factory=lambda: [-1])
    targets: list = field(default_factory=lambda: ["mlp.down_proj"])
    delta: float = 1e-2  # the L-infinity bound on each trained weight's change
    lr: float = 5e-3
    #: "adam" moves every weight by about lr a step (a dense change); "gd" steps along the
    #: gradient, scaled so that a tensor's largest change is lr: the gradient of a few answer
    #: tokens is of low rank, so most weights move far less than the bound (a sparser edit).
    optimizer: str = "adam"
    steps: int = 25  # at most; training stops early once every answer token is likely (stop_loss)
    stop_loss: float = 0.05  # mean answer-token cross-entropy at which the edit is done
    locality_weight: float = 0.0  # weight of the KL term on the locality prompts (0: off)
    #: Also train each answer after this many short contexts the reader writes itself
    #: (ROME's random prefixes), so the edit is less tied to the prompt's first tokens.
    context_prefixes: int = 3
    #: Train only the MLP neurons each fact's prompt drives most above their mean on generic
    #: text: this many per fact (down_proj columns, gate/up_proj rows); 0 trains every weight.
    #: The change outside them stays exactly 0, so unrelated prompts that leave those
    #: neurons quiet keep their answers.
    neurons: int = 0
    #: Keep each down_proj change off the input directions that hold this share of the MLP
    #: activations' energy on generic text (AlphaEdit's null space; 0: off): prompts whose
    #: activations lie there are, to first order, not moved at all.
    preserve: float = 0.0

    def validate(self, where: str = "patch config") -> None:
        if not isinstance(self.layers, list) or not self.layers:
            raise PatchError(f"{where}: field 'layers' must be a non-empty list of block numbers, got {self.layers!r}")
        for v in self.layers:
            if not isinstance(v, int) or isinstance(v, bool):
                raise PatchError(f"{where}: field 'layers' holds {v!r}, not a block number (0, 1, ..., or -1 for "
                                 "the last)")
        if len(set(self.layers)) != len(self.layers):
            raise PatchError(f"{where}: field 'layers' names a block twice: {self.layers}")
        if not isinstance(self.targets, list) or not self.targets:
            raise PatchError(f"{where}: field 'targets' must be a non-empty list, got {self.targets!r}")
        for t in self.targets:
            if t not in TARGETS:
                raise PatchError(f"{where}: field 'targets' holds the unknown tensor {t!r}; known: {', '.join(TARGETS)}")
        _number(self.delta, "delta", where, 0.0, MAX_DELTA, open_low=True)
        if self.optimizer not in OPTIMIZERS:
            raise PatchError(f"{where}: field 'optimizer' must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _number(self.lr, "lr", where, 0.0, 1.0, open_low=True)
        _number(self.stop_loss, "stop_loss", where, 0.0, 10.0)
        _number(self.locality_weight, "locality_weight", where, 0.0, 100.0)
        if not isinstance(self.context_prefixes, int) or isinstance(self.context_prefixes, bool) \
                or not 0 <= self.context_prefixes <= len(PREFIX_STARTS):
            raise PatchError(f"{where}: field 'context_prefixes' must be a whole number from 0 to "
                             f"{len(PREFIX_STARTS)}, got {self.context_prefixes!r}")
        if not isinstance(self.neurons, int) or isinstance(self.neurons, bool) or not 0 <= self.neurons <= MAX_NEURONS:
            raise PatchError(f"{where}: field 'neurons' must be a whole number from 0 (every neuron) to "
                             f"{MAX_NEURONS:,}, got {self.neurons!r}")
        if self.neurons and any(not t.startswith("mlp.") for t in self.targets):
            raise PatchError(f"{where}: field 'neurons' ({self.neurons}) selects MLP neurons, but field 'targets' "
                             f"holds {[t for t in self.targets if not t.startswith('mlp.')]}: use 0 or only mlp.* "
                             "tensors")
        _number(self.preserve, "preserve", where, 0.0, MAX_PRESERVE)
        if self.preserve and self.targets != ["mlp.down_proj"]:
            raise PatchError(f"{where}: field 'preserve' ({self.preserve:g}) acts on mlp.down_proj only, but field "
                             f"'targets' is {self.targets}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not 1 <= self.steps <= 10_000:
            raise PatchError(f"{where}: field 'steps' must be a whole number from 1 to 10,000, got {self.steps!r}")

    def for_reader(self, num_layers: int, where: str = "patch config") -> "PatchConfig":
        """This config with each block number counted from the start (-1: block ``num_layers - 1``);
        a block the reader does not have is refused, naming it."""
        self.validate(where)
        out = []
        for v in self.layers:
            i = v + num_layers if v < 0 else v
            if not 0 <= i < num_layers:
                raise PatchError(f"{where}: field 'layers' names block {v}, but the reader has blocks 0 to "
                                 f"{num_layers - 1} (or -1 to -{num_layers} from the last)")
            out.append(i)
        if len(set(out)) != len(out):
            raise PatchError(f"{where}: field 'layers' names a block twice: {self.layers} (blocks {out})")
        return replace(self, layers=out)

    def tensor_names(self) -> list[str]:
        """The reader parameters this config trains, in a stable order."""
        return [tensor_name(i, t) for i in sorted(self.layers) for t in self.targets]

    @classmethod
    def from_dict(cls, d: Any, where: str = "patch config") -> "PatchConfig":
        return config_from_dict(cls, d, PatchError, where)


def _number(v: Any, name: str, where: str, low: float, high: float, *, open_low: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ok = ok and (low < float(v) if open_low else low <= float(v)) and float(v) <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise PatchError(f"{where}: field {name!r} must be a number in {bracket}{low:g}, {high:g}], got {v!r}")
