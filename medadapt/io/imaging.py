"""Read medical images as users have them; write label masks back.

Every reader returns a plain numpy array so that any model's processor can
take it from there: intensities are *not* rescaled (a CT slice stays in HU, a
16-bit PNG keeps its full 0..65535 range) because the processor normalises
later, and doing it twice silently changes what the model sees. The only
intensity change is an optional clip: a CT window or an MR percentile clip.

Orientation convention (one rule, used everywhere)
--------------------------------------------------
NIfTI volumes and DICOM series are reoriented to the closest canonical
orientation with ``nibabel.as_closest_canonical`` (RAS+: array axis 0 runs
toward the patient's Right, axis 1 toward Anterior, axis 2 toward Superior),
so the same anatomy has the same array layout whatever the scanner wrote.
A 2-D slice is ``np.take(volume, k, axis).T[::-1, ::-1]``: transposed, then
flipped both ways. That is the radiological display: for ``axis=2`` (axial)
anterior is at the top and the patient's right on the image's left, exactly
as a DICOM viewer shows an axial CT; for ``axis=1`` (coronal) and ``axis=0``
(sagittal) superior is at the top. :func:`load_image`, :func:`load_mask`,
:func:`volume_slice` and :func:`save_mask` (2-D mask to NIfTI) all use this
rule, so a label slice always lines up with its image slice. Writing goes the
other way: :func:`save_mask` with a NIfTI ``reference`` undoes the
reorientation and stores the label map in the reference's own voxel order
with its own affine, and :func:`~medadapt.io.write_dicom_seg` lays each frame
on its source DICOM image.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import MedAdaptError
from ..core.files import atomic_write, path_suffix
from .dicom import DicomSeries, is_dicom, read_dicom_file
from .volumes import (
    canonical_affine,
    canonical_shape,
    check_declared_size,
    nifti_affine,
    nifti_shape,
    nifti_slice,
    nifti_volume,
    reading,
    stored_geometry,
    to_stored,
)

PathLike = str | os.PathLike[str]
Window = str | tuple[float, float]

#: CT windows as (level, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}

_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", *_NIFTI, *_DICOM)
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".npy", *_NIFTI)
SAVE_MASK_EXTENSIONS = (".png", *_NIFTI)


# --------------------------------------------------------------------------- helpers
def _existing(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise MedAdaptError(f"{what} not found: {p}")
    return p


def _format(path: Path, allowed: Sequence[str], what: str) -> str:
    """The extension that picks the reader; files without one are sniffed for DICOM."""
    ext = path_suffix(path)
    if ext in allowed:
        return ext
    if ext == "" and ".dcm" in allowed and path.is_file() and is_dicom(path):
        return ".dcm"
    kind = "a folder" if path.is_dir() else f"extension {ext or '(none)'!r}"
    raise MedAdaptError(f"unsupported {what} {path}: {kind}; supported extensions: {', '.join(allowed)}")


def _slice_position(index: Any, n: int, where: str, arg: str = "slice_index") -> int:
    """Validate a slice index against ``n`` slices; ``None`` is fine only when there is one."""
    if index is None:
        if n == 1:
            return 0
        raise MedAdaptError(f"{where} has {n} slices; pass {arg}=0..{n - 1} to pick one")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise MedAdaptError(f"{arg} must be an integer, got {index!r}")
    if not 0 <= index < n:
        raise MedAdaptError(f"{arg}={index} is out of range for {where}: valid range is 0..{n - 1}")
    return int(index)


def _check_axis(axis: Any) -> int:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise MedAdaptError(f"axis must be 0, 1 or 2 (the volume axis to slice along), got {axis!r}")
    return int(axis)


def _display(plane: np.ndarray) -> np.ndarray:
    """Canonical in-plane axes -> radiological display (see the module docstring). Self-inverse."""
    return np.ascontiguousarray(plane.T[::-1, ::-1])


def display_orientation(plane: np.ndarray) -> np.ndarray:
    """Switch a 2-D plane between array order and display order (self-inverse).

    ``volume_slice`` returns ``display_orientation(np.take(volume, k, axis))``;
    applying it to a slice-wise prediction puts it back in the volume's order.
    """
    return _display(np.asarray(plane))


# --------------------------------------------------------------------------- readers
def _read_pil(path: Path, slice_index: int | None, *, mask: bool) -> np.ndarray:
    with reading(path, "an image (PNG/JPEG/TIFF/BMP)"), warnings.catch_warnings():
        # the declared size is checked against MEDADAPT_MAX_VOLUME_GB below; pillow still refuses > 179 Mpixel
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            return _decode_pil(path, im, slice_index, mask=mask)


def _decode_pil(path: Path, im: Any, slice_index: int | None, *, mask: bool) -> np.ndarray:
    check_declared_size(path, (*im.size, len(im.getbands())), "an image")
    # a phone or camera JPEG often carries a second picture (MPO: a depth or gain map): the photo is the first
    frames = 1 if im.format == "MPO" else getattr(im, "n_frames", 1)
    im.seek(_slice_position(slice_index, frames, f"{path} (multi-frame)" if frames > 1 else str(path)))
    if im.mode in ("RGB", "RGBA") and any(str(_tile_mode(t)).endswith(";16B") for t in (im.tile or ())):
        raise MedAdaptError(f"{path} is a 16-bit colour PNG, which would be read at 8 bits: save it as a 16-bit "
                            "grey PNG, a TIFF or a .npy array")
    im.load()
    if frames == 1 and im.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: read as viewers show it
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    alpha = np.asarray(im.getchannel("A")) if mask and "A" in im.getbands() else None
    if mode in ("1", "LA", "La"):
        return _with_alpha(np.asarray(im.convert("L")), alpha)
    if mode in ("L", "I", "F") or mode.startswith("I;16") or (mask and mode == "P"):
        return np.asarray(im)  # palette indices are the labels of a palette mask
    rgb = np.asarray(im.convert("RGB"))  # RGBA drops alpha; palette/CMYK/YCbCr -> RGB
    if alpha is not None and (alpha < 255).any():
        return _with_alpha(_grey_mask(path, rgb), alpha)
    if mask:
        return _grey_mask(path, rgb)
    gray = rgb[..., 0]
    return gray if mode in ("P", "PA") and (rgb == gray[..., None]).all() else rgb


def _tile_mode(tile: Any) -> str:
    """The raw mode a Pillow tile decodes (``RGB;16B`` for a 16-bit colour PNG)."""
    args = getattr(tile, "args", None) if not isinstance(tile, tuple) else tile[3]
    return args[0] if isinstance(args, tuple) and args else args or ""


def _grey_mask(path: Path, rgb: np.ndarray) -> np.ndarray:
    if not (rgb == rgb[..., :1]).all():
        raise MedAdaptError(f"mask {path} is a colour image; save masks as single-channel label images "
                            "(gray 0/255 or 0..K, or a palette PNG)")
    return rgb[..., 0]


def _with_alpha(gray: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """A mask drawn with transparency: transparent pixels are background; where the grey is one colour
    throughout (white, or black, strokes on a transparent layer), the alpha channel is the mask."""
    if alpha is None or not (alpha < 255).any():
        return gray
    if gray.min() == gray.max():
        return np.where(alpha > 0, 255, 0).astype(np.uint8)
    return np.where(alpha == 0, 0, gray).astype(gray.dtype)


def _read_npy(path: Path, slice_index: int | None) -> np.ndarray:
    from numpy.lib import format as npy

    with reading(path, "a .npy array"), path.open("rb") as fh:  # the header first: shape and dtype
        version = npy.read_magic(fh)
        shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(fh)
    if dtype.hasobject:
        raise MedAdaptError(
            f"{path} holds Python objects, not numbers: medadapt does not unpickle .npy files; "
            "save a numeric array (e.g. np.save(path, image.astype(np.float32)))"
        )
    check_declared_size(path, shape, "an array")
    with reading(path, "a .npy array"):
        arr = np.load(path, allow_pickle=False)
    if arr.ndim > 2 and not (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
        raise MedAdaptError(
            f"{path} holds an array of shape {arr.shape}, not an HxW or HxWx3 image; "
            "slice the volume yourself, e.g. volume_slice(np.load(path), k)"
        )
    _slice_position(slice_index, 1, str(path))
    return arr


def _read_dicom(path: Path, slice_index: int | None) -> np.ndarray:
    return read_dicom_file(
        path, lambda frames: _slice_position(slice_index, frames, f"{path} (multi-frame)" if frames > 1 else str(path))
    )


def plane_axis(shape: Sequence[int], axis: int) -> int:
    """The axis a file's volume is sliced along: ``axis``, unless the file holds one sagittal or coronal plane
    (one axis of length 1, ``axis`` longer): then that plane's axis, so the file is the one image viewers show
    and not strips one pixel wide."""
    single = [a for a, n in enumerate(shape) if n == 1]
    return single[0] if shape[axis] > 1 and len(single) == 1 else axis


def _read_slice(path: Path, slice_index: int | None, axis: int, dtype=np.float32) -> np.ndarray:
    """One slice of a NIfTI file or DICOM series folder, reading only what that slice needs (a NIfTI slice as
    ``dtype``: float64 for labels, whose whole values float32 holds exactly only up to 2^24)."""
    axis = _check_axis(axis)
    series = DicomSeries(path) if path.is_dir() else None
    shape = series.canonical_shape() if series is not None else nifti_shape(path)
    if slice_index is None:  # one sagittal or coronal plane: that image
        axis = plane_axis(shape, axis)
    index = _slice_position(slice_index, shape[axis], f"{path} (volume of shape {shape}, axis={axis})")
    plane = series.slice(index, axis) if series is not None else nifti_slice(path, index, axis, dtype)
    return _display(plane)


# --------------------------------------------------------------------------- public API
def load_volume(path: PathLike, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file or a folder holding one DICOM series as ``(data, affine)``.

    ``data`` is float32 (``dtype=np.float64`` for label files: float32 holds whole numbers exactly only up to
    2^24, and atlas label values go beyond), reoriented to closest canonical (RAS+) so every volume
    has the same axis meaning; ``affine`` (4x4, float64) maps its voxels to
    scanner millimetres. A DICOM series is sorted along the slice normal by
    ImagePositionPatient (InstanceNumber if positions are missing), rescaled to
    modality units (HU), given its LPS->RAS affine and reoriented the same way,
    so it matches its NIfTI conversion and slices along ``axis=2`` for axial scans.
    """
    p = _existing(path, "volume")
    if not p.is_dir() and path_suffix(p) not in _NIFTI:
        raise MedAdaptError(
            f"load_volume reads NIfTI files ({', '.join(_NIFTI)}) or a folder holding one DICOM series, "
            f"not {p}; for a single 2-D file use load_image"
        )
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise MedAdaptError(f"load_volume reads float32 or float64 data; got dtype={dtype!r}")
    if not p.is_dir():
        return nifti_volume(p, dtype)
    import nibabel as nib

    series = DicomSeries(p)
    with reading(p, "a DICOM series"):
        canonical = nib.as_closest_canonical(nib.Nifti1Image(series.volume(), series.affine))
        data = canonical.get_fdata(dtype=dtype)
    return data, np.asarray(canonical.affine, dtype=np.float64)


