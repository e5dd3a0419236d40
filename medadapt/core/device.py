"""Choosing the device a model runs on."""

from __future__ import annotations

import torch

from .errors import MedAdaptError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise MedAdaptError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["pick_device"]
