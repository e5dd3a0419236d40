"""A context adapter on the image embedding, between the frozen encoder and the decoder.

SAM's mask decoder labels each output pixel by a dot product of its upscaled
feature with a mask token's vector: per pixel, close to linear. With the
encoder frozen, what a pixel "is" comes from the pretrained features alone,
so a structure whose inside looks like its outside (the fetal head's interior
in ultrasound, a ventricle's blood pool beside another's) is labelled by
texture rather than by where it sits. This adapter gives the decoder a
trainable, spatially wide view of the embedding: a channel bottleneck, a
stack of residual dilated 3x3 convolutions (receptive field 1 + 2 * sum of
the dilations, in embedding pixels), and a zero-initialised projection back,
so an adapted model starts out computing exactly what the base model does.

Why here and not inside the encoder: it sits after the encoder, so training
runs on cached embeddings (no encoder pass per step), which keeps it
affordable on a CPU, unlike LoRA or spatial adapters in the encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContextAdapter(nn.Module):
    """``x + up(convs(down(x)))`` over a B x C x h x w image embedding."""

    def __init__(self, dim: int, hidden: int, dilations: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.Conv2d(dim, hidden, 1)
        self.convs = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d) for d in dilations)
        self.up = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.down(x))
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        return x + self.up(h)

    @property
    def receptive_field(self) -> int:
        """Side, in embedding pixels, of the window one output pixel sees."""
        return 1 + 2 * sum(int(c.dilation[0]) for c in self.convs)


__all__ = ["ContextAdapter"]
