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
        all_masks / all_scores / all_logits: N x 3 x H x W, N x 3 and N x 3 x m x m, only with ``multimask``.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    all_masks: np.ndarray | None = None
    all_scores: np.ndarray | None = None
    all_logits: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)
    label_values: list[int] = field(default_factory=list)


def label_dtype(values) -> np.dtype:
    """The smallest unsigned integer type that holds every label value (0 = background)."""
    top = max(values, default=0)
    return np.dtype(np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32)


def paint_labels(masks: np.ndarray, values, dtype: np.dtype | None = None) -> np.ndarray:
    """An H x W label map holding ``values[i]`` where ``masks[i]`` is set (later masks win; automatic
    answers do not overlap)."""
    out = np.zeros(np.shape(masks)[1:], dtype=dtype or label_dtype(values))
    for m, v in zip(masks, values):
        out[m] = v
    return out


def _copy_prediction(p: Prediction) -> Prediction:
    """A copy whose arrays the caller may modify without touching the original."""
    return replace(p, masks=p.masks.copy(), scores=p.scores.copy(), logits=p.logits.copy(),
                   labels=list(p.labels), label_values=list(p.label_values))


__all__ = ["Prediction", "label_dtype", "paint_labels"]
