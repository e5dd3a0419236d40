"""Segmentation losses on decoder logits.

Automatic mode is trained with the rule used at inference: a pixel belongs to
the class with the largest logit if that logit is positive, else to the
background. That is a softmax over ``[0, l_1, ..., l_C]``, so cross-entropy on
those logits trains exactly what prediction does; a soft Dice per class keeps
small structures from being swamped by background pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..foundation.decoding import label_masks


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask (N x m x m logits vs {0,1} targets), averaged."""
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (1 - (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def binary_mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice for prompted masks (N x m x m)."""
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)


def automatic_loss(
    class_logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over ``[0, logits]`` + per-class soft Dice.

    ``class_logits``: B x C x m x m; ``labels``: B x m x m with values 0..C.
    ``weight`` (B x m x m in [0, 1], optional) counts each pixel that much:
    pseudo-labels use it to leave out pixels below the confidence threshold.
    """
    b, c = class_logits.shape[:2]
    full = torch.cat([torch.zeros_like(class_logits[:, :1]), class_logits], dim=1)
    onehot = label_masks(labels, c).float()
    if weight is None:
        ce = F.cross_entropy(full, labels)
        prob_logits, target = class_logits, onehot
        return ce + soft_dice_loss(prob_logits.reshape(b * c, -1), target.reshape(b * c, -1))
    w = weight.float()
    ce = (F.cross_entropy(full, labels, reduction="none") * w).sum() / w.sum().clamp(min=1.0)
    prob = torch.sigmoid(class_logits) * w[:, None]
    target = onehot * w[:, None]
    inter = (prob * target).sum((2, 3))
    dice = 1 - (2 * inter + 1.0) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1.0)
    return ce + dice.mean()


__all__ = ["soft_dice_loss", "binary_mask_loss", "automatic_loss"]
