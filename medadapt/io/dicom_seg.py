"""Label maps back to DICOM: a DICOM-SEG object (highdicom) that references the source series.

A PACS accepts segmentations as DICOM-SEG, not NIfTI. :func:`write_dicom_seg`
takes a label map in the :func:`~medadapt.io.load_volume` layout of a DICOM
series (closest canonical, RAS+), undoes that reorientation so that each
frame lies on one source image in the series' own row/column layout, and
writes a BINARY segmentation with one segment per class, each frame naming
the source image it segments. highdicom is an optional dependency:
``pip install medadapt[dicom-seg]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedAdaptError
from ..core.files import atomic_write
from .dicom import DicomSeries
from .imaging import _labels
from .volumes import first_line, to_stored

PathLike = str | os.PathLike[str]

#: what a DICOM-SEG copies from its source images and cannot do without (DICOM type 1)
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
             "Modality", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
#: patient and study attributes every image must carry but may leave empty (DICOM type 2); anonymisers often
#: drop them, and highdicom copies them, so a missing one is written empty
_MAY_BE_EMPTY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError:
        raise MedAdaptError(
            "writing DICOM-SEG needs the optional package highdicom: pip install medadapt[dicom-seg]"
        ) from None
    return highdicom


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medadapt")
    except PackageNotFoundError:
        return "unknown"


def _classes(class_names: Sequence[str] | Mapping[int, str], label_values: Sequence[int] | None) -> list[tuple[str, int]]:
    """(name, label value) per segment, in segment-number order."""
    if isinstance(class_names, Mapping):
        if label_values is not None:
            raise MedAdaptError("pass class_names as a {label value: name} mapping or label_values=, not both")
        names, values = list(class_names.values()), list(class_names.keys())
    elif isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise MedAdaptError(f"class_names must be a list of names (one per class), got {class_names!r}")
    else:
        names = list(class_names)
        values = list(range(1, len(names) + 1)) if label_values is None else list(label_values)
    if not names:
        raise MedAdaptError("class_names is empty; name at least one class (one segment per class)")
    if len(values) != len(names):
        raise MedAdaptError(f"{len(names)} class_names but {len(values)} label_values; give one value per class")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise MedAdaptError(f"class_names must be non-empty strings, got {names!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values):
        raise MedAdaptError(f"label_values must be whole numbers >= 1 (0 is background), got {values!r}")
    if len(set(values)) != len(values):
        raise MedAdaptError(f"label_values repeat a value: {values!r}")
    return [(str(n), int(v)) for n, v in zip(names, values)]


def _source_images(series: DicomSeries) -> list[Any]:
    """The series' headers in slice order, as highdicom needs them (copies; the files are not touched)."""
    missing = sorted({key for _, ds in series.slices for key in _REQUIRED if not ds.get(key)})
    if missing:
        raise MedAdaptError(
            f"the DICOM files in {series.folder} lack {', '.join(missing)}, which a DICOM-SEG needs to "
            "reference its source images; these are required tags of a CT/MR image as a scanner writes it"
        )
    thickness = float(np.linalg.norm(series.affine[:3, 2]))  # the slice spacing
    images = []
    for _, ds in series.slices:
        ds = ds.copy()
        for key in _MAY_BE_EMPTY:
            if key not in ds:
                setattr(ds, key, "")
        if not ds.get("SliceThickness"):
            ds.SliceThickness = f"{thickness:.6g}"
        images.append(ds)
    return images


def _series_number(source: Any) -> int:
    """The source's SeriesNumber + 1000, so the segmentation lists beside (after) its scan."""
    try:
        return int(source.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def write_dicom_seg(
    mask: np.ndarray,
    series_folder: PathLike,
    path: PathLike,
    class_names: Sequence[str] | Mapping[int, str],
    label_values: Sequence[int] | None = None,
    algorithm: str = "medadapt",
    *,
    allow_empty: bool = False,
) -> Path:
    """Write a label map of a DICOM series as a DICOM-SEG file (BINARY, one segment per class), atomically.

    ``mask`` is a bool or integer label map in the layout :func:`~medadapt.io.load_volume`
    gives ``series_folder`` (what a model predicted on that array). Class ``i``
    (segment number ``i + 1``) is called ``class_names[i]`` and covers the
    voxels equal to ``label_values[i]`` (default 1, 2, ...); ``class_names``
    may instead map label value -> name. A bool mask is one class, value 1.
    Every listed class becomes a segment, present in the mask or not; a value
    in the mask that no class names is an error, and so is a mask holding
    none of them, unless ``allow_empty`` (then every frame is written, empty).

    The reorientation to RAS+ is undone, so frame ``k`` of a segment lies on
    the ``k``-th image of the series in slice order, in that image's own rows
    and columns, and references it by SOPInstanceUID; frames a segment does
    not touch are left out. Patient and study come from the series; a missing
    patient/study attribute that DICOM lets be empty is written empty, and a
    missing SliceThickness is taken from the slice spacing. Segments carry
    ``algorithm`` as their (automatic, AI) algorithm, category "Tissue" and
    the class name as a local code (scheme ``99MEDADAPT``) for their type.
    Needs ``pip install medadapt[dicom-seg]`` (highdicom).
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    folder = Path(series_folder).expanduser()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file"
        raise MedAdaptError(f"series_folder {folder} {what}; pass the folder holding the DICOM series' files")
    classes = _classes(class_names, label_values)
    if not isinstance(algorithm, str) or not algorithm.strip():
        raise MedAdaptError(f"algorithm must be a non-empty name, got {algorithm!r}")
    series = DicomSeries(folder)
    labels = _labels(mask, "mask")
    if labels.shape != series.canonical_shape():
        raise MedAdaptError(
            f"mask shape {labels.shape} does not match the DICOM series in {folder} (shape "
            f"{series.canonical_shape()} as load_volume returns it); build the label map on load_volume(folder)[0]"
        )
    present = {int(v) for v in np.unique(labels)} - {0}
    values = [v for _, v in classes]
    unknown = sorted(present - set(values))
    if unknown:
        raise MedAdaptError(
            f"mask holds label values {unknown} that no class names (label_values {values}); "
            "name every class, or zero those voxels"
        )
    if not present and not allow_empty:
        raise MedAdaptError(
            f"mask holds none of the label values {values}: there is nothing to segment, so no DICOM-SEG was "
            "written; pass allow_empty=True to write one whose frames are all empty"
        )

    segments = np.zeros(labels.shape, np.uint8 if len(classes) < 256 else np.uint16)
    for number, value in enumerate(values, 1):
        segments[labels == value] = number
    # stored (columns, rows, slices) -> frames (slices, rows, columns): frame k is image k of the series
    frames = np.ascontiguousarray(to_stored(segments, series.affine).transpose(2, 1, 0))
    sources = _source_images(series)

    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=hd.sr.CodedConcept(value=f"L{value}", scheme_designator="99MEDADAPT",
                                                       meaning=name[:64]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
        )
        for number, (name, value) in enumerate(classes, 1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=_series_number(sources[0]),
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medadapt",
            manufacturer_model_name=algorithm[:64],
            software_versions=_version(),
            device_serial_number="0",
            series_description=f"{algorithm} segmentation"[:64],
        )
    except MedAdaptError:
        raise
    except Exception as exc:  # highdicom checks the sources' geometry and attributes with ValueError / AttributeError
        raise MedAdaptError(f"could not build a DICOM-SEG from the series in {folder}: {first_line(exc)}") from exc
    return atomic_write(Path(path).expanduser(), lambda tmp: seg.save_as(tmp))


__all__ = ["write_dicom_seg"]
