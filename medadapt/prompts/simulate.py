"""Prompts made from masks: simulated for training, corrective for refinement.

Fine-tuning a promptable model needs prompts for every training mask, and a
model trained only on perfect tight boxes breaks on the sloppy boxes people
draw. So training prompts are *simulated* from the ground truth with the
variability of real users: boxes with jittered sides, clicks placed away from
the boundary (where a click is ambiguous), background clicks near the object.
After a first prediction, :func:`corrective_click` adds the click a user would
add (in the largest error region), which is how iterative training and the
standard "Dice after k clicks" evaluation (SAM-Med2D, micro-sam) work.
:func:`prompts_from_prediction` does the same from a coarse prediction instead
of a ground truth, for the semi-supervised loop.

Every function that draws random numbers takes a ``numpy.random.Generator`` so
a seed makes a whole training run reproducible; where ``rng`` may be None, a
fresh unseeded generator is used. Masks are H x W (nonzero = foreground);
coordinates are ``(x, y)`` pixels of the mask's grid; boxes are
``[x0, y0, x1, y1]`` with inclusive extents.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage

from ..core.errors import MedAdaptError
from .regions import boxes_of_masks
from .types import PAD_LABEL, Prompts

# Clicks closer than this many pixels to the object's edge are avoided when the
# object is thick enough: a click on the boundary does not say which side is meant.
INTERIOR_MARGIN = 3.0
# Background clicks for neg_region="box" come from the tight box grown by this
# fraction of its side (at least NEG_MIN_PAD pixels): near the object is where
# a real user's "not this" click goes, and where the model confuses neighbours.
NEG_BOX_FRACTION = 0.1
NEG_MIN_PAD = 3
# prompts_from_prediction's background clicks lie within this ring around the
# component (fraction of its longer side, at least NEG_MIN_PAD pixels).
NEG_RING_FRACTION = 0.1

MODES = ("box", "points", "box+points", "mixed")


# ----------------------------------------------------------------- helpers
def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise MedAdaptError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got {type(rng).__name__}"
        )
    return rng


def _as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MedAdaptError(f"{name} must be a 2-D H x W array; got shape {tuple(m.shape)}")
    return m if m.dtype == bool else m != 0


def _count(n: int, name: str) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Real) or int(n) != n or n < 0:
        raise MedAdaptError(f"{name} must be a non-negative integer; got {n!r}")
    return int(n)


def _interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel.

    The mask is zero-padded first so the image border counts as background:
    otherwise an object cut by the border would get its "most interior" point
    pushed onto the border.
    """
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _choose(region: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct pixels of ``region``, uniformly, as (x, y) rows (fewer if it is small)."""
    flat = np.flatnonzero(region)
    if n <= 0 or flat.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    pick = flat[rng.permutation(flat.size)] if n >= flat.size else flat[rng.choice(flat.size, n, replace=False)]
    ys, xs = np.unravel_index(pick, region.shape)
    return np.stack([xs, ys], axis=1).astype(np.float32)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    box, present = boxes_of_masks(torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)))
    return tuple(int(v) for v in box.tolist()) if bool(present) else None


def _positives(mask: np.ndarray, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` foreground clicks, interior pixels first, then the rest of the mask."""
    if n <= 0 or not mask.any():
        return np.zeros((0, 2), dtype=np.float32)
    dist = _interior_distance(mask)
    # Thin structures (vessels, ducts) have no pixel INTERIOR_MARGIN deep: then
    # the deepest pixels they have are the best we can do.
    interior = dist >= min(INTERIOR_MARGIN, float(dist.max()))
    if exclude is not None:
        interior &= ~exclude
    pts = _choose(interior, n, rng)
    if len(pts) < n:
        rest = mask & ~interior if exclude is None else mask & ~interior & ~exclude
        pts = np.concatenate([pts, _choose(rest, n - len(pts), rng)])
    return pts


def _pad(points: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a point set to ``k`` slots with SAM's not-a-point label (-1) at (0, 0)."""
    out_p = np.zeros((k, 2), dtype=np.float32)
    out_l = np.full(k, PAD_LABEL, dtype=np.int64)
    out_p[: len(points)] = points
    out_l[: len(labels)] = labels
    return out_p, out_l


def most_interior(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the foreground pixel farthest from the background (first in raster order on ties)."""
    if not np.asarray(mask).any():
        raise MedAdaptError("most_interior: the mask is empty; there is no foreground pixel to pick")
    dist = _interior_distance(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], dtype=np.float32)


# --------------------------------------------------------------- public API
def nonempty(masks: np.ndarray) -> np.ndarray:
    """Indices of the masks in N x H x W ``masks`` that have any foreground.

    Prompts cannot be simulated for an empty mask (there is nothing to point
    at), so training code keeps ``masks[nonempty(masks)]`` before
    :func:`simulate_prompts`.
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise MedAdaptError(f"masks must be N x H x W; got shape {tuple(m.shape)}")
    return np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))


def box_from_mask(mask: np.ndarray, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The tight box ``[x0, y0, x1, y1]`` (float32) of a mask, optionally jittered.

    With ``jitter > 0`` each side moves independently by a uniform offset of up
    to ``jitter`` times the box's extent along that side's axis (0.1 = +/-10%),
    imitating a hand-drawn box; the result is clipped to the image. Training on
    jittered boxes is what keeps a fine-tuned model robust to imprecise boxes.
    """
    m = _as_mask(mask)
    if not (isinstance(jitter, numbers.Real) and math.isfinite(jitter) and jitter >= 0):
        raise MedAdaptError(f"jitter must be a finite number >= 0 (0.1 = +/-10% per side); got {jitter!r}")
    tight = _tight_box(m)
    if tight is None:
        raise MedAdaptError("cannot make a box from an empty mask; drop empty masks first (see nonempty())")
    box = np.array(tight, dtype=np.float64)
    h, w = m.shape
    if jitter > 0:
        x0, y0, x1, y1 = tight
        extent = np.array([x1 - x0 + 1, y1 - y0 + 1] * 2, dtype=np.float64)
        box += _rng(rng).uniform(-1.0, 1.0, size=4) * jitter * extent
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
        # Large jitter on a small box can cross the sides; keep the box well-formed.
        box[[0, 2]] = np.sort(box[[0, 2]])
        box[[1, 3]] = np.sort(box[[1, 3]])
    for lo, hi, size in ((0, 2, w), (1, 3, h)):  # a box of positive area, as the decoder needs (see mask_box)
        if box[hi] - box[lo] < 1.0 and size > 1:
            box[hi] = min(box[lo] + 1.0, size - 1.0)
            box[lo] = box[hi] - 1.0
    return box.astype(np.float32)


def sample_points(
    mask: np.ndarray,
    n_pos: int,
    n_neg: int,
    rng: np.random.Generator,
    *,
    neg_region: str = "box",
) -> tuple[np.ndarray, np.ndarray]:
    """Random clicks: ``n_pos`` inside the mask, ``n_neg`` outside it.

    Positives are drawn uniformly from pixels at least ``INTERIOR_MARGIN``
    pixels inside the object when it has any (else from the deepest ones),
    because boundary clicks are ambiguous. Negatives come from outside the mask,
    within the tight box grown by ``NEG_BOX_FRACTION`` (``neg_region="box"``:
    near the object, where they are informative) or from the whole image
    (``"image"``). Points are distinct; when a region has too few pixels
    (e.g. the mask fills the image, so nothing is outside), fewer points are
    returned rather than failing.

    Returns:
        points K x 2 float32 ``(x, y)`` (positives first) and labels K int64.
    """
    m = _as_mask(mask)
    n_pos, n_neg = _count(n_pos, "n_pos"), _count(n_neg, "n_neg")
    if neg_region not in ("box", "image"):
        raise MedAdaptError(f"neg_region must be 'box' or 'image'; got {neg_region!r}")
    gen = _rng(rng)
    pos = _positives(m, n_pos, gen)
    neg = np.zeros((0, 2), dtype=np.float32)
    if n_neg:
        outside = ~m
        if neg_region == "box":
            tight = _tight_box(m)
            region = np.zeros_like(m)
            if tight is not None:
                x0, y0, x1, y1 = tight
                px = max(NEG_MIN_PAD, math.ceil(NEG_BOX_FRACTION * (x1 - x0 + 1)))
                py = max(NEG_MIN_PAD, math.ceil(NEG_BOX_FRACTION * (y1 - y0 + 1)))
                region[max(0, y0 - py) : y1 + py + 1, max(0, x0 - px) : x1 + px + 1] = True
            outside &= region
        neg = _choose(outside, n_neg, gen)
    points = np.concatenate([pos, neg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)])
    return points, labels


def corrective_click(
    pred: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    mode: str = "center",
) -> tuple[np.ndarray, int] | None:
    """The next click a user would make to fix ``pred`` towards ``target``.

    Takes the larger error type (missed foreground vs. spurious foreground, by
    pixel count; missed wins ties), its largest connected component, and
    clicks at the component's most interior pixel (``mode="center"``, the
    deterministic protocol used for evaluation) or at a uniformly random pixel
    of it (``"random"``, more varied clicks for training). The label is 1 for a
    missed region (add this) and 0 for a spurious one (remove this).

    Returns:
        ``((x, y) float32, label)``, or None when ``pred`` equals ``target``.
    """
    if mode not in ("center", "random"):
        raise MedAdaptError(f"mode must be 'center' or 'random'; got {mode!r}")
    p, t = _as_mask(pred, "pred"), _as_mask(target, "target")
    if p.shape != t.shape:
        raise MedAdaptError(f"pred and target must have the same shape; got {p.shape} and {t.shape}")
    fn, fp = t & ~p, p & ~t
    n_fn, n_fp = int(fn.sum()), int(fp.sum())
    if n_fn == 0 and n_fp == 0:
        return None
    error, label = (fn, 1) if n_fn >= n_fp else (fp, 0)
    components, _ = ndimage.label(error)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # background of the label image
    region = components == int(np.argmax(sizes))
    if mode == "center":
        xy = most_interior(region)
    else:
        xy = _choose(region, 1, _rng(rng))[0]
    return xy, label


def simulate_prompts(
    masks: np.ndarray,
    rng: np.random.Generator,
    *,
    mode: str,
    box_jitter: float = 0.1,
    n_pos: int = 1,
    n_neg: int = 0,
    neg_region: str = "box",
) -> Prompts:
    """Training prompts for N ground-truth masks (N x H x W) on one image.

    Modes: ``"box"`` (jittered box), ``"points"`` (``n_pos`` foreground and
    ``n_neg`` background clicks from :func:`sample_points`), ``"box+points"``
    (both), ``"mixed"`` (a fair coin per object picks box or points, so one
    model learns both prompt types). Point sets always have
    ``K = n_pos + n_neg`` slots so batches from different images stack; slots
    that could not be filled hold padding (label -1, SAM's not-a-point).

    In ``"mixed"`` mode, objects that drew "points" get a NaN box row and
    objects that drew "box" get all-padding point rows; if every object drew
    the same kind the other field is None. Decode a truly mixed result group by
    group with :meth:`Prompts.decode_groups`, since SAM's prompt encoder cannot
    give boxes to only some objects of a call.

    Every mask must have foreground (a prompt for nothing teaches the model
    nothing and has no box): filter with ``masks[nonempty(masks)]`` first.
    """
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise MedAdaptError(f"masks must be N x H x W (or one H x W mask); got shape {tuple(m.shape)}")
    m = m if m.dtype == bool else m != 0
    if mode not in MODES:
        raise MedAdaptError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    n_pos, n_neg = _count(n_pos, "n_pos"), _count(n_neg, "n_neg")
    if mode in ("points", "mixed") and n_pos < 1:
        raise MedAdaptError(
            f"mode {mode!r} needs n_pos >= 1: background clicks alone do not say which object is meant"
        )
    if mode == "box+points" and n_pos + n_neg < 1:
        raise MedAdaptError("mode 'box+points' needs n_pos + n_neg >= 1 clicks; use mode='box' for boxes alone")
    keep = nonempty(m)
    if keep.size != m.shape[0]:
        empty = sorted(set(range(m.shape[0])) - set(keep.tolist()))
        raise MedAdaptError(
            f"masks {empty[:10]}{'...' if len(empty) > 10 else ''} are empty; "
            "drop them first with masks[nonempty(masks)]"
        )
    gen = _rng(rng)
    n, k = m.shape[0], n_pos + n_neg
    if mode == "box":
        want_box, want_pts = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    elif mode == "points":
        want_box, want_pts = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    elif mode == "box+points":
        want_box, want_pts = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    else:
        want_box = gen.random(n) < 0.5
        want_pts = ~want_box

    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    points = np.zeros((n, max(k, 1), 2), dtype=np.float32)
    labels = np.full((n, max(k, 1)), PAD_LABEL, dtype=np.int64)
    for i in range(n):
        if want_box[i]:
            boxes[i] = box_from_mask(m[i], box_jitter, gen)
        if want_pts[i]:
            p, lab = sample_points(m[i], n_pos, n_neg, gen, neg_region=neg_region)
            points[i], labels[i] = _pad(p, lab, k)
    # A field is present when some object uses it; with N = 0 the mode decides,
    # so an empty batch has the same fields as a full one.
    use_box = bool(want_box.any()) if n else mode != "points"
    use_pts = bool(want_pts.any()) if n else mode != "box"
    return Prompts(
        boxes=boxes if use_box else None,
        points=points if use_pts else None,
        point_labels=labels if use_pts else None,
    )


def prompts_from_prediction(
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 20,
    max_objects: int | None = 1,
    n_pos: int = 1,
    n_neg: int = 0,
    rng: np.random.Generator | None = None,
) -> Prompts:
    """Prompts that re-segment the objects of a coarse prediction.

    Each connected component of ``prob > threshold`` (a bool mask is used as
    is) with at least ``min_size`` pixels becomes one object, largest first, at
    most ``max_objects`` (None = all): a tight box, its most interior pixel as
    the first positive click (the most reliable point of an uncertain
    prediction), ``n_pos - 1`` further random interior clicks and ``n_neg``
    background clicks in a thin ring just outside the predicted foreground.
    Tiny components are usually noise, and prompting on them would feed it
    back into the next round. With the defaults nothing is random.

    Returns:
        Prompts with boxes N x 4 and, when ``n_pos + n_neg > 0``, points
        N x K x 2 (unfilled slots padded with label -1). No component gives
        N = 0 (``len(result) == 0``), not an error.
    """
    p = np.asarray(prob)
    if p.ndim != 2:
        raise MedAdaptError(f"prob must be a 2-D H x W array; got shape {tuple(p.shape)}")
    if p.dtype == bool:
        fg = p
    else:
        if not np.issubdtype(p.dtype, np.number):
            raise MedAdaptError(f"prob must be numeric or bool; got dtype {p.dtype}")
        if not np.all(np.isfinite(p)):
            raise MedAdaptError("prob contains NaN or infinite values")
        fg = p > threshold
    min_size = _count(min_size, "min_size")
    if max_objects is not None and (_count(max_objects, "max_objects") < 1):
        raise MedAdaptError(f"max_objects must be >= 1 or None; got {max_objects!r}")
    n_pos, n_neg = _count(n_pos, "n_pos"), _count(n_neg, "n_neg")
    k = n_pos + n_neg

    components, count = ndimage.label(fg, structure=np.ones((3, 3)))  # 8-connected, as regions.py
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    order = [int(i) for i in order if sizes[i] >= max(min_size, 1)]
    if max_objects is not None:
        order = order[:max_objects]
    slices = ndimage.find_objects(components)
    gen = _rng(rng) if (n_pos > 1 or n_neg > 0) and order else None

    h, w = fg.shape
    boxes = np.zeros((len(order), 4), dtype=np.float32)
    points = np.zeros((len(order), max(k, 1), 2), dtype=np.float32)
    labels = np.full((len(order), max(k, 1)), PAD_LABEL, dtype=np.int64)
    for row, c in enumerate(order):
        ys, xs = slices[c]
        boxes[row] = (xs.start, ys.start, xs.stop - 1, ys.stop - 1)
        # Work in a window around the component (grown by the ring width) so
        # the cost scales with the object, not the image.
        ring = max(NEG_MIN_PAD, math.ceil(NEG_RING_FRACTION * max(xs.stop - xs.start, ys.stop - ys.start)))
        ya, yb = max(0, ys.start - ring), min(h, ys.stop + ring)
        xa, xb = max(0, xs.start - ring), min(w, xs.stop + ring)
        comp = components[ya:yb, xa:xb] == c + 1
        offset = np.array([xa, ya], dtype=np.float32)
        pts, labs = [], []
        if n_pos:
            center = most_interior(comp)
            pts.append(center[None])
            if n_pos > 1:
                taken = np.zeros_like(comp)
                taken[int(center[1]), int(center[0])] = True
                pts.append(_positives(comp, n_pos - 1, gen, exclude=taken))
            labs.append(np.ones(sum(len(q) for q in pts), dtype=np.int64))
        if n_neg:
            near = ndimage.binary_dilation(comp, iterations=ring) & ~fg[ya:yb, xa:xb]
            neg = _choose(near, n_neg, gen)
            pts.append(neg)
            labs.append(np.zeros(len(neg), dtype=np.int64))
        if k:
            pp = np.concatenate(pts) + offset
            points[row], labels[row] = _pad(pp, np.concatenate(labs), k)
    return Prompts(
        boxes=boxes,
        points=points if k else None,
        point_labels=labels if k else None,
    )


def iterative_clicks(
    predict_fn: Callable[[Prompts], np.ndarray],
    target: np.ndarray,
    first: Prompts,
    n_clicks: int,
    rng: np.random.Generator | None = None,
    *,
    mode: str = "center",
) -> list[np.ndarray]:
    """The interactive-segmentation loop for one object: predict, click, repeat.

    Calls ``predict_fn(prompts)`` (Prompts with N = 1 -> H x W bool mask),
    then adds :func:`corrective_click` on the result to the prompts, ``n_clicks``
    times. Returns the ``n_clicks + 1`` predictions (index i = after i
    corrective clicks), so "Dice after k clicks" curves come straight from it.
    Once a prediction is perfect there is nothing to click: that prediction is
    repeated for the remaining rounds without calling ``predict_fn`` again,
    keeping every curve the same length. ``predict_fn`` may close over state
    (e.g. the previous logits as a mask prompt).
    """
    t = _as_mask(target, "target")
    n_clicks = _count(n_clicks, "n_clicks")
    if not isinstance(first, Prompts) or len(first) != 1:
        raise MedAdaptError("iterative_clicks needs a Prompts with exactly one object (select one with .select([i]))")
    if mode not in ("center", "random"):
        raise MedAdaptError(f"mode must be 'center' or 'random'; got {mode!r}")
    gen = _rng(rng) if mode == "random" else rng
    prompts = first
    preds: list[np.ndarray] = []
    for step in range(n_clicks + 1):
        pred = _as_mask(predict_fn(prompts), "predict_fn's result")
        if pred.shape != t.shape:
            raise MedAdaptError(f"predict_fn returned a {pred.shape} mask for a {t.shape} target")
        preds.append(pred)
        if step == n_clicks:
            break
        click = corrective_click(pred, t, gen, mode=mode)
        if click is None:
            preds.extend(pred.copy() for _ in range(n_clicks - step))
            break
        xy, label = click
        prompts = prompts.concat_points(xy[None, None, :], np.array([[label]]))
    return preds


__all__ = [
    "box_from_mask",
    "corrective_click",
    "iterative_clicks",
    "most_interior",
    "nonempty",
    "prompts_from_prediction",
    "sample_points",
    "simulate_prompts",
]
