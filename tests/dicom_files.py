"""One DICOM writer for the tests: a CT slice with the geometry tags medadapt reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, pixels: np.ndarray, z: float = 0.0, *, series: str | None = None, instance: int = 1,
                orientation=(1, 0, 0, 0, 1, 0), origin=(0.0, 0.0), spacing=(1, 1), **tags) -> Path:
    """A 16-bit CT slice at ``z`` mm along the slice normal; ``tags`` set (or, as None, delete) any other tag."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.InstanceNumber, ds.Modality = series or generate_uid(), instance, "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImageOrientationPatient = list(orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [float(v) for v in np.array([*origin, 0.0]) + z * normal]
    ds.PixelSpacing = list(spacing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path
