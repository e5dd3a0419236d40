"""Per-class Dice, HD95 and normalised surface Dice on integer label maps, computed by MONAI.

The numbers here are the ones papers report, so we do not reimplement them:
the label maps are one-hot encoded and handed to
:func:`monai.metrics.compute_dice`,
:func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``) and
:func:`monai.metrics.compute_surface_dice` (NSD). This module
only adds what MONAI leaves to the caller: input checks with messages a user can
act on, and an explicit, documented answer for empty masks.

Inputs are label maps of identical shape, either 2D (``H x W``) or 3D
(``D x H x W``, or whatever axis order the volume was loaded in -- ``spacing``
must simply follow the same order). A volume is scored as one 3D object, not
slice by slice, because slice-wise averages overweight the slices where a
structure is barely visible.

Empty-mask conventions (per class, "empty" means no voxel carries the value):

========================  ==========  ==========  ==========
prediction / target       Dice        HD95        NSD
========================  ==========  ==========  ==========
both empty                1.0         nan         nan
target empty, pred not    0.0         nan         0.0
pred empty, target not    0.0         nan         0.0
both non-empty            MONAI       MONAI       MONAI
========================  ==========  ==========  ==========

Dice follows MONAI with ``ignore_empty=False``: correctly predicting that a
structure is absent is a success (1.0), hallucinating it is a failure (0.0).
MONAI's default (``ignore_empty=True``) would return nan for an empty target,
which silently drops false positives from the mean; we do not want that.

HD95 is undefined when either surface is missing (there is no distance to
measure). We return nan rather than MONAI's inf/placeholder values so that the
report layer can show "n/a", exclude it from means, and count the exclusions;
an arbitrary large penalty would make means incomparable across datasets.

NSD (normalised surface Dice) is the fraction of both boundaries that lies
within ``tolerance`` of the other boundary. With exactly one boundary missing
it is 0.0 by its own formula (no boundary element is within reach of a surface
that does not exist), as in MONAI, so a missed or hallucinated structure counts
against the mean. With both missing it is 0/0: nan, excluded from means and
counted, like HD95 (MONAI returns nan there as well). Dice alone says 1.0 for
that case; it is already counted there.

Distances (HD95, the NSD tolerance) are in the units of ``spacing``: pass the
voxel size in mm (in the arrays' axis order) to get mm; without it they are in
pixels/voxels.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from ..core.errors import MedAdaptError
from ..io.imaging import check_spacing

__all__ = ["binary_dice", "dice_per_class", "hd95_per_class", "surface_dice_per_class"]


def _as_label_map(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as an int64 array, refusing values that are not labels.

    Float arrays are accepted when every value is integral, because NIfTI
    masks are often stored (and loaded by nibabel) as float32.
    """
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise MedAdaptError(
                f"{name} must be an integer label map, but it holds non-integer values "
                f"(dtype {a.dtype}); threshold or argmax the prediction first."
            )
        return a.astype(np.int64)
    raise MedAdaptError(f"{name} must be an integer label map, got dtype {a.dtype}.")


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/target pair and return them as int64 label maps."""
    p = _as_label_map(pred, "pred")
    t = _as_label_map(target, "target")
    if p.shape != t.shape:
        raise MedAdaptError(
            f"pred and target must have the same shape, got pred {tuple(p.shape)} and "
            f"target {tuple(t.shape)}; resample the prediction onto the label grid first."
        )
    if p.ndim not in (2, 3):
        raise MedAdaptError(
            f"pred and target must be 2D (H x W) or 3D label maps, got {p.ndim}D shape "
            f"{tuple(p.shape)}; drop channel/batch axes first."
        )
    return p, t


def _check_classes(class_values: Sequence[int]) -> list[int]:
    """Return the class values as a list of distinct ints (order kept)."""
    values: list[int] = []
    for v in class_values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise MedAdaptError(f"class values must be integers, got {v!r}.")
        values.append(int(v))
    if not values:
        raise MedAdaptError("class_values is empty: name at least one label value to score.")
    if len(set(values)) != len(values):
        raise MedAdaptError(f"class_values has duplicates: {values}.")
    return values


def _one_hot(labels: np.ndarray, class_values: Sequence[int]) -> torch.Tensor:
    """One channel per class value, with a batch axis: MONAI's ``(B, C, *spatial)``."""
    stacked = np.stack([labels == v for v in class_values])[None]
    return torch.from_numpy(stacked.astype(np.float32))