def volume_affine(path: PathLike) -> np.ndarray:
    """:func:`load_volume`'s affine without reading the voxels (a NIfTI header, or a DICOM series' headers)."""
    p = _existing(path, "volume")
    if not p.is_dir() and path_suffix(p) not in _NIFTI:
        raise MedAdaptError(f"volume_affine reads NIfTI files ({', '.join(_NIFTI)}) or a folder holding one DICOM "
                            f"series, not {p}")
    if not p.is_dir():
        return nifti_affine(p)
    series = DicomSeries(p)
    return canonical_affine(series.shape, series.affine)


def is_volume_path(path: PathLike) -> bool:
    """Whether :func:`load_volume` reads ``path``: a NIfTI file or a folder (a DICOM series). Nothing is read."""
    p = Path(path)
    return p.is_dir() or path_suffix(p) in _NIFTI


def volume_shape(path: PathLike) -> tuple[int, ...]:
    """:func:`load_volume`'s array shape, from the NIfTI header or the DICOM series' headers (no voxels read)."""
    p = _existing(path, "volume")
    if not p.is_dir() and path_suffix(p) not in _NIFTI:
        raise MedAdaptError(f"volume_shape reads NIfTI files ({', '.join(_NIFTI)}) or a folder holding one DICOM "
                            f"series, not {p}")
    return DicomSeries(p).canonical_shape() if p.is_dir() else nifti_shape(p)


