"""DICOM files and series, their sizes checked from the headers before any pixel is decoded.

Headers are read with the pixel data left on disk (pydicom's deferred read),
so a folder of files is sorted, checked for one size, one frame and one
series, and measured against ``$MEDADAPT_MAX_VOLUME_GB`` first; pixels are
decoded one file (one frame) at a time afterwards. Values come back in
modality units (HU for CT) via RescaleSlope / RescaleIntercept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from .volumes import canonical_shape, canonical_slice, check_affine, check_declared_size, reading

_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM file: a 128-byte preamble, then ``DICM``."""
    with path.open("rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def read_header(path: Path) -> Any:
    """The dataset of ``path`` with its pixel data left unread; a file that is not DICOM is a one-line error."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with reading(path, "a DICOM file"):
        try:
            return pydicom.dcmread(path, defer_size="64 KB")
        except InvalidDicomError:
            raise MedAdaptError(
                f"{path} is not a DICOM file (no 'DICM' marker after its 128-byte preamble); "
                "point at a DICOM image or convert the file first"
            ) from None


def image_series(path: Path) -> str | None:
    """The SeriesInstanceUID of the DICOM image ``path`` (``""`` when it names none); ``None`` for a DICOM
    file without pixels that says what it is (a report, an index: it names its SOP class). A header that cannot
    be read, or one cut short before it says so, raises :class:`MedAdaptError`."""
    ds = read_header(path)
    if any(k in ds for k in _PIXELS):
        return str(ds.get("SeriesInstanceUID", ""))
    if "Rows" in ds or ("SOPClassUID" not in ds and "DirectoryRecordSequence" not in ds):
        raise MedAdaptError(f"{path} is a DICOM file cut short (an image without its pixels, or a header without "
                            "its SOP class): a damaged file?")
    return None


def separate_images(paths: Sequence[Path]) -> list[Path]:
    """The DICOM images among ``paths`` when they are separate images, each the only file of its series (a
    folder of radiographs or photographs), else ``[]``: the files of one series are its slices. A folder with
    a file whose header cannot be read is taken for a series, whose reading then says which file fails."""
    images, seen = [], set()
    for p in paths:  # stops at the first series seen twice: a series folder of many slices reads two headers
        try:
            uid = image_series(p)
        except MedAdaptError:
            return []
        if uid is None:
            continue
        if uid == "" or uid in seen:
            return []
        seen.add(uid)
        images.append(p)
    return images if len(images) > 1 else []


def _whole(ds: Any, key: str, default: int | None, path: Path) -> int:
    value = ds.get(key, default)
    try:
        number = int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        number = -1
    if number < 1:
        raise MedAdaptError(f"{path} has {key} {value!r}; a DICOM image needs a whole number >= 1 there")
    return number


def _geometry(ds: Any, path: Path) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples per pixel) as the header declares them; no pixel data -> error."""
    if not any(k in ds for k in _PIXELS):
        raise MedAdaptError(
            f"{path} has no pixel data (it may be a DICOMDIR, a report or a presentation state); "
            "point at a DICOM image"
        )
    return (_whole(ds, "NumberOfFrames", 1, path), _whole(ds, "Rows", None, path),
            _whole(ds, "Columns", None, path), _whole(ds, "SamplesPerPixel", 1, path))


def _rescale(ds: Any, pixels: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (HU for CT) via RescaleSlope/RescaleIntercept. A MONOCHROME1 image
    (radiographs: the lowest value shows white) is negated, so that it reads as a viewer shows it, brighter
    where the viewer is brighter, with the same sign change on every slice of a series."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    out = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = np.negative(out, out=out)
    return out


def read_dicom_file(path: Path, pick: Callable[[int], int]) -> np.ndarray:
    """One 2-D image (one frame of a multi-frame file, chosen by ``pick(frames)``) in modality units."""
    from pydicom.pixels import pixel_array

    ds = read_header(path)
    frames, rows, cols, samples = _geometry(ds, path)
    check_declared_size(path, (frames, rows, cols) + ((samples,) if samples > 1 else ()), "an image")
    index = pick(frames)
    with reading(path, "a DICOM file"):
        pixels = ds.pixel_array if frames == 1 else pixel_array(ds, index=index)  # one frame decoded
    return _rescale(ds, pixels)


class DicomSeries:
    """The files of one series in a folder, sorted along the slice normal, with their geometry.

    Only headers are read here; :meth:`volume` and :meth:`slice` decode pixels
    a file at a time. The stored array is (columns, rows, slices) with an
    LPS->RAS affine, i.e. what dcm2niix would write.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        slices = []
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            try:
                ds = read_header(f)
            except MedAdaptError:
                if is_dicom(f):
                    raise
                continue  # not DICOM at all (a README, a thumbnail...)
            if any(k in ds for k in _PIXELS):
                slices.append((f, ds))
        if not slices:
            raise MedAdaptError(
                f"no DICOM images found in folder {folder}; point at the folder holding the series' files"
            )
        if len({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}) > 1:
            raise MedAdaptError(f"folder {folder} holds more than one DICOM series; put each series in its own folder")
        first_file, first = slices[0]
        size = _geometry(first, first_file)
        for f, ds in slices:
            geometry = _geometry(ds, f)
            if geometry[0] != 1 or geometry[3] != 1 or geometry != size:
                raise MedAdaptError(
                    f"{f} has {geometry[0]} frame(s) of {geometry[1]}x{geometry[2]} pixels x {geometry[3]} "
                    f"sample(s), {first_file.name} has {size[0]} of {size[1]}x{size[2]} x {size[3]}; "
                    "a series needs equal-size single-frame gray slices"
                )
        self.shape = (size[2], size[1], len(slices))  # (columns, rows, slices)
        check_declared_size(folder, self.shape, "a DICOM series")
        with reading(first_file, "a DICOM file"):
            self.affine = self._sort_and_place(slices)
        check_affine(folder, self.affine, "the series' ImageOrientationPatient / ImagePositionPatient / PixelSpacing")
        self.slices = slices

    def _sort_and_place(self, slices: list[tuple[Path, Any]]) -> np.ndarray:
        first_ds = slices[0][1]
        iop = [float(v) for v in first_ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
        row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
        normal = np.cross(row_dir, col_dir)
        lacking = [f for f, ds in slices if "ImagePositionPatient" not in ds]
        if lacking and len(lacking) < len(slices):  # the order and spacing would mix positions with guesses
            raise MedAdaptError(f"{lacking[0]} has no ImagePositionPatient while other slices of the series have one "
                                f"({len(lacking)} of {len(slices)} lack it): the slices cannot be placed; repair or "
                                "remove those files, or is this one series?")
        positioned = not lacking
        pixel = [float(v) for v in first_ds.get("PixelSpacing", [1, 1])]
        for f, ds in slices[1:]:
            other = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
            if not np.allclose(other, iop, atol=1e-4):
                raise MedAdaptError(f"{f} is oriented otherwise than {slices[0][0].name} (ImageOrientationPatient "
                                    f"{other} against {iop}): a volume needs one orientation; is this one series?")
            spacing = [float(v) for v in ds.get("PixelSpacing", [1, 1])]
            if not np.allclose(spacing, pixel, rtol=1e-4, atol=1e-6):
                raise MedAdaptError(f"{f} has PixelSpacing {spacing}, {slices[0][0].name} has {pixel}: a volume "
                                    "needs one pixel size; resample the series, or is this one series?")
        if positioned:
            along = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for _, ds in slices]
            order = sorted(range(len(slices)), key=along.__getitem__)  # stable, as the sort of the slices was
            slices[:] = [slices[i] for i in order]
            self._check_spacing([along[i] for i in order])
        else:
            slices.sort(key=lambda s: int(s[1].get("InstanceNumber", 0) or 0))
        first_ds = slices[0][1]
        first = np.array([float(v) for v in first_ds.get("ImagePositionPatient", [0, 0, 0])])
        if positioned and len(slices) > 1:
            step = (np.array([float(v) for v in slices[-1][1].ImagePositionPatient]) - first) / (len(slices) - 1)
        else:
            step = normal * float(first_ds.get("SliceThickness", 1) or 1)
        if not np.linalg.norm(step) > 0:
            raise MedAdaptError(f"the DICOM slices in {self.folder} all share one position; is this one series?")
        row_spacing, col_spacing = pixel  # every slice's, checked above
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * col_spacing, col_dir * row_spacing, step, first
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS

    def _check_spacing(self, positions: list[float]) -> None:
        """Sorted slice positions along the normal must step evenly: a repeated position (two acquisitions in one
        series) or a gap would give every slice the wrong place and the volume the wrong spacing."""
        steps = np.diff(positions)
        if len(steps) == 0 or not np.linalg.norm(steps) > 0:
            return  # one slice, or all at one position (refused below with its own message)
        typical = float(np.median(steps))
        if np.any(steps <= 1e-3 * max(typical, 1.0)):
            raise MedAdaptError(f"the DICOM slices in {self.folder} repeat a position (ImagePositionPatient): "
                                "several acquisitions or echoes in one series? keep one of them in the folder")
        if float(np.ptp(steps)) > max(1e-3, 0.01 * typical):
            raise MedAdaptError(f"the DICOM slices in {self.folder} are not evenly spaced (steps {steps.min():.3g} to "
                                f"{steps.max():.3g} mm along the slice normal): a slice may be missing; complete the "
                                "series or resample it to even spacing (e.g. as NIfTI) first")

    def _plane(self, k: int) -> np.ndarray:
        f, ds = self.slices[k]
        with reading(f, "a DICOM file"):
            pixels = ds.pixel_array
        if pixels.shape != (self.shape[1], self.shape[0]):
            raise MedAdaptError(f"{f} decodes to pixel shape {pixels.shape}; its header declares "
                                f"{self.shape[1]}x{self.shape[0]}")
        return _rescale(ds, pixels)

    def volume(self) -> np.ndarray:
        """The stored (columns, rows, slices) array, float32, decoded a file at a time."""
        volume = np.empty(self.shape, np.float32)
        for k in range(self.shape[2]):
            volume[:, :, k] = self._plane(k).T
        return volume

    def canonical_shape(self) -> tuple[int, ...]:
        return canonical_shape(self.shape, self.affine)

    def slice(self, index: int, axis: int) -> np.ndarray:
        """``np.take(canonical volume, index, axis)``, decoding one file for the slice axis, else one at a time."""

        def read_slab(stored_axis: int, k: int) -> np.ndarray:
            if stored_axis == 2:
                return self._plane(k).T[:, :, None]
            cut = [np.take(self._plane(s).T, [k], axis=stored_axis) for s in range(self.shape[2])]
            return np.stack(cut, axis=-1)

        return canonical_slice(read_slab, self.shape, self.affine, index, axis).astype(np.float32)


__all__ = ["DicomSeries", "image_series", "is_dicom", "read_dicom_file", "read_header", "separate_images"]
