"""Learning from scribbles: sparse strokes per class, every other pixel unlabelled.

A scribble target on the decoder grid holds the class of each scribbled pixel
(0 for a background stroke) and -1 elsewhere. :func:`scribble_loss` trains
both heads of the decoder from such targets: a partial loss (cross-entropy
and Dice on the scribbled pixels only), and two optional terms
(:class:`~medadapt.training.config.ScribbleLossConfig` says when):

* dense pseudo-labels that the promptable decoder draws from the slice's own
  strokes (:func:`pseudo_labels`: clicks sampled along each class's strokes,
  the other strokes as negatives). They are redrawn at every step by the
  model being trained, so they improve as it does; scribbled pixels always
  keep their stroke's class, and pixels below a confidence are left out;
* an affinity term (:func:`affinity_loss`): neighbouring pixels of similar
  intensity should get the same class.

Prompted training uses the same clicks as prompts, scored on the strokes
alone, so "strokes -> mask" is itself learned, and with it the pseudo-labels.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..foundation import Backbone
from ..foundation.decoding import labels_from_logits
from ..prompts.scribbles import simulate_scribble_labels
from .config import ScribbleLossConfig
from .losses import automatic_loss, soft_dice_loss
from .prompted import decode_simulated

_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0))  # neighbour offsets of the affinity term


def stroke_clicks(target: torch.Tensor, k: int, n_pos: int, n_neg: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clicks from one slice's strokes (decoder grid, x/y): up to ``n_pos`` on class ``k``'s strokes, up to
    ``n_neg`` on every other stroke (background and other classes)."""
    t = target.cpu().numpy()
    pos = np.argwhere(t == k)
    neg = np.argwhere((t >= 0) & (t != k))
    pick = lambda a, n: a[rng.choice(len(a), size=min(n, len(a)), replace=False)] if n and len(a) else a[:0]  # noqa: E731
    p, q = pick(pos, n_pos), pick(neg, n_neg)
    pts = np.concatenate([p, q])[:, ::-1].astype(np.float32)  # (row, col) -> (x, y), as every other click
    lab = np.concatenate([np.ones(len(p), np.int64), np.zeros(len(q), np.int64)])
    return pts, lab


