"""A volume as a :class:`~medadapt.inference.Segmenter` sees it: planes along one axis, encoded lazily.

The model always reads a slice in display orientation, exactly as training
saw it (:func:`medadapt.io.imaging.volume_slice`). Prompts and answers are in
the user's frame:

* a volume read from a file (NIfTI, DICOM series) uses the display frame:
  slice ``z`` is what ``load_image(path, slice_index=z, axis=axis)`` returns
  and what a viewer shows; masks come back in the :func:`load_volume` layout;
* a raw array uses the array frame: slice ``z`` is ``np.take(volume, z, axis)``,
  a box's x runs along that slice's columns and y along its rows;
* display planes given to ``Segmenter.set_planes`` use their own frame: slice
  ``k`` is ``planes[k]`` as it stands, and masks come back N x H x W.

Slices are encoded when first needed, a few at a time in the direction the
caller is heading, and their embeddings are kept by an :class:`EmbeddingCache`
(in memory up to a budget, on disk beyond it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import MedAdaptError
from ..foundation.depth import neighbour_stack
from ..foundation.processor import ImageMeta, check_boxes, check_points
from ..io.imaging import (
    apply_window,
    check_spacing,
    clip_percentiles,
    display_orientation,
    load_volume,
    plane_axis,
    put_slice,
    volume_slice,
    voxel_size,
)
from .embedding_cache import EmbeddingCache


def check_axis(axis) -> int:
    """``axis`` (0, 1 or 2, or -1..-3) as 0, 1 or 2, or an error that says so."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (0, 1, 2, -1, -2, -3):
        raise MedAdaptError(f"axis must be 0, 1 or 2 (the axis to slice the volume along); got {axis!r}")
    return int(axis) % 3


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a volume came from: its voxel size and, for a file, its affine."""

    shape: tuple[int, int, int]
    axis: int
    spacing: tuple[float, float, float] | None  # mm per voxel along each array axis; None: unknown (pixels)
    affine: np.ndarray | None = None  # 4 x 4, for volumes read from a file (load_volume layout)
    source: str | None = None  # the file or folder it was read from
    # "array" (np.take planes), "display" (files: volume_slice planes), "planes" (Segmenter.set_planes: each
    # plane as given, prompts in its frame, masks stacked along axis 0)
    frame: str = "array"

    @property
    def plane_spacing(self) -> tuple[float, float, float] | None:
        """(between slices, display rows, display columns) in mm, or None."""
        if self.spacing is None:
            return None
        a, b = [i for i in range(3) if i != self.axis]
        return (self.spacing[self.axis], self.spacing[b], self.spacing[a])


class VolumeSession:
    """One volume, its display planes and their cached embeddings."""

    def __init__(
        self,
        seg,
        volume: np.ndarray | str | os.PathLike,
        *,
        spacing=None,
        axis: int = 2,
        cache_bytes: int | None = None,
        encode_batch: int | None = None,
        window=None,
        percentiles: tuple[float, float] | None = None,
    ) -> None:
        axis = check_axis(axis)
        affine = source = None
        if isinstance(volume, (str, os.PathLike)):
            data, affine = load_volume(volume)
            axis = plane_axis(data.shape, axis)  # a file of one sagittal or coronal plane is that image
            source, frame = str(volume), "display"
            if spacing is None:
                spacing = voxel_size(affine)
        else:
            data, frame = np.asarray(volume), "array"
        if window is not None:
            data = apply_window(data, window)
        if data.ndim != 3:
            raise MedAdaptError(f"a volume must be 3-D; got shape {data.shape} (a 2-D image goes to set_image)")
        if min(data.shape) < 1 or data.shape[axis] < 1:
            raise MedAdaptError(f"the volume has shape {data.shape}: nothing to segment")
        if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
            raise MedAdaptError(f"a volume must hold real numbers; got dtype {data.dtype}")
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            finite = np.isfinite(data)
            if not finite.any():
                raise MedAdaptError("the volume holds no finite value (all NaN or infinite): nothing to segment")
            infinite = int(np.isinf(data).sum())
            if infinite:  # not padding: a saturated voxel, which the darkest value would hide
                raise MedAdaptError(f"the volume holds {infinite} infinite values; replace them first (e.g. clip "
                                    "to the scanner's range); NaN outside the body is read as background")
            # NaN outside the body (masked NIfTIs) reads as the darkest value, as a viewer shows it
            data = np.where(finite, data, data[finite].min()).astype(data.dtype, copy=False)
        if data.dtype.itemsize > 4 and np.issubdtype(data.dtype, np.floating) and data.size and \
                max(data.max(), -data.min()) > np.finfo(np.float32).max:  # two passes, no copy of the volume
            raise MedAdaptError("the volume holds values beyond float32's range (about 3.4e38), which the model "
                                "reads as infinite: rescale it first")
        self.seg = seg
        self.data = data
        self.percentiles = percentiles  # clipped per plane, as training clipped its slices
        self.geometry = VolumeGeometry(tuple(data.shape), axis, check_spacing(spacing, 3), affine, source, frame)
        self.cache = EmbeddingCache(cache_bytes)
        self.encode_batch = encode_batch or (1 if seg.device.type == "cpu" else 16)  # a CPU gains nothing from batches
        size = tuple(self.plane(0).shape[:2])
        self.meta = ImageMeta(original_size=size, input_size=seg.backbone.processor.input_size(size))
        self.encoded = 0  # slices encoded so far
        self.encode_seconds = 0.0  # time spent encoding them

    # ------------------------------------------------------------------ geometry
    @property
    def axis(self) -> int:
        return self.geometry.axis

    def __len__(self) -> int:
        return self.data.shape[self.axis]

    @property
    def plane_size(self) -> tuple[int, int]:
        """(H, W) of a display plane."""
        return self.meta.original_size

    def plane(self, k: int) -> np.ndarray:
        """Slice ``k`` as the model sees it (display orientation), float32."""
        plane = volume_slice(self.data, k, self.axis).astype(np.float32, copy=False)
        return plane if self.percentiles is None else clip_percentiles(plane, *self.percentiles)

    def is_blank(self, k: int) -> bool:
        """A constant plane (padding): nothing to segment there. (Non-finite voxels were replaced on loading.)"""
        p = self.plane(k)
        return p.max() == p.min()

    def check_index(self, z, what: str = "slice") -> int:
        n = len(self)
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
            raise MedAdaptError(f"{what} index must be an integer; got {z!r}")
        if not 0 <= int(z) < n:
            raise MedAdaptError(f"{what} {z} is outside the volume: it has {n} slices along axis {self.axis} (0..{n - 1})")
        return int(z)

    # ------------------------------------------------------------------ user frame <-> display frame
    def user_plane_shape(self) -> tuple[int, int]:
        h, w = self.plane_size
        return (h, w) if self.geometry.frame != "array" else (w, h)

    def points_to_display(self, points: np.ndarray) -> np.ndarray:
        """K x 2 (x, y) in the user's frame -> the display frame."""
        p = np.asarray(points, dtype=np.float32)
        if self.geometry.frame != "array":
            return p
        h, w = self.user_plane_shape()  # np.take plane: h rows, w columns
        return np.stack([(h - 1) - p[..., 1], (w - 1) - p[..., 0]], axis=-1).astype(np.float32)

    def box_to_display(self, box: np.ndarray) -> np.ndarray:
        b = np.asarray(box, dtype=np.float32)
        if self.geometry.frame != "array":
            return b
        corners = self.points_to_display(np.array([[b[0], b[1]], [b[2], b[3]]], np.float32))
        return np.array([corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()],
                        np.float32)

    def mask_to_display(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.geometry.frame != "array" else display_orientation(mask)

    def slice_prompts(self, boxes=None, points=None, point_labels=None, masks=None) -> dict[int, dict]:
        """``{z: ...}`` prompt dicts in the user's frame -> ``{z: {box, points, labels, mask}}`` in the display
        frame, each checked against the slice size."""
        given = {"boxes": boxes, "points": points, "point_labels": point_labels, "masks": masks}
        for name, value in given.items():
            if value is not None and not isinstance(value, dict):
                raise MedAdaptError(f"{name}= takes a dict {{slice index: prompt}} for a volume, e.g. "
                                    f"{name}={{12: ...}}; got {type(value).__name__}")
        if point_labels and not points:
            raise MedAdaptError("point_labels given without points")
        extra = sorted(set(point_labels or {}) - set(points or {}))
        if extra:
            raise MedAdaptError(f"point_labels for slices {extra} that have no points")
        size = self.user_plane_shape()
        out: dict[int, dict] = {}
        for name in ("boxes", "points", "masks"):
            for z, value in (given[name] or {}).items():
                k = self.check_index(z)
                if name != "masks" and self.is_blank(k):
                    raise MedAdaptError(f"slice {z} is constant (every voxel the same value): nothing to segment "
                                        f"there; {name} must go on a slice that shows the structure")
                entry = out.setdefault(k, {})
                if name == "boxes":
                    b = check_boxes(value, size)
                    if len(b) != 1:
                        raise MedAdaptError(f"boxes[{z}]: one box per slice (one object per predict_volume call); "
                                            f"got {len(b)}")
                    entry["box"] = self.box_to_display(b[0])
                elif name == "points":
                    p, lab = check_points(value, (point_labels or {}).get(z), size)
                    if len(p) != 1:
                        raise MedAdaptError(f"points[{z}]: one point set (K x 2) per slice; got shape {p.shape}")
                    entry["points"], entry["labels"] = self.points_to_display(p[0]), lab[0]
                else:
                    m = np.asarray(value)
                    if m.shape != size:
                        raise MedAdaptError(f"masks[{z}] has shape {m.shape}; slice {z} is {size}")
                    if m.dtype.kind not in "biuf" or (m.dtype.kind == "f" and not np.isfinite(m).all()):
                        raise MedAdaptError(f"masks[{z}] must be a bool or 0/1 array with no NaN; got dtype "
                                            f"{m.dtype}{' with non-finite values' if m.dtype.kind == 'f' else ''}")
                    entry["mask"] = self.mask_to_display(m.astype(bool))
        return out

    def to_user(self, out: np.ndarray) -> np.ndarray:
        """A volume-shaped answer (what :meth:`write_plane` fills) in the user's layout: the volume's own, or for
        planes given to ``set_planes`` the planes' frame (N x H x W)."""
        if self.geometry.frame != "planes":
            return out
        return np.stack([display_orientation(out[k]) for k in range(out.shape[0])])

    def write_plane(self, out: np.ndarray, k: int, display_mask: np.ndarray) -> None:
        """Put a display-frame plane into a volume-shaped array at slice ``k``."""
        put_slice(out, k, display_mask, self.axis)

    # ------------------------------------------------------------------ embeddings
    @torch.inference_mode()
    def embedding(self, k: int, direction: int = 1) -> torch.Tensor:
        """What the decoder reads for slice ``k``: its embedding (1 x C x h x w), or with a depth adapter the
        embeddings of it and its neighbours (1 x S x C x h x w; past the volume's ends the last slice repeats)."""
        n = self.seg.backbone.depth_slices // 2
        if n == 0:
            return self._encoded(k, direction)
        parts = [self._encoded(j, direction)[0] if 0 <= j < len(self) else None for j in range(k - n, k + n + 1)]
        return neighbour_stack(parts, n)[None]

    def _encoded(self, k: int, direction: int) -> torch.Tensor:
        """Slice ``k``'s encoder output (1 x C x h x w); encodes it with the next slices towards ``direction``."""
        found = self.cache.get(k)
        if found is not None:
            return found[None]
        todo = [k]
        for j in range(1, self.encode_batch):
            nxt = k + j * (1 if direction >= 0 else -1)
            if not 0 <= nxt < len(self) or nxt in self.cache:
                break
            todo.append(nxt)
        proc, backbone = self.seg.backbone.processor, self.seg.backbone
        start = time.perf_counter()
        pixels = torch.cat([proc.preprocess(self.plane(j))[0] for j in todo]).to(self.seg.device)
        embeddings = backbone.encode(pixels)
        if embeddings.device.type == "cuda":
            torch.cuda.synchronize(embeddings.device)
        self.encode_seconds += time.perf_counter() - start
        self.encoded += len(todo)
        for j, e in zip(todo, embeddings):
            self.cache.put(j, e.clone())
        return embeddings[:1]

    def close(self) -> None:
        self.cache.close()


__all__ = ["VolumeGeometry", "VolumeSession", "check_axis"]
