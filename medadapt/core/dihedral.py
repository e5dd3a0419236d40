"""The 8 flips and quarter turns of a square grid, and their inverses.

``k`` in 0..7: ``k % 4`` quarter turns counter-clockwise (``torch.rot90`` on
the last two dims), then a left-right flip if ``k >= 4``. ``k = 0`` is the
identity. The student's test-time augmentation and the semi-supervised
loop's turned views (:mod:`medadapt.ssl.geometry`) both use these.
"""

from __future__ import annotations

import torch

NUM_VIEWS = 8


def _check(k: int) -> None:
    if not 0 <= k < NUM_VIEWS:
        raise ValueError(f"k is one of the 8 views 0..7; got {k}")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` (... x H x W) turned ``k % 4`` quarter turns, then flipped left-right if ``k >= 4``."""
    _check(k)
    x = torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k)`` is ``x``."""
    _check(k)
    x = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(x, -(k % 4), dims=(-2, -1)) if k % 4 else x


__all__ = ["NUM_VIEWS", "dihedral", "undo_dihedral"]
