"""The volume half of :class:`~medadapt.inference.Segmenter`: ``set_volume``, ``predict_volume``, ``correct_volume``.

A mixin so that the 2-D predictor stays one concept in one file; it uses the
segmenter's decoder (``decode_embedding``), its automatic mode (``predict``)
and its adapter's classes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

import numpy as np

from ..core.errors import MedAdaptError
from ..io.imaging import display_orientation
from .cleanup import check_cleanup, clean_labels
from .intensity import resolve_intensity
from .propagation import Propagation, PropagationConfig
from .volume import VolumeSession, check_axis
from .volume_answers import automatic_volume


def _megabytes(value) -> float:
    """``cache_mb`` as a number of MiB >= 0, or an error that says so."""
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = float("nan")
    if isinstance(value, bool) or not mb >= 0 or mb == float("inf"):
        raise MedAdaptError(f"cache_mb is the in-memory embedding budget in MiB, a number >= 0 (0 keeps every "
                            f"embedding on disk but the latest); got {value!r}")
    return mb


class VolumeMethods:
    """Promptable and automatic segmentation of volumes (mixed into :class:`~medadapt.inference.Segmenter`)."""

    _volume: VolumeSession | None = None
    _object: Propagation | None = None

    def set_volume(
        self,
        volume: np.ndarray | str | os.PathLike,
        spacing: Sequence[float] | None = None,
        axis: int = 2,
        *,
        cache_mb: float | None = None,
        window=None,
        intensity: bool = True,
    ) -> None:
        """Take a volume for :meth:`predict_volume`: slices along ``axis`` (default 2, as in
        :meth:`predict_volume`, ``--axis`` and the data config), encoded when first needed.

        ``volume`` is a 3-D array (slice ``z`` is ``np.take(volume, z, axis)``; a box's x runs along that
        slice's columns) or a NIfTI file / DICOM series folder (slices as ``load_image(path,
        slice_index=z, axis=axis)`` and viewers show them; masks come back in the ``load_volume``
        layout). ``spacing``: mm per voxel along each array axis (read from the file when not given).
        Embeddings are cached in memory up to ``cache_mb`` MiB (default ``MEDADAPT_EMBEDDING_CACHE_MB``
        or 1024) and on disk in a temporary folder beyond it. ``window``: a CT window preset or (level, width).
        Without one, an adapted model's recorded intensity settings (``seg.intensity``: the ``data.window``
        or per-slice ``data.percentiles`` it was trained with) are applied; ``intensity=False`` takes the
        volume as given.
        """
        self.reset_volume()
        budget = None if cache_mb is None else int(_megabytes(cache_mb) * 2**20)
        window, percentiles = resolve_intensity(self.intensity if intensity else None, window)
        self._volume = VolumeSession(self, volume, spacing=spacing, axis=axis, cache_bytes=budget, window=window,
                                     percentiles=percentiles)

    def set_planes(self, planes: np.ndarray | Sequence[np.ndarray]) -> None:
        """Take a stack of display planes (N x H x W, as ``load_volume_case`` gives a case's slices) as the volume
        along axis 0: slice ``k`` is ``planes[k]`` as it stands, for :meth:`show_plane` and :meth:`predict_volume`
        (prompts in the planes' frame: x along columns, y along rows; masks come back N x H x W)."""
        planes = [np.asarray(p) for p in planes]
        if not planes:
            raise MedAdaptError("set_planes needs at least one plane")
        shapes = {p.shape for p in planes}
        if any(p.ndim != 2 for p in planes) or len(shapes) > 1:
            raise MedAdaptError(f"set_planes takes 2-D grey planes of one size (H x W each); got shapes "
                                f"{sorted(shapes, key=str)[:4]}: give one channel of each plane, all the same size")
        self.set_volume(np.stack([display_orientation(np.ascontiguousarray(p)) for p in planes]), axis=0,
                        intensity=False)  # planes as they stand: prepared already
        self._volume.geometry = replace(self._volume.geometry, frame="planes")

    def reset_volume(self) -> None:
        """Forget the current volume, its cached embeddings and its object."""
        if self._volume is not None:
            self._volume.close()
        self._volume, self._object = None, None

    @property
    def volume(self) -> VolumeSession | None:
        """The volume :meth:`set_volume` took (its ``geometry`` holds spacing and affine), or None."""
        return self._volume

    @property
    def volume_object(self) -> Propagation | None:
        """The object :meth:`predict_volume` propagated last (its prompts, answers and ``scores()``), or None."""
        return self._object

    def show_plane(self, session: VolumeSession, k: int) -> None:
        """Make slice ``k`` of ``session`` the current image, with its cached embedding. 2-D calls then answer
        on it in the display frame, the plane as ``session.plane(k)`` returns it and viewers show it: for a
        raw array that is ``display_orientation(np.take(volume, k, axis))``, not the array frame that
        :meth:`predict_volume` takes prompts in."""
        self._embedding = session.embedding(k)
        self._meta, self._image, self._pixels, self._auto_cache = session.meta, session.plane(k), None, None
        self._plane_source = (session, k)  # a 2.5-D student reads the plane's neighbours from there

    def predict_volume(
        self,
        volume: np.ndarray | str | os.PathLike | None = None,
        axis: int | None = None,
        classes: Sequence[str | int] | None = None,
        refine: bool = False,
        *,
        boxes: dict | None = None,
        points: dict | None = None,
        point_labels: dict | None = None,
        masks: dict | None = None,
        propagation: PropagationConfig | None = None,
        cleanup: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Segment a whole volume: one object from prompts on a few slices, or every learned class.

        With prompts (``boxes={z: [x0, y0, x1, y1]}``, ``points={z: [[x, y], ...]}`` with
        ``point_labels={z: [1, 0, ...]}``, ``masks={z: H x W}``; ``z`` a slice index along the axis),
        the object is decoded on the prompted slices and propagated slice by slice in both directions
        until it ends (see :mod:`medadapt.inference.propagation`); returns a bool array of the
        volume's shape. :meth:`correct_volume` then refines it from any slice.

        Without prompts, an adapted model segments every learned class (``classes`` picks some) and
        returns the integer label map (0 = background); ``refine`` self-prompts each slice, and a
        student (see :meth:`set_student`) answers when there is one. ``cleanup`` (any of
        ``"largest"``, ``"holes"``) cleans the label map up (see :mod:`medadapt.inference.cleanup`).

        ``volume`` (optional) is given to :meth:`set_volume` first, with ``axis`` (default 2 here);
        without it the volume of the last :meth:`set_volume` is used.
        """
        if volume is not None:
            self.set_volume(volume, axis=2 if axis is None else axis)
        session = self._volume
        if session is None:
            raise MedAdaptError("no volume set: call set_volume(volume) or pass the volume to predict_volume")
        if axis is not None and volume is None and check_axis(axis) != session.axis:
            raise MedAdaptError(f"the volume was set with axis={session.axis}; call set_volume(..., axis={axis}) "
                                "to slice it along another axis")
        steps = check_cleanup(cleanup)
        prompts = session.slice_prompts(boxes, points, point_labels, masks)
        if prompts:
            if classes is not None or refine or steps:
                raise MedAdaptError("classes=, refine= and cleanup= apply to automatic mode; do not combine them "
                                    "with prompts")
            self._object = Propagation(session, propagation)
            self._object.start(prompts)
            return session.to_user(self._object.volume())
        return session.to_user(clean_labels(automatic_volume(self, session, classes, refine), steps, axis=session.axis))

    def correct_volume(self, z: int, *, box=None, points=None, point_labels=None, mask=None) -> np.ndarray:
        """Refine the last propagated object from slice ``z``: points (with ``point_labels``), a new box or
        a mask, in the same frame as :meth:`predict_volume`'s prompts. The slice is decoded again (clicks
        refine what it shows now) and the object is propagated again from there only; returns the
        updated bool mask of the volume's shape."""
        if self._object is None or self._object.session is not self._volume:
            raise MedAdaptError("nothing to correct: call predict_volume(boxes=..., points=...) on the volume first")
        session = self._volume
        one = session.slice_prompts(
            boxes=None if box is None else {z: box}, points=None if points is None else {z: points},
            point_labels=None if point_labels is None else {z: point_labels}, masks=None if mask is None else {z: mask})
        if not one:
            raise MedAdaptError("correct_volume needs a box, points or a mask for the slice")
        (k, given), = one.items()
        self._object.add(k, box=given.get("box"), points=given.get("points"), labels=given.get("labels"),
                         mask=given.get("mask"))
        return session.to_user(self._object.volume())


__all__ = ["VolumeMethods"]