def put_slice(volume: np.ndarray, index: int, plane: np.ndarray, axis: int = 2) -> np.ndarray:
    """Write a display-orientation ``plane`` (as :func:`volume_slice` returns one) into ``volume`` at slice
    ``index`` along ``axis``, in place; returns ``volume``. The inverse of :func:`volume_slice`."""
    axis = _check_axis(axis)
    index = _slice_position(index, volume.shape[axis], f"volume of shape {volume.shape} along axis={axis}", "index")
    cut = [slice(None)] * 3
    cut[axis] = index
    given = np.asarray(plane)
    plane = _display(given)
    if plane.shape != volume[tuple(cut)].shape:
        raise MedAdaptError(f"a plane of shape {given.shape} does not fit slice {index} along axis {axis} "
                            f"of a volume of shape {volume.shape}")
    volume[tuple(cut)] = plane
    return volume


def voxel_size(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis of a volume with this 4 x 4 ``affine`` (e.g. :func:`load_volume`'s)."""
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def check_spacing(spacing: Any, ndim: int) -> tuple[float, ...] | None:
    """A per-axis voxel spacing (mm), validated: ``ndim`` positive finite numbers in array-axis order;
    ``None`` (voxel units) passes through."""
    if spacing is None:
        return None
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise MedAdaptError(f"spacing must be {ndim} numbers (mm per voxel along each array axis); "
                            f"got {spacing!r}") from None
    if len(sp) != ndim:
        raise MedAdaptError(f"spacing has {len(sp)} values {sp} but the arrays are {ndim}-D; "
                            "give one spacing per axis, in the arrays' axis order")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise MedAdaptError(f"spacing values must be positive and finite; got {sp}")
    return sp


def volume_slice(volume: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
    """The 2-D slice ``index`` along ``axis`` of a :func:`load_volume` array, in display
    orientation (radiological; see the module docstring), identical to what
    ``load_image(path, slice_index=index, axis=axis)`` returns for that file."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise MedAdaptError(f"volume_slice needs a 3-D volume, got shape {volume.shape}")
    axis = _check_axis(axis)
    where = f"volume of shape {volume.shape} along axis={axis}"
    return _display(np.take(volume, _slice_position(index, volume.shape[axis], where, "index"), axis=axis))


def load_image(
    path: PathLike,
    *,
    slice_index: int | None = None,
    axis: int = 2,
    window: Window | None = None,
    percentiles: tuple[float, float] | None = None,
    constant_ok: bool = False,
) -> np.ndarray:
    """Load one 2-D image as float32 HxW (gray) or HxWx3 (RGB), ready for a model's processor.

    Reads PNG (8/16-bit gray, RGB, RGBA -> alpha dropped, palette -> RGB or gray),
    JPEG, TIFF/BMP, ``.npy`` (HxW or HxWx3), DICOM (one file, in modality units
    via RescaleSlope/Intercept; ``slice_index`` picks a frame of a multi-frame
    file), NIfTI and DICOM-series folders (``slice_index`` along ``axis`` of the
    :func:`load_volume` array, displayed as :func:`volume_slice` does, so label
    slices from :func:`load_mask` line up). Intensities are not rescaled; only
    ``window`` (a :data:`WINDOW_PRESETS` name or (level, width) in HU, for CT)
    or ``percentiles`` (low, high, for MR) clip them. The result passes
    :func:`validate_image` (``constant_ok``: a blank image is returned, not refused).
    """
    if window is not None and percentiles is not None:
        raise MedAdaptError("pass either window= (CT) or percentiles= (MR) to load_image, not both")
    p = _existing(path, "image file")
    fmt = "series" if p.is_dir() else _format(p, IMAGE_EXTENSIONS, "image file")
    if fmt in (*_NIFTI, "series"):
        array = _read_slice(p, slice_index, axis)
    elif fmt == ".npy":
        array = _read_npy(p, slice_index)
    elif fmt in _DICOM:
        array = _read_dicom(p, slice_index)
    else:
        array = _read_pil(p, slice_index, mask=False)
    array = validate_image(array, name=str(p), constant_ok=constant_ok)
    if window is not None:
        array = validate_image(apply_window(array, window), name=f"{p} (window {window!r})", constant_ok=constant_ok)
    if percentiles is not None:
        array = validate_image(clip_percentiles(array, *percentiles), name=f"{p} (percentiles {percentiles})",
                               constant_ok=constant_ok)
    return array


def load_mask(path: PathLike, *, slice_index: int | None = None, axis: int = 2) -> np.ndarray:
    """Load a 2-D label mask as int64 HxW, values kept as stored (a 0/255 PNG stays 0/255,
    palette PNGs give their indices; on a transparent layer, transparent pixels are 0 and strokes of one
    colour are 255). NIfTI label volumes are sliced exactly like
    :func:`load_image` slices the image, so the two line up pixel for pixel."""
    p = _existing(path, "mask file")
    if path_suffix(p) in (".jpg", ".jpeg"):
        raise MedAdaptError(f"mask {p} is a JPEG; JPEG is lossy and smears label edges - save masks as PNG")
    fmt = _format(p, MASK_EXTENSIONS, "mask file")
    if fmt in _NIFTI:
        array = _read_slice(p, slice_index, axis, np.float64)
    elif fmt == ".npy":
        array = _read_npy(p, slice_index)
    else:
        array = _read_pil(p, slice_index, mask=True)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise MedAdaptError(f"mask {p} has shape {array.shape}; a mask must be a single-channel HxW label image")
    return _labels(array, f"mask {p}")


def _labels(mask: Any, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.size == 0:
        raise MedAdaptError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise MedAdaptError(f"{name} has non-integer values; threshold it first (e.g. probs > 0.5) or pass integer labels")
    if arr.dtype.kind not in "biuf":
        raise MedAdaptError(f"{name} has dtype {arr.dtype}; expected bool or integer labels")
    return arr.astype(np.int64)


def save_mask(mask: np.ndarray, path: PathLike, *, reference: PathLike | None = None) -> Path:
    """Write a bool or integer label mask as PNG or NIfTI, atomically; returns the path.

    PNG holds a 2-D mask: bool -> 0/255 8-bit (visible in any viewer), labels
    0..255 -> 8-bit, up to 65535 -> 16-bit. NIfTI holds a 3-D label map in the
    :func:`load_volume` layout, or a 2-D mask as a one-slice volume (stored so
    that :func:`load_mask` gives it back unchanged).

    ``reference`` (NIfTI output only) is the scan the map was computed on, and
    the map must have its shape as :func:`load_volume` returns it. For a NIfTI
    reference the map is written back in the reference's *stored* orientation,
    with its affine, sform/qform codes, voxel sizes and NIfTI version, so
    ``nib.load(out).affine`` equals ``nib.load(reference).affine`` exactly and
    voxel ``[i, j, k]`` of the file labels voxel ``[i, j, k]`` of the stored
    scan (the reference's voxels are not read). For a DICOM series folder the
    map is written in the :func:`load_volume` layout with that volume's affine
    (the series' own geometry, reoriented to RAS+, as sform and qform with code
    "scanner"); for DICOM output see :func:`medadapt.io.write_dicom_seg`.
    """
    p = Path(path).expanduser()
    ext = path_suffix(p)
    if ext not in SAVE_MASK_EXTENSIONS:
        raise MedAdaptError(
            f"cannot save a mask as {p}: extension {ext or '(none)'!r}; "
            f"supported extensions: {', '.join(SAVE_MASK_EXTENSIONS)}"
        )
    labels = _labels(mask, "mask")
    is_bool = np.asarray(mask).dtype == bool
    if ext == ".png":
        if reference is not None:
            raise MedAdaptError("reference= only applies to NIfTI output (.nii, .nii.gz), not PNG")
        if labels.ndim > 2 and sum(s != 1 for s in labels.shape) == 2:
            labels = labels.reshape([s for s in labels.shape if s != 1])  # 1xHxW, HxWx1 ...
        if labels.ndim != 2:
            raise MedAdaptError(f"PNG holds 2-D masks; got shape {labels.shape} - save volumes as .nii.gz")
        if labels.min() < 0 or labels.max() > 65535:
            raise MedAdaptError(f"PNG masks need labels in 0..65535; got {labels.min()}..{labels.max()} - use .nii.gz")
        png = labels * 255 if is_bool else labels
        png = png.astype(np.uint8 if png.max() <= 255 else np.uint16)
        atomic_write(p, lambda tmp: Image.fromarray(png).save(tmp, format="PNG"))
        return p

    import nibabel as nib

    if labels.ndim not in (2, 3):
        raise MedAdaptError(f"NIfTI masks must be 2-D or 3-D, got shape {labels.shape}")
    data = _display(labels)[:, :, None] if labels.ndim == 2 else labels
    lo, hi = int(data.min()), int(data.max())
    dtype = next((t for t in (np.uint8, np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), None)
    if dtype is None:
        raise MedAdaptError(f"mask labels {lo}..{hi} do not fit a 32-bit NIfTI label map")
    if reference is None:
        img = nib.Nifti1Image(data.astype(dtype), np.eye(4))
    else:
        img = _like_reference(data.astype(dtype), _existing(reference, "reference (NIfTI file or DICOM series folder)"))
    img.set_data_dtype(dtype)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    atomic_write(p, lambda tmp: nib.save(img, tmp))
    return p


def _shape_check(data: np.ndarray, shape: Sequence[int], ref: Path, what: str) -> None:
    if tuple(shape) != data.shape:
        raise MedAdaptError(
            f"mask shape {data.shape} does not match reference {ref} ({what} of shape {tuple(shape)} as "
            "load_volume returns it); build the label map on load_volume(reference)[0]"
        )


def _like_reference(data: np.ndarray, ref: Path) -> Any:
    """A NIfTI image of the canonical label map ``data`` in ``ref``'s geometry (see :func:`save_mask`)."""
    import nibabel as nib

    if ref.is_dir():  # a DICOM series: the load_volume layout and affine, from the headers alone
        series = DicomSeries(ref)
        _shape_check(data, series.canonical_shape(), ref, "a DICOM series")
        img = nib.Nifti1Image(data, canonical_affine(series.shape, series.affine))
        img.header.set_xyzt_units("mm")
        img.header.set_sform(img.affine, code="scanner")
        img.header.set_qform(img.affine, code="scanner")
        return img
    if path_suffix(ref) not in _NIFTI:
        raise MedAdaptError(
            f"reference {ref} is not a NIfTI file ({', '.join(_NIFTI)}) or a DICOM series folder; "
            "pass the scan the mask was computed on"
        )
    stored, shape = stored_geometry(ref)  # the header only: the reference's voxels are not read
    _shape_check(data, canonical_shape(shape, stored.affine), ref, "a volume")
    header = stored.header.copy()
    header.set_intent("none")
    cls = nib.Nifti2Image if isinstance(stored, nib.Nifti2Image) else nib.Nifti1Image
    # the header's own affine: nibabel keeps its sform/qform (and codes) verbatim when the two agree
    return cls(to_stored(data, stored.affine), stored.affine, header)


def image_shape(arr: np.ndarray, name: str) -> np.ndarray:
    """HxW / HxWx3 as is, HxWx1 squeezed, HxWx4 alpha dropped; anything else -> error."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        return arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
    hint = ""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
        hint = "; it looks channel-first - use np.moveaxis(a, 0, -1)"
    elif arr.ndim >= 3:
        hint = "; for a volume pick one slice: load_image(path, slice_index=k) or volume_slice(volume, k)"
    raise MedAdaptError(
        f"{name} has shape {arr.shape}; expected a 2-D HxW grayscale or HxWx3 RGB image "
        f"(HxWx1 and HxWx4 RGBA are accepted too){hint}"
    )


def validate_image(array: Any, name: str = "image", constant_ok: bool = False) -> np.ndarray:
    """Check a user-supplied image and return it as float32 HxW or HxWx3.

    Catches, with a message saying what to fix, what otherwise fails deep in a
    model or silently yields garbage: wrong shapes (volumes, channel-first),
    complex or non-numeric data, NaN/inf, empty arrays and constant images
    (usually a wrong slice or window; ``constant_ok`` lets those through, for a caller that answers a blank
    image itself).
    """
    if hasattr(array, "detach"):  # a torch tensor: on the host, bfloat16 (which numpy cannot hold) as float32
        array = array.detach().cpu()
        if "bfloat16" in str(array.dtype):
            array = array.float()
    try:
        arr = np.asarray(array)
    except (TypeError, ValueError, RuntimeError) as exc:  # a ragged list, an object numpy cannot read
        raise MedAdaptError(f"{name} is not an array of numbers ({' '.join(str(exc).split())[:120]}); pass a "
                            "2-D (H x W) or H x W x 3 array") from None
    if arr.dtype.kind == "c":
        raise MedAdaptError(f"{name} is complex ({arr.dtype}); pass its magnitude (np.abs) or real part")
    if arr.dtype.kind not in "biuf":
        raise MedAdaptError(f"{name} has dtype {arr.dtype}; expected a numeric (bool, int or float) array")
    if arr.size == 0:
        raise MedAdaptError(f"{name} is empty (shape {arr.shape}); check how it was loaded or cropped")
    out = image_shape(arr, name).astype(np.float32)
    n_nan, n_inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
    if n_nan or n_inf:
        found = " and ".join([f"{n_nan} NaN"] * bool(n_nan) + [f"{n_inf} infinite"] * bool(n_inf))
        raise MedAdaptError(f"{name} contains {found} values; replace them first, e.g. with np.nan_to_num")
    if out.min() == out.max() and not constant_ok:
        raise MedAdaptError(
            f"{name} is constant (all values = {out.flat[0]:g}); nothing to segment — check the window/slice"
        )
    return out


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Clip to a CT window [level - width/2, level + width/2] (values stay in HU).

    ``window`` is a :data:`WINDOW_PRESETS` name or a (level, width) pair; the
    clip hides structures outside the tissue of interest so the model's own
    rescaling spends its range where it matters.
    """
    if isinstance(window, str) and "," in window:  # "LEVEL,WIDTH", as a command line gives it
        window = tuple(window.split(","))
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in WINDOW_PRESETS:
            raise MedAdaptError(
                f"unknown window preset {window!r}; known presets: {', '.join(WINDOW_PRESETS)} "
                "(or a level and width in HU: LEVEL,WIDTH such as 40,400)"
            )
        level, width = WINDOW_PRESETS[key]
    else:
        try:
            level, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise MedAdaptError(f"window must be a preset name or a (level, width) pair in HU, got {window!r}") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise MedAdaptError(f"window width must be a positive number, got level={level}, width={width}")
    return np.clip(np.asarray(array, dtype=np.float32), level - width / 2, level + width / 2)


def clip_percentiles(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the [low, high] percentiles of the finite values: the MR counterpart of a
    CT window, since MR intensities have no absolute scale and a few hot voxels
    would otherwise squash the rest of the image after rescaling."""
    if not 0 <= low < high <= 100:
        raise MedAdaptError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    arr = np.asarray(array, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise MedAdaptError("cannot clip percentiles: the image has no finite values")
    lo, hi = np.percentile(finite, [low, high])
    return np.clip(arr, lo, hi)


__all__ = [
    "plane_axis",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "SAVE_MASK_EXTENSIONS",
    "WINDOW_PRESETS",
    "apply_window",
    "clip_percentiles",
    "is_volume_path",
    "load_image",
    "load_mask",
    "load_volume",
    "put_slice",
    "save_mask",
    "validate_image",
    "volume_affine",
    "volume_shape",
    "volume_slice",
    "voxel_size",
]
