"""A depth adapter: each slice's image embedding mixed with its neighbours' along the slice axis.

A 2-D encoder sees one slice; the anatomy above and below, which tells a
structure's end from a look-alike, never reaches the decoder. This adapter
(3DSAM-adapter's idea, at a cost a CPU affords) takes the embeddings of a
slice and of its ``n`` neighbours on each side, stacks them along channels,
and adds to the centre slice's embedding a bottleneck of them: a 1x1
convolution across the stacked slices (a convolution of width ``2n + 1``
along the slice axis), a residual 3x3 convolution in-plane, and a
zero-initialised projection back, so an adapted model starts out computing
exactly what the base model does.

It works on cached encoder outputs, like the context adapter, so training
never runs the encoder. A slice without neighbours (a 2-D image, or the end
of a volume) stands in for its missing neighbours; training shows it such
slices too (see :func:`neighbour_stack`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DepthAdapter(nn.Module):
    """``x + up(mix(down(stack)))`` for a B x S x C x h x w stack of S = 2n + 1 slices' embeddings (centre: x)."""

    def __init__(self, dim: int, hidden: int, neighbours: int) -> None:
        super().__init__()
        self.neighbours = int(neighbours)
        self.down = nn.Conv2d(dim * (2 * self.neighbours + 1), hidden, 1)
        self.mix = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.up = nn.Conv2d(hidden, dim, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def slices(self) -> int:
        return 2 * self.neighbours + 1

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        b, s, c, h, w = stack.shape
        if s != self.slices:
            raise ValueError(f"the depth adapter reads {self.slices} slices per embedding; got {s}")
        centre = stack[:, self.neighbours]
        hidden = F.gelu(self.down(stack.reshape(b, s * c, h, w)))
        hidden = hidden + F.gelu(self.mix(hidden))
        return centre + self.up(hidden)


def neighbour_stack(embeddings: list[torch.Tensor | None], neighbours: int) -> torch.Tensor:
    """C x h x w embeddings of slices ``k - n .. k + n`` (None where a slice is missing) -> S x C x h x w.

    A missing slice takes the nearest present one towards the centre, so the
    end of a volume repeats its last slice and a lone 2-D image repeats itself.
    """
    if len(embeddings) != 2 * neighbours + 1 or embeddings[neighbours] is None:
        raise ValueError(f"need {2 * neighbours + 1} slices' embeddings with the centre present")
    out = list(embeddings)
    for i in range(neighbours - 1, -1, -1):
        out[i] = out[i] if out[i] is not None else out[i + 1]
    for i in range(neighbours + 1, len(out)):
        out[i] = out[i] if out[i] is not None else out[i - 1]
    return torch.stack(out)


__all__ = ["DepthAdapter", "neighbour_stack"]
