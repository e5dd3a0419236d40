"""Automatic mode's rule: class logits -> label map -> masks.

A pixel belongs to the class with the largest logit if that logit is
positive, else to the background: a softmax over ``[0, l_1, ..., l_C]``.
Training optimises exactly this rule (:func:`medadapt.training.losses.automatic_loss`),
and prediction, self-prompting, pseudo-labels and validation all decode with
these functions, so the rule is written once.
"""

from __future__ import annotations

import torch


def labels_from_logits(class_logits: torch.Tensor) -> torch.Tensor:
    """The inference rule: C x ... logits -> label map 0..C (0 where no logit is positive)."""
    best = class_logits.max(dim=0)
    return torch.where(best.values > 0, best.indices + 1, torch.zeros_like(best.indices))


def label_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B x H x W labels 0..C -> B x C x H x W bool masks of classes 1..C (background dropped).

    A comparison rather than ``F.one_hot``, which reads the labels' minimum and
    maximum back to the host on CPU to check them: a step built on this never
    waits for a value.
    """
    ks = torch.arange(1, num_classes + 1, device=labels.device)
    return labels[:, None] == ks[None, :, None, None]


def masks_from_logits(class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C x H x W class logits -> (C x H x W masks that do not overlap, C scores): automatic mode's answer.

    A class's score is the mean foreground probability inside its mask (0 for
    an empty mask).
    """
    labels = labels_from_logits(class_logits)
    masks = label_masks(labels[None], class_logits.shape[0])[0]
    prob = torch.sigmoid(class_logits)
    scores = torch.stack([prob[k][m].mean() if m.any() else prob.new_zeros(()) for k, m in enumerate(masks)])
    return masks, scores


__all__ = ["label_masks", "labels_from_logits", "masks_from_logits"]
