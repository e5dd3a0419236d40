"""Spatial bottleneck adapters inserted into the image encoder's blocks.

Each adapter is ``x -> up(act(conv(down(x))))`` with an optional 3x3 depthwise
convolution over the token grid, so the adapter sees spatial neighbours (which
plain linear adapters do not). The up-projection starts at zero: an adapted
model computes exactly what the base model computes until it is trained.

Two insertion points per block (Med-SA, Wu et al. 2023):

* after the attention (serial): ``attn(x) + adapter(attn(x))``
* beside the MLP (parallel): ``mlp(x) + scale * adapter(x)``
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SpatialAdapter(nn.Module):
    """A bottleneck over the channel dimension, with an optional depthwise conv over the grid.

    Accepts ``B x H x W x C`` (SAM ViT) or ``B x N x C`` tokens; in the latter
    case the conv runs when N is a perfect square (TinyViT windows and stages).
    """

    def __init__(self, dim: int, hidden: int, depthwise_conv: bool = True) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if depthwise_conv else None
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.down(x))
        if self.conv is not None:
            h = self._grid_conv(h)
        return self.up(h)

    def _grid_conv(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim == 4:  # B x H x W x C
            return h + self.conv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if h.ndim == 3:
            side = math.isqrt(h.shape[1])
            if side * side == h.shape[1]:
                b, n, c = h.shape
                g = h.transpose(1, 2).reshape(b, c, side, side)
                return h + self.conv(g).reshape(b, c, n).transpose(1, 2)
        return h


class SerialAdapted(nn.Module):
    """``module(x)`` followed by a residual adapter: used after attention."""

    def __init__(self, module: nn.Module, adapter: SpatialAdapter) -> None:
        super().__init__()
        self.module = module
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.module(x, *args, **kwargs)
        return y + self.adapter(y)


class ParallelAdapted(nn.Module):
    """``module(x) + scale * adapter(x)``: used beside the MLP."""

    def __init__(self, module: nn.Module, adapter: SpatialAdapter, scale: float) -> None:
        super().__init__()
        self.module = module
        self.adapter = adapter
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) + self.scale * self.adapter(x)


def block_width(block: nn.Module) -> int:
    """Channel width of an encoder block (SAM ViT or TinyViT)."""
    if hasattr(block, "dim"):
        return int(block.dim)
    return int(block.norm1.normalized_shape[0])


__all__ = ["SpatialAdapter", "SerialAdapted", "ParallelAdapted", "block_width"]
