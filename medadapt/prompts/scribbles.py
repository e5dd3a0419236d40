"""Scribbles (free-hand strokes) as prompts, and scribbles simulated from masks.

A stroke is ``(polyline, label)``: ``polyline`` a K x 2 array of ``(x, y)``
pixel vertices of the original image (K >= 1; consecutive vertices are joined
by straight segments, a single vertex is a dot) and ``label`` 1 (foreground)
or 0 (background). A prompt's strokes describe one object.

SAM's decoder takes clicks and a low-resolution mask prompt, not strokes, so a
scribble becomes both: clicks spaced evenly along each stroke
(:func:`scribble_prompts`) and, optionally, a dense mask prompt holding the
rasterized strokes as logits (:func:`encode_strokes`). For training from
scribbles, :func:`simulate_scribbles` draws the strokes a user would draw on a
mask and :func:`simulate_scribble_labels` turns a label map into a sparse label
map (-1 = not scribbled, ignored by the loss).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from ..core.errors import MedAdaptError
from .simulate import _as_mask, _count, _rng
from .types import Prompts

Stroke = tuple[np.ndarray, int]

WIDTH = 3.0  # brush width in pixels of the grid a stroke is drawn on
POINTS_PER_STROKE = 5  # clicks sampled along each stroke
DENSE_MASK = False  # add the rasterized strokes as a mask prompt (see scribble_prompts for the measurement)
# Dense mask prompt: logits of positive-stroke, negative-stroke and untouched cells of the decoder's grid.
MASK_LOGITS = (4.0, -4.0, 0.0)
VERTEX_STEP = 3  # a simulated stroke keeps every VERTEX_STEP-th pixel of its path as a vertex
CORE_FRACTION = 0.3  # positive strokes stay where the distance to the edge is at least this fraction of its maximum
_EIGHT = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------- validation
def _check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
        ok = all(int(v) == v for v in size) and h > 0 and w > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MedAdaptError(f"size must be the image's (height, width) in pixels, two positive integers; got {size!r}")
    return h, w


def _check_width(width: Any) -> float:
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not math.isfinite(width) or width <= 0:
        raise MedAdaptError(f"width must be a positive number of pixels; got {width!r}")
    return float(width)


def check_strokes(strokes: Any, size: Any) -> list[Stroke]:
    """Validate strokes for an image of ``size`` = (H, W): a non-empty list of ``(polyline, label)``.

    Returns the strokes as (K x 2 float64 array, int label) pairs.
    """
    h, w = _check_size(size)
    if isinstance(strokes, np.ndarray) or not isinstance(strokes, Sequence) or len(strokes) == 0:
        raise MedAdaptError("scribbles must be a non-empty list of strokes (polyline, label), e.g. "
                            "[([[10, 20], [40, 22]], 1)]; polyline: K x 2 (x, y) pixels, label: 1 or 0")
    out = []
    for i, stroke in enumerate(strokes):
        if isinstance(stroke, (str, bytes)) or not isinstance(stroke, Sequence) or len(stroke) != 2:
            raise MedAdaptError(f"stroke {i} must be a pair (polyline, label); got {stroke!r:.80}")
        line, label = stroke
        try:
            xy = np.asarray(line, dtype=np.float64)
        except (TypeError, ValueError):
            raise MedAdaptError(f"stroke {i}: the polyline must be numbers, K x 2 (x, y); got {line!r:.80}") from None
        if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
            raise MedAdaptError(f"stroke {i}: the polyline must be K x 2 (x, y) vertices with K >= 1 "
                                f"(one vertex as [[x, y]]); got shape {xy.shape}")
        if not np.all(np.isfinite(xy)):
            raise MedAdaptError(f"stroke {i}: the polyline contains NaN or infinite values")
        out_x = (xy[:, 0] < 0) | (xy[:, 0] > w - 1) | (xy[:, 1] < 0) | (xy[:, 1] > h - 1)
        if out_x.any():
            x, y = xy[out_x][0]
            raise MedAdaptError(f"stroke {i}: vertex ({x:g}, {y:g}) lies outside the image (width {w}, height {h}); "
                                "vertices are (x, y) pixels of the original image")
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Real) or label not in (0, 1):
            raise MedAdaptError(f"stroke {i}: label must be 1 (foreground) or 0 (background); got {label!r}")
        out.append((xy, int(label)))
    return out


# ----------------------------------------------------------------- drawing
def _stroke_pixels(xy: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """H x W bool: the pixels whose centre lies within ``radius`` of the polyline."""
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    ends = zip(xy[:-1], xy[1:]) if len(xy) > 1 else [(xy[0], xy[0])]
    for a, b in ends:
        x0, x1 = (int(np.clip(f(v), 0, w - 1)) for f, v in ((math.floor, min(a[0], b[0]) - radius),
                                                               (math.ceil, max(a[0], b[0]) + radius)))
        y0, y1 = (int(np.clip(f(v), 0, h - 1)) for f, v in ((math.floor, min(a[1], b[1]) - radius),
                                                               (math.ceil, max(a[1], b[1]) + radius)))
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        d = b - a
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
        near = np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1]) <= radius + 1e-6
        out[y0 : y1 + 1, x0 : x1 + 1] |= near
    # every vertex marks the pixel it falls in, however thin the brush: a dot between pixel centres stays a dot
    vx = np.clip(np.rint(xy[:, 0]), 0, w - 1).astype(np.int64)
    vy = np.clip(np.rint(xy[:, 1]), 0, h - 1).astype(np.int64)
    out[vy, vx] = True
    return out


def rasterize_strokes(strokes: Any, size: Any, width: float = WIDTH) -> np.ndarray:
    """Draw strokes with a brush ``width`` pixels wide: H x W int8, 1 positive, 0 negative, -1 untouched.

    A pixel is drawn when its centre lies within ``width / 2`` (at least half
    a pixel) of the polyline, and so is the pixel each vertex falls in; where
    strokes cross, later strokes win.
    """
    h, w = _check_size(size)
    radius = max(_check_width(width), 1.0) / 2
    canvas = np.full((h, w), -1, dtype=np.int8)
    for xy, label in check_strokes(strokes, (h, w)):
        canvas[_stroke_pixels(xy, (h, w), radius)] = label
    return canvas


def _sample_along(xy: np.ndarray, n: int) -> np.ndarray:
    """``n`` points at the middles of ``n`` equal arc-length pieces of the polyline; one for a dot."""
    steps = np.hypot(*np.diff(xy, axis=0).T) if len(xy) > 1 else np.zeros(0)
    keep = np.concatenate([[True], steps > 0])
    xy, steps = xy[keep], steps[steps > 0]
    if len(xy) == 1:
        return xy[:1].copy()
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    s = (np.arange(n) + 0.5) / n * arc[-1]
    return np.stack([np.interp(s, arc, xy[:, 0]), np.interp(s, arc, xy[:, 1])], axis=1)


def encode_strokes(strokes: Any, size: Any, *, width: float = WIDTH, mask_size: int = 256, keep_aspect: bool = True,
                   logits: tuple[float, float, float] = MASK_LOGITS) -> np.ndarray:
    """Strokes on an image of ``size`` = (H, W) -> a dense mask prompt, ``mask_size`` x ``mask_size`` float32 logits.

    The strokes are drawn on the decoder's low-resolution grid, which covers
    the model input: the image resized so its longest side fills the grid and
    padded at the bottom and right (``keep_aspect=True``: SAM, LiteMedSAM), or
    stretched to the square (``False``: MedSAM ViT-B). Positive-stroke cells
    get ``logits[0]``, negative-stroke cells ``logits[1]``, every other cell
    ``logits[2]``. The brush is ``width`` image pixels wide, at least one cell.
    """
    h, w = _check_size(size)
    width = _check_width(width)
    m = _count(mask_size, "mask_size")
    if m == 0:
        raise MedAdaptError("mask_size must be positive (the side of the decoder's mask-prompt grid)")
    sx, sy = (m / max(h, w),) * 2 if keep_aspect else (m / w, m / h)
    grid = np.full((m, m), float(logits[2]), dtype=np.float32)
    radius = max(width * min(sx, sy), 1.0) / 2
    for xy, label in check_strokes(strokes, (h, w)):
        low = (xy + 0.5) * np.array([sx, sy]) - 0.5
        grid[_stroke_pixels(low, (m, m), radius)] = logits[0] if label == 1 else logits[1]
    return grid


def scribble_prompts(strokes: Any, size: Any, points_per_stroke: int = POINTS_PER_STROKE, mask: bool = DENSE_MASK, *,
                     width: float = WIDTH, mask_size: int = 256, keep_aspect: bool = True) -> Prompts:
    """One object's strokes -> a one-object :class:`Prompts`: clicks along the strokes, and a dense mask prompt.

    Each stroke gives ``points_per_stroke`` clicks with its label, at the
    middles of equal arc-length pieces (deterministic); a one-vertex stroke
    gives one click. ``mask=True`` adds :func:`encode_strokes` as the mask
    prompt (``width``, ``mask_size`` and ``keep_aspect`` describe it; they must
    match the backbone's processor, as ``Segmenter.predict(scribbles=...)``
    arranges).

    Measured with LiteMedSAM on the 32 bundled demo objects (24 HC18 fetal
    heads, 8 CT structures), 3 :func:`simulate_scribbles` draws each (one
    positive and one negative stroke), 5 clicks per stroke (the best of 1, 3,
    5 and 8): mean Dice 0.34 with clicks only (fetal heads 0.34, CT 0.35) and
    0.39 with clicks and dense mask (fetal heads 0.45, CT 0.20: aorta and
    spleen fall from about 0.5 to 0.1). Positive-only, negative-only and
    both-signs encodings score within 0.01 of each other, so the change comes
    from the decoder being given a mask prompt at all rather than from where
    the strokes are; the default is clicks only, which holds on small
    structures. LiteMedSAM was trained on boxes: a box (10% margin) alone
    scores 0.90 on the same objects, and 0.57 with these clicks added
    (``benchmarks/scribble_prompts.py``, ``benchmarks/results/demo/scribble_prompts/``).
    """
    h, w = _check_size(size)
    n = _count(points_per_stroke, "points_per_stroke")
    if n == 0:
        raise MedAdaptError("points_per_stroke must be at least 1")
    checked = check_strokes(strokes, (h, w))
    pts = [_sample_along(xy, n) for xy, _ in checked]
    labels = np.concatenate([np.full(len(p), lab, dtype=np.int64) for p, (_, lab) in zip(pts, checked)])
    dense = encode_strokes(checked, (h, w), width=width, mask_size=mask_size, keep_aspect=keep_aspect) if mask else None
    return Prompts(points=np.concatenate(pts)[None].astype(np.float32), point_labels=labels[None],
                   masks=None if dense is None else dense[None])


def add_scribbles(scribbles: Any, size: Any, boxes: Any = None, points: Any = None, point_labels: Any = None, *,
                  mask_size: int = 256, keep_aspect: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One object's scribbles joined to the box and clicks given with them (``Segmenter.predict``'s arguments).

    Returns ``(points 1 x K x 2, point_labels 1 x K, mask prompt 1 x m x m or
    None)``: the given clicks followed by :func:`scribble_prompts`'s. With
    scribbles, ``boxes`` may hold one box and ``points`` one point set.
    """
    if boxes is not None:
        b = np.asarray(boxes, dtype=object)
        if b.ndim == 2 and b.shape[0] != 1:
            raise MedAdaptError(f"scribbles describe one object; give at most one box with them (got {b.shape[0]})")
    prompt = scribble_prompts(scribbles, size, mask_size=mask_size, keep_aspect=keep_aspect)
    p, lab = prompt.points[0], prompt.point_labels[0]
    if points is None:
        if point_labels is not None:
            raise MedAdaptError("point_labels given without points")
        return p[None], lab[None], prompt.masks
    try:
        given = np.asarray(points, dtype=np.float32)
    except (TypeError, ValueError):
        raise MedAdaptError("points must be K x 2 [[x, y], ...] numbers") from None
    if given.ndim == 3 and given.shape[0] != 1:
        raise MedAdaptError(f"scribbles describe one object; give one point set with them (got {given.shape[0]})")
    given = given.reshape(-1, given.shape[-1]) if given.ndim == 3 else given
    if given.ndim != 2 or given.shape[1] != 2 or given.shape[0] == 0:
        raise MedAdaptError(f"points must be K x 2 [[x, y], ...]; got shape {np.asarray(points).shape}")
    given_lab = np.ones(len(given), np.int64) if point_labels is None else np.asarray(point_labels).reshape(-1)
    if given_lab.shape != (len(given),):
        raise MedAdaptError(f"point_labels must have one label per point ({len(given)}); "
                            f"got shape {np.asarray(point_labels).shape}")
    return (np.concatenate([given, p])[None], np.concatenate([given_lab, lab])[None], prompt.masks)


