"""The one container every prompt source fills and every decoder call reads.

``Segmenter.predict`` turns its arguments into a :class:`Prompts`, the trainer
builds one for its simulated prompts, and both decode it with
:meth:`medadapt.foundation.Backbone.decode_prompts`.

Simulated prompts (training), corrective clicks (iterative training and
evaluation), prompts derived from a coarse prediction (semi-supervised loop)
and, later, learned or text prompts all end up as a :class:`Prompts`: N objects
on one image, each with an optional box, an optional point set and an optional
low-resolution mask prompt. Keeping them in one validated numpy container means
shape mistakes surface where the prompts are made, not as an opaque broadcast
error deep inside SAM's prompt encoder.

Conventions (shared with :mod:`medadapt.prompts.simulate`):

* coordinates are ``(x, y)`` pixels of the grid the prompts were made on;
  :meth:`Prompts.scale` moves them to another grid (e.g. the model input);
* boxes are ``[x0, y0, x1, y1]`` with inclusive pixel extents (``x1`` is the
  last column of the object); a one-pixel-wide object's box is widened to one
  pixel (``x1 == x0 + 1``: the decoder needs a box of positive area);
* point labels are 1 (foreground), 0 (background) or -1 (padding). -1 is SAM's
  own "not a point" label: the prompt encoder replaces its embedding by the
  learned not-a-point token, so padded slots carry no position. Padding exists
  because point sets of different objects share one N x K array (a mask that
  fills the image has no room for a background click, for instance);
* a box row of NaN means "this object has no box".
  :func:`~medadapt.prompts.simulate.simulate_prompts` with ``mode="mixed"``
  and the trainer's simulated prompts produce such rows, because SAM's prompt encoder takes one box tensor for the
  whole batch; :meth:`Prompts.decode_groups` cuts a mixed batch into groups
  that can each be decoded in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..core.errors import MedAdaptError

IndexLike = int | slice | Sequence[int] | Sequence[bool] | np.ndarray

PAD_LABEL = -1  # SAM's "not a point": ignored position, learned padding embedding


@dataclass(eq=False)  # element-wise array equality would make == ambiguous
class Prompts:
    """Prompts for N objects on one image (numpy, pixel coordinates).

    Attributes:
        boxes: N x 4 float32 ``[x0, y0, x1, y1]`` (inclusive extents); a NaN
            row means no box for that object (mixed batches only).
        points: N x K x 2 float32 ``(x, y)`` clicks, K >= 1.
        point_labels: N x K int64: 1 foreground, 0 background, -1 padding.
            Defaults to all 1 when ``points`` is given without labels.
        masks: N x h x w float32 mask-prompt logits (SAM's low-resolution
            grid, 256 x 256 for SAM); not touched by :meth:`scale`.

    Any field may be None; N is shared by the fields that are set, and a
    Prompts with every field None (or N = 0 arrays) has length 0.
    """

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Convert first so lists and other dtypes are accepted, then validate
        # every shape against one N: that is the class's whole reason to exist.
        ns: dict[str, int] = {}
        if self.boxes is not None:
            b = np.asarray(self.boxes, dtype=np.float32)
            if b.ndim != 2 or b.shape[1] != 4:
                raise MedAdaptError(
                    f"Prompts.boxes must be N x 4 [x0, y0, x1, y1]; got shape {tuple(b.shape)} "
                    "(wrap a single box as [[x0, y0, x1, y1]])"
                )
            nan_rows = np.isnan(b).any(axis=1)
            if np.any(np.isnan(b[nan_rows]).sum(axis=1) != 4):
                raise MedAdaptError(
                    "Prompts.boxes: a box row must be all numbers, or all NaN to mean 'no box'"
                )
            real = b[~nan_rows]
            if not np.all(np.isfinite(real)):
                raise MedAdaptError("Prompts.boxes contain infinite values")
            bad = np.flatnonzero((real[:, 2] < real[:, 0]) | (real[:, 3] < real[:, 1]))
            if bad.size:
                i = int(np.flatnonzero(~nan_rows)[bad[0]])
                raise MedAdaptError(
                    f"Prompts.boxes[{i}] = {b[i].tolist()} has x1 < x0 or y1 < y0; "
                    "boxes are [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0"
                )
            self.boxes = b
            ns["boxes"] = b.shape[0]
        if self.points is not None:
            p = np.asarray(self.points, dtype=np.float32)
            if p.ndim != 3 or p.shape[2] != 2 or p.shape[1] == 0:
                raise MedAdaptError(
                    f"Prompts.points must be N x K x 2 (x, y) with K >= 1; got shape {tuple(p.shape)} "
                    "(wrap one object's clicks as [[[x, y], ...]])"
                )
            if not np.all(np.isfinite(p)):
                raise MedAdaptError("Prompts.points contain NaN or infinite values")
            if self.point_labels is None:
                lab = np.ones(p.shape[:2], dtype=np.int64)
            else:
                raw = np.asarray(self.point_labels)
                if raw.shape != p.shape[:2]:
                    raise MedAdaptError(
                        f"Prompts.point_labels must be N x K = {p.shape[:2]} (one label per point); "
                        f"got shape {tuple(raw.shape)}"
                    )
                bad_labels = sorted({float(v) for v in np.unique(raw)} - {-1.0, 0.0, 1.0})
                if bad_labels:
                    raise MedAdaptError(
                        f"Prompts.point_labels must be 1 (foreground), 0 (background) or -1 (padding); "
                        f"got {bad_labels}"
                    )
                lab = raw.astype(np.int64)
            self.points, self.point_labels = p, lab
            ns["points"] = p.shape[0]
        elif self.point_labels is not None:
            raise MedAdaptError("Prompts.point_labels given without points; give points too or drop the labels")
        if self.masks is not None:
            m = np.asarray(self.masks, dtype=np.float32)
            if m.ndim != 3:
                raise MedAdaptError(
                    f"Prompts.masks must be N x h x w logits; got shape {tuple(m.shape)}"
                )
            self.masks = m
            ns["masks"] = m.shape[0]
        if len(set(ns.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in ns.items())
            raise MedAdaptError(f"Prompts fields disagree on the number of objects N ({detail})")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        for field in (self.boxes, self.points, self.masks):
            if field is not None:
                return int(field.shape[0])
        return 0

    @property
    def has_box(self) -> np.ndarray:
        """N bool: which objects carry a real (non-NaN) box."""
        if self.boxes is None:
            return np.zeros(len(self), dtype=bool)
        return ~np.isnan(self.boxes).any(axis=1)

    @property
    def has_points(self) -> np.ndarray:
        """N bool: which objects carry at least one real (non-padding) click."""
        if self.point_labels is None:
            return np.zeros(len(self), dtype=bool)
        return (self.point_labels != PAD_LABEL).any(axis=1)

    # -------------------------------------------------------------- transforms
    def scale(self, sx: float, sy: float) -> Prompts:
        """A copy with x multiplied by ``sx`` and y by ``sy`` (boxes and points).

        This is how prompts move between grids, e.g. from the original image to
        SAM's resized input (``sx = sy = 1024 / max(H, W)``), matching SAM's own
        ``ResizeLongestSide.apply_coords``. Mask prompts live on the decoder's
        fixed low-resolution grid and are left unchanged.
        """
        if not (np.isfinite(sx) and np.isfinite(sy)) or sx <= 0 or sy <= 0:
            raise MedAdaptError(f"scale factors must be positive finite numbers; got sx={sx}, sy={sy}")
        factors = np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes = None if self.boxes is None else self.boxes * factors
        points = None if self.points is None else self.points * factors[:2]
        return replace(self, boxes=boxes, points=points)

    def select(self, indices: IndexLike) -> Prompts:
        """The objects at ``indices`` (int, slice, int list or N bool mask), as a new Prompts.

        An int keeps the object axis (N = 1), so the result always feeds the
        decoder the same way as the original.
        """
        n = len(self)
        if isinstance(indices, slice):
            idx = np.arange(n)[indices]
        else:
            arr = np.asarray(indices)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise MedAdaptError(f"boolean selection must have one entry per object ({n}); got {arr.shape}")
                idx = np.flatnonzero(arr)
            elif arr.size == 0:
                idx = np.zeros(0, dtype=np.int64)
            elif np.issubdtype(arr.dtype, np.integer):
                idx = np.atleast_1d(arr).astype(np.int64)
            else:
                raise MedAdaptError(f"select takes ints, a slice or a bool mask; got dtype {arr.dtype}")
            if idx.ndim != 1:
                raise MedAdaptError(f"select takes a 1-D list of indices; got shape {idx.shape}")
            if idx.size and (idx.max() >= n or idx.min() < -n):
                raise MedAdaptError(f"index out of range for {n} objects: {idx.tolist()}")

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Prompts(
            boxes=take(self.boxes),
            points=take(self.points),
            point_labels=take(self.point_labels),
            masks=take(self.masks),
        )

    def concat_points(self, other_points: Any, other_labels: Any) -> Prompts:
        """A copy with clicks appended to every object's point set.

        Used by iterative training / evaluation: each round adds one corrective
        click per object to the clicks it already has. ``other_points`` is
        N x J x 2, or N x 2 for one click per object; ``other_labels`` is N x J
        (or N). When there are no points yet, the new clicks become the points.
        """
        n = len(self)
        p = np.asarray(other_points, dtype=np.float32)
        lab = np.asarray(other_labels)
        if p.ndim == 2 and p.shape[-1] == 2:
            p = p[:, None, :]
        if lab.ndim == 1:
            lab = lab[:, None]
        if p.ndim != 3 or p.shape[2] != 2 or p.shape[0] != n:
            raise MedAdaptError(
                f"concat_points: expected N x J x 2 (or N x 2) clicks for N = {n} objects; "
                f"got shape {tuple(np.asarray(other_points).shape)}"
            )
        if lab.shape != p.shape[:2]:
            raise MedAdaptError(
                f"concat_points: labels must be N x J = {p.shape[:2]}; got shape {tuple(np.asarray(other_labels).shape)}"
            )
        if self.points is None:
            return replace(self, points=p, point_labels=lab)
        return replace(
            self,
            points=np.concatenate([self.points, p], axis=1),
            point_labels=np.concatenate([self.point_labels, lab], axis=1),  # validated on construction
        )

    def decode_groups(self) -> list[tuple[np.ndarray, Prompts]]:
        """Cut the batch into the fewest groups SAM can decode in one call each: with a box, and without.

        SAM's prompt encoder takes one box tensor for the whole batch; point
        sets of different lengths share one tensor padded with ``-1`` (which
        the encoder embeds as "not a point"). Within a group, point columns
        that are padding for every object are dropped, and a group with no
        real click gets no points at all. Returns ``(indices, prompts)`` for
        the non-empty groups, boxed objects first. Objects with no box, no
        click and no mask prompt raise, since the decoder would have nothing to
        segment.
        """
        hb = self.has_box
        empty = np.flatnonzero(~hb & ~self.has_points & (self.masks is None))
        if empty.size:
            raise MedAdaptError(f"objects {empty.tolist()} have no box, no click and no mask prompt")
        groups = []
        for want_box in (True, False):
            idx = np.flatnonzero(hb == want_box)
            if idx.size == 0:
                continue
            sub = self.select(idx)
            points = labels = None
            if sub.points is not None:
                keep = (sub.point_labels != PAD_LABEL).any(axis=0)
                if keep.any():
                    points, labels = sub.points[:, keep], sub.point_labels[:, keep]
            groups.append((idx, Prompts(boxes=sub.boxes if want_box else None, points=points,
                                        point_labels=labels, masks=sub.masks)))
        return groups

    def to_torch(self, device: Any = "cpu") -> dict[str, Any]:
        """Tensors keyed like ``Backbone.encode_prompts``'s arguments.

        Returns ``{"points": (coords N x K x 2 float32, labels N x K int64) or
        None, "boxes": N x 4 float32 or None, "masks": N x 1 x h x w float32 or
        None}`` so that ``backbone.encode_prompts(**p.to_torch(dev))`` works once
        the coordinates are on the model-input grid (see :meth:`scale`).
        Batches with NaN "no box" rows must go through :meth:`decode_groups`
        first: a NaN box would silently poison the decoder's output.
        """
        if self.boxes is not None and not self.has_box.all():
            raise MedAdaptError(
                "these prompts mix objects with and without boxes (NaN box rows); "
                "decode each group from Prompts.decode_groups() separately"
            )
        points = None
        if self.points is not None:
            points = (
                torch.as_tensor(self.points, dtype=torch.float32, device=device).contiguous(),
                torch.as_tensor(self.point_labels, dtype=torch.int64, device=device).contiguous(),
            )
        # contiguous: a strided view (e.g. after selecting point columns) takes other kernels, other rounding
        boxes = None if self.boxes is None else torch.as_tensor(self.boxes, dtype=torch.float32, device=device).contiguous()
        masks = None
        if self.masks is not None:
            masks = torch.as_tensor(self.masks, dtype=torch.float32, device=device)[:, None].contiguous()
        return {"points": points, "boxes": boxes, "masks": masks}


__all__ = ["PAD_LABEL", "Prompts"]
