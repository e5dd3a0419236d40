"""Reading weights safely, and saying exactly what is wrong when they don't fit.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors,
never by unpickling arbitrary objects: a ``.pth`` from the internet must not be
able to run code. Mismatches are reported with the file name and the offending
keys or shapes, because "Error(s) in loading state_dict" with 400 lines is not
something a user can act on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..core.errors import MedAdaptError

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a tensor dictionary from ``.pth/.pt/.bin`` (weights only) or ``.safetensors``.

    Official SAM/MedSAM ``.pth`` files are plain state dicts; training scripts
    often wrap them as ``{"model": ...}``, which is unwrapped here.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise MedAdaptError(f"checkpoint {p} is a folder; pass the weights file (.pth, .pt, .bin or .safetensors) "
                            "in it, or for a Hugging Face SAM folder use the backbone sam_hf")
    if not p.is_file():
        raise MedAdaptError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except MedAdaptError:
        raise
    except Exception as exc:  # corrupt file, pickle with code, truncated download
        raise MedAdaptError(
            f"could not read checkpoint {p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(is the file complete? only plain tensor checkpoints are accepted: weights_only=True or .safetensors)"
        ) from None
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedAdaptError(f"checkpoint {p} does not hold a dictionary of tensors (a state dict)")
    return dict(state)


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, *, strip_prefix: str = "") -> None:
    """``module.load_state_dict(strict=True)`` with a readable error.

    Reports missing keys, unexpected keys and shape mismatches (first few of
    each, with counts), naming ``source`` so the user knows which file to fix.
    """
    if strip_prefix:
        state = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                parts.append(f"{title}: {shown}")
        raise MedAdaptError(
            f"checkpoint {source} does not match this architecture ({'; '.join(parts)}). "
            "Check that the backbone name matches the checkpoint (e.g. sam_vit_b for sam_vit_b_01ec64.pth)."
        )
    module.load_state_dict(state, strict=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()


def sha256_files(named: Iterable[tuple[str, str | os.PathLike]], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 over several files, each as its name, a zero byte and its bytes (read in chunks): a folder's
    files stand for one model (an adapter, a run's student)."""
    digest = hashlib.sha256()
    for name, path in named:
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                digest.update(data)
    return digest.hexdigest()


def fingerprint_state(state: Mapping[str, torch.Tensor]) -> str:
    """A short, stable fingerprint of weights: adapters record which base they were trained on."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = ["read_state_dict", "load_checked", "sha256_file", "fingerprint_state"]
