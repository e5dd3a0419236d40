"""The prompted loss: simulated boxes and clicks (with corrective clicks) decoded against the target.

Shared by the trainer (few-label fine-tuning), the online learner and
training from scribbles.
"""

from __future__ import annotations

import numpy as np
import torch

from ..foundation import Backbone
from ..prompts.simulate import box_from_mask, corrective_click, sample_points
from ..prompts.types import PAD_LABEL, Prompts
from .config import PromptTrainingConfig
from .distributed import Split, World
from .losses import binary_mask_loss


def prompted_loss(model: Backbone, emb: torch.Tensor, target: torch.Tensor, pc: PromptTrainingConfig,
                  rng: np.random.Generator, world: World = World(), part: Split | None = None) -> torch.Tensor:
    """Simulated box/point prompts for one present class per slice, then corrective clicks.

    ``target`` is the whole batch's label maps on the decoder grid; ``emb`` this rank's rows of it (``part``;
    all of them in one process). ``pc`` gives the prompt modes, box jitter, clicks and corrective clicks (any
    object with those fields of :class:`PromptTrainingConfig`). Prompts and clicks are drawn from ``rng`` for
    every row, on every rank alike; each rank decodes its own rows.
    """
    part = part or world.split(target.shape[0])
    proc = model.processor
    device = emb.device
    scale = proc.image_size / proc.mask_size
    rows, masks, boxes, points, labels = [], [], [], [], []
    for b in range(target.shape[0]):
        present = [int(v) for v in torch.unique(target[b]).tolist() if v > 0]
        if not present:
            continue
        k = present[int(rng.integers(len(present)))]
        m = (target[b] == k).cpu().numpy()
        mode = pc.prompted[int(rng.integers(len(pc.prompted)))]
        box = box_from_mask(m, jitter=pc.box_jitter, rng=rng) * scale if "box" in mode else None
        if "points" in mode:
            pts, lab = sample_points(m, pc.n_pos, pc.n_neg, rng)
            pts = pts * scale
        else:
            pts, lab = np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
        rows.append(b)
        masks.append(m)
        boxes.append(box)
        points.append(pts)
        labels.append(lab)
    if not rows:
        return torch.zeros((), device=device)
    tgt = torch.from_numpy(np.stack(masks)).float().to(device)
    total = torch.zeros((), device=device)
    prev = None
    # this rank's prompted rows (contiguous: rows ascend); one without any decodes row 0 and drops it
    mine = [j for j, b in enumerate(rows) if part.start <= b < part.stop]
    own = slice(mine[0], mine[-1] + 1) if mine else slice(0, 1)
    at = [rows[j] - part.start for j in mine] if mine else [0]
    bounds = np.cumsum([0, *part.counts])
    counts = [sum(1 for b in rows if lo <= b < hi) for lo, hi in zip(bounds, bounds[1:])]
    for it in range(1 + pc.corrective_clicks):
        low = world.gather(decode_simulated(model, emb[at], boxes[own], points[own], labels[own],
                                            None if prev is None else prev[own]), counts)
        total = total + binary_mask_loss(low, tgt)
        if it == pc.corrective_clicks:
            break
        add_corrective_clicks(low.detach(), masks, points, labels, scale, rng)
        prev = low.detach()[:, None]
    return total / (1 + pc.corrective_clicks)


def proposal_loss(model: Backbone, emb: torch.Tensor, proposal: torch.Tensor, masks: np.ndarray, clicks: int,
                  rng: np.random.Generator) -> torch.Tensor:
    """Corrective clicks that start from an automatic proposal, as a user of the app corrects one.

    ``proposal``: N x m x m logits on the decoder grid (the class tokens' answer for each row's object; used as
    the first previous mask, without gradient), ``masks``: N x m x m bool, the objects. Each of ``clicks``
    passes clicks at the centre of the largest wrong region of the last answer (all clicks so far, with the
    last answer's logits as the mask prompt, as :func:`medadapt.evaluation.interactive.simulate_clicks` decodes)
    and scores the answer. Rows already right get no click and are decoded again as they stand.
    """
    if clicks < 1 or len(masks) == 0:
        return torch.zeros((), device=emb.device)
    scale = model.processor.image_size / model.processor.mask_size
    tgt = torch.from_numpy(np.asarray(masks, np.float32)).to(emb.device)
    points = [np.zeros((0, 2), np.float32) for _ in masks]
    labels = [np.zeros((0,), np.int64) for _ in masks]
    prev, total = proposal.detach(), torch.zeros((), device=emb.device)
    for _ in range(clicks):
        add_corrective_clicks(prev, masks, points, labels, scale, rng)
        if not any(len(p) for p in points):
            break
        low = decode_simulated(model, emb, [None] * len(masks), points, labels, prev[:, None])
        total = total + binary_mask_loss(low, tgt)
        prev = low.detach()
    return total / clicks


def add_corrective_clicks(logits: torch.Tensor, masks, points: list, labels: list, scale: float,
                          rng: np.random.Generator) -> None:
    """Append to each row's clicks (model-input frame, ``scale`` from the decoder grid) the click that fixes
    the largest error of its answer (``logits`` N x m x m against ``masks``); rows already right get none."""
    pred = (logits > 0).cpu().numpy()
    for j in range(len(masks)):
        click = corrective_click(pred[j], masks[j], rng)
        if click is not None:
            points[j] = np.concatenate([points[j], click[0][None] * scale]).astype(np.float32)
            labels[j] = np.concatenate([labels[j], [click[1]]]).astype(np.int64)


def decode_simulated(model: Backbone, emb, boxes, points, labels, prev) -> torch.Tensor:
    """Decode one simulated prompt per row (box or None, clicks, previous logits) as one :class:`Prompts`."""
    n = len(boxes)
    kmax = max(len(p) for p in points)
    pts = lab = None
    if kmax > 0:  # click sets of different lengths, padded with SAM's 'not a point' (label -1)
        pts = np.zeros((n, kmax, 2), np.float32)
        lab = np.full((n, kmax), PAD_LABEL, np.int64)
        for j, (p, l) in enumerate(zip(points, labels)):
            pts[j, : len(p)], lab[j, : len(l)] = p, l
    box = np.stack([np.full(4, np.nan, np.float32) if b is None else b for b in boxes]).astype(np.float32)
    prompts = Prompts(boxes=None if np.isnan(box).all() else box, points=pts, point_labels=lab,
                      masks=None if prev is None else prev[:, 0].float().cpu().numpy())
    low, _ = model.decode_prompts(emb, prompts)
    return low[:, 0]


__all__ = ["decode_simulated", "prompted_loss", "proposal_loss"]
