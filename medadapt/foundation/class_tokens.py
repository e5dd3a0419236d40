"""Learned per-class prompts: prompt-free (automatic) segmentation.

SAM's mask decoder takes sparse prompt tokens (two per box, one per point) and
answers with mask tokens that a small hypernetwork turns into mask weights.
For automatic segmentation each target class gets

* ``T`` learned prompt tokens, fed to the decoder in place of a user's prompt,
  starting from the embedding of a box around the whole image (SAM's "segment
  the salient object" prompt), so training starts from a sensible mask;
* its own output mask token and hypernetwork, copied from SAM's first mask
  token and MLP.

All classes are decoded **jointly**, in one decoder pass per image: their
tokens attend to each other in the two-way transformer, so the right-ventricle
tokens "see" what the left-ventricle tokens claim. Decoding each class in a
separate pass (our first design) left neighbouring classes unable to compete:
on ACDC the RV was painted as LV (see benchmarks/results). One pass per image
instead of one per class is also C times cheaper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ClassPromptTokens(nn.Module):
    """Per class: ``T`` prompt tokens, one output mask token and a hypernetwork MLP."""

    def __init__(self, num_classes: int, embed_dim: int, tokens_per_class: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_classes, tokens_per_class, embed_dim))
        self.mask_tokens = nn.Parameter(torch.zeros(num_classes, embed_dim))
        self.hypernets = nn.ModuleList()  # filled from the decoder by init_from_decoder

    @torch.no_grad()
    def init_from_decoder(self, mask_decoder: nn.Module, noise: float = 0.1, seed: int = 0) -> None:
        """Every class starts from SAM's first mask token and its hypernetwork (plus token noise)."""
        base = mask_decoder.mask_tokens.weight[0]
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        jitter = torch.randn(self.mask_tokens.shape, generator=g) * noise * base.abs().mean().cpu()
        self.mask_tokens.copy_(base.unsqueeze(0).expand_as(self.mask_tokens) + jitter.to(base.device))
        mlp = mask_decoder.output_hypernetworks_mlps[0]
        self.hypernets = nn.ModuleList(copy.deepcopy(mlp) for _ in range(self.num_classes))

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
