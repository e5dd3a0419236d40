"""Strong perturbations for the student: intensity, CutMix, bidirectional copy-paste, feature dropout.

Boxes are drawn on the device in normalised coordinates and rasterised at
each tensor's own grid (image, embedding or label map), so a mix of
embeddings and the mix of their labels cover the same region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_boxes(n: int, area: tuple[float, float], generator: torch.Generator, device,
                 cells: int | None = None) -> torch.Tensor:
    """n boxes ``[y0, x0, y1, x1]`` in [0, 1] covering a share of the image drawn from ``area``; with ``cells``,
    snapped to a grid of that many cells a side, so that they cover one region on it and on every finer grid
    whose size is a multiple of it (a 64-cell embedding and its 256-cell label map).

    The numbers are drawn on the generator's device: a generator on the
    step's device (as :class:`medadapt.ssl.SemiSupervised` makes it) means no
    host-to-device copy, which on a GPU would wait for the queued work.
    """
    r = torch.rand(n, 4, generator=generator, device=generator.device).to(device)
    share = area[0] + (area[1] - area[0]) * r[:, 0]
    aspect = torch.exp((r[:, 1] - 0.5) * 0.8)  # between ~0.67 and ~1.5
    h = (share * aspect).sqrt().clamp(max=0.95)
    w = (share / aspect).sqrt().clamp(max=0.95)
    y0 = r[:, 2] * (1 - h)
    x0 = r[:, 3] * (1 - w)
    boxes = torch.stack([y0, x0, y0 + h, x0 + w], dim=1)
    return boxes if cells is None else (boxes * cells).round() / cells


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Rasterise normalised boxes to n x H x W float masks (1 inside)."""
    h, w = size
    ys = (torch.arange(h, device=boxes.device) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device) + 0.5) / w
    iny = (ys[None] >= boxes[:, 0:1]) & (ys[None] < boxes[:, 2:3])
    inx = (xs[None] >= boxes[:, 1:2]) & (xs[None] < boxes[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()


def paste(base: torch.Tensor, other: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``base`` with each box region taken from ``other`` (B x ... x H x W, any dtype)."""
    m = box_masks(boxes, base.shape[-2:])
    while m.ndim < base.ndim:
        m = m.unsqueeze(1)
    m = m.to(base.dtype) if base.is_floating_point() else m.bool()
    return base * (1 - m) + other * m if base.is_floating_point() else torch.where(m, other, base)


def feature_dropout(embeddings: torch.Tensor, p: float) -> torch.Tensor:
    """Channel dropout on the image embedding: UniMatch's feature-perturbation stream."""
    return F.dropout2d(embeddings, p, training=True) if p > 0 else embeddings


def intensity(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, contrast, Gaussian noise and blur on preprocessed pixels (B x C x H x W)."""
    if strength <= 0:
        return pixels
    b = pixels.shape[0]
    r = torch.rand(b, 4, generator=generator, device=generator.device).to(pixels.device)
    lo = pixels.amin((1, 2, 3), keepdim=True)
    hi = pixels.amax((1, 2, 3), keepdim=True)
    x = (pixels - lo) / (hi - lo).clamp(min=1e-6)
    gamma = torch.exp((r[:, 0] - 0.5) * 2 * strength)[:, None, None, None]
    x = x.clamp(min=0) ** gamma
    contrast = (1 + (r[:, 1] - 0.5) * 2 * strength)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    noise = torch.randn(pixels.shape, generator=generator, device=generator.device).to(pixels.device)
    x = x + noise * (0.05 * strength * r[:, 2])[:, None, None, None]
    k = 0.5 - 0.25 * (torch.arange(3, device=pixels.device) - 1).abs()  # [1, 2, 1] / 4, made on the device
    c = x.shape[1]
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None]).expand(c, 1, 3, 3), groups=c)
    blur = (r[:, 3] < 0.5 * strength / 0.3).float()[:, None, None, None].clamp(max=1)
    x = blur * blurred + (1 - blur) * x
    return x * (hi - lo) + lo


__all__ = ["box_masks", "feature_dropout", "intensity", "paste", "random_boxes"]