def _decode_clicks(model: Backbone, emb: torch.Tensor, clicks: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """Decode one click set per row of ``emb`` (decoder-grid coordinates): N x m x m logits."""
    scale = model.processor.image_size / model.processor.mask_size
    return decode_simulated(model, emb, [None] * len(clicks), [p * scale for p, _ in clicks],
                            [lab for _, lab in clicks], None)


@torch.no_grad()
def pseudo_labels(model: Backbone, emb: torch.Tensor, target: torch.Tensor, n_classes: int,
                  cfg: ScribbleLossConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense labels (B x m x m, 0..C) and their confidence (B x m x m in [0, 1]) from each slice's strokes.

    For every class scribbled on a slice, the promptable decoder answers the
    stroke clicks; a class without a stroke there is absent. A pixel takes the
    class of the largest answer if it is positive, else background (the
    automatic rule), with the softmax probability of that choice as its
    confidence. Scribbled pixels keep their stroke's class with confidence 1.
    """
    b, m = target.shape[0], target.shape[-1]
    logits = torch.full((b, n_classes, m, m), -30.0, device=emb.device)
    rows, ks, clicks = [], [], []
    for i in range(b):
        for k in range(1, n_classes + 1):
            if bool((target[i] == k).any()):
                rows.append(i)
                ks.append(k)
                clicks.append(stroke_clicks(target[i], k, cfg.points, cfg.negatives, rng))
    if rows:
        low = _decode_clicks(model, emb[rows], clicks).float()
        logits[rows, [k - 1 for k in ks]] = low
    full = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1).softmax(1)
    conf, labels = full.max(1)
    scribbled = target >= 0
    labels = torch.where(scribbled, target, labels)
    conf = torch.where(scribbled, torch.ones_like(conf), conf)
    return labels, conf


def affinity_loss(class_logits: torch.Tensor, image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Neighbouring pixels of similar intensity should agree: mean over neighbour pairs of
    ``w_ij * (1 - p_i . p_j)``, ``w_ij = exp(-(I_i - I_j)^2 / 2 sigma^2)`` on the slice standardised.

    ``class_logits``: B x C x m x m (automatic rule: softmax over ``[0, logits]``); ``image``: B x m x m.
    """
    p = torch.cat([torch.zeros_like(class_logits[:, :1]), class_logits], dim=1).float().softmax(1)
    img = image.float()
    img = (img - img.mean((1, 2), keepdim=True)) / img.std((1, 2), keepdim=True).clamp(min=1e-6)
    total, weight = p.new_zeros(()), p.new_zeros(())
    for dy, dx in _SHIFTS:
        h, w = img.shape[1] - dy, img.shape[2] - abs(dx)
        x0, x1 = (0, dx) if dx >= 0 else (-dx, 0)
        a, c = img[:, :h, x0 : x0 + w], img[:, dy : dy + h, x1 : x1 + w]
        wij = torch.exp(-((a - c) ** 2) / (2 * sigma**2))
        agree = (p[:, :, :h, x0 : x0 + w] * p[:, :, dy : dy + h, x1 : x1 + w]).sum(1)
        total = total + (wij * (1 - agree)).sum()
        weight = weight + wij.sum()
    return total / weight.clamp(min=1.0)


def _weighted_mask_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the pixels ``weight`` counts (N x m x m each)."""
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()
    bce = bce / weight.sum().clamp(min=1.0)
    return bce + soft_dice_loss(logits * weight.gt(0) + (-30.0) * weight.eq(0), target * weight.gt(0))


def grid_image(pixels: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Preprocessed pixels (B x 3 x S x S) -> the slice's intensity on the decoder grid (B x m x m)."""
    g = pixels.float().mean(1, keepdim=True)
    if g.shape[-1] != mask_size:
        g = F.adaptive_avg_pool2d(g, mask_size)
    return g[:, 0]


def scribble_loss(model: Backbone, emb: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None, n_classes: int,
                  cfg: ScribbleLossConfig, rng: np.random.Generator, ramp: float, *, automatic: bool,
                  prompted_weight: float) -> torch.Tensor:
    """The loss of one batch of scribble targets (B x m x m, -1 unlabelled) on embeddings ``emb``.

    ``image`` (B x m x m; needed when ``cfg.affinity_weight`` > 0) feeds the affinity term; ``ramp`` in [0, 1] scales
    the pseudo-label weight (0 at the start of training). ``automatic``
    trains the class tokens; ``prompted_weight`` > 0 trains stroke-click
    prompts as well.
    """
    scribbled = (target >= 0).float()
    if cfg.pseudo_weight > 0:
        labels, conf = pseudo_labels(model, emb, target, n_classes, cfg, rng)
    else:  # the partial loss alone: no decoding for pseudo-labels
        labels, conf = target.clamp(min=0), scribbled
    trusted = (conf >= cfg.confidence).float() * (1 - scribbled)
    total = emb.new_zeros((), dtype=torch.float32)
    low = model.decode_classes(emb, torch.arange(n_classes, device=emb.device)).float() if automatic else None
    if low is not None and cfg.agree:  # only where the automatic head already says the same
        trusted = trusted * labels.eq(labels_from_logits(low.detach().transpose(0, 1))).float()
    weight = scribbled + cfg.pseudo_weight * ramp * trusted
    if low is not None:
        total = total + automatic_loss(low, labels, weight)
        if cfg.affinity_weight > 0:
            if image is None:
                raise MedAdaptError("scribble_loss: the affinity term needs the slices' image (image=None)")
            total = total + cfg.affinity_weight * affinity_loss(low, image, cfg.affinity_sigma)
    if prompted_weight > 0:
        rows, ks, clicks = [], [], []
        for i in range(target.shape[0]):
            present = [int(v) for v in torch.unique(target[i]).tolist() if v > 0]
            if present:
                k = present[int(rng.integers(len(present)))]
                rows.append(i)
                ks.append(k)
                clicks.append(stroke_clicks(target[i], k, cfg.points, cfg.negatives, rng))
        if rows:
            low = _decode_clicks(model, emb[rows], clicks).float()
            tgt = torch.stack([(labels[i] == k).float() for i, k in zip(rows, ks)])
            # the strokes alone teach the prompted answer: it draws the pseudo-labels, so it must not learn
            # from them (a loop that amplifies its own first mistakes)
            total = total + prompted_weight * _weighted_mask_loss(low, tgt, scribbled[rows])
    return total


#: background strokes across the whole slice, besides one around each object (data.scribbles: simulate)
SIMULATED_BACKGROUND_STROKES = 2


def simulate_scribbles_on(slices: list, seed: int) -> list:
    """The slices with their full masks replaced by simulated scribbles (-1 unscribbled), seeded per slice
    (run seed, case id, slice index), so the same run draws the same strokes: per object one stroke along its
    middle and one in the background around it, and two strokes along the middle of the background."""
    out = []
    for s in slices:
        rng = np.random.default_rng([seed, zlib.crc32(s.case_id.encode()), 0 if s.index is None else s.index + 1])
        out.append(replace(s, label=simulate_scribble_labels(s.label, rng, background=SIMULATED_BACKGROUND_STROKES)))
    return out


__all__ = ["SIMULATED_BACKGROUND_STROKES", "affinity_loss", "grid_image", "pseudo_labels", "scribble_loss",
           "simulate_scribbles_on", "stroke_clicks"]
