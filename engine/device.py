"""Choose the torch device at run time: CUDA when present, else CPU."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to run on.

    ``prefer`` may name one ("cpu", "cuda", "cuda:1"); a CUDA request on a machine
    without CUDA falls back to the CPU with a warning rather than failing later.
    Without a preference CUDA is used when available.
    """
    if prefer is not None:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            log.warning("CUDA was requested (%s) but is not available; using the CPU.", prefer)
            return torch.device("cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
