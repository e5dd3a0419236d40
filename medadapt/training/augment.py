"""Geometric and intensity augmentation of a slice and its label map, applied consistently.

Used two ways: on the fly when the encoder runs every step, and to make extra
*cached views* of each labelled slice when the encoder is frozen (the views are
encoded once, so decoder-only training still sees augmented data at the cost
of a few more encodings rather than an encoder pass per step).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage


def random_view(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    shift: float = 0.05,
    gamma: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """A random similarity transform (rotation, isotropic scale, shift) plus a gamma change.

    The image is interpolated linearly and the label by nearest neighbour with
    the same matrix, so they stay aligned; pixels from outside the image are
    filled with the image minimum and background (unlabelled, -1, in a scribble
    map that holds -1).
    """
    img = np.asarray(image, dtype=np.float32)
    lab = np.asarray(label)
    h, w = img.shape[:2]
    a = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    s = float(np.exp(rng.uniform(-scale, scale)))
    # output -> input coordinates (row, col): rotate/scale about the centre, then shift
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - m @ centre + rng.uniform(-shift, shift, 2) * np.array([h, w])
    lo, hi = float(img.min()), float(img.max())

    def warp(x: np.ndarray, order: int, fill: float) -> np.ndarray:
        if x.ndim == 3:
            return np.stack([warp(x[..., c], order, fill) for c in range(x.shape[2])], axis=-1)
        return ndimage.affine_transform(x, m, offset=offset, order=order, mode="constant", cval=fill)

    out = warp(img, 1, lo)
    out_lab = warp(lab, 0, -1 if lab.min() < 0 else 0).astype(lab.dtype)  # scribbles: outside is unlabelled
    g = float(np.exp(rng.uniform(-gamma, gamma)))
    if hi > lo:
        out = lo + (hi - lo) * np.clip((out - lo) / (hi - lo), 0, 1) ** g
    return out.astype(np.float32), out_lab


def augmented_copies(slices: list, n: int, seed: int) -> list:
    """``n`` augmented copies of each labelled slice (for the embedding cache), seeded."""
    rng = np.random.default_rng(seed + 7919)
    out = []
    for v in range(n):
        for s in slices:
            image, label = random_view(s.image, s.label, rng)
            out.append(replace(s, image=image, label=label))
    return out


__all__ = ["augmented_copies", "random_view"]