def dice_per_class(
    pred: np.ndarray, target: np.ndarray, class_values: Sequence[int]
) -> dict[int, float]:
    """Dice of each label value in ``class_values``, over the whole 2D image or 3D volume.

    Uses :func:`monai.metrics.compute_dice` with ``ignore_empty=False``, which gives
    the convention in the module docstring: both empty -> 1.0, exactly one empty -> 0.0.
    Never returns nan.

    Raises:
        MedAdaptError: shapes differ, inputs are not 2D/3D label maps, or
            ``class_values`` is empty, non-integer or has duplicates.
    """
    p, t = _check_pair(pred, target)
    values = _check_classes(class_values)
    scores = compute_dice(
        _one_hot(p, values), _one_hot(t, values), include_background=True, ignore_empty=False
    )
    return {v: float(s) for v, s in zip(values, scores[0].tolist())}


def binary_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of the foreground (any non-zero value) of two masks; same empty convention."""
    p, t = _check_pair(pred, target)
    return dice_per_class(p != 0, t != 0, [1])[1]


def hd95_per_class(
    pred: np.ndarray,
    target: np.ndarray,
    class_values: Sequence[int],
    spacing: Sequence[float] | None = None,
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance of each label value.

    Computed by :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``,
    surface-to-surface, Euclidean). With ``spacing`` (one positive value per axis,
    in the arrays' axis order, e.g. NIfTI zooms) the result is in those units,
    normally mm; without it, in pixels/voxels. A class that is empty in ``pred``
    or in ``target`` (or both) gets ``nan``: the distance is undefined there, and
    the report layer excludes and counts such values instead of averaging a
    made-up penalty.

    Raises:
        MedAdaptError: as :func:`dice_per_class`, or a malformed ``spacing``.
    """
    p, t = _check_pair(pred, target)
    values = _check_classes(class_values)
    sp = check_spacing(spacing, p.ndim)
    result = {v: math.nan for v in values}
    # Only hand MONAI classes with both surfaces present: for the others it warns
    # and returns inf/nan, and we want one documented answer (nan) instead.
    present = [v for v in values if np.any(p == v) and np.any(t == v)]
    if not present:
        return result
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own internal use of a deprecated argument.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distances = compute_hausdorff_distance(
            _one_hot(p, present),
            _one_hot(t, present),
            include_background=True,
            percentile=95,
            spacing=list(sp) if sp is not None else None,
        )
    for v, d in zip(present, distances[0].tolist()):
        result[v] = float(d)
    return result


def _check_tolerance(tolerance: float) -> float:
    """The NSD tolerance as a float: a finite number >= 0."""
    if isinstance(tolerance, (bool, np.bool_)) or not isinstance(tolerance, numbers.Real):
        raise MedAdaptError(f"tolerance must be a distance (a number >= 0), got {tolerance!r}.")
    tol = float(tolerance)
    if not (math.isfinite(tol) and tol >= 0):
        raise MedAdaptError(f"tolerance must be a finite distance >= 0, got {tolerance!r}.")
    return tol


def surface_dice_per_class(
    pred: np.ndarray,
    target: np.ndarray,
    class_values: Sequence[int],
    tolerance: float,
    spacing: Sequence[float] | None = None,
) -> dict[int, float]:
    """Normalised surface Dice (NSD) of each label value at one distance ``tolerance``.

    Computed by :func:`monai.metrics.compute_surface_dice` (Euclidean distances,
    boundaries counted in edge voxels, MONAI's default ``use_subvoxels=False``):
    the share of the predicted and the reference boundary voxels that lie within
    ``tolerance`` of the other boundary, in [0, 1]. ``tolerance`` is in the units
    of ``spacing`` -- mm when ``spacing`` is the voxel size in mm (one value per
    axis, in the arrays' axis order, as for :func:`hd95_per_class`), pixels/voxels
    without it. A class empty in exactly one of ``pred`` and ``target`` gets 0.0,
    a class empty in both ``nan`` (see the module docstring).

    Raises:
        MedAdaptError: as :func:`hd95_per_class`, or a negative/non-finite ``tolerance``.
    """
    p, t = _check_pair(pred, target)
    values = _check_classes(class_values)
    sp = check_spacing(spacing, p.ndim)
    tol = _check_tolerance(tolerance)
    result: dict[int, float] = {}
    present = []
    for v in values:
        in_p, in_t = bool(np.any(p == v)), bool(np.any(t == v))
        if in_p and in_t:
            present.append(v)
        result[v] = 0.0 if in_p or in_t else math.nan
    # As for HD95, MONAI only sees classes with both boundaries: for the others it
    # warns about the empty mask, and the answer is fixed above.
    if not present:
        return result
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        scores = compute_surface_dice(
            _one_hot(p, present),
            _one_hot(t, present),
            class_thresholds=[tol] * len(present),
            include_background=True,
            distance_metric="euclidean",
            spacing=list(sp) if sp is not None else None,
        )
    for v, s in zip(present, scores[0].tolist()):
        result[v] = float(s)
    return result
