"""Cases -> 2-D training samples, and whole volumes for 3-D evaluation.

Images and labels are read with :mod:`medadapt.io.imaging` only, so a training
slice is exactly what ``load_image(path, slice_index=k, axis=axis)`` gives at
inference time and its label is sliced by the same rule (closest-canonical
volume, radiological display): they cannot drift apart.

Stacked volumes (:func:`load_volume_case`) are ``(N, H, W)``: axis 0 is the
slice index along ``config.axis`` and ``stack[k]`` is slice ``k`` as
:func:`load_slices` returns it. So slice-wise predictions are simply
``np.stack(preds)``; :func:`to_canonical` turns such a stack back into the
:func:`~medadapt.io.imaging.load_volume` layout, for
``save_mask(..., reference=image_path)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..core.errors import MedAdaptError
from ..io.imaging import (
    apply_window,
    clip_percentiles,
    is_volume_path,
    load_image,
    load_mask,
    load_volume,
    validate_image,
    volume_affine,
    voxel_size,
)
from .cases import Case
from .config import DataConfig, resolve_classes


@dataclass
class Slice2D:
    """One 2-D training sample.

    ``image`` is float32 HxW (or HxWx3), preprocessed by ``config.window`` /
    ``config.percentiles`` but otherwise in stored units (the model's processor
    normalises). ``label`` is int64 HxW with target class ``k`` (1-based, in
    ``config.classes`` order) as ``k`` and all else 0, or None for unlabeled
    use. ``index`` is the slice index along ``config.axis`` (None for a 2-D
    file); ``source`` the image file (or DICOM folder) it came from.
    """

    image: np.ndarray
    label: np.ndarray | None
    case_id: str
    patient_id: str
    index: int | None
    source: str


class _FileError(MedAdaptError):
    """A case that cannot be used, with the file at fault (for ``on_error: skip`` records)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def _stack(volume: np.ndarray, axis: int) -> np.ndarray:
    """Canonical volume -> (N, H, W) stack of display slices; ``stack[k] == volume_slice(volume, k, axis)``."""
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0).transpose(0, 2, 1)[:, ::-1, ::-1])


