"""Reading volumes within bounds: sizes are checked from the header, and one slice is read alone.

A few megabytes of gzip can declare gigabytes of voxels, so every volume's
declared size is checked against ``$MEDADAPT_MAX_VOLUME_GB`` before a byte of
it is decoded. Reading one slice of a NIfTI file reads only that slice:
nibabel's array proxy slices the file on disk (through ``indexed_gzip`` for
``.nii.gz`` when it is installed), and the reorientation to closest canonical
is applied to the slice index and the slab read, never to the whole volume.
The slice is bit-identical to slicing the whole-volume array of
:func:`nifti_volume`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError

#: the most bytes of whole planes read at once when a slice is scattered through a NIfTI file
CHUNK_BYTES = 4 * 2**20

#: nibabel's spelling of "no reorientation needed": axis i stays axis i, unflipped.
_IDENTITY = ((0, 1), (1, 1), (2, 1))


def max_volume_bytes() -> float:
    """The largest volume medadapt decodes, in bytes of float32: ``$MEDADAPT_MAX_VOLUME_GB`` GB (default 4)."""
    raw = os.environ.get("MEDADAPT_MAX_VOLUME_GB", "4")
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not gb > 0 or gb == float("inf"):
        raise MedAdaptError(f"MEDADAPT_MAX_VOLUME_GB must be a positive number of gigabytes; got {raw!r}")
    return gb * 1e9


def check_declared_size(path: Path, shape: Sequence[int], what: str = "a volume") -> None:
    """Refuse a file whose header declares more voxels than the limit, before a byte of it is decoded
    (a few MB of gzip can declare gigabytes)."""
    need = float(np.prod([float(n) for n in shape])) * 4
    limit = max_volume_bytes()
    if need > limit:
        raise MedAdaptError(
            f"{path} declares {what} of shape {tuple(int(n) for n in shape)} ({need / 1e9:.1f} GB as float32), "
            f"more than the {limit / 1e9:g} GB limit; set MEDADAPT_MAX_VOLUME_GB to read it if that is intended"
        )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages can span many lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip().rstrip(".")
    return type(exc).__name__


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """Keep nibabel's and pydicom's header fix-up notes and warnings off stderr: medadapt reports what matters."""
    loggers = [logging.getLogger(name) for name in ("nibabel.global", "pydicom")]
    disabled = [logger.disabled for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(nibabel|pydicom|PIL)(\.|$)")
        for logger in loggers:
            logger.disabled = True
        try:
            yield
        finally:
            for logger, was in zip(loggers, disabled):
                logger.disabled = was


@contextlib.contextmanager
def reading(path: Path, kind: str) -> Iterator[None]:
    """Turn whatever a third-party reader raises into a one-line MedAdaptError naming the file
    (the full message stays on the exception's cause, which ``--verbose`` prints), and keep the
    readers' own notes off stderr."""
    try:
        with _quiet_readers():
            yield
    except MedAdaptError:
        raise
    except MemoryError:
        raise MedAdaptError(f"not enough memory to read {path} as {kind}; lower MEDADAPT_MAX_VOLUME_GB") from None
    except Exception as exc:  # pillow, nibabel, pydicom and numpy each raise their own types
        raise MedAdaptError(
            f"could not read {path} as {kind}: {first_line(exc)}. Check that the file is complete and really is {kind}."
        ) from exc


# --------------------------------------------------------------------------- NIfTI
def open_nifti(path: Path, *, keep_file_open: bool = False) -> Any:
    """The NIfTI image at ``path`` with its data still on disk, its declared size checked."""
    import nibabel as nib

    with reading(path, "a NIfTI file"):
        img = nib.load(path, keep_file_open=keep_file_open)  # the header only
        shape, affine = tuple(int(n) for n in img.shape), img.affine
    if not shape or min(shape) < 1:
        raise MedAdaptError(f"{path} declares a volume of shape {shape}; every axis needs at least one voxel")
    check_declared_size(path, shape)
    check_affine(path, affine, "its qform/sform")
    if img.get_data_dtype().kind == "c":  # read as float, a complex voxel keeps only its real part
        raise MedAdaptError(f"{path} holds complex values ({img.get_data_dtype()}); save its magnitude (np.abs) "
                            "as a real-valued NIfTI first")
    return img


def check_affine(path: Path, affine: Any, where: str) -> None:
    """A voxel-to-world matrix that can be reoriented: finite, and every voxel axis pointing somewhere."""
    from nibabel.orientations import io_orientation

    if affine is None or not np.isfinite(affine).all():
        raise MedAdaptError(f"{path} has a non-finite affine; fix {where}")
    with reading(path, "an affine"):
        degenerate = np.isnan(io_orientation(affine)).any()
    if degenerate:
        raise MedAdaptError(f"{path} has a degenerate affine (a voxel axis with no direction in space); fix {where}")


def _squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``nibabel.squeeze_image``'s shape: trailing length-1 axes after the third dropped."""
    shape = tuple(int(n) for n in shape)
    keep = len(shape)
    while keep > 3 and shape[keep - 1] == 1:
        keep -= 1
    return shape[:keep]


def _volume_shape(path: Path, img: Any) -> tuple[int, ...]:
    """The 3-D shape :func:`nifti_volume` gives ``img`` before reorientation (2-D images get one slice)."""
    shape = _squeezed_shape(img.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise MedAdaptError(
            f"{path} is {len(shape)}-D (shape {shape}); medadapt reads 3-D volumes - "
            "extract one volume of a time series / multi-channel file first"
        )
    return shape


def nifti_volume(path: Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The whole volume as ``dtype`` (float32 or float64) in closest canonical (RAS+) orientation, and its affine."""
    import nibabel as nib

    img = open_nifti(path)
    shape = _volume_shape(path, img)
    with reading(path, "a NIfTI file"):
        img = nib.squeeze_image(img)
        if img.ndim == 2:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, None], img.affine, img.header)
        assert img.shape == shape
        canonical = nib.as_closest_canonical(img)
        data = canonical.get_fdata(dtype=dtype)
    return data, np.asarray(canonical.affine, dtype=np.float64)


def canonical_shape(shape: Sequence[int], affine: np.ndarray) -> tuple[int, ...]:
    """The shape a volume of ``shape`` has after reorientation to closest canonical."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    return tuple(int(shape[int(a)]) for a in np.argsort(ornt[:, 0]))


def canonical_slice(
    read_slab: Callable[[int, int], np.ndarray], shape: Sequence[int], affine: np.ndarray, index: int, axis: int
) -> np.ndarray:
    """``np.take(canonical, index, axis)`` of a stored volume, reading only one slab of it.

    ``read_slab(a, k)`` returns the stored array (``shape``) restricted to
    ``k:k+1`` along stored axis ``a``; the canonical axis ``axis`` is stored
    axis ``a`` (flipped or not), so ``index`` becomes a stored index and the
    slab is reoriented as nibabel reorients the whole volume.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    stored_axis = int(np.argsort(ornt[:, 0])[axis])
    flipped = ornt[stored_axis, 1] == -1
    stored_index = int(shape[stored_axis]) - 1 - index if flipped else index
    slab = read_slab(stored_axis, stored_index)
    if not np.array_equal(ornt, _IDENTITY):
        slab = apply_orientation(slab, ornt)
    return np.take(slab, 0, axis=axis)


def canonical_affine(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """The affine nibabel's ``as_closest_canonical`` gives a volume of ``shape`` stored with ``affine``
    (what :func:`nifti_volume` returns), computed without any voxels."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    if np.array_equal(ornt, _IDENTITY):
        return np.asarray(affine, dtype=np.float64)
    return np.asarray(affine @ inv_ornt_aff(ornt, tuple(shape)), dtype=np.float64)


def to_stored(canonical: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo the reorientation to closest canonical: the array of a volume stored with ``affine``
    whose closest-canonical array (as :func:`nifti_volume` returns it) is ``canonical``.

    ``nibabel.as_closest_canonical`` moves stored axis ``i`` to canonical axis
    ``ornt[i, 0]``, flipped where ``ornt[i, 1]`` is -1; the inverse moves each
    canonical axis back, with the same flip. Only axes and flips change, so
    ``canonical`` may hold any dtype (labels stay labels).
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    inverse = np.empty_like(ornt)
    for stored_axis, (canonical_axis, flip) in enumerate(ornt):
        inverse[int(canonical_axis)] = (stored_axis, flip)
    if np.array_equal(inverse, _IDENTITY):
        return np.asarray(canonical)
    return np.ascontiguousarray(apply_orientation(np.asarray(canonical), inverse))


def nifti_slice(path: Path, index: int, axis: int, dtype=np.float32) -> np.ndarray:
    """Slice ``index`` along ``axis`` of :func:`nifti_volume`'s array, bit for bit, reading only that slice.

    A slice along the stored slowest axis (the last, in NIfTI's Fortran order)
    is one contiguous read. Any other slice is scattered through the file, so
    whole planes are read in chunks of at most :data:`CHUNK_BYTES` from one open
    file handle, and only the slice's row of each is kept: memory stays a chunk
    plus the slice, and a gzip file is decompressed once, front to back.
    ``index`` and ``axis`` are checked against :func:`nifti_shape` by the caller.
    """
    img = open_nifti(path, keep_file_open=True)
    shape = _volume_shape(path, img)
    proxy = img.dataobj
    extra = (0,) * (len(img.shape) - len(_squeezed_shape(img.shape)))  # trailing length-1 axes
    slow = 0 if getattr(proxy, "order", "F") == "C" else 2

    def read_slab(stored_axis: int, k: int) -> np.ndarray:
        cut = tuple(slice(k, k + 1) if a == stored_axis else slice(None) for a in range(3))
        if len(img.shape) == 2:  # a 2-D image is one slice already
            return np.asanyarray(proxy)[:, :, None][cut]
        if stored_axis == slow:
            return proxy[cut + extra]
        plane_bytes = int(np.prod([n for a, n in enumerate(shape) if a != slow])) * proxy.dtype.itemsize
        step = max(1, CHUNK_BYTES // plane_bytes)
        parts = []
        for start in range(0, shape[slow], step):
            chunk = tuple(slice(start, start + step) if a == slow else slice(None) for a in range(3))
            parts.append(proxy[chunk + extra][cut].copy())  # whole planes: one contiguous read; the row kept
        return np.concatenate(parts, axis=slow)

    with reading(path, "a NIfTI file"):  # the file handle kept open across the chunks closes with the proxy
        return canonical_slice(read_slab, shape, img.affine, index, axis).astype(dtype)


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The shape of :func:`nifti_volume`'s array, from the header alone."""
    img = open_nifti(path)
    return canonical_shape(_volume_shape(path, img), img.affine)


def stored_geometry(path: Path) -> tuple[Any, tuple[int, ...]]:
    """The NIfTI image at ``path`` (header only, voxels left on disk) and the 3-D shape its
    volume has *before* reorientation (trailing length-1 axes dropped, a 2-D image given one slice)."""
    img = open_nifti(path)
    return img, _volume_shape(path, img)


def nifti_affine(path: Path) -> np.ndarray:
    """:func:`nifti_volume`'s affine, from the header alone."""
    img, shape = stored_geometry(path)
    return canonical_affine(shape, img.affine)


__all__ = [
    "canonical_affine", "canonical_shape", "canonical_slice", "check_affine", "check_declared_size",
    "first_line", "max_volume_bytes", "nifti_affine", "nifti_shape", "nifti_slice", "nifti_volume", "open_nifti", "reading",
    "stored_geometry", "to_stored",
]
