"""Pre- and post-processing owned by each backbone, in one place.

A SAM-family model only sees a square tensor of a fixed size; users have images
of any size and intensity range, and give prompts in the pixel coordinates of
the original image. :class:`SamProcessor` is the single place where
``original image <-> model input`` happens, for images, prompts and masks, so
that a coordinate transform is never written twice.

Two resize policies exist in the wild and both are needed to be faithful to the
pretrained weights:

* ``keep_aspect=True`` (SAM, LiteMedSAM): the longest side is resized to
  ``image_size`` and the rest is zero-padded at the bottom and right.
* ``keep_aspect=False`` (MedSAM ViT-B): the image is stretched to a square.

and two intensity policies:

* ``"minmax"``: rescale to [0, 1] (LiteMedSAM, MedSAM).
* ``"imagenet"``: rescale to 0-255 (unless already 8-bit), then subtract the
  ImageNet mean and divide by its std (SAM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedAdaptError
from ..prompts.types import Prompts

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of one preprocessed image: what postprocessing needs to undo."""

    original_size: tuple[int, int]  # (H, W) of the user's image
    input_size: tuple[int, int]  # (h, w) of the resized image before padding


@dataclass(frozen=True)
class SamProcessor:
    """Turns user images and prompts into model inputs and masks back.

    Args:
        image_size: side of the square model input (256 for LiteMedSAM, 1024 for SAM).
        normalization: ``"minmax"`` (to [0, 1]) or ``"imagenet"`` (0-255, then ``mean``/``std``: ImageNet's
            unless a checkpoint's own processor settings say otherwise).
        keep_aspect: resize the longest side and pad (True) or stretch to a square (False).
        mask_size: side of the decoder's low-resolution logits (4x the embedding grid).
        resize: image interpolation: ``"bilinear"`` (like OpenCV's INTER_LINEAR),
            ``"area"`` (pixel averaging, like INTER_AREA) or ``"antialias"``
            (bilinear with an antialiasing filter, like PIL).
    """

    image_size: int
    normalization: Literal["minmax", "imagenet"] = "minmax"
    keep_aspect: bool = True
    mask_size: int = 256
    resize: Literal["bilinear", "area", "antialias"] = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on 0-255 (normalization "imagenet")
    std: tuple[float, float, float] = IMAGENET_STD

    # ------------------------------------------------------------------ geometry
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """Size (h, w) of the resized image inside the padded square."""
        h, w = original_size
        if not self.keep_aspect:
            return (self.image_size, self.image_size)
        scale = self.image_size / max(h, w)
        return (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))  # a thin strip keeps one row

    def _scale(self, meta: ImageMeta) -> tuple[float, float]:
        (h, w), (nh, nw) = meta.original_size, meta.input_size
        return nw / w, nh / h

    def transform_points(self, points: np.ndarray | torch.Tensor, meta: ImageMeta) -> torch.Tensor:
        """Pixel (x, y) coordinates of the original image -> model input frame."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32)).clone()
        sx, sy = self._scale(meta)
        pts[..., 0] *= sx
        pts[..., 1] *= sy
        return pts

    def transform_boxes(self, boxes: np.ndarray | torch.Tensor, meta: ImageMeta) -> torch.Tensor:
        """Boxes ``[x0, y0, x1, y1]`` in original pixels -> model input frame."""
        b = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
        return self.transform_points(b.reshape(-1, 2, 2), meta).reshape(b.shape)

    def transform_prompts(self, prompts: Prompts, meta: ImageMeta) -> Prompts:
        """:class:`~medadapt.prompts.Prompts` in original pixels -> the model input frame (mask prompts unchanged)."""
        return replace(
            prompts,
            boxes=None if prompts.boxes is None else self.transform_boxes(prompts.boxes, meta).numpy(),
            points=None if prompts.points is None else self.transform_points(prompts.points, meta).numpy(),
        )

    # ------------------------------------------------------------------ images
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, ImageMeta]:
        """A validated HxW or HxWx3 array -> (1x3xSxS float tensor, geometry)."""
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 2:  # three channels before the resize: a one-channel resize rounds differently (1e-7)
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        original = (arr.shape[0], arr.shape[1])
        meta = ImageMeta(original_size=original, input_size=self.input_size(original))
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
        if self.normalization == "imagenet" and not _is_8bit(arr):
            x = _minmax(x) * 255.0
        x = self._resize(x, meta.input_size)
        if self.normalization == "minmax":
            x = _minmax(x)
        else:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x - mean) / std
        pad_h = self.image_size - meta.input_size[0]
        pad_w = self.image_size - meta.input_size[1]
        x = F.pad(x, (0, pad_w, 0, pad_h))
        return x.contiguous(), meta

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if self.resize == "area" and size[0] <= x.shape[-2]:
            return F.interpolate(x, size=size, mode="area")
        aa = self.resize == "antialias"
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=aa)

    # ------------------------------------------------------------------ masks
    def postprocess_logits(self, low_res: torch.Tensor, meta: ImageMeta) -> torch.Tensor:
        """Decoder logits (..., m, m) -> logits at the original image size.

        The low-resolution grid covers the padded square; the padded part is
        cropped before resizing to the original size so nothing is stretched.
        """
        lead = low_res.shape[:-2]
        x = low_res.reshape(-1, 1, *low_res.shape[-2:]).float()
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = x[..., : meta.input_size[0], : meta.input_size[1]]
        x = F.interpolate(x, size=meta.original_size, mode="bilinear", align_corners=False)
        return x.reshape(*lead, *meta.original_size)

    def mask_to_low_res(self, masks: np.ndarray | torch.Tensor, meta: ImageMeta) -> torch.Tensor:
        """Binary masks at the original size -> mask-prompt logits (N x 1 x m x m).

        Lets a user give a full-size mask as a prompt; a mask is mapped to
        +/-``mask_logit`` the way a previous prediction's logits would look.
        A cell is inside where the mask covers most of it; a thin structure
        (a vessel, a contour line) that covers no cell that much is kept as
        the cells it touches, rather than vanishing from the prompt.
        """
        m = torch.as_tensor(np.asarray(masks, dtype=np.float32))
        if m.ndim == 2:
            m = m[None]
        m = m[:, None]
        m = F.interpolate(m, size=meta.input_size, mode="bilinear", align_corners=False)
        m = F.pad(m, (0, self.image_size - meta.input_size[1], 0, self.image_size - meta.input_size[0]))
        low = F.interpolate(m, size=(self.mask_size, self.mask_size), mode="bilinear", align_corners=False) > 0.5
        if self.image_size % self.mask_size == 0:
            cell = self.image_size // self.mask_size
            touched = F.max_pool2d((m > 0).float(), cell) > 0
            low = low | _lost_parts(touched, low)
        return low.float() * 20.0 - 10.0


def _lost_parts(touched: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The connected parts of ``touched`` (N x 1 x m x m bool, 8-connected) that hold no ``kept`` cell."""
    from scipy import ndimage

    out = torch.zeros_like(touched)
    for i in range(touched.shape[0]):
        if not bool((touched[i] & ~kept[i]).any()):
            continue
        parts, n = ndimage.label(touched[i, 0].numpy(), structure=np.ones((3, 3), bool))
        holding = np.unique(parts[kept[i, 0].numpy()])
        lost = np.isin(parts, np.setdiff1d(np.arange(1, n + 1), holding))
        out[i, 0] = torch.from_numpy(lost)
    return out