def to_canonical(stack: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of the ``(N, H, W)`` stacking: back to the :func:`~medadapt.io.imaging.load_volume`
    array layout, so a stack of slice predictions can be saved with
    ``save_mask(to_canonical(pred, config.axis), out, reference=case.image_path)``."""
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise MedAdaptError(f"to_canonical needs an (N, H, W) stack of slices, got shape {stack.shape}")
    return np.ascontiguousarray(np.moveaxis(stack[:, ::-1, ::-1].transpose(0, 2, 1), 0, axis))


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise _FileError(path, f"label file {path} has non-integer values; is it a probability map or an image?")
    return array.astype(np.int64)


def remap_labels(labels: np.ndarray, classes: list[tuple[str, int]], *, binary_255: bool = False,
                 unlabeled: int | None = None) -> np.ndarray:
    """Stored label values -> 0..K, target ``k`` (1-based) for ``classes[k-1]``'s value, all else 0.

    ``binary_255``: a 2-D mask holding only 0 and 255 counts 255 as value 1,
    so 0/255 masks work with ``classes: [foreground]`` or ``[1]``. Only such
    exactly-0/255 masks: in a multi-label mask, 255 stays its own label.
    ``unlabeled`` (scribble files): pixels of that stored value become -1, not
    background.
    """
    labels = np.asarray(labels)
    if unlabeled is not None:
        out = remap_labels(np.where(labels == unlabeled, 0, labels), classes)
        out[labels == unlabeled] = -1
        return out
    if binary_255 and len(classes) == 1 and classes[0][1] == 1 and (labels == 255).any():
        if np.isin(labels, (0, 255)).all():
            labels = (labels == 255).astype(np.int64)
    out = np.zeros(labels.shape, dtype=np.int64)
    for k, (_, value) in enumerate(classes, start=1):
        out[labels == value] = k
    return out


def _read_case(
    case: Case, config: DataConfig, classes: list[tuple[str, int]], with_labels: bool
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(image stack (N,H,W[,3]) as stored, remapped label stack or None, whether it is a volume)."""
    volume = is_volume_path(case.image_path)
    label_path = case.label_path if with_labels else None
    try:
        if volume:
            data, grid = load_volume(case.image_path)
        else:
            image = load_image(case.image_path, constant_ok=True)[None]  # dropped below, counted as constant
    except MedAdaptError as exc:
        raise _FileError(case.image_path, str(exc)) from exc
    if volume:
        flat = [a for a, n in enumerate(data.shape) if n == 1 and a != config.axis]
        if flat and data.shape[config.axis] > 1:
            raise MedAdaptError(f"{case.image_path} is one plane across axis {flat[0]} (shape {data.shape}), so its "
                                f"slices along data.axis {config.axis} would be one pixel wide: set data.axis: {flat[0]}")
        image = _stack(data, config.axis)
    if label_path is None:
        return image, None, volume
    try:
        if volume:
            data, label_grid = load_volume(label_path, dtype=np.float64)  # label values beyond 2^24 stay exact
            raw = _stack(_integer_labels(data, label_path), config.axis)
        else:
            raw = load_mask(label_path)[None]
    except MedAdaptError as exc:
        raise _FileError(label_path, str(exc)) from exc
    if raw.shape != image.shape[:3]:
        lab_shape, img_shape = (raw.shape, image.shape[:3]) if volume else (raw.shape[1:], image.shape[1:3])
        raise _FileError(
            label_path,
            f"label {label_path} has shape {lab_shape} but image {case.image_path} has shape {img_shape}"
            f"{' (slices along axis %d first)' % config.axis if volume else ''}; they must be on the same grid",
        )
    if volume:
        try:
            _same_grid(label_grid, grid, label_path, case.image_path)
        except MedAdaptError as exc:
            raise _FileError(label_path, str(exc)) from exc
    unlabeled = config.unlabeled_value if config.scribbles == "files" else None
    return image, remap_labels(raw, classes, binary_255=not volume, unlabeled=unlabeled), volume


def _same_grid(label: np.ndarray, image: np.ndarray, label_path, image_path) -> None:
    """Refuse a label volume whose voxels are not the image's: another spacing, orientation or origin (after
    both are reoriented alike), beyond a hundredth of a voxel. A label saved with another affine (a flipped axis)
    would otherwise teach and score the mirror image of the structure."""
    voxel = min(voxel_size(image))
    if not np.allclose(label[:3], image[:3], rtol=0.0, atol=0.01 * voxel):
        raise MedAdaptError(
            f"label {label_path} and image {image_path} have the same shape but not the same voxel grid (affines "
            f"{np.round(label[:3], 3).tolist()} and {np.round(image[:3], 3).tolist()}): a label must lie on its "
            "image's grid; resample or re-save it with the image's affine"
        )


def prepare_slice(image: np.ndarray, config: DataConfig, *, name: str = "image") -> np.ndarray:
    """Apply ``config.window`` / ``config.percentiles`` and check the slice, as training did.

    Use it on slices of your own before predicting so that inference sees the
    same intensities; it raises :class:`MedAdaptError` on a constant slice.
    """
    return validate_image(_clip(np.asarray(image, dtype=np.float32), config), name=name)


def _clip(image: np.ndarray, config: DataConfig) -> np.ndarray:
    if config.window is not None:
        image = apply_window(image, config.window_arg)  # type: ignore[arg-type]
    if config.percentiles is not None:
        image = clip_percentiles(image, *config.percentiles_arg)  # type: ignore[misc]
    return image


def _constant(image: np.ndarray) -> bool:
    return bool(image.min() == image.max())


def _load(
    case: Case,
    config: DataConfig,
    classes: list[tuple[str, int]],
    keep: str,
    with_labels: bool,
    counts: dict[str, int],
) -> list[Slice2D]:
    if keep not in ("labeled", "all"):
        raise MedAdaptError(f"keep must be 'labeled' or 'all', got {keep!r}")
    if keep == "labeled" and (not with_labels or case.label_path is None):
        raise MedAdaptError(
            f"case {case.case_id!r} has no labels to pick slices by (keep='labeled'); use keep='all' for unlabeled cases"
        )
    images, labels, volume = _read_case(case, config, classes, with_labels)
    slices: list[Slice2D] = []
    for k in range(images.shape[0]):
        name = f"{case.image_path} slice {k} (axis {config.axis})" if volume else str(case.image_path)
        if _constant(images[k]):
            counts["constant"] += 1  # zero padding between stacks: nothing to learn, and validate_image refuses it
            continue
        image = _clip(np.asarray(images[k], dtype=np.float32), config)
        if _constant(image):
            counts["constant"] += 1  # nothing inside the window (air above the body for a liver window)
            continue
        try:
            image = validate_image(image, name=name)
        except MedAdaptError as exc:
            raise _FileError(case.image_path, str(exc)) from exc
        label = None if labels is None else labels[k].copy()  # not a view: the case's whole stack can be freed
        if keep == "labeled":
            n = int((label > 0).sum())  # type: ignore[operator]
            if n == 0 or n < config.min_foreground:
                counts["filtered"] += 1
                continue
        slices.append(Slice2D(image, label, case.case_id, case.patient_id, k if volume else None, str(case.image_path)))
    return slices


def _guarded(
    case: Case,
    config: DataConfig,
    classes: list[tuple[str, int]],
    keep: str,
    with_labels: bool,
    counts: dict[str, int],
    skipped: list[tuple[str, str]],
) -> list[Slice2D]:
    """Load one case under ``config.on_error``: stop with the file named, or warn, record and skip it."""
    try:
        return _load(case, config, classes, keep, with_labels, counts)
    except _FileError as exc:
        if config.on_error == "stop":
            raise MedAdaptError(
                f"{exc} [case {case.case_id!r}; set data.on_error: skip to leave unreadable cases out]"
            ) from exc
        warnings.warn(f"skipping case {case.case_id!r}: {exc}", stacklevel=3)
        skipped.append((str(exc.path), str(exc)))
        return []


def load_slices(
    case: Case, config: DataConfig, *, keep: str | None = None, with_labels: bool = True
) -> list[Slice2D]:
    """The 2-D samples of one case: every slice along ``config.axis`` of a volume, or the one 2-D image.

    ``keep='labeled'`` (default: ``config.slice_filter``) keeps slices holding a
    target class (at least ``config.min_foreground`` pixels of them); ``'all'``
    keeps every slice. Constant slices are always dropped. ``with_labels=False``
    does not read labels at all - for unlabeled cases whose labels exist on disk
    but must not be used. A file that cannot be read follows ``config.on_error``.
    """
    counts = {"constant": 0, "filtered": 0}
    return _guarded(case, config, resolve_classes(config), keep or config.slice_filter, with_labels, counts, [])


def load_volume_case(
    case: Case, config: DataConfig, *, with_labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """A whole case for 3-D evaluation: ``(image, label)`` stacks of shape ``(N, H, W)``.

    Axis 0 is the slice index along ``config.axis``; ``image[k]`` equals
    :func:`load_slices`' slice ``k`` (window/percentiles applied per slice, as
    there; constant slices are left as stored) and ``label[k]`` its remapped
    label (None without a label file). A 2-D case gives N = 1. Unreadable
    files raise :class:`MedAdaptError` whatever ``on_error`` says. ``with_labels=False``
    does not read the label file (unlabelled use).
    """
    images, labels, _ = _read_case(case, config, resolve_classes(config), with_labels)
    if config.window is None and config.percentiles is None:
        return images, labels
    out = images.astype(np.float32, copy=True)
    for k in range(out.shape[0]):
        if not _constant(out[k]):
            out[k] = _clip(out[k], config)
    return out, labels


def case_spacing(case: Case, config: DataConfig) -> tuple[float, float, float]:
    """Voxel size in mm in the ``(N, H, W)`` stack order of :func:`load_volume_case`
    (for HD95 in mm); ``(1, 1, 1)`` - pixel units - for 2-D files."""
    if not is_volume_path(case.image_path):
        return (1.0, 1.0, 1.0)
    size = voxel_size(volume_affine(case.image_path))  # canonical axes, from the header alone
    a, b = [i for i in range(3) if i != config.axis]
    return (float(size[config.axis]), float(size[b]), float(size[a]))


class SliceDataset(Dataset):
    """All 2-D slices of some cases, read once and kept in memory as numpy arrays.

    ``dataset[i]`` is a :class:`Slice2D`. ``keep`` as in :func:`load_slices`
    (default ``config.slice_filter``; use ``'all'`` for validation and, with
    ``with_labels=False``, for unlabeled cases). ``skipped`` lists
    ``(path, reason)`` for cases left out under ``on_error: skip``;
    ``dropped`` counts constant slices and slices without a target class.
    """

    def __init__(
        self, cases: list[Case], config: DataConfig, keep: str | None = None, *, with_labels: bool = True
    ) -> None:
        self.config = config
        self.cases = list(cases)
        self.keep = keep or config.slice_filter
        if self.keep not in ("labeled", "all"):
            raise MedAdaptError(f"keep must be 'labeled' or 'all', got {keep!r}")
        classes = resolve_classes(config)
        self.class_names: list[str] = [n for n, _ in classes]
        self.label_values: list[int] = [v for _, v in classes]
        self.skipped: list[tuple[str, str]] = []
        self.dropped: dict[str, int] = {"constant": 0, "filtered": 0}
        self.slices: list[Slice2D] = []
        for case in self.cases:
            self.slices.extend(_guarded(case, config, classes, self.keep, with_labels, self.dropped, self.skipped))
        if self.cases and not self.slices:
            raise MedAdaptError(
                f"no slices left from {len(self.cases)} cases (skipped {len(self.skipped)}, constant "
                f"{self.dropped['constant']}, without a target class {self.dropped['filtered']}); check data.classes "
                f"{config.classes} against the label values, and data.min_foreground"
            )
        self._warn_absent_classes()

    def _warn_absent_classes(self) -> None:
        """A class that never occurs is nearly always a wrong value in data.classes: say so."""
        labels = [s.label for s in self.slices if s.label is not None]
        if not labels:
            return
        present = set(np.unique(np.concatenate([np.unique(lab) for lab in labels])).tolist())
        absent = [f"{n!r} (value {v})" for k, (n, v) in enumerate(zip(self.class_names, self.label_values), 1)
                  if k not in present]
        if absent:
            warnings.warn(
                f"class {', '.join(absent)} never occurs in the labels of {len(self.cases)} cases; "
                "check data.classes against the label values",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Slice2D:
        return self.slices[index]

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def __repr__(self) -> str:
        return (f"SliceDataset({len(self.slices)} slices from {len(self.cases)} cases, classes={self.class_names}, "
                f"keep={self.keep!r}, skipped={len(self.skipped)}, dropped={self.dropped})")


__all__ = [
    "Slice2D", "SliceDataset", "case_spacing", "load_slices", "load_volume_case", "prepare_slice",
    "remap_labels", "to_canonical",
]
