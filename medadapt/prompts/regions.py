"""Regions of masks that prompts are drawn from: boxes (with a margin) and the largest component.

One torch implementation of each, for every caller: simulated training boxes,
self-prompting at inference, and the semi-supervised loop's refinement boxes.
NumPy callers use the wrappers :func:`mask_box` and :func:`largest_component`.

Boxes are ``[x0, y0, x1, y1]`` pixels with inclusive extents (``x1`` is the
last column of the object), as everywhere in medadapt.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def boxes_of_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """... x H x W bool -> tight boxes ... x 4 (the whole grid where a mask is empty), and ... present.

    Tensor ops only: no value is read back to the host.
    """
    m_h, m_w = masks.shape[-2:]
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)  # ... x H, ... x W
    ys = torch.arange(m_h, device=masks.device)
    xs = torch.arange(m_w, device=masks.device)
    y0 = torch.where(rows, ys, m_h).amin(-1)
    y1 = torch.where(rows, ys, -1).amax(-1)
    x0 = torch.where(cols, xs, m_w).amin(-1)
    x1 = torch.where(cols, xs, -1).amax(-1)
    present = rows.any(-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    full = torch.stack([torch.zeros_like(x0), torch.zeros_like(y0), torch.full_like(x1, m_w - 1),
                        torch.full_like(y1, m_h - 1)], dim=-1).float()  # made on the device, not copied there
    return torch.where(present[..., None], boxes, full), present


def pad_boxes(boxes: torch.Tensor, margin: float, size: tuple[int, int]) -> torch.Tensor:
    """Move each side of ``[x0, y0, x1, y1]`` boxes out by ``margin`` x the box's width / height, inside an H x W grid."""
    if margin <= 0:
        return boxes
    wh = boxes[..., 2:] - boxes[..., :2]
    lo_corner = (boxes[..., :2] - margin * wh).clamp(min=0.0)
    hi_corner = boxes[..., 2:] + margin * wh
    hi_corner = torch.stack([hi_corner[..., 0].clamp(max=size[1] - 1.0), hi_corner[..., 1].clamp(max=size[0] - 1.0)],
                            dim=-1)
    return torch.cat([lo_corner, hi_corner], dim=-1)


def mask_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The box of a non-empty 2-D mask, each side moved out by ``margin`` x its extent, inside the image.

    The box has positive area even for a one-pixel-wide mask (the decoder
    needs that): its extent is at least one pixel before the margin is added,
    and a side that cannot grow (the image's last column) moves the other way.
    """
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    h, w = m.shape
    box, _ = boxes_of_masks(m)
    box = box.double()
    box[2:] = torch.maximum(box[2:], box[:2] + 1.0)
    box = pad_boxes(box, margin, (h, w))
    box[2:] = box[2:].clamp(max=torch.tensor([w - 1.0, h - 1.0], dtype=box.dtype))
    if box[2] <= box[0]:  # a mask in the last column of a 1-pixel-wide image has no room to grow
        box[0] = box[2] - 1.0
    if box[3] <= box[1]:
        box[1] = box[3] - 1.0
    return box.numpy().astype(np.float32)


def largest_components(masks: torch.Tensor, grid: int | None = 64, iterations: int | None = None) -> torch.Tensor:
    """... x H x W bool -> each map's largest 8-connected component (same shape).

    ``grid=None``: exact (connected components labelled on the host; ties go
    to the component that starts first in raster order). An integer: in
    tensor ops only, with no host synchronisation, so a GPU step does not wait
    for it. Connectivity is then found on a grid of at most ``grid`` cells per
    side (a cell is set when any of its pixels is), by spreading the largest
    cell index through set cells ``iterations`` times (default: the grid's
    height plus width, enough for any component that is not a long spiral).
    The answer is the mask's pixels inside the cells of the component with the
    most set pixels.

    Why it matters: an automatic mask with a few stray specks gives a box
    around the whole image, and a box prompt that size segments nothing useful.
    """
    shape = masks.shape
    h, w = shape[-2:]
    flat = masks.reshape(-1, h, w)
    if grid is None:
        out = np.zeros(tuple(flat.shape), dtype=bool)
        for i, m in enumerate(flat.cpu().numpy()):
            comps, n = ndimage.label(m, structure=_EIGHT)
            if n <= 1:
                out[i] = m
            else:
                out[i] = comps == 1 + int(np.argmax(np.bincount(comps.ravel(), minlength=n + 1)[1:]))
        return torch.from_numpy(out).to(masks.device).reshape(shape)
    f = max(1, math.ceil(max(h, w) / grid))
    x = flat[:, None].float()
    cells = F.max_pool2d(x, f, ceil_mode=True) if f > 1 else x  # N x 1 x gh x gw
    gh, gw = cells.shape[-2:]
    ids = torch.arange(1, gh * gw + 1, device=masks.device, dtype=torch.float32).reshape(1, 1, gh, gw) * cells
    for _ in range(iterations if iterations is not None else gh + gw):
        ids = F.max_pool2d(ids, 3, stride=1, padding=1) * cells
    n = flat.shape[0]
    ids = ids.reshape(n, gh * gw).long()
    # set pixels per cell (a sum: an average would weigh the partial cells of the last row and column up)
    weight = (F.avg_pool2d(x, f, ceil_mode=True, divisor_override=1) if f > 1 else x).reshape(n, gh * gw)
    sizes = torch.zeros(n, gh * gw + 1, device=masks.device).scatter_add_(1, ids, weight)
    sizes[:, 0].zero_()  # (not "= 0.0": that makes a tensor from a host number first)
    best = sizes.argmax(dim=1, keepdim=True)
    keep = (ids == best) & (best > 0)
    keep = keep.reshape(n, gh, gw).repeat_interleave(f, 1).repeat_interleave(f, 2)[:, :h, :w]
    return keep.reshape(shape) & masks


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D bool mask (the mask itself when it has at most one); exact."""
    return largest_components(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)), grid=None).numpy()


__all__ = ["boxes_of_masks", "largest_component", "largest_components", "mask_box", "pad_boxes"]
