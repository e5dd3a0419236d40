"""What a prediction returns: masks at the image's original size, with scores and low-resolution logits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Prediction:
    """Masks for one image, at the image's original size.

    Attributes:
        masks: N x H x W bool, one mask per prompt (the best-scoring of the
            three candidates when ``multimask=True``).
        scores: N predicted IoU of each returned mask.
        logits: N x m x m low-resolution logits of each returned mask; pass one
            back as ``mask_input`` to refine it with more clicks.
        all_masks / all_scores: N x 3 x H x W and N x 3, only with ``multimask``.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    all_masks: np.ndarray | None = None
    all_scores: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)


def _copy_prediction(p: Prediction) -> Prediction:
    """A copy whose arrays the caller may modify without touching the original."""
    return replace(p, masks=p.masks.copy(), scores=p.scores.copy(), logits=p.logits.copy(),
                   labels=list(p.labels), label_values=list(p.label_values))


__all__ = ["Prediction"]
