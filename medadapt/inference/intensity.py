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


def resolve_intensity(intensity: dict[str, Any] | None, window: Any = None) -> tuple[Any, tuple[float, float] | None]:
    """``(window, percentiles)`` to apply: the window given, else the recorded one; the recorded per-slice
    percentile clip only where no window is given (a window replaces it)."""
    p = (intensity or {}).get("percentiles")
    if window is not None:
        return window, None
    return (intensity or {}).get("window"), None if p is None else (float(p[0]), float(p[1]))


def apply_intensity(image: np.ndarray, window: Any = None, percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """A 2-D image (or H x W x C) as :func:`resolve_intensity`'s settings say: windowed, else percentile-clipped."""
    if window is not None:
        return apply_window(image, window)
    return image if percentiles is None else clip_percentiles(image, *percentiles)


__all__ = ["apply_intensity", "recorded_intensity", "resolve_intensity"]
