"""Local corrections: a click changes the answer only around where it was made.

A promptable decoder answers every click by decoding the whole object again,
so a click that fixes one gap can open another elsewhere, and later clicks
chase errors the earlier ones had fixed (clicks after a good proposal or box
often lower Dice). FocalClick (Chen et al., CVPR 2022) answers this by
refining only a window around the click. :func:`local_update` does the
simplest version of that on the answers themselves: of the pixels where the
new answer differs from the previous one, it keeps the connected regions that
reach within ``reach`` of the click and leaves the rest as it was; the
low-resolution logits (the next mask prompt) are merged the same way, so the
next decode starts from the answer shown.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.errors import MedAdaptError

DEFAULT_REACH = 0.05  # share of the image's longer side


def local_update(previous: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], click: np.ndarray,
                 low_res_selection, reach: float = DEFAULT_REACH) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``new`` into ``previous`` near ``click``; returns ``(mask H x W bool, logits m x m)``.

    ``previous`` / ``new``: ``(mask, low-resolution logits)`` answers on the same image; ``click``: ``(x, y)``
    in pixels; ``low_res_selection(selection H x W bool) -> m x m bool`` maps a full-size region onto the
    logits' grid (e.g. through :meth:`~medadapt.foundation.Processor.mask_to_low_res`); ``reach``: how far
    from the click (a share of the image's longer side) a changed region may start and still be kept.
    """
    old_mask, old_logits = np.asarray(previous[0], bool), np.asarray(previous[1], np.float32)
    new_mask, new_logits = np.asarray(new[0], bool), np.asarray(new[1], np.float32)
    if old_mask.shape != new_mask.shape or old_logits.shape != new_logits.shape:
        raise MedAdaptError(f"answers of different shapes: {old_mask.shape} / {old_logits.shape} and "
                            f"{new_mask.shape} / {new_logits.shape}")
    if not 0 <= reach <= 1:
        raise MedAdaptError(f"reach must be a share of the image's side in [0, 1]; got {reach}")
    h, w = new_mask.shape
    x, y = (float(v) for v in np.asarray(click, np.float64).reshape(2))
    if not (0 <= x < w and 0 <= y < h):
        raise MedAdaptError(f"the click ({x}, {y}) lies outside the {w} x {h} image")
    changed = old_mask != new_mask
    if not changed.any():
        return new_mask, new_logits
    components, _ = ndimage.label(changed, structure=np.ones((3, 3), bool))
    r = reach * max(h, w)
    cy, cx = int(round(min(y, h - 1))), int(round(min(x, w - 1)))
    y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
    x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    near = components[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= r * r]
    keep = np.unique(near[near > 0])
    if keep.size == 0:
        return old_mask, old_logits
    selection = np.isin(components, keep)
    mask = np.where(selection, new_mask, old_mask)
    # every logits cell a kept change touches: a change thinner than a cell must still reach the next prompt
    cell = int(np.ceil(max(h, w) / max(new_logits.shape))) + 1
    low = np.asarray(low_res_selection(ndimage.binary_dilation(selection, iterations=cell)), bool)
    low = low.reshape(new_logits.shape)
    return mask, np.where(low, new_logits, old_logits).astype(np.float32)


__all__ = ["DEFAULT_REACH", "local_update"]
