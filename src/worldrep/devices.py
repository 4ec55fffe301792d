"""Which torch device a stage runs on: 'auto' is CUDA when there is one, else the CPU."""

from __future__ import annotations

import torch

from .errors import WorldrepError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks cuda when available, else cpu; anything else must name a torch device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise WorldrepError(f"unknown device '{device}'; allowed: auto, cpu, cuda, cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise WorldrepError(f"device '{device}' asked for but CUDA is not available; "
                            "allowed here: auto, cpu")
    return resolved
