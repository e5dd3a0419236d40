"""The intensity settings an adapter was trained with, applied where medadapt reads an image for it.

A run trained with ``data.window`` (CT, in HU) or ``data.percentiles`` (MR,
clipped per slice) saw its images that way; a scan given raw at inference
would reach the model in other units. The adapter records the two settings
in its metadata (``intensity``); adapters saved before that are read from
their run's ``config.yaml``. :class:`~medadapt.inference.Segmenter` keeps
them as ``seg.intensity``, and ``set_volume``, ``medadapt predict`` and
``medadapt segment`` apply them unless a window is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..adapters import read_adapter_info
from ..core.config import load_yaml
from ..io.imaging import apply_window, clip_percentiles


def recorded_intensity(adapter: str | os.PathLike) -> dict[str, Any] | None:
    """``{"window": ..., "percentiles": ...}`` that the adapter at ``adapter`` (a folder or file, as
    :func:`~medadapt.inference.predictor.adapter_path` gives it) was trained with; None when it used neither
    or nothing records it."""
    found = (read_adapter_info(adapter).get("metadata") or {}).get("intensity")
    if found is None:  # an adapter saved before it recorded them: its run's config says
        for folder in (Path(adapter).parent, Path(adapter).parent.parent):
            if (folder / "config.yaml").is_file() and (folder / "adapter").is_dir():
                try:
                    data = (load_yaml((folder / "config.yaml").read_text(encoding="utf-8")) or {}).get("data") or {}
                except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):  # no record
                    return None
                found = {"window": data.get("window"), "percentiles": data.get("percentiles")}
                break
    if not isinstance(found, dict) or (found.get("window") is None and found.get("percentiles") is None):
        return None
    return {"window": found.get("window"), "percentiles": found.get("percentiles")}


def window_of(intensity: dict[str, Any] | None, window: Any) -> Any:
    """The window to apply: the one given, else the recorded one."""
    return window if window is not None else (intensity or {}).get("window")


def percentiles_of(intensity: dict[str, Any] | None, window: Any) -> tuple[float, float] | None:
    """The recorded per-slice percentile clip, unless a window was given (a window replaces it)."""
    p = (intensity or {}).get("percentiles")
    return None if window is not None or p is None else (float(p[0]), float(p[1]))


def prepare_plane(image: np.ndarray, intensity: dict[str, Any] | None, window: Any = None) -> np.ndarray:
    """A 2-D image (or H x W x C) as the adapter saw its training slices: the window given or recorded, else
    the recorded percentile clip."""
    w = window_of(intensity, window)
    if w is not None:
        return apply_window(image, w)
    p = percentiles_of(intensity, window)
    return clip_percentiles(image, *p) if p is not None else image


__all__ = ["percentiles_of", "prepare_plane", "recorded_intensity", "window_of"]
