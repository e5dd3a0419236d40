"""Draw masks, boxes and points over an image: the quickest check that a
segmentation (or a prompt) is where it should be. Pure numpy + PIL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.errors import MedAdaptError
from ..core.files import atomic_write
from .imaging import PathLike, image_shape

#: Mask colours (RGB), cycled; pure green/red are left to positive/negative points.
COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240), (245, 130, 48),
    (240, 50, 230), (210, 245, 60), (0, 128, 128), (230, 190, 255), (170, 110, 40),
)
POSITIVE, NEGATIVE = (0, 255, 0), (255, 0, 0)


def _mask_stack(masks: Any, h: int, w: int) -> list[tuple[int, np.ndarray]]:
    """(colour index, H x W bool) per mask: mask i of an N x H x W stack is drawn in colour i; a 2-D integer
    label map gives one mask per positive label v, in colour v - 1, so a class has the colour of its legend
    entry (``legend(names)``, names in label order) whichever classes an image holds."""
    if masks is None:
        return []
    m = np.asarray(masks)
    if m.ndim < 2 or m.shape[-2:] != (h, w):
        raise MedAdaptError(f"masks have shape {m.shape}; expected HxW or NxHxW with HxW = {h}x{w} (the image's size)")
    if m.ndim == 2 and m.dtype.kind in "iu":
        return [(int(v) - 1, m == v) for v in np.unique(m) if v > 0]
    m = m.reshape(-1, h, w)
    return list(enumerate(m if m.dtype == bool else m > 0))


def _outline(m: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def _coords(value: Any, name: str, cols: int, hint: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty((0, 0))
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != cols or not np.isfinite(arr).all():
        raise MedAdaptError(f"{name} must be {hint} in pixel coordinates; got {value!r}")
    return arr


def overlay(
    image: np.ndarray,
    masks: np.ndarray | None = None,
    *,
    alpha: float = 0.45,
    boxes: Any = None,
    points: Any = None,
    point_labels: Any = None,
) -> np.ndarray:
    """An RGB uint8 HxWx3 picture: ``image`` min-max scaled to 0..255, each mask
    (HxW or NxHxW; bool, or non-zero = inside; a 2-D integer label map gives one
    mask per label, label v in ``mask_color(v - 1)``, as ``legend`` colours the
    v-th name) tinted with ``alpha`` in its own colour and outlined, boxes
    (x0, y0, x1, y1) as rectangles in the matching mask colour, points (x, y)
    as dots: green for label 1 (positive, the default), red for 0 (negative)."""
    if not 0.0 <= alpha <= 1.0:
        raise MedAdaptError(f"alpha must be between 0 and 1, got {alpha}")
    img = np.asarray(image)
    if img.size == 0 or img.dtype.kind not in "biuf":
        raise MedAdaptError(f"image must be a non-empty numeric array, got shape {img.shape} dtype {img.dtype}")
    img = image_shape(img, "image").astype(np.float64)
    finite = np.isfinite(img)
    lo, hi = (img[finite].min(), img[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = (np.where(finite, img, lo) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    rgb = np.repeat(scaled[..., None], 3, axis=-1) if scaled.ndim == 2 else scaled
    h, w = rgb.shape[:2]
    for i, m in _mask_stack(masks, h, w):
        color = np.array(mask_color(i), dtype=np.float64)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * color
        rgb[_outline(m)] = color
    picture = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    if boxes is not None:
        width = max(1, round(min(h, w) / 200))
        for i, (x0, y0, x1, y1) in enumerate(_coords(boxes, "boxes", 4, "[x0, y0, x1, y1] or an Nx4 array")):
            shape = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            draw.rectangle(shape, outline=mask_color(i), width=width)
    if points is not None:
        pts = _coords(points, "points", 2, "[x, y] or an Nx2 array")
        labels = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        if len(labels) != len(pts):
            raise MedAdaptError(f"point_labels has {len(labels)} entries but there are {len(pts)} points")
        r = max(2, round(min(h, w) / 100))
        for (x, y), label in zip(pts, labels):
            fill = POSITIVE if label > 0 else NEGATIVE
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    return np.array(picture)


def mask_color(i: int) -> tuple[int, int, int]:
    """The colour :func:`overlay` gives mask ``i`` (0-based, in the order the masks are passed)."""
    return COLORS[i % len(COLORS)]


#: Legend background and text colours: neither is a mask colour, so a swatch is never confused with them.
LEGEND_BACKGROUND, LEGEND_TEXT = (0, 0, 0), (255, 255, 255)


def legend(names: Sequence[str], width: int, *, row_height: int = 24) -> np.ndarray:
    """An RGB uint8 strip ``H x width x 3`` naming the mask colours of :func:`overlay`.

    Entry ``i`` is a square swatch filled with :func:`mask_color` ``(i)`` followed by
    ``names[i]`` in white on black, so pass the class names in the order their
    masks were passed to ``overlay``. Entries run left to right and wrap onto new
    rows of ``row_height`` pixels when ``width`` is used up.
    """
    if width < row_height:
        raise MedAdaptError(f"legend width must be at least row_height ({row_height} px), got {width}")
    if row_height < 8:
        raise MedAdaptError(f"legend row_height must be at least 8 px, got {row_height}")
    pad, swatch = 4, row_height - 8
    try:
        font = ImageFont.load_default(size=max(8, round(row_height * 0.55)))
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, x, y = [], pad, 0
    for i, name in enumerate(names):
        text = str(name)
        size = swatch + pad + int(np.ceil(probe.textlength(text, font=font))) + 3 * pad
        if x > pad and x + size > width:  # wrap (an entry wider than the strip gets a row of its own)
            x, y = pad, y + row_height
        entries.append((x, y, mask_color(i), text))
        x += size
    picture = Image.new("RGB", (width, y + row_height if entries else row_height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for x, y, color, text in entries:
        top = y + (row_height - swatch) // 2
        draw.rectangle([x, top, x + swatch - 1, top + swatch - 1], fill=color)
        draw.text((x + swatch + pad, y + row_height // 2), text, fill=LEGEND_TEXT, font=font, anchor="lm")
    return np.array(picture)


def save_overlay(path: PathLike, image: np.ndarray, masks: np.ndarray | None = None, **kwargs: Any) -> Path:
    """Write :func:`overlay` ``(image, masks, **kwargs)`` as a PNG (atomically); returns the path."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".png":
        raise MedAdaptError(f"save_overlay writes PNG files; give a path ending in .png, not {p}")
    picture = overlay(image, masks, **kwargs)
    atomic_write(p, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))
    return p


__all__ = ["COLORS", "legend", "mask_color", "overlay", "save_overlay"]
