"""Geometric views for the student: the 8 flips and quarter turns of the model's square frame.

A strong view that is turned or flipped must come with its pseudo-label and
prompts turned and flipped the same way, or the student learns to undo the
transform. Every grid of the model's frame (the preprocessed S x S image,
the m x m decoder grid, the embedding) covers the same padded square, so
one transform index ``k`` maps all of them, and the coordinates of boxes and
points on any of them, exactly: no interpolation, nothing lost.

``k`` in 0..7: ``k % 4`` quarter turns counter-clockwise (``torch.rot90`` on
the last two dims), then a left-right flip if ``k >= 4``. ``k = 0`` is the
identity.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from ..core.dihedral import NUM_VIEWS, dihedral
from ..training.samples import ModelSample


def dihedral_each(x: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """A batch (B x ... x H x W) with item i in view ``ks[i]`` (square grids only)."""
    if len(ks) != x.shape[0]:
        raise ValueError(f"one view per item: {len(ks)} views for {x.shape[0]} items")
    if not any(ks):
        return x
    return torch.stack([dihedral(item, int(k)) for item, k in zip(x, ks)])


def dihedral_points(points: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """``(x, y)`` pixel coordinates (... x 2) on a ``size`` x ``size`` grid, moved as :func:`dihedral` moves pixels.

    Coordinates are continuous, with pixel i covering [i, i + 1): a pixel's
    centre ``i + 0.5`` lands on the centre of the pixel it moves to.
    """
    if not 0 <= k < NUM_VIEWS:
        raise ValueError(f"k is one of the 8 views 0..7; got {k}")
    x, y = points[..., 0], points[..., 1]
    for _ in range(k % 4):  # one counter-clockwise quarter turn of the array: (x, y) -> (y, size - x)
        x, y = y, size - x
    if k >= 4:
        x = size - x
    return torch.stack([x, y], dim=-1)


def dihedral_boxes(boxes: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """``[x0, y0, x1, y1]`` boxes (... x 4, continuous corners) on a ``size`` grid, moved like the pixels."""
    corners = dihedral_points(boxes.reshape(*boxes.shape[:-1], 2, 2), k, size)
    return torch.cat([corners.amin(dim=-2), corners.amax(dim=-2)], dim=-1)


def view_sample(sample: ModelSample, k: int) -> ModelSample:
    """``sample`` in view ``k`` (0: the sample itself): pixels and target move together, and the key names
    the view, so the embedding cache encodes each view once and keeps it apart."""
    if k == 0:
        return sample
    return replace(sample, pixels=dihedral(sample.pixels, k).contiguous(), target=dihedral(sample.target, k).contiguous(),
                   label=None, key=f"{sample.key}-view{k}")


__all__ = ["NUM_VIEWS", "dihedral", "dihedral_boxes", "dihedral_each", "dihedral_points", "view_sample"]