# ----------------------------------------------------------------- simulation
def _walk(region: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic (8-connected) walk in ``region`` from flat pixel ``start``: the path to the farthest pixel, (r, c)."""
    ys, xs = np.nonzero(region)
    index = np.full(region.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(len(ys))
    h, w = region.shape
    rows, cols, cost = [], [], []
    for dy, dx, c in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 < h) & (x2 >= 0) & (x2 < w)
        ok[ok] = region[y2[ok], x2[ok]]
        rows.append(index[ys[ok], xs[ok]])
        cols.append(index[y2[ok], x2[ok]])
        cost.append(np.full(int(ok.sum()), c))
    graph = csr_matrix((np.concatenate(cost), (np.concatenate(rows), np.concatenate(cols))), shape=(len(ys),) * 2)
    src = int(index.flat[start])
    dist, pred = dijkstra(graph, directed=False, indices=src, return_predecessors=True)
    node, path = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0))), []
    while node >= 0:
        path.append(node)
        node = int(pred[node])
    path = np.array(path[::-1])
    return ys[path], xs[path]


def _polyline(ys: np.ndarray, xs: np.ndarray, fraction: float, offset: float) -> np.ndarray:
    """The piece of a pixel path covering ``fraction`` of it from ``offset`` (0-1 of the slack), as a polyline."""
    n = len(ys)
    k = max(1, int(round(fraction * n)))
    s = int(round(offset * (n - k)))
    keep = np.arange(s, s + k)
    keep = np.unique(np.concatenate([keep[::VERTEX_STEP], keep[-1:]]))
    return np.stack([xs[keep], ys[keep]], axis=1).astype(np.float64)


def _positive_strokes(mask: np.ndarray, n: int, length: float, width: float, rng) -> list[Stroke]:
    """``n`` medial strokes on the mask's largest component, kept ``width / 2 + 1.5`` pixels from its edge."""
    comps, count = ndimage.label(mask, structure=_EIGHT)
    if count > 1:
        mask = comps == 1 + int(np.argmax(np.bincount(comps.ravel())[1:]))
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # the image border counts as edge
    core = depth >= max(CORE_FRACTION * depth.max(), width / 2 + 1.5)
    if not core.any():  # too thin for the brush: the deepest ridge
        core = depth >= depth.max() - 0.5
    strokes = []
    for _ in range(n):
        start = int(rng.choice(np.flatnonzero(core)))
        ys, xs = _walk(core, start)  # two sweeps: from a far end to the farthest pixel from it
        ys, xs = _walk(core, int(ys[-1]) * mask.shape[1] + int(xs[-1]))
        strokes.append((_polyline(ys, xs, length, rng.random()), 1))
    return strokes


def _gap(area: int, width: float) -> float:
    """Default distance of a negative stroke from an object of ``area`` pixels."""
    return max(width / 2 + 1.5, 0.15 * math.sqrt(area))


def _negative_strokes(mask: np.ndarray, free: np.ndarray, n: int, length: float, width: float, gap: float | None,
                      rng) -> list[Stroke]:
    """``n`` strokes along a ring ``gap`` pixels outside the mask, within ``free`` (background far from any object)."""
    outside = ndimage.distance_transform_edt(~mask)
    gap = _gap(int(mask.sum()), width) if gap is None else gap
    ring = (outside > gap) & (outside <= gap + 2) & free
    strokes = []
    for _ in range(n if ring.any() else 0):
        ys, xs = _walk(ring, int(rng.choice(np.flatnonzero(ring))))  # to the far side: half of a closed ring
        strokes.append((_polyline(ys, xs, length, 0.0), 0))
    return strokes


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise MedAdaptError(f"{name} must be a fraction in (0, 1]; got {value!r}")
    return float(value)


def simulate_scribbles(mask: Any, rng: np.random.Generator | None = None, *, positive: int = 1, negative: int = 1,
                       length: float = 0.8, negative_length: float = 0.5, width: float = WIDTH,
                       gap: float | None = None) -> list[Stroke]:
    """The strokes a user would draw on one object's H x W ``mask``: positive ones, then negative ones.

    A positive stroke follows the object's medial region (pixels at least 30%
    of the maximum depth from its edge, and ``width / 2 + 1.5`` pixels): from a
    random pixel there, the longest geodesic path in that region is found
    (two sweeps), so it runs along an elongated object, through the middle of
    a blob and half way around a ring; the stroke covers ``length`` of it at a
    random offset, on the mask's largest component. A negative stroke runs
    along the ring ``gap`` pixels outside the object (default: 15% of the
    square root of its area, at least ``width / 2 + 1.5``) from a random
    pixel, over ``negative_length`` of the way to the far side. With the
    given ``width`` the strokes stay inside (positive) and outside (negative)
    the mask, except on objects too thin for the brush. Deterministic for a
    seeded ``rng``.
    """
    m = _as_mask(mask)
    if not m.any():
        raise MedAdaptError("mask is empty: scribbles are simulated on an object with at least one pixel")
    gen, width = _rng(rng), _check_width(width)
    length, negative_length = _check_fraction(length, "length"), _check_fraction(negative_length, "negative_length")
    return (_positive_strokes(m, _count(positive, "positive"), length, width, gen)
            + _negative_strokes(m, ~m, _count(negative, "negative"), negative_length, width, gap, gen))


def simulate_scribble_labels(label_map: Any, rng: np.random.Generator | None = None, *, positive: int = 1,
                             negative: int = 1, length: float = 0.8, negative_length: float = 0.5,
                             width: float = WIDTH, background: int = 0) -> np.ndarray:
    """A sparse label map for training from scribbles: H x W int64, -1 where nothing was scribbled.

    Every 8-connected component of every class of the H x W integer
    ``label_map`` (0 = background) gets :func:`simulate_scribbles`'s strokes:
    ``positive`` strokes set to its label value and ``negative`` background
    strokes around it, drawn in background pixels ``width / 2 + 1.5`` pixels
    from any object. A map without objects gets ``positive`` strokes through
    its background. ``background`` more strokes run along the middle of the
    background as a whole (away from every object), as a user marks what is
    not a target far from the targets too. Scribbled pixels always carry their
    true label.
    """
    labels = np.asarray(label_map)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise MedAdaptError(f"label_map must be an H x W integer array (0 background, k classes); "
                            f"got shape {labels.shape}, dtype {labels.dtype}")
    gen, width = _rng(rng), _check_width(width)
    length, negative_length = _check_fraction(length, "length"), _check_fraction(negative_length, "negative_length")
    positive, negative = _count(positive, "positive"), _count(negative, "negative")
    background_strokes = _count(background, "background")
    background = labels == 0
    free = ndimage.distance_transform_edt(background) > width / 2 + 1.5
    strokes: list[tuple[np.ndarray, int]] = []
    for value in np.unique(labels[~background]):
        comps, _ = ndimage.label(labels == value, structure=_EIGHT)
        for c, (rows, cols) in enumerate(ndimage.find_objects(comps), start=1):
            part = comps[rows, cols] == c  # worked on in a window around the component, then moved back
            pad = math.ceil(_gap(int(part.sum()), width)) + 4
            y0, x0 = max(rows.start - pad, 0), max(cols.start - pad, 0)
            window = (slice(y0, rows.stop + pad), slice(x0, cols.stop + pad))
            part = comps[window] == c
            found = [(xy, int(value)) for xy, _ in _positive_strokes(part, positive, length, width, gen)]
            found += _negative_strokes(part, free[window], negative, negative_length, width, None, gen)
            strokes += [(xy + [x0, y0], v) for xy, v in found]
    if background.all():
        strokes += [(xy, 0) for xy, _ in _positive_strokes(background, positive, length, width, gen)]
    elif background_strokes and free.any():
        strokes += [(xy, 0) for xy, _ in _positive_strokes(free, background_strokes, length, width, gen)]
    out = np.full(labels.shape, -1, dtype=np.int64)
    for xy, value in strokes:
        drawn = _stroke_pixels(xy, labels.shape, max(width, 1.0) / 2)
        out[drawn & (labels == value)] = value
    return out


__all__ = ["add_scribbles", "check_strokes", "encode_strokes", "rasterize_strokes", "scribble_prompts",
           "simulate_scribble_labels", "simulate_scribbles", "Stroke"]
