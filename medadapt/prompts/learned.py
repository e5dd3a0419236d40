"""Learned per-class prompt tokens: prompt-free (automatic) segmentation.

SAM's mask decoder takes sparse prompt tokens (two per box, one per point).
For automatic segmentation each target class gets its own few learned tokens,
fed to the decoder in place of a user's prompt; the decoder then answers
"where is class k" for every class in one batch. The tokens start from the
embedding of a box around the whole image (SAM's "segment the salient object"
prompt), so training starts from a sensible mask rather than noise.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassPromptTokens(nn.Module):
    """``C`` classes x ``T`` tokens x ``D`` channels of learned sparse prompt embeddings."""

    def __init__(self, num_classes: int, embed_dim: int, tokens_per_class: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_classes, tokens_per_class, embed_dim))

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[0]

    @torch.no_grad()
    def init_from_box(self, prompt_encoder: nn.Module, image_size: int, noise: float = 0.1, seed: int = 0) -> None:
        """Start every class from the whole-image box embedding plus a little class-specific noise."""
        box = torch.tensor([[[0.0, 0.0, image_size - 1.0, image_size - 1.0]]], device=self.tokens.device)
        sparse, _ = prompt_encoder(points=None, boxes=box, masks=None)  # 1 x 2 x D
        base = sparse[0]
        t = self.tokens.shape[1]
        reps = base.repeat((t + base.shape[0] - 1) // base.shape[0], 1)[:t]
        g = torch.Generator(device="cpu").manual_seed(seed)
        jitter = torch.randn(self.tokens.shape, generator=g) * noise * base.abs().mean().cpu()
        self.tokens.copy_(reps.unsqueeze(0).expand_as(self.tokens) + jitter.to(self.tokens.device))

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Class indices (N,) -> sparse prompt embeddings N x T x D."""
        return self.tokens[class_ids]


__all__ = ["ClassPromptTokens"]
