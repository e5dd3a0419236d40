"""Masks on the wire: run-length encoding, row-major, runs alternating 0, 1, 0 ... from a run of zeros.

A 512 x 512 organ mask is a few hundred numbers instead of 256 KiB of pixels,
and the page decodes it straight into canvas pixels without an image decoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import MedAdaptError


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """H x W bool -> ``{"size": [H, W], "counts": [zeros, ones, zeros, ...]}`` (the first run may be 0 long)."""
    m = np.asarray(mask, dtype=bool)
    flat = m.ravel()
    if flat.size == 0:
        return {"size": list(m.shape), "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [int(s) for s in m.shape], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_rle`."""
    try:
        h, w = (int(s) for s in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise MedAdaptError('an RLE mask is {"size": [H, W], "counts": [...]}') from None
    if counts.sum() != h * w or (counts < 0).any():
        raise MedAdaptError(f"RLE counts add up to {int(counts.sum())}, not H x W = {h * w}")
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(h, w)


def encode_labels(labels: np.ndarray) -> list[dict[str, Any]]:
    """A label map -> ``[{"value": v, "mask": rle}, ...]`` for each non-zero value."""
    arr = np.asarray(labels)
    return [{"value": int(v), "mask": encode_rle(arr == v)} for v in np.unique(arr) if v != 0]


__all__ = ["decode_rle", "encode_labels", "encode_rle"]
