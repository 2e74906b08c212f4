"""The knowledge mechanisms and the modes a question can be answered in (see registry)."""
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
