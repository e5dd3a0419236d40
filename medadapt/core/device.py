"""Choosing the device a model runs on."""

from __future__ import annotations

import torch

from .errors import MedAdaptError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise MedAdaptError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise MedAdaptError(f"device {device!r} asked for, but this machine has no usable CUDA GPU "
                                    "(or torch was built without CUDA): use 'cpu', or leave the device out")
            if dev.index is not None and dev.index >= count:
                raise MedAdaptError(f"device {device!r} asked for, but this machine has {count} CUDA GPU(s): "
                                    f"use cuda:0..cuda:{count - 1}")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["pick_device"]
