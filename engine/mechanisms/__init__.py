"""The knowledge mechanisms and the modes a question can be answered in.

``registry`` lists them; ``base`` is the interface each implements and the order they
compose in; each has its folder (``context``, ``dpm``, ``plugins``; ``pkm`` and
``weight_patches`` are documented places). Only the registry is imported here: the GUI
reads it without loading torch."""
from engine.mechanisms.registry import (
    MECHANISMS,
    MODES,
    MechanismSpec,
    ModeChoice,
    choose_mode,
    mechanism,
    mode_names,
    modes,
)

__all__ = ["MECHANISMS", "MODES", "MechanismSpec", "ModeChoice", "choose_mode", "mechanism", "mode_names", "modes"]
