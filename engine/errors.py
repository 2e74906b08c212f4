"""The exceptions that mean "the user's input is wrong" (as opposed to a bug).

Front ends (CLI, GUI) show these as a one-line message; anything else is a bug and
is logged with its traceback.
"""
from __future__ import annotations

import importlib

_USER_ERRORS = (
    ("engine.store", ("PackError", "ValidationError", "EncoderMismatchError", "EntryNotFound")),
    ("engine.store.corpus", ("CorpusError",)),
    ("engine.jobs.build_memory", ("ImportRefused",)),
    ("engine.jobs.ray_build", ("ScaleExtraMissing", "RayBuildError")),
    ("engine.encode", ("EncoderError",)),
    ("engine.reader", ("ReaderError",)),
    ("engine.mechanisms.plugins.errors", ("PluginError",)),
    ("engine.mechanisms.pkm.config", ("PKMError",)),
    ("engine.mechanisms.weight_patches.config", ("PatchError",)),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes whose message is meant for the user (imported lazily)."""
    found: list[type[BaseException]] = []
    for module, names in _USER_ERRORS:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)