def _is_8bit(arr: np.ndarray) -> bool:
    return bool(arr.min() >= 0 and arr.max() <= 255 and np.all(arr == np.round(arr)) and arr.max() > 1)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin(), x.amax()
    if not torch.isfinite(hi - lo):  # a range beyond float32 (e.g. -3e38..3e38): scale into [-1, 1] first
        x = x / torch.maximum(lo.abs(), hi.abs())
        lo, hi = x.amin(), x.amax()
    return (x - lo) / torch.clamp(hi - lo, min=1e-8)


def _numbers(value: Any, name: str, form: str) -> np.ndarray:
    """``value`` as a float64 array; a string or other non-numbers get an error that shows the form wanted."""
    if isinstance(value, (str, bytes)):
        raise MedAdaptError(f"{name} must be numbers, {form}; got the text {value!r}")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MedAdaptError(f"{name} must be numbers, {form}; got {value!r}") from None


def _nth(i: int) -> str:
    """``"the 3rd "`` for index 2: which box, the same whether counted from a Python list or a command line."""
    n = i + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the {n}{suffix} "


def check_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Validate user boxes (N x 4, pixel coordinates) against the image size."""
    b = _numbers(boxes, "boxes", "[x0, y0, x1, y1] (or N of them)")
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise MedAdaptError(f"boxes must be N x 4 [x0, y0, x1, y1]; got shape {tuple(b.shape)}")
    if len(b) == 0:
        raise MedAdaptError("boxes holds no box: give at least one [x0, y0, x1, y1], or leave boxes out")
    if not np.all(np.isfinite(b)):
        raise MedAdaptError("boxes contain NaN or infinite values")
    h, w = original_size
    for i, (x0, y0, x1, y1) in enumerate(b):
        if x1 <= x0 or y1 <= y0:
            raise MedAdaptError(
                f"{_nth(i)}box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has zero or negative area; "
                "give [x0, y0, x1, y1] with x1 > x0 and y1 > y0"
            )
        if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
            raise MedAdaptError(
                f"{_nth(i)}box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the image "
                f"(width {w}, height {h}); coordinates are pixels of the original image"
            )
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w - 1)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h - 1)
    for i, (x0, y0, x1, y1) in enumerate(b):
        if x1 <= x0 or y1 <= y0:  # it started on the last column or row and reached past the edge
            raise MedAdaptError(
                f"{_nth(i)}box has zero area inside the image (width {w}, height {h}): clipped to the image it is "
                f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]; draw it over the structure, inside the image"
            )
    return b.astype(np.float32)


def check_points(
    points: Sequence | np.ndarray, labels: Sequence | np.ndarray | None, original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate point prompts: K x 2 (one prompt) or N x K x 2, labels 0/1."""
    p = _numbers(points, "points", "[[x, y], ...]")
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 2 or p.shape[1] == 0:
        raise MedAdaptError(
            f"points must be K x 2 [[x, y], ...] or N x K x 2; got shape {tuple(np.asarray(points).shape)}"
        )
    if labels is None:
        lab = np.ones(p.shape[:2], dtype=np.int64)
    else:
        lab = _numbers(labels, "point_labels", "1 (foreground) or 0 (background) for each point")
        if lab.ndim == 1:
            lab = lab[None]
        if lab.shape != p.shape[:2]:
            raise MedAdaptError(
                f"point_labels must have one label per point: expected shape {p.shape[:2]}, got {lab.shape}"
            )
        bad = sorted({float(v) for v in np.unique(lab)} - {0.0, 1.0})
        if bad:
            raise MedAdaptError(
                f"point labels must be 1 (foreground) or 0 (background); got {bad}"
            )
        lab = lab.astype(np.int64)
    if not np.all(np.isfinite(p)):
        raise MedAdaptError("points contain NaN or infinite values")
    h, w = original_size
    outside = (p[..., 0] < 0) | (p[..., 0] > w - 1) | (p[..., 1] < 0) | (p[..., 1] > h - 1)
    if outside.any():
        x, y = p[outside][0]
        raise MedAdaptError(
            f"point ({x:g}, {y:g}) lies outside the image (width {w}, height {h}); "
            "coordinates are (x, y) pixels of the original image"
        )
    return p.astype(np.float32), lab


__all__ = ["ImageMeta", "SamProcessor", "check_boxes", "check_points", "IMAGENET_MEAN", "IMAGENET_STD"]
