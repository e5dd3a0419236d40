"""Zero-shot segmentation from text: saliency -> prompts -> the promptable decoder -> one mask per text."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..prompts.text.clip import ClipTextModel
from ..prompts.text.config import TextPromptConfig, as_texts
from ..prompts.text.saliency import prompts_from_saliency, text_saliency
from ..prompts.types import PAD_LABEL, Prompts
from .prediction import Prediction

_SHIFTS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]  # quarter-box shifts of candidate boxes
_EMPTY_LOGIT = -20.0  # low-res logit of "no object" where a text found nothing


def _fuse(masks: list[np.ndarray], logits: list[np.ndarray], fusion: str) -> tuple[np.ndarray, np.ndarray]:
    """One component's masks from several prompt kinds -> one mask and its low-res logits."""
    m = np.stack(masks)
    lo = np.stack(logits)
    if fusion == "union" or len(masks) == 1:
        return m.any(axis=0), lo.max(axis=0)
    return m.sum(axis=0) * 2 > len(masks), np.median(lo, axis=0)


def _boxes(centre: np.ndarray, sizes: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """K x 4 boxes of the given (width, height) about ``centre``, clipped to the image, without repeats."""
    h, w = size
    b = np.asarray([[centre[0] - bw / 2, centre[1] - bh / 2, centre[0] + bw / 2, centre[1] + bh / 2]
                    for bw, bh in sizes], dtype=np.float32)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h - 1)
    b = np.unique(np.round(b), axis=0)
    return b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]


def _pick(pred: "Prediction", box: np.ndarray, saliency: np.ndarray) -> int:
    """The candidate mask to keep: highest predicted IoU among those covering the component's saliency.

    Predicted IoU says how well a box fitted *some* structure; whether it is
    the named one is told by the saliency (a large box may also hold other
    structures, or mostly background), so a mask must cover at least half of
    the saliency inside the component's box.
    """
    x0, y0, x1, y1 = np.round(box).astype(int)
    sal = saliency[y0 : y1 + 1, x0 : x1 + 1]
    covered = (pred.masks[:, y0 : y1 + 1, x0 : x1 + 1] * sal).sum(axis=(1, 2)) / max(float(sal.sum()), 1e-12)
    ok = covered >= min(0.5, float(covered.max()))
    return int(np.argmax(np.where(ok, pred.scores, -np.inf)))


def _decode(
    segmenter, kind: str, one: Prompts, saliency: np.ndarray, cfg: TextPromptConfig, multimask: bool
) -> "Prediction | None":
    """Decode one component with one prompt kind; for boxes, the best-fitting candidate box.

    The candidates (one decoder batch) are the component's box and the square
    of its longer side at every scale, each also shifted by a quarter of its
    size in the eight directions: a saliency peak need not sit at the centre of
    the structure, so neither need the box that fits it.
    """
    kwargs: dict[str, Any] = {}
    if "points" in kind and one.points is not None:
        valid = one.point_labels[0] != PAD_LABEL
        if valid.any():
            kwargs = {"points": one.points[:, valid], "point_labels": one.point_labels[:, valid]}
    if "box" not in kind:
        return segmenter.predict(multimask=multimask, **kwargs) if kwargs else None
    box = one.boxes[0]
    bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
    side = max(bw, bh)
    centre = (box[:2] + box[2:]) / 2
    shifts = _SHIFTS if cfg.box_shifts else [(0, 0)]
    boxes = np.concatenate([
        _boxes(centre + np.array([dx * f * a, dy * f * b]) / 4, [(f * a, f * b)], segmenter.image_size)
        for f in cfg.box_scales for a, b in dict.fromkeys([(bw, bh), (side, side)]) for dx, dy in shifts
    ])
    boxes = np.unique(boxes, axis=0)
    if len(boxes) == 0:  # a component one pixel wide or high: no box with an area fits it
        return segmenter.predict(multimask=multimask, **kwargs) if kwargs else None
    pred = segmenter.predict(boxes=boxes, multimask=multimask, **kwargs)  # the clicks go with every box
    k = _pick(pred, box, saliency)
    return Prediction(masks=pred.masks[k : k + 1], scores=pred.scores[k : k + 1], logits=pred.logits[k : k + 1])


def segment_from_text(
    segmenter,
    clip: ClipTextModel,
    image: np.ndarray | str | os.PathLike | None,
    text: str | Sequence[str],
    config: TextPromptConfig | None = None,
    *,
    multimask: bool = False,
) -> "Prediction":
    """Zero-shot segmentation of each text: saliency -> prompts -> decoder -> one mask per text.

    ``image`` is set on ``segmenter`` first; None uses the image already set
    with ``segmenter.set_image``. Each text's components are decoded with every
    kind in ``config.prompt_kinds`` (boxes: see ``box_scales``),
    fused per component (``config.fusion``) and united. Returns a :class:`~medadapt.Prediction` with T x H x W
    ``masks``, ``labels`` = the texts, ``scores`` = the mean predicted IoU of
    the decoded masks (0 where the text found nothing) and ``logits`` = the
    fused low-resolution logits (max for union, median for vote).
    """
    cfg = config or clip.config
    names = as_texts(text)
    if image is not None:
        segmenter.set_image(image)
    arr = getattr(segmenter, "_image", None)
    if arr is None:
        raise MedAdaptError("no image set: call set_image(image) before predicting from text")
    h, w = arr.shape[:2]
    maps = text_saliency(clip, arr, names, config=cfg)
    m = segmenter.backbone.processor.mask_size
    out_masks, out_scores, out_logits = [], [], []
    for t in range(len(names)):
        prompts = prompts_from_saliency(maps[t], cfg)
        mask = np.zeros((h, w), dtype=bool)
        logit = np.full((m, m), _EMPTY_LOGIT, dtype=np.float32)
        scores = []
        for i in range(len(prompts)):
            kinds_masks, kinds_logits = [], []
            for kind in cfg.prompt_kinds:
                pred = _decode(segmenter, kind, prompts.select(i), maps[t], cfg, multimask)
                if pred is not None:
                    kinds_masks.append(pred.masks[0])
                    kinds_logits.append(pred.logits[0])
                    scores.append(float(pred.scores[0]))
            if not kinds_masks:
                continue
            fused, fused_logit = _fuse(kinds_masks, kinds_logits, cfg.fusion)
            mask |= fused
            logit = np.maximum(logit, fused_logit)
        out_masks.append(mask)
        out_scores.append(float(np.mean(scores)) if scores else 0.0)
        out_logits.append(logit)
    return Prediction(
        masks=np.stack(out_masks),
        scores=np.asarray(out_scores, dtype=np.float32),
        logits=np.stack(out_logits).astype(np.float32),
        labels=names,
    )


__all__ = ["segment_from_text"]
