"""Clean-up of automatic label maps: each class's largest connected component, and holes filled.

Automatic mode labels each slice on its own (a student or a depth adapter
sees a few neighbours), so a volume's label map can hold small islands away
from the structure, and a slice's mask can hold holes. Two optional
clean-ups, both off unless asked for (``cleanup=`` of
:meth:`~medadapt.inference.Segmenter.predict_volume` and
:func:`~medadapt.evaluation.evaluate_run`, ``--cleanup`` on the command line):

* ``"largest"``: each class keeps only its largest connected component, in 3-D
  (26-connected; 8-connected on a 2-D image); the rest becomes background. A
  structure that is really in two pieces loses the smaller one.
* ``"holes"``: on each slice, a background region that does not reach the
  slice's edge is given to the class that borders it most (a hole inside the
  left ventricle becomes left ventricle, even inside the myocardium's ring).
  Slice by slice: a hole is rarely closed above and below as well, and with
  thick slices closure across them means little.

``"largest"`` runs before ``"holes"`` whatever the order asked: an island
inside a hole is removed first, and the hole is then filled. What each does to the reported benchmarks
is in ``docs/volumes.md``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..core.errors import MedAdaptError

CLEANUPS = ("largest", "holes")


def check_cleanup(cleanup: str | Iterable[str] | None) -> tuple[str, ...]:
    """The clean-ups asked for, in the order they run; refuses unknown names."""
    if cleanup is None:
        return ()
    items = [cleanup] if isinstance(cleanup, str) else list(cleanup)
    bad = [c for c in items if c not in CLEANUPS]
    if bad:
        raise MedAdaptError(f"unknown clean-up {bad}: choose any of {list(CLEANUPS)} (or none)")
    return tuple(c for c in CLEANUPS if c in items)


def keep_largest(labels: np.ndarray, values: Sequence[int] | None = None) -> np.ndarray:
    """A copy of the label map where each class (``values``; default every non-zero one) keeps only its
    largest connected component (full connectivity: 26 in 3-D, 8 in 2-D)."""
    out = np.array(labels, copy=True)
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for v in np.unique(labels[labels != 0]) if values is None else values:
        mask = labels == v
        parts, n = ndimage.label(mask, structure=structure)
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            out[mask & (parts != 1 + int(sizes.argmax()))] = 0
    return out


def fill_plane_holes(plane: np.ndarray) -> np.ndarray:
    """A copy of a 2-D label map where each background region that does not touch the edge takes the
    class that borders it most (4-connected background, so a diagonal gap does not let it out)."""
    out = np.array(plane, copy=True)
    background, n = ndimage.label(plane == 0)
    if n == 0:
        return out
    edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    ring = ndimage.generate_binary_structure(2, 2)
    for i, box in enumerate(ndimage.find_objects(background), start=1):
        if box is None or i in edge:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        hole = background[grown] == i
        border = ndimage.binary_dilation(hole, structure=ring) & ~hole
        around = plane[grown][border]
        around = around[around != 0]
        if around.size:
            values, counts = np.unique(around, return_counts=True)
            out[grown][hole] = values[counts.argmax()]
    return out


def fill_holes(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """:func:`fill_plane_holes` on every slice of a 3-D label map along ``axis`` (a 2-D map as it is)."""
    if labels.ndim == 2:
        return fill_plane_holes(labels)
    if labels.ndim != 3:
        raise MedAdaptError(f"fill_holes takes a 2-D or 3-D label map, not shape {labels.shape}")
    moved = np.moveaxis(labels, axis, 0)
    return np.moveaxis(np.stack([fill_plane_holes(p) for p in moved]), 0, axis)


def clean_labels(labels: np.ndarray, cleanup: str | Iterable[str] | None, axis: int = 0) -> np.ndarray:
    """The label map after the clean-ups asked for (see the module docstring); ``axis``: the slice axis."""
    steps = check_cleanup(cleanup)
    if "largest" in steps:
        labels = keep_largest(labels)
    if "holes" in steps:
        labels = fill_holes(labels, axis)
    return labels


__all__ = ["CLEANUPS", "check_cleanup", "clean_labels", "fill_holes", "fill_plane_holes", "keep_largest"]
