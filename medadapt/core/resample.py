"""Label maps and per-pixel weights resampled onto another grid, centred like the images they go with.

Images are resized bilinearly with ``align_corners=False``: output pixel ``i``
samples the input at its centre, ``(i + 0.5) * scale - 0.5``. A label map
resized by plain ``nearest`` takes input pixel ``floor(i * scale)``, the
top-left of that cell, so it lands about half an output pixel down and to the
right of the image (a full pixel and more after a 3x shrink): a model that
fits such targets answers shifted masks, and thin structures (a myocardial
ring) lose Dice for nothing. Here each label's indicator is resampled as the
image is (bilinear, centred, antialiased where it shrinks) and every output
pixel takes the label that covers most of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An H x W integer label map -> ``size``: each pixel the label covering most of it (ties: the lower value).

    Memory stays two float maps of the output size whatever the number of labels."""
    y = torch.as_tensor(labels)
    size = (int(size[0]), int(size[1]))
    if tuple(y.shape[-2:]) == size:
        return y.long().clone()
    best = torch.full(size, -1.0)
    out = torch.zeros(size, dtype=torch.long)
    for v in torch.unique(y).tolist():  # ascending: a later label must cover strictly more to win
        share = F.interpolate((y == v).float()[None, None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0, 0]
        wins = share > best
        out[wins] = int(v)
        best = torch.where(wins, share, best)
    return out


def resize_weights(weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An H x W float map (confidences, loss weights) -> ``size`` on the same centred grid as the labels."""
    w = torch.as_tensor(weights, dtype=torch.float32)
    size = (int(size[0]), int(size[1]))
    if tuple(w.shape[-2:]) == size:
        return w.clone()
    return F.interpolate(w[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]


__all__ = ["resize_labels", "resize_weights"]
